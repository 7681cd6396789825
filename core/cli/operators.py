"""Operator accounts (admin): operators add NAME --role R | disable | enable | reset-token | list; the audit log
(privacy officer): operators audit; the permission table: operators roles."""
from __future__ import annotations

from core import errors
from core.cli import TEXT, arg, command, emit, int_in


@command("operators", help="operator accounts: add NAME --role R | disable NAME | enable NAME | reset-token NAME | "
                           "list | audit | roles (tokens are shown once, stored hashed)", args=[
    arg("action", choices=["add", "disable", "enable", "reset-token", "list", "audit", "roles"]),
    arg("name", nargs="?", type=TEXT, help="add, disable, enable, reset-token: the operator's name"),
    arg("--role", help="add: the operator's role (see `operators roles`)"),
    arg("--limit", type=int_in(1, 100_000, "--limit"), default=50, help="audit: the newest N rows (default 50)"),
])
def cmd_operators(args, settings):
    """Accounts need the admin role, the audit log the privacy officer's; the command line acts with its role
    (RETRO_CLI_ROLE / [cli_roles]) and every try is audited with the OS user."""
    from core.privacy import access, roles
    if args.action == "roles":
        data = [{"action": a.name, "what": a.what, "roles": roles.roles_for(a.name), "dashboard": a.dashboard,
                 "cli": a.cli, "server": a.server} for a in roles.ACTIONS]
        emit(args, {"roles": list(roles.ROLES), "actions": data},
             lambda: print(roles.permission_table_markdown(), end=""))
        return
    if args.action == "audit":
        with access.cli_action(settings, roles.AUDIT_LOG, f"newest {args.limit}", audit_as="read the audit log"):
            frame = access.audit_log(settings, args.limit)
        rows = frame.astype(object).where(frame.notna(), None).to_dict("records")
        emit(args, rows, lambda: print(frame.to_string(index=False) if len(frame) else "no audit rows yet"))
        return
    if args.role is not None and args.action != "add":
        raise errors.ValidationError("--role belongs to `operators add NAME --role R`")
    if args.action == "list":
        with access.cli_action(settings, roles.ACCOUNTS, audit_as="operators list"):
            accounts = access.operator_accounts(settings)

        def human():
            if not accounts:
                print("no operators yet; `python -m core operators add NAME --role ROLE`")
            for a in accounts:
                print(f"{a['name']:<24} {a['role']:<16}" + (" disabled" if a["disabled"] else ""))
        emit(args, accounts, human)
        return
    if args.name is None:
        raise errors.ValidationError(f"operators {args.action} needs a NAME, e.g. `python -m core operators "
                                     f"{args.action} alice" + (" --role analyst`" if args.action == "add" else "`"))
    target = f"operator:{args.name}"
    if args.action == "add":
        if args.role is None:
            raise errors.ValidationError(f"operators add needs --role, one of {', '.join(roles.ROLES)}")
        roles.check_role(args.role)
        with access.cli_action(settings, roles.ACCOUNTS, f"{target} as {args.role}", audit_as="operators add"):
            token = access.create_operator(settings, args.name, args.role)
        data = {"name": args.name, "role": args.role, "token": token}
    elif args.action == "reset-token":
        with access.cli_action(settings, roles.ACCOUNTS, target, audit_as="operators reset-token"):
            token = access.reset_token(settings, args.name)
        data = {"name": args.name, "role": access.operator_role(settings, args.name), "token": token}
    else:
        disable = args.action == "disable"
        with access.cli_action(settings, roles.ACCOUNTS, target, audit_as=f"operators {args.action}"):
            access.set_disabled(settings, args.name, disable)
        emit(args, {"name": args.name, "disabled": disable},
             lambda: print(f"operator {args.name} is {'disabled' if disable else 'enabled'}"))
        return
    emit(args, data, lambda: print(f"operator {data['name']} ({data['role']}): token (shown once; only its hash is "
                                   f"kept):\n{data['token']}"))
