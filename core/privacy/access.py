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

Throttling: per name tried (known or not, so refusals do not reveal which names
exist), after `FREE_FAILURES` consecutive wrong tokens each further try must
wait `throttle_delay(n)` = 2^(n-3) s (1, 2, 4, … capped at 60 s) after the last
failure. During the wait the token is not even checked — a correct one is
refused too — and the refusal says "try again in N s" instead of blocking a
dashboard thread. A successful login resets the count. The counts live in
`signin_failures` in mlops.db, so they hold across processes and sessions.
"""
from __future__ import annotations

import getpass
import hashlib
import hmac
import math
import re
import secrets
import time
from contextlib import contextmanager
from datetime import datetime, timezone

import pandas as pd

from core import faults
from core.store import mlopsdb
from core.constants import TS_FORMAT
from core.errors import RetroError, ValidationError
from core.secretstore import read_secrets, update_secrets
from core.settings import Settings

SCHEME = "pbkdf2"
ITERATIONS = 200_000
SALT_BYTES = 16
DEFAULT_OPERATOR = "admin"
OPERATORS_TABLE = "operators"
NAME_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,64}")
MIN_TOKEN_LENGTH = 8
OUTCOMES = ("ok", "denied", "failed")
SIGN_IN = "sign-in"
FREE_FAILURES = 2        # consecutive wrong tokens per name before any delay
MAX_DELAY = 60.0         # seconds: the longest a name is ever locked


class PermissionDenied(RetroError):
    """A privileged action was attempted without a valid operator login."""


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


def add_operator(settings: Settings, name: str, token: str) -> None:
    """Create or replace operator `name` with `token` (stored hashed; other sections are kept)."""
    _check_name(name)
    if not isinstance(token, str) or len(token) < MIN_TOKEN_LENGTH:
        raise ValidationError(f"an operator token needs at least {MIN_TOKEN_LENGTH} characters")
    digest = hash_token(token)
    update_secrets(settings, lambda data: data.setdefault(OPERATORS_TABLE, {}).__setitem__(name, digest))


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
    stored = read_secrets(settings).get(OPERATORS_TABLE, {}).get(name)
    if stored is None:   # operators may also be configured in Streamlit's .streamlit/secrets.toml (hashed the same way)
        from core.pseudonym import streamlit_secrets
        stored = streamlit_secrets().get(OPERATORS_TABLE, {}).get(name)
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


def retry_after(settings: Settings, name: str, *, now: float | None = None) -> float:
    """Seconds until `name` may try to sign in again (0.0: now); `now` is seconds since the epoch.

    Real time on purpose, not the service clock: the throttle slows a person guessing tokens in wall-clock
    seconds, whatever day a simulated world has reached (the audit rows themselves carry the service clock)."""
    now = time.time() if now is None else float(now)
    with mlopsdb.session(settings) as db:
        row = db.execute("SELECT failures, last_failed_at FROM signin_failures WHERE name = ?", [name]).fetchone()
    if row is None:
        return 0.0
    delay = throttle_delay(int(row[0]))
    return min(delay, max(0.0, float(row[1]) + delay - now))   # a clock set back never lengthens the wait


def _record_failure(settings: Settings, name: str, now: float) -> None:
    with mlopsdb.session(settings) as db:
        db.execute("INSERT INTO signin_failures(name, failures, last_failed_at) VALUES (?, 1, ?) "
                   "ON CONFLICT(name) DO UPDATE SET failures = failures + 1, last_failed_at = excluded.last_failed_at",
                   [name, now])


def _reset_failures(settings: Settings, name: str) -> None:
    with mlopsdb.session(settings) as db:
        db.execute("DELETE FROM signin_failures WHERE name = ?", [name])


def sign_in(settings: Settings, name: str, token: str, action: str = SIGN_IN, *, at: str | None = None,
            now: float | None = None) -> str:
    """The operator's name when `token` is theirs and the name is not throttled; else raise.

    Every refusal is written to `operator_audit` as 'denied' with the name tried
    (never the token); a successful sign-in (action 'sign-in') as 'ok'. Raises
    SignInThrottled while the name must wait, PermissionDenied for a wrong name
    or token. `at` is the audit timestamp (default: `now`); `now` (seconds since
    the epoch, default the real clock) drives the throttle, so tests need not sleep.
    """
    now = time.time() if now is None else float(now)
    when = at or datetime.fromtimestamp(now, timezone.utc).strftime(TS_FORMAT)
    actor = _actor(name)
    refused = "wrong operator name or token" if action == SIGN_IN else f"{action} needs an operator login"
    if not isinstance(token, str) or not token:      # not signed in: nothing was guessed, nothing to throttle
        log_action(settings, actor, action, "no login", "denied", when)
        raise PermissionDenied(refused)
    wait = retry_after(settings, actor, now=now)
    if wait > 0:
        log_action(settings, actor, action, "throttled", "denied", when)
        raise SignInThrottled(actor, wait)
    if check(settings, name, token):
        _reset_failures(settings, actor)
        if action == SIGN_IN:
            log_action(settings, actor, action, None, "ok", when)
        return name
    _record_failure(settings, actor, now)
    log_action(settings, actor, action, "wrong name or token", "denied", when)
    raise PermissionDenied(refused)


def require(settings: Settings, name: str, token: str, action: str, *, at: str | None = None,
            now: float | None = None) -> str:
    """The operator's name when the login is valid; else log a 'denied' row and raise PermissionDenied.

    Same checks, audit and throttle as `sign_in` (a privileged action re-checks
    the session's token, so it must not be a way around the throttle). The
    caller performs the action and logs its outcome ('ok'/'failed') with
    `log_action` (the privacy functions do so themselves).
    """
    return sign_in(settings, name, token, action, at=at, now=now)


def cli_actor() -> str:
    """'cli:<OS user name>' for actions run from the command line ('cli:unknown' if it cannot be told)."""
    try:
        return "cli:" + getpass.getuser()
    except Exception:  # noqa: BLE001 - no login name in this environment (containers, services)
        return "cli:unknown"


# --------------------------------------------------------------- the audit log
def log_action(settings: Settings, actor: str, action: str, target: str | None, outcome: str,
               at: str | None = None, db=None) -> int:
    """Append one `operator_audit` row; returns its id. `target` must never be a raw user id.

    `db`: an mlops.db connection whose open transaction the row joins (the action's own), else its own."""
    if outcome not in OUTCOMES:
        raise ValidationError(f"outcome must be one of {', '.join(OUTCOMES)}, got {outcome!r}")
    for value, what in ((actor, "actor"), (action, "action")):
        if not isinstance(value, str) or not value.strip():
            raise ValidationError(f"{what} must be a non-empty text")
    when = mlopsdb.timestamp(at, settings)
    if db is not None:
        return _insert_audit(db, when, actor, action, target, outcome)
    with mlopsdb.session(settings) as db:
        return _insert_audit(db, when, actor, action, target, outcome)


def _insert_audit(db, when: str, actor: str, action: str, target: str | None, outcome: str) -> int:
    cur = db.conn.execute("INSERT INTO operator_audit(at, actor, action, target, outcome) VALUES (?,?,?,?,?)",
                          [when, actor.strip(), action.strip(), target, outcome])
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
    """`operator_audit` rows, newest first."""
    sql = "SELECT audit_id, at, actor, action, target, outcome FROM operator_audit ORDER BY audit_id DESC"
    args: list = []
    if limit is not None:
        sql += " LIMIT ?"
        args.append(int(limit))
    with mlopsdb.session(settings) as db:
        rows = db.execute(sql, args).fetchall()
    return pd.DataFrame(rows, columns=["audit_id", "at", "actor", "action", "target", "outcome"])


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
