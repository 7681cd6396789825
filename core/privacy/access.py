"""Protected operator actions: who may erase, export, rotate keys — and a log of every attempt.

Standard and simple: each operator has a secret token; only a salted PBKDF2
hash of it is stored, in `RETRO_HOME/secrets.toml` (mode 0600, inside the
git-ignored data folder) next to the pseudonymization key::

    [operators]
    admin = "pbkdf2$200000$<salt hex>$<hash hex>"

`ensure_operator` creates 'admin' with a random token on first start and
returns the plaintext once (the dashboard prints it to the console and shows it
once); it is never stored. `sign_in` checks a login, `require` guards a
privileged action; both audit every refusal and throttle guessing (below). The
action itself logs its outcome with `log_action`. Every row goes to
`operator_audit` in the ML metadata store (targets are pseudonyms, never raw ids).

Roles (`core/privacy/roles.py`): each operator has one role, `[operator_roles]`
name = role (an operator without one — every operator of an older folder — is
`admin`); `[operators_disabled]` name = true refuses an account without deleting
it. `require` checks the signed-in operator's role against the permission table;
the command line acts as the OS user with the role `cli_role` maps it to
(`cli_action`). Every allowed and denied attempt is audited with person and role.

Throttling: per name tried, after `FREE_FAILURES` consecutive wrong tokens each
further try must wait `throttle_delay(n)` = 2^(n-3) s (1, 2, 4, … capped at 60 s)
after the last failure. During the wait the token is not even checked — a correct
one is refused too — and the refusal says "try again in N s" instead of blocking a
dashboard thread. A successful login resets the count. The counts live in
`signin_failures` in mlops.db, so they hold across processes and sessions.
The attempt is reserved before the token is checked: reading the count and adding
the (pending) failure happen in one `BEGIN IMMEDIATE` transaction, so any number
of parallel tries gets at most FREE_FAILURES + 1 real token checks; a right token
then resets the count. Names that are no operator share one counter
(`UNKNOWN_NAMES`) and one audit row per day and action with a count (`attempts`):
a flood of guesses under random names adds a bounded number of rows. The price:
during such a flood a name that exists is told apart by not being throttled with
the others — operator names are not secrets (the first is `admin`); tokens are.
"""
from __future__ import annotations

import getpass
import hashlib
import os
import hmac
import math
import re
import secrets
import time
from contextlib import contextmanager
from datetime import datetime, timezone

import pandas as pd

from core import faults
from core.privacy import roles
from core.store import clock, mlopsdb
from core.constants import TS_FORMAT
from core.errors import RetroError, ValidationError
from core.secretstore import read_secrets, update_secrets
from core.settings import Settings

SCHEME = "pbkdf2"
ITERATIONS = 200_000
SALT_BYTES = 16
DEFAULT_OPERATOR = "admin"
OPERATORS_TABLE = "operators"
ROLES_TABLE = "operator_roles"           # name -> role (missing: admin, as every operator before roles)
DISABLED_TABLE = "operators_disabled"    # name -> true
CLI_ROLES_TABLE = "cli_roles"            # OS user -> role the command line acts with
UNKNOWN_NAMES = "*unknown*"              # the throttle counter every name that is no operator shares
UNKNOWN_ACTOR = "unknown name"           # the aggregated audit row of their failures (one per day and action)
NAME_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,64}")
MIN_TOKEN_LENGTH = 8
OUTCOMES = ("ok", "denied", "failed")
SIGN_IN = "sign-in"
FREE_FAILURES = 2        # consecutive wrong tokens per name before any delay
MAX_DELAY = 60.0         # seconds: the longest a name is ever locked


class PermissionDenied(RetroError):
    """A privileged action was attempted without a valid operator login."""


class RoleDenied(PermissionDenied):
    """A signed-in operator (or the command line's role) may not do this action (see the permission table)."""


class SignInThrottled(PermissionDenied):
    """Too many consecutive failed sign-ins for one operator name; try again after `retry_after` seconds."""

    def __init__(self, name: str, retry_after: float):
        self.name, self.retry_after = name, retry_after
        super().__init__(f"too many failed sign-ins for {name}; try again in {math.ceil(retry_after)} s")


# --------------------------------------------------------------- secrets.toml
# One reader and writer (atomic, locked): core/secretstore.py.


