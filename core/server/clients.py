"""API keys of the model server's clients (front ends), and the per-client limit on reported impressions.

A front end that shows lists confirms them with `POST /impressions` and header `X-API-Key`; only confirmed
lists count as shown (online quality, release arms). A key is `NAME.SECRET`: the client's name and 32 random
bytes (URL-safe base64). Only a salted hash of the secret is stored, in `RETRO_HOME/secrets.toml` under
`[clients]` (mode 0600, written through `core.secretstore`)::

    [clients]
    web-front = "pbkdf2$1$<salt hex>$<hash hex>"

One PBKDF2 iteration on purpose: a slow hash protects secrets a person chose and can be guessed; a key of 256
random bits cannot be guessed at any speed, and the server checks one on every authenticated request (200,000
iterations, the operators' setting, cost ~0.1 s of CPU each). Keys are made, listed and revoked with
`python -m core clients add|list|revoke` (audited like any operator action); the server reads the file on
every check, so a revoked key stops working at once.
"""
from __future__ import annotations

import math
import secrets
import threading
import time

from core.errors import RetroError, ValidationError
from core.privacy import access
from core.secretstore import read_secrets, update_secrets
from core.settings import Settings

CLIENTS_TABLE = "clients"
KEY_ITERATIONS = 1
HEADER = "X-API-Key"


class UnknownClient(RetroError):
    """No client of that name holds a key."""


class RateLimited(RetroError):
    """A client reported more impressions than its per-minute allowance; try again after `retry_after` seconds."""

    def __init__(self, message: str, retry_after: float):
        self.retry_after = retry_after
        super().__init__(message)


def _check_name(name) -> str:
    if not isinstance(name, str) or not access.NAME_PATTERN.fullmatch(name):
        raise ValidationError(f"client name {name!r} must be 1-64 letters, digits, '.', '_' or '-'")
    return name


def clients(settings: Settings) -> list[str]:
    """Names of the clients holding a key (no hashes)."""
    return sorted(read_secrets(settings).get(CLIENTS_TABLE, {}))


def add(settings: Settings, name: str) -> str:
    """Create a key for client `name` (replacing its old key) and return it — the only time it is ever shown."""
    _check_name(name)
    secret = secrets.token_urlsafe(32)
    digest = access.hash_token(secret, iterations=KEY_ITERATIONS)
    update_secrets(settings, lambda data: data.setdefault(CLIENTS_TABLE, {}).__setitem__(name, digest))
    return f"{name}.{secret}"


def revoke(settings: Settings, name: str) -> None:
    """Delete client `name`'s key (UnknownClient when it has none)."""
    _check_name(name)
    found = []

    def drop(data: dict) -> None:
        table = data.get(CLIENTS_TABLE, {})
        found.append(table.pop(name, None) is not None)
    update_secrets(settings, drop)
    if not found[0]:
        raise UnknownClient(f"no client named {name!r}; clients: {', '.join(clients(settings)) or 'none'}")


_DUMMY = access.hash_token("not-a-real-key", salt=b"\0" * access.SALT_BYTES, iterations=KEY_ITERATIONS)


def authenticate(settings: Settings, key: str | None) -> str | None:
    """The client's name when `key` is one of the stored keys, else None (no audit: the caller decides)."""
    if not isinstance(key, str) or "." not in key:
        return None
    name, _, secret = key.rpartition(".")
    stored = read_secrets(settings).get(CLIENTS_TABLE, {}).get(name)
    if stored is None:
        access.verify_token(secret, _DUMMY)          # same work either way
        return None
    return name if access.verify_token(secret, stored) else None


def claimed_name(key: str | None) -> str:
    """The name a key claims, for the audit ('anonymous' when there is no key or no valid name in it)."""
    name = key.rpartition(".")[0] if isinstance(key, str) else ""
    return name if access.NAME_PATTERN.fullmatch(name or "") else "anonymous"


class ImpressionLimiter:
    """A token bucket per client: `per_minute` impressions a minute, at most `per_minute` at once.

    `take(name, n)` spends n tokens or raises RateLimited with the seconds until n would be available (a
    refused request spends nothing). In memory, per server process: a restart forgives."""

    def __init__(self, per_minute: int, clock=time.monotonic):
        self.per_minute, self.rate, self.clock = int(per_minute), per_minute / 60.0, clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, name: str, n: int) -> None:
        if n > self.per_minute:
            raise ValidationError(f"at most {self.per_minute} impressions per request (the per-minute limit), "
                                  f"got {n}")
        with self._lock:
            now = self.clock()
            tokens, then = self._buckets.get(name, (float(self.per_minute), now))
            tokens = min(float(self.per_minute), tokens + (now - then) * self.rate)
            if tokens < n:
                self._buckets[name] = (tokens, now)
                wait = (n - tokens) / self.rate
                raise RateLimited(f"client {name} reported more than {self.per_minute} impressions a minute; "
                                  f"try again in {math.ceil(wait)} s", wait)
            self._buckets[name] = (tokens - n, now)


class DenialAudit:
    """Refused API keys go to the operator audit without letting a flood write a row per request: the first
    refusal of every `window` seconds is written at once, later ones in the window are counted and their number
    goes into the next row written ("… and 41 more refused since …")."""

    def __init__(self, settings: Settings, window: float = 1.0, clock=time.monotonic):
        self.settings, self.window, self.clock = settings, window, clock
        self._last = -math.inf
        self._folded = 0
        self._lock = threading.Lock()

    def refused(self, actor: str, action: str, why: str) -> bool:
        """Audit one refusal; True when a row was written, False when it was folded into the next one."""
        with self._lock:
            now = self.clock()
            if now - self._last < self.window:
                self._folded += 1
                return False
            folded, self._folded, self._last = self._folded, 0, now
        target = why + (f"; {folded} more refused within the previous {self.window:g} s window" if folded else "")
        access.log_action(self.settings, actor, action, target, "denied")
        return True
