"""Who may do what: the roles of the teams and the one permission table every surface checks.

`PERMISSIONS` maps each privileged action to the roles that may do it; `admin` may do everything. The
dashboard (`access.require` behind the sidebar login), the model server (`/explain`, bearer token) and the
CLI (`access.cli_action`, the OS user's mapped role) all ask `allowed(role, action)`. docs/privacy.md's table is
`permission_table_markdown()` (print it with `python -m core.privacy.roles`; a test keeps the two equal).

The dashboard and the server name some actions in words ("run a retrain", "explain"); `ALIASES` maps those
words to the table's action, so the audit rows keep the words people see.
"""
from __future__ import annotations

from dataclasses import dataclass

from core.errors import ValidationError

ANALYST = "analyst"
DATA_ENGINEER = "data-engineer"
DATA_SCIENTIST = "data-scientist"
RELEASE_MANAGER = "release-manager"
PRIVACY_OFFICER = "privacy-officer"
ADMIN = "admin"
ROLES = (ANALYST, DATA_ENGINEER, DATA_SCIENTIST, RELEASE_MANAGER, PRIVACY_OFFICER, ADMIN)

PERSONAL_DATA = "personal data"      # see one user's data: the permission behind every personal view
AUDIT_LOG = "audit log"
ACCOUNTS = "accounts"


@dataclass(frozen=True)
class Action:
    """One privileged action: its name in the table and the audit log, what it covers, and on which surfaces."""
    name: str
    what: str
    roles: frozenset
    dashboard: str = ""      # where on the dashboard ("" : not there)
    cli: str = ""            # the command ("" : not there)
    server: str = ""         # the endpoint ("" : not there)


def _a(name, what, roles, dashboard="", cli="", server="") -> Action:
    return Action(name, what, frozenset(roles) | {ADMIN}, dashboard, cli, server)


ACTIONS: tuple[Action, ...] = (
    _a("etl", "run the ETL (validation gate, quarantine, new data version)", [DATA_ENGINEER],
       "Data: Run ETL now", "etl"),
    _a("grow the world", "simulate more days of the world (open loop)", [DATA_ENGINEER],
       "Overview: Grow the world", "simulate --open-loop"),
    _a("simulate", "run the closed loop / a drift scenario (its retraining policy may retrain and promote)",
       [DATA_ENGINEER, DATA_SCIENTIST], "Drift: Run scenario", "simulate"),
    _a("retention", "purge events older than N days", [DATA_ENGINEER], "Privacy: Purge now",
       "privacy retention --days N"),
    _a("mlflow export", "mirror runs, registered versions and the production recommender (a copy of its "
       "bundle: pseudonymized) into an MLflow store", [DATA_SCIENTIST], "", "mlflow export"),
    _a("train", "fit and evaluate a model without registering it", [DATA_SCIENTIST], "", "train"),
    _a("evaluate", "score a registered version on the days after its training (the Drift page's read-only check "
       "of production is an aggregate, open to all)", [DATA_SCIENTIST], "", "evaluate, churn evaluate, ads evaluate"),
    _a("retrain", "ETL → train → gate → register a candidate (the gate may promote it)", [DATA_SCIENTIST],
       "Training: Retrain", "retrain"),
    _a("churn train", "train the churn model (the gate may promote it)", [DATA_SCIENTIST], "Churn: Train churn model",
       "churn train"),
    _a("ads train", "train the ads click model (the gate may promote it)", [DATA_SCIENTIST], "Ads: Train ads model",
       "ads train"),
    _a("churn score", "score every active user's churn risk and store it", [DATA_SCIENTIST], "Churn: Score now",
       "churn score"),
    _a("shadow release", "start a shadow release (scored and logged, shown to nobody)",
       [DATA_SCIENTIST, RELEASE_MANAGER], "Deployment: Start (shadow)", "release start --mode shadow"),
    _a("canary start", "start a canary release (a share of users sees the candidate)", [RELEASE_MANAGER],
       "Deployment: Start (canary)", "release start --mode canary"),
    _a("release decide", "ramp, promote, roll back or stop a running release", [RELEASE_MANAGER],
       "Deployment: Decide now", "release ramp|promote|rollback|stop"),
    _a("promote", "promote a registry version to production", [RELEASE_MANAGER], "Training: Promote; Ads: Promote",
       "models promote"),
    _a("rollback", "bring back a family's previous production version", [RELEASE_MANAGER], "Training: Roll back",
       "models rollback"),
    _a("policy", "change the retraining policy or the exploration share", [RELEASE_MANAGER],
       "Drift: Save policy; Training: Save share", "policy set"),
    _a("ads", "switch the world's ads on or off (the sponsored slot of every list)", [RELEASE_MANAGER],
       "Ads: Switch ads on/off",
       "ads switch on|off"),
    _a("consent", "change a user's consent", [PRIVACY_OFFICER], "Privacy: Save consent",
       "privacy consent --tracking/--personalization/--ad-targeting"),
    _a("export", "export everything held about a user", [PRIVACY_OFFICER], "Privacy: Prepare export",
       "privacy export"),
    _a("erasure", "erase a user from every store and model", [PRIVACY_OFFICER], "Privacy: Erase", "privacy forget"),
    _a("key rotation", "rotate the pseudonymization key", [PRIVACY_OFFICER], "", "privacy rotate-key"),
    _a(AUDIT_LOG, "read the operator audit log", [PRIVACY_OFFICER], "Privacy: Operator audit log",
       "operators audit"),
    _a(PERSONAL_DATA, "see one user's data: profile and lists, explanations, audit trail, churn risk, at-risk "
       "lists and their export (each view audited)", [PRIVACY_OFFICER],
       "For You, Explanations (why/risk/audit tabs), Churn at-risk list, Privacy user panel",
       "explain, explain --ad, audit, churn score --user, privacy consent --user",
       "/explain, /explain/{user}/ad/{id}"),
    _a(ACCOUNTS, "add, disable, enable, list operators and reset their tokens", [], "",
       "operators add|disable|enable|reset-token|list"),
    _a("client keys", "add or revoke the API key of a model-server client (POST /impressions)", [], "",
       "clients add|revoke"),
)
PERMISSIONS: dict[str, frozenset] = {a.name: a.roles for a in ACTIONS}
BY_NAME: dict[str, Action] = {a.name: a for a in ACTIONS}

