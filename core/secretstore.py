"""`RETRO_HOME/secrets.toml`: the one reader and writer of the data folder's secrets (pseudonymization key,
hashed operator tokens).

Writes are atomic (a 0600 temporary file renamed over the old one) and every read-modify-write holds an
exclusive lock, so two processes starting at once (make run's first start and a dashboard session) can never
each create a different pseudonymization key, or lose each other's operator.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import tomllib
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

from core.errors import RetroError
from core.settings import Settings

LOCK_SUFFIX = ".lock"


def secrets_file(settings: Settings) -> Path:
    return settings.home / "secrets.toml"


def read_secrets(settings: Settings) -> dict:
    """The parsed secrets file ({} when it does not exist yet)."""
    path = secrets_file(settings)
    if not path.exists():
        return {}
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise RetroError(f"{path} is not valid TOML ({exc}); fix or remove the file") from None


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)   # a JSON string (ASCII, \" and \uXXXX escapes) is a valid TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write a {type(value).__name__} to secrets.toml")


def _bare_or_quoted(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def to_toml(data: dict) -> str:
    """Top-level scalars, then one table per dict of scalars (all secrets.toml holds)."""
    lines: list[str] = []
    for key, value in data.items():
        if not isinstance(value, dict):
            lines.append(f"{_bare_or_quoted(key)} = {_toml_value(value)}")
    for table, values in data.items():
        if isinstance(values, dict):
            lines += ["", f"[{_bare_or_quoted(table)}]"]
            lines += [f"{_bare_or_quoted(k)} = {_toml_value(v)}" for k, v in values.items()]
    return "\n".join(lines).lstrip("\n") + "\n"


def write_secrets(settings: Settings, data: dict) -> Path:
    """Replace the secrets file with `data`, mode 0600, atomically (never readable by others, never half written)."""
    path = secrets_file(settings)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(to_toml(data))
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


@contextmanager
def _locked(settings: Settings):
    settings.home.mkdir(parents=True, exist_ok=True)
    fd = os.open(secrets_file(settings).with_name("secrets.toml" + LOCK_SUFFIX), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def update_secrets(settings: Settings, change: Callable[[dict], object]):
    """Read, change (in place) and write the secrets under an exclusive lock; returns what `change` returned."""
    with _locked(settings):
        data = read_secrets(settings)
        result = change(data)
        write_secrets(settings, data)
        return result