# --------------------------------------------------------------- hashing
def hash_token(token: str, *, salt: bytes | None = None, iterations: int = ITERATIONS) -> str:
    """'pbkdf2$<iterations>$<salt hex>$<hash hex>' — PBKDF2-HMAC-SHA256 with a random 16-byte salt."""
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha256", token.encode(), salt, iterations)
    return f"{SCHEME}${iterations}${salt.hex()}${digest.hex()}"


def verify_token(token: str, stored: str) -> bool:
    """True when `token` matches a stored 'pbkdf2$...' hash (constant-time comparison)."""
    try:
        scheme, iterations, salt_hex, hash_hex = stored.split("$")
        if scheme != SCHEME:
            return False
        digest = hashlib.pbkdf2_hmac("sha256", token.encode(), bytes.fromhex(salt_hex), int(iterations))
    except (ValueError, AttributeError):
        return False
    return hmac.compare_digest(digest.hex(), hash_hex)


# --------------------------------------------------------------- operators
def operators(settings: Settings) -> list[str]:
    """Names of the configured operators (no hashes)."""
    return sorted(read_secrets(settings).get(OPERATORS_TABLE, {}))


def _check_name(name) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise ValidationError(f"operator name {name!r} must be 1-64 letters, digits, '.', '_' or '-'")
    return name


def add_operator(settings: Settings, name: str, token: str, role: str = roles.ADMIN) -> None:
    """Create or replace operator `name` with `token` (stored hashed) and `role`; other sections are kept."""
    _check_name(name)
    roles.check_role(role)
    if not isinstance(token, str) or len(token) < MIN_TOKEN_LENGTH:
        raise ValidationError(f"an operator token needs at least {MIN_TOKEN_LENGTH} characters")
    digest = hash_token(token)

    def change(data: dict) -> None:
        data.setdefault(OPERATORS_TABLE, {})[name] = digest
        data.setdefault(ROLES_TABLE, {})[name] = role
    update_secrets(settings, change)


def create_operator(settings: Settings, name: str, role: str) -> str:
    """A new operator `name` with `role` and a random token, returned once (only its hash is stored)."""
    _check_name(name)
    roles.check_role(role)
    token = secrets.token_urlsafe(16)
    digest = hash_token(token)

    def change(data: dict) -> None:
        if name in data.get(OPERATORS_TABLE, {}):
            raise ValidationError(f"operator {name} exists; `operators reset-token {name}` gives a new token")
        data.setdefault(OPERATORS_TABLE, {})[name] = digest
        data.setdefault(ROLES_TABLE, {})[name] = role
        data.get(DISABLED_TABLE, {}).pop(name, None)
    update_secrets(settings, change)
    return token


def _existing(data: dict, name: str) -> None:
    if name not in data.get(OPERATORS_TABLE, {}):
        raise ValidationError(f"no operator {name!r}; `operators list` shows them, `operators add` creates one")


def reset_token(settings: Settings, name: str) -> str:
    """Replace a lost token: a new random one for `name`, returned once (the old one stops working)."""
    _check_name(name)
    token = secrets.token_urlsafe(16)
    digest = hash_token(token)

    def change(data: dict) -> None:
        _existing(data, name)
        data[OPERATORS_TABLE][name] = digest
    update_secrets(settings, change)
    return token


def set_disabled(settings: Settings, name: str, disabled: bool = True) -> None:
    """Disable (or enable again) operator `name`: a disabled account's right token is refused."""
    _check_name(name)

    def change(data: dict) -> None:
        _existing(data, name)
        if disabled:
            data.setdefault(DISABLED_TABLE, {})[name] = True
        else:
            data.get(DISABLED_TABLE, {}).pop(name, None)
    update_secrets(settings, change)


def operator_accounts(settings: Settings) -> list[dict]:
    """[{name, role, disabled}] of every operator in secrets.toml, by name (no hashes)."""
    data = read_secrets(settings)
    disabled = data.get(DISABLED_TABLE, {})
    return [{"name": n, "role": data.get(ROLES_TABLE, {}).get(n, roles.ADMIN), "disabled": bool(disabled.get(n))}
            for n in sorted(data.get(OPERATORS_TABLE, {}))]


def _stored(settings: Settings, name: str) -> tuple[str | None, dict]:
    """(hash, the secrets table it came from) of operator `name`: RETRO_HOME/secrets.toml, else Streamlit's."""
    data = read_secrets(settings)
    stored = data.get(OPERATORS_TABLE, {}).get(name)
    if stored is None:   # operators may also be configured in Streamlit's .streamlit/secrets.toml (hashed the same way)
        from core.pseudonym import streamlit_secrets
        data = streamlit_secrets()
        stored = data.get(OPERATORS_TABLE, {}).get(name)
    return stored, data


