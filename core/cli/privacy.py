"""Privacy: consent, export, forget and retention, run by whoever holds the data folder."""
from __future__ import annotations

import json

from core import errors
from core.cli import ID, arg, command, emit, int_in


@command("privacy", help="consent | export | forget | retention | rotate-key (the command line's role is checked; "
                         "audited with the OS user name)",
         args=[
             arg("action", choices=["consent", "export", "forget", "retention", "rotate-key"]),
             arg("--user", type=ID),
             arg("--tracking", choices=["on", "off"]),
             arg("--personalization", choices=["on", "off"]),
             arg("--ad-targeting", choices=["on", "off"], help="consent: ads chosen with the user's data (off: "
                 "untargeted ads only)"),
             arg("--days", type=int_in(1, 36_500, "--days"), help="retention: purge behavioural events older than N days"),
         ])
def cmd_privacy(args, settings):
    """The command line acts with its role (RETRO_CLI_ROLE / [cli_roles]: whoever has the files has the data anyway);
    every action is checked against the permission table and audited (OS user name)."""
    from core.privacy import access, consent, erasure, export, retention
    actor = access.cli_actor()
    if args.action == "rotate-key":
        from core.privacy import keys
        access.cli_allow(settings, "key rotation")
        data = keys.rotate_key(settings, actor=actor)
        emit(args, data, lambda: print(json.dumps(data, indent=2, default=str, ensure_ascii=False)))
        return
    if args.action == "consent":
        if args.user is None:
            raise errors.ValidationError("privacy consent needs --user ID")
        if args.tracking is None and args.personalization is None and args.ad_targeting is None:
            from core.pseudonym import pseudonym, pseudonym_key
            with access.cli_action(settings, "personal data", pseudonym(args.user, pseudonym_key(settings)),
                                   audit_as="view consent"):
                data = consent.consent(settings, args.user)
        else:
            access.cli_allow(settings, "consent")
            data = consent.set_consent(settings, args.user, tracking=_on_off(args.tracking),
                                       personalization=_on_off(args.personalization),
                                       ad_targeting=_on_off(args.ad_targeting), actor=actor)
    elif args.action == "export":
        if args.user is None:
            raise errors.ValidationError("privacy export needs --user ID")
        access.cli_allow(settings, "export")
        data = export.export_user(settings, args.user, actor=actor)
        print(json.dumps(data, indent=2, default=str, ensure_ascii=False))
        return
    elif args.action == "forget":
        if args.user is None:
            raise errors.ValidationError("privacy forget needs --user ID")
        access.cli_allow(settings, "erasure")
        data = erasure.forget_user(settings, args.user, actor=actor)
    elif args.days:
        access.cli_allow(settings, "retention")
        data = retention.retention(settings, args.days, actor=actor)
    else:
        data = retention.retention_status(settings, 365)
    emit(args, data, lambda: print(json.dumps(data, indent=2, default=str, ensure_ascii=False)))


def _on_off(value):
    return None if value is None else value == "on"
