"""Governance: explain, audit, model-card, diagnose."""
from __future__ import annotations

import json

from core import errors
from core.cli import ID, TEXT, UsageError, arg, command, emit, int_in
from core.pseudonym import pseudonym, pseudonym_key


@command("explain", help="why was this movie recommended to this user? (--churn: why is this user at risk? "
                          "--ad: why am I seeing this ad?)", args=[
    arg("--user", type=ID, help="the user (required)"),
    arg("--movie", type=ID, help="the recommended movie to explain (required unless --churn)"),
    arg("--churn", action="store_true",
        help="explain the user's churn risk instead: every feature's SHAP contribution (audited, personal data)"),
    arg("--ad", type=ID, metavar="IMPRESSION_ID",
        help="explain an ad the user was shown: advertiser, criteria met, the model's reasons (audited, personal data)"),
])
def cmd_explain(args, settings):
    from core.governance import explain
    if args.ad is not None and (args.movie is not None or args.churn):
        raise errors.ValidationError("--ad does not go with --movie or --churn: it explains one ad impression "
                                     "(`explain --user ID --ad IMPRESSION_ID`)")
    if args.ad is not None:
        if args.user is None:
            raise UsageError("the following arguments are required: --user (see `python -m core explain --help`)")
        _explain_ad(args, settings)
        return
    if args.churn and args.movie is not None:
        raise errors.ValidationError("--movie does not go with --churn: a churn explanation is about the user "
                                     "(`explain --user ID --churn`), not about a movie")
    missing = [flag for flag, value in (("--user", args.user), ("--movie", args.movie))
               if value is None and not (flag == "--movie" and args.churn)]
    if missing:      # argparse's own words, as when both options were required
        raise UsageError(f"the following arguments are required: {', '.join(missing)} "
                         "(see `python -m core explain --help`)")
    if args.churn:
        _explain_churn(args, settings)
        return
    from core.privacy import access
    target = pseudonym(args.user, pseudonym_key(settings))     # personal data read out: audited like /explain
    with access.cli_action(settings, "personal data", target, audit_as="explain"):
        e = explain.explain(settings, args.user, args.movie)
    emit(args, e, lambda: print(explain.explanation_markdown(e)))


def _explain_churn(args, settings):
    """Personal data read out: audited like the model server's /explain (cli:<OS user>, target the pseudonym)."""
    from core.governance import explain
    from core.privacy import access
    target = pseudonym(args.user, pseudonym_key(settings))
    with access.cli_action(settings, "personal data", target, audit_as="explain churn"):
        e = explain.explain_churn(settings, args.user)
    emit(args, e, lambda: print(explain.churn_explanation_markdown(e), end=""))


def _explain_ad(args, settings):
    """Personal data read out: audited like the model server's ad explanation (cli:<OS user>, target the pseudonym)."""
    from core.governance import ads_explain
    from core.privacy import access
    target = pseudonym(args.user, pseudonym_key(settings))
    with access.cli_action(settings, "personal data", target, audit_as="explain ad"):
        e = ads_explain.explain_ad(settings, args.user, args.ad)
    emit(args, e, lambda: print(ads_explain.explanation_markdown(e), end=""))


@command("audit", help="what did we show a user (on a day), and why? (with their stored churn scores)", args=[
    arg("--user", type=ID, required=True),
    arg("--day", type=TEXT, help="calendar date YYYY-MM-DD (default: every day)"),
    arg("--limit", type=int_in(1, 100_000, "--limit"), default=50),
])
def cmd_audit(args, settings):
    from core.governance import audit
    from core.privacy import access
    with access.cli_action(settings, "personal data", pseudonym(args.user, pseudonym_key(settings)), audit_as="audit"):
        records = audit.audit(settings, args.user, args.day, args.limit)
        churn = audit.churn_scores(settings, args.user, args.day, args.limit)
    if getattr(args, "json", False):
        print(audit.audit_json(records, churn, args.user))
    else:
        print(audit.audit_markdown(records, f"Audit: user {args.user}", churn=churn))


@command("model-card", help="the model card of a registered version", args=[
    arg("version", type=ID),
    arg("--format", choices=["md", "json"], default="md"),
])
def cmd_model_card(args, settings):
    from core.governance import modelcard
    card = modelcard.model_card(settings, args.version)
    if args.format == "json" or getattr(args, "json", False):
        print(json.dumps(card, indent=2, default=str))
    else:
        print(modelcard.model_card_markdown(card))


@command("diagnose", help="check data, features, model and deployment",
         args=[arg("--user", type=ID, help="diagnose one user's recommendations (default: the system)")])
def cmd_diagnose(args, settings):
    from core.governance import diagnose
    result = diagnose.diagnose(settings, args.user)
    emit(args, result, lambda: print(diagnose.diagnose_markdown(result)))