def operator_role(settings: Settings, name) -> str | None:
    """The role of operator `name` (admin when none is recorded), None for a name that is no operator."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        return None
    stored, data = _stored(settings, name)
    if stored is None:
        return None
    role = data.get(ROLES_TABLE, {}).get(name, roles.ADMIN)
    return role if role in roles.ROLES else None      # a hand-edited unknown role may do nothing


def is_disabled(settings: Settings, name: str) -> bool:
    _, data = _stored(settings, name)
    return bool(data.get(DISABLED_TABLE, {}).get(name))


def ensure_operator(settings: Settings) -> str | None:
    """On first start create operator 'admin' with a random token and return it (shown once), else None."""
    if operators(settings):
        return None
    token = secrets.token_urlsafe(16)
    add_operator(settings, DEFAULT_OPERATOR, token)
    return token


_DUMMY_HASH = hash_token("not-a-real-token", salt=b"\0" * SALT_BYTES)


def check(settings: Settings, name: str, token: str) -> bool:
    """True when `name` is an operator and `token` is theirs (no audit, no throttle: logins go through `sign_in`).

    An unknown name costs the same PBKDF2 work as a wrong token, so timing does
    not reveal which operator names exist.
    """
    if not isinstance(name, str) or not isinstance(token, str) or not token:
        return False
    stored = _stored(settings, name)[0] if NAME_PATTERN.fullmatch(name) else None
    if stored is None:
        verify_token(token, _DUMMY_HASH)
        return False
    return verify_token(token, stored)


def _actor(name) -> str:
    """The name tried, for the audit log and the throttle ('anonymous' when it is not a valid name)."""
    return name if isinstance(name, str) and NAME_PATTERN.fullmatch(name) else "anonymous"


def throttle_delay(failures: int) -> float:
    """Seconds a name must wait after `failures` consecutive failed sign-ins.

    0 up to FREE_FAILURES, then 2^(n-3): 1, 2, 4, 8, 16, 32, then MAX_DELAY (60) from the 9th on.
    """
    if failures <= FREE_FAILURES:
        return 0.0
    return min(2.0 ** min(failures - FREE_FAILURES - 1, 16), MAX_DELAY)


def _throttle_key(settings: Settings, name: str) -> str:
    """The counter a name's failures go to: its own when it is an operator, else the one all other names share."""
    known = isinstance(name, str) and NAME_PATTERN.fullmatch(name) and _stored(settings, name)[0] is not None
    return name if known else UNKNOWN_NAMES


def _wait(row, now: float) -> float:
    if row is None:
        return 0.0
    delay = throttle_delay(int(row[0]))
    return min(delay, max(0.0, float(row[1]) + delay - now))   # a clock set back never lengthens the wait


def retry_after(settings: Settings, name: str, *, now: float | None = None) -> float:
    """Seconds until `name` may try to sign in again (0.0: now); `now` is seconds since the epoch.

    Real time on purpose, not the service clock: the throttle slows a person guessing tokens in wall-clock
    seconds, whatever day a simulated world has reached (the audit rows themselves carry the service clock)."""
    now = time.time() if now is None else float(now)
    with mlopsdb.session(settings) as db:
        row = db.execute("SELECT failures, last_failed_at FROM signin_failures WHERE name = ?",
                         [_throttle_key(settings, name)]).fetchone()
    return _wait(row, now)


def _reserve(settings: Settings, key: str, now: float) -> float:
    """Atomically: the wait for `key` (> 0: nothing reserved), else count this try as a failure now (0.0).

    Read and increment are one BEGIN IMMEDIATE transaction, so parallel tries (threads, processes) queue here
    and each sees the count the ones before it left: at most FREE_FAILURES + 1 get to check a token."""
    with mlopsdb.write_session(settings) as db:
        row = db.execute("SELECT failures, last_failed_at FROM signin_failures WHERE name = ?", [key]).fetchone()
        wait = _wait(row, now)
        if wait > 0:
            return wait
        db.execute("INSERT INTO signin_failures(name, failures, last_failed_at) VALUES (?, 1, ?) "
                   "ON CONFLICT(name) DO UPDATE SET failures = failures + 1, last_failed_at = excluded.last_failed_at",
                   [key, now])
    return 0.0


def _reset_failures(settings: Settings, name: str) -> None:
    with mlopsdb.session(settings) as db:
        db.execute("DELETE FROM signin_failures WHERE name = ?", [name])


