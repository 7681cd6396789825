"""Governance: explain, audit, model-card, diagnose."""
from __future__ import annotations

import json

from core.cli import ID, TEXT, arg, command, emit, int_in


@command("explain", help="why was this movie recommended to this user?", args=[
    arg("--user", type=ID, required=True),
    arg("--movie", type=ID, required=True),
])
def cmd_explain(args, settings):
    from core.governance import explain
    e = explain.explain(settings, args.user, args.movie)
    emit(args, e, lambda: print(explain.explanation_markdown(e)))


@command("audit", help="what did we show a user (on a day), and why?", args=[
    arg("--user", type=ID, required=True),
    arg("--day", type=TEXT, help="calendar date YYYY-MM-DD (default: every day)"),
    arg("--limit", type=int_in(1, 100_000, "--limit"), default=50),
])
def cmd_audit(args, settings):
    from core.governance import audit
    records = audit.audit(settings, args.user, args.day, args.limit)
    if getattr(args, "json", False):
        print(audit.audit_json(records))
    else:
        print(audit.audit_markdown(records))


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