# What the dashboard and the server call an action -> the table's action.
ALIASES = {
    "run the ETL": "etl", "run a retrain": "retrain", "change the retraining policy": "policy",
    "promote a model version": "promote", "roll back production": "rollback", "run a scenario": "simulate",
    "train the churn model": "churn train", "score churn risk": "churn score",
    "start a shadow release": "shadow release", "start a canary release": "canary start",
    "promote a release": "release decide", "rollback a release": "release decide",
    "stop a release": "release decide", "ramp a release": "release decide",
    "change consent": "consent", "export a user's data": "export", "erase a user": "erasure",
    "purge old events": "retention", "forget a user": "erasure", "explain": PERSONAL_DATA,
    "see one user's data": PERSONAL_DATA,
    "read the audit log": AUDIT_LOG, "switch ads": "ads",
}


class UnknownAction(ValidationError):
    """An action that is not in the permission table (a programming error: every guarded action is listed)."""


def check_role(role) -> str:
    """`role` when it is one of ROLES, else ValidationError naming them."""
    if role not in ROLES:
        raise ValidationError(f"unknown role {role!r}; choose one of {', '.join(ROLES)}")
    return role


def action_of(action: str) -> str:
    """The table's name of `action` (itself, or through ALIASES); UnknownAction when it is neither."""
    name = ALIASES.get(action, action)
    if name not in PERMISSIONS:
        raise UnknownAction(f"{action!r} is not in the permission table (core/privacy/roles.py)")
    return name


def allowed(role: str | None, action: str) -> bool:
    """True when `role` may do `action` (a name in the table or one of its ALIASES); no role: False."""
    return role is not None and role in PERMISSIONS[action_of(action)]


def roles_for(action: str) -> list[str]:
    """The roles that may do `action`, in ROLES order."""
    may = PERMISSIONS[action_of(action)]
    return [r for r in ROLES if r in may]


def permission_table_markdown() -> str:
    """docs/privacy.md's permission table, generated from ACTIONS (✓: the role may; every row is audited)."""
    head = "| action | what | " + " | ".join(ROLES) + " | dashboard | CLI | server |"
    rule = "| --- | --- | " + " | ".join(":---:" for _ in ROLES) + " | --- | --- | --- |"
    rows = ["| aggregates | counts, charts, metrics, Top 50, model cards, system diagnosis | "
            + " | ".join("✓" for _ in ROLES) + " | every page, also without login | reading commands | "
            "/health, /ready, /metrics, /version |"]
    for a in ACTIONS:
        marks = " | ".join("✓" if r in a.roles else "" for r in ROLES)
        rows.append(f"| {a.name} | {a.what} | {marks} | {a.dashboard or '—'} | "
                    f"{('`' + a.cli.replace('|', chr(92) + '|') + '`') if a.cli else '—'} | {a.server or '—'} |")
    return "\n".join([head, rule, *rows]) + "\n"


if __name__ == "__main__":     # python -m core.privacy.roles > table.md
    print(permission_table_markdown(), end="")