def sign_in(settings: Settings, name: str, token: str, action: str = SIGN_IN, *, at: str | None = None,
            now: float | None = None) -> str:
    """The operator's name when `token` is theirs, the account is enabled and the name is not throttled; else raise.

    Every refusal is written to `operator_audit` as 'denied' with the name tried
    (never the token; names that are no operator in one counted row per day); a
    successful sign-in (action 'sign-in') as 'ok'. Raises SignInThrottled while the
    name must wait, PermissionDenied for a wrong name or token or a disabled account.
    `at` is the audit timestamp (default: `now`); `now` (seconds since the epoch,
    default the real clock) drives the throttle, so tests need not sleep.
    """
    now = time.time() if now is None else float(now)
    when = at or datetime.fromtimestamp(now, timezone.utc).strftime(TS_FORMAT)
    on = None if at else "real"           # the throttle's clock stamps these rows, not the service's
    actor = _actor(name)
    refused = "wrong operator name or token" if action == SIGN_IN else f"{action} needs an operator login"
    if not isinstance(token, str) or not token:      # not signed in: nothing was guessed, nothing to throttle
        log_action(settings, actor, action, "no login", "denied", when, clock_kind=on)
        raise PermissionDenied(refused)
    known = NAME_PATTERN.fullmatch(actor) is not None and _stored(settings, actor)[0] is not None
    role = operator_role(settings, actor) if known else None
    key = actor if known else UNKNOWN_NAMES
    wait = _reserve(settings, key, now)
    if wait > 0:
        _log_refusal(settings, actor, known, role, action, "throttled", when, on)
        raise SignInThrottled(actor, wait)
    if check(settings, name, token):
        _reset_failures(settings, key)
        if is_disabled(settings, name):
            log_action(settings, actor, action, "account disabled", "denied", when, person=actor, role=role,
                       clock_kind=on)
            raise PermissionDenied(f"operator {name} is disabled; an admin can enable the account again")
        if action == SIGN_IN:
            log_action(settings, actor, action, None, "ok", when, person=actor, role=role, clock_kind=on)
        return name
    _log_refusal(settings, actor, known, role, action, "wrong name or token", when, on)
    raise PermissionDenied(refused)


def _log_refusal(settings: Settings, actor: str, known: bool, role: str | None, action: str, reason: str,
                 when: str, on: str | None = None) -> None:
    if known:
        log_action(settings, actor, action, reason, "denied", when, person=actor, role=role, clock_kind=on)
    else:                    # a name that is no operator: counted in the day's row, the name itself not kept
        _count_unknown(settings, action, reason, when, on)


def _count_unknown(settings: Settings, action: str, reason: str, when: str, on: str | None = None) -> None:
    """One 'denied' row per day, action and reason for every name that is no operator, its `attempts` counted."""
    when = mlopsdb.timestamp(when, settings)
    with mlopsdb.write_session(settings) as db:
        row = db.execute("SELECT audit_id FROM operator_audit WHERE actor = ? AND action = ? AND target = ? "
                         "AND at >= ? AND at < ? ORDER BY audit_id DESC LIMIT 1",
                         [UNKNOWN_ACTOR, action, reason, when[:10], when[:10] + "U"]).fetchone()
        if row is not None:
            db.execute("UPDATE operator_audit SET attempts = attempts + 1 WHERE audit_id = ?", [row[0]])
        else:
            db.execute("INSERT INTO operator_audit(at, actor, action, target, outcome, person, role, attempts, clock, "
                       "recorded_at) VALUES (?,?,?,?,?,NULL,NULL,1,?,?)",
                       [when, UNKNOWN_ACTOR, action, reason, "denied", on or clock.kind(settings), clock.utc_now()])


def require(settings: Settings, name: str, token: str, action: str, *, at: str | None = None,
            now: float | None = None) -> str:
    """The operator's name when the login is valid and their role may do `action`; else log a 'denied' row
    and raise PermissionDenied (RoleDenied for a valid login whose role may not).

    Same checks, audit and throttle as `sign_in` (a privileged action re-checks
    the session's token, so it must not be a way around the throttle); `action`
    is a name of the permission table or one of its aliases (`roles.ALIASES`). The
    caller performs the action and logs its outcome ('ok'/'failed') with
    `log_action` (the privacy functions do so themselves).
    """
    roles.action_of(action)        # an action missing from the table is a programming error, before any sign-in
    who = sign_in(settings, name, token, action, at=at, now=now)
    authorize(settings, who, operator_role(settings, who), action, actor=who, at=at)
    return who


def authorize(settings: Settings, person: str, role: str | None, action: str, *, actor: str,
              at: str | None = None, how: str = "") -> None:
    """Nothing when `role` may do `action`; else a 'denied' row (person, role) and RoleDenied."""
    if roles.allowed(role, action):
        return
    log_action(settings, actor, action, f"role {role}", "denied", at, person=person, role=role)
    may = " or ".join(roles.roles_for(action))
    raise RoleDenied(f"{action} needs the role {may}; {person} {how}is {role or 'without a role'}")


def cli_actor() -> str:
    """'cli:<OS user name>' for actions run from the command line ('cli:unknown' if it cannot be told)."""
    return "cli:" + cli_person()


def cli_person() -> str:
    """The OS user running the command line ('unknown' if it cannot be told)."""
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no login name in this environment (containers, services)
        return "unknown"


def cli_role(settings: Settings) -> str:
    """The role the command line acts with: the OS user's `[cli_roles]` entry in secrets.toml, else the
    setting `cli_role` ($RETRO_CLI_ROLE, default admin). Whoever can read the data folder has every byte anyway:
    this keeps honest people in their lane, it does not stop someone with the files."""
    role = read_secrets(settings).get(CLI_ROLES_TABLE, {}).get(cli_person(), settings.cli_role)
    try:
        return roles.check_role(role)
    except ValidationError as exc:
        raise ValidationError(f"the command line's role: {exc} (RETRO_CLI_ROLE or [cli_roles] in secrets.toml)"
                              ) from None


def cli_allow(settings: Settings, action: str) -> str:
    """Check the command line's role for `action` (a 'denied' row and RoleDenied when it may not); returns the actor."""
    authorize(settings, cli_person(), cli_role(settings), action, actor=cli_actor(),
              how="(the command line's role, RETRO_CLI_ROLE) ")
    return cli_actor()


@contextmanager
def cli_action(settings: Settings, action: str, target: str | None = None, *, audit_as: str | None = None):
    """A privileged command: the command line's role is checked for `action`, then the block runs `audited`
    (its row named `audit_as`, default `action`). Yields the audited entry."""
    actor = cli_allow(settings, action)
    with audited(settings, actor, audit_as or action, target) as entry:
        yield entry


def personal_views_open(settings: Settings) -> bool:
    """True when the dashboard shows one user's data to everyone: the demo setting allows it (auto/on) and the
    folder holds a purely simulated world (a world file, no MovieLens import) — never for imported data."""
    if settings.demo_personal_views == "off" or not settings.world_file.exists():
        return False
    from core.store import opsdb
    if not opsdb.exists(settings):
        return False
    with opsdb.session(settings) as db:
        source = opsdb.get_meta(db, "source")
    return not (source or "").startswith("movielens")


# --------------------------------------------------------------- the audit log
def log_action(settings: Settings, actor: str, action: str, target: str | None, outcome: str,
               at: str | None = None, db=None, *, person: str | None = None, role: str | None = None,
               clock_kind: str | None = None) -> int:
    """Append one `operator_audit` row; returns its id. `target` must never be a raw user id.

    `db`: an mlops.db connection whose open transaction the row joins (the action's own), else its own.
    `person`/`role`: who acted in which role; by default read from `actor` ('operator:NAME' → NAME and their
    role now, 'cli:USER' → USER and the command line's role)."""
    if outcome not in OUTCOMES:
        raise ValidationError(f"outcome must be one of {', '.join(OUTCOMES)}, got {outcome!r}")
    for value, what in ((actor, "actor"), (action, "action")):
        if not isinstance(value, str) or not value.strip():
            raise ValidationError(f"{what} must be a non-empty text")
    when = mlopsdb.timestamp(at, settings)
    if person is None and role is None:
        person, role = _person_role(settings, actor.strip())
    stamp = (clock_kind or clock.kind(settings), clock.utc_now())    # which clock `when` is on; real now
    if db is not None:
        return _insert_audit(db, when, actor, action, target, outcome, person, role, stamp)
    with mlopsdb.session(settings) as db:
        return _insert_audit(db, when, actor, action, target, outcome, person, role, stamp)


def _person_role(settings: Settings, actor: str) -> tuple[str | None, str | None]:
    kind, _, who = actor.partition(":")
    if kind == "operator" and who:
        return who, operator_role(settings, who)
    if kind == "cli" and who:
        try:
            return who, cli_role(settings)
        except ValidationError:
            return who, None
    return None, None


def _insert_audit(db, when: str, actor: str, action: str, target: str | None, outcome: str,
                  person: str | None = None, role: str | None = None, stamp: tuple = (None, None)) -> int:
    """`stamp`: (which clock `when` is on, real UTC now)."""
    cur = db.conn.execute("INSERT INTO operator_audit(at, actor, action, target, outcome, person, role, clock, "
                          "recorded_at) VALUES (?,?,?,?,?,?,?,?,?)",
                          [when, actor.strip(), action.strip(), target, outcome, person, role, *stamp])
    return int(cur.lastrowid)


@contextmanager
def audited(settings: Settings, actor: str, action: str, target: str | None = None):
    """Log the outcome of the privileged action run in the block: 'ok' when it ends, 'failed' when it raises.

    Yields a dict; the block may set its "target" once known (a rollback learns its version only by doing it).
    The exception is re-raised unchanged. Usage::

        with audited(settings, cli_actor(), "rollback") as entry:
            entry["target"] = f"v{registry.rollback(...)}"
    """
    entry = {"target": target}
    written: dict = {}

    def write(db, found: str | None = None) -> None:   # called by the action inside its transaction (mlopsdb.audit_in)
        if entry["target"] is None:
            entry["target"] = found
        written.update(id=log_action(settings, actor, action, entry["target"], "ok", db=db), target=entry["target"])

    try:
        with mlopsdb.audit_row(write):
            yield entry
    except BaseException:
        if not _settle(settings, written, entry["target"], "failed"):
            log_action(settings, actor, action, entry["target"], "failed")
        raise
    faults.point("audit:action-done")
    if not _settle(settings, written, entry["target"], "ok"):
        log_action(settings, actor, action, entry["target"], "ok")


def _settle(settings: Settings, written: dict, target: str | None, outcome: str) -> bool:
    """The row the action wrote in its own transaction, given its final target and outcome; False when the action
    wrote none (or its transaction rolled back), so the caller appends one."""
    if not written:
        return False
    with mlopsdb.session(settings) as db:
        cur = db.conn.execute("UPDATE operator_audit SET target = ?, outcome = ? WHERE audit_id = ? AND "
                              "target IS ? AND outcome = 'ok'", [target, outcome, written["id"], written["target"]])
        return cur.rowcount == 1


def audit_log(settings: Settings, limit: int | None = None) -> pd.DataFrame:
    """`operator_audit` rows, newest first (`attempts`: how many failures an aggregated row counts, else 1)."""
    sql = ("SELECT audit_id, at, actor, action, target, outcome, person, role, attempts, clock, recorded_at "
           "FROM operator_audit ORDER BY audit_id DESC")
    args: list = []
    if limit is not None:
        sql += " LIMIT ?"
        args.append(int(limit))
    with mlopsdb.session(settings) as db:
        rows = db.execute(sql, args).fetchall()
    return pd.DataFrame(rows, columns=["audit_id", "at", "actor", "action", "target", "outcome", "person", "role",
                                       "attempts", "clock", "recorded_at"])


# --------------------------------------------------------------- pseudonyms in the audit log (erasure, key rotation)
def erase_user(settings: Settings, user_key: str, replacement: str) -> int:
    """Replace the pseudonym wherever it is an audit target (an erasure names its request instead);
    freed pages zeroed, WAL checkpointed. Returns the rows redacted."""
    with mlopsdb.session(settings) as db:
        db.execute("PRAGMA secure_delete = ON")
        n = db.conn.execute("UPDATE operator_audit SET target = ? WHERE target = ?", [replacement, user_key]).rowcount
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return int(n)


def rekey(settings: Settings, new_for) -> int:
    """Re-key the audit targets that are pseudonyms through `new_for(keys) -> {old: new}` (one transaction,
    old bytes zeroed, WAL checkpointed); returns how many targets changed."""
    from core.pseudonym import PSEUDONYM_HEX
    pattern = re.compile(rf"[0-9a-f]{{{PSEUDONYM_HEX}}}")
    with mlopsdb.session(settings) as db:
        targets = [t for (t,) in db.execute("SELECT DISTINCT target FROM operator_audit WHERE target IS NOT NULL")
                   if pattern.fullmatch(t)]
        audit_map = new_for(targets)
        db.execute("PRAGMA secure_delete = ON")
        with db.atomic():
            for old, new in audit_map.items():
                db.execute("UPDATE operator_audit SET target = ? WHERE target = ?", [new, old])
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return len(audit_map)
