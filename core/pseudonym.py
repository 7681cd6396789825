"""Keyed pseudonyms for user ids (HMAC-SHA256), so analytics never hold raw ids.

The key comes from $RETRO_PSEUDONYM_KEY, else Streamlit's `.streamlit/secrets.toml`
(`[pseudonymization] key = "..."`, git-ignored) when an operator put one there, else
`RETRO_HOME/secrets.toml` (same table), which is generated on first use with mode
0600 inside the git-ignored data folder — one key per data folder by default. Without the key a pseudonym cannot be
linked back to a user; serving recomputes it on the operational side.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import tomllib

import numpy as np
import pandas as pd

from core.settings import PROJECT_ROOT, Settings

KEY_ENV = "RETRO_PSEUDONYM_KEY"
STREAMLIT_SECRETS = PROJECT_ROOT / ".streamlit" / "secrets.toml"


def streamlit_secrets() -> dict:
    """Streamlit's project secrets file (git-ignored), if an operator created one."""
    try:
        return tomllib.loads(STREAMLIT_SECRETS.read_text()) if STREAMLIT_SECRETS.exists() else {}
    except (OSError, tomllib.TOMLDecodeError):
        return {}


def key_source(settings: Settings) -> str:
    """'environment', 'streamlit' or 'data folder': where the key in use comes from."""
    if os.environ.get(KEY_ENV):
        return "environment"
    if streamlit_secrets().get("pseudonymization", {}).get("key"):
        return "streamlit"
    return "data folder"
PSEUDONYM_HEX = 20  # 80 bits: collision-free in practice for millions of users


def pseudonym_key(settings: Settings) -> bytes:
    """The HMAC key; created (and persisted) on first use for this data folder."""
    env = os.environ.get(KEY_ENV)
    if env:
        return env.encode()
    managed = streamlit_secrets().get("pseudonymization", {}).get("key")
    if managed:
        return str(managed).encode()
    from core.secretstore import read_secrets, update_secrets
    key = read_secrets(settings).get("pseudonymization", {}).get("key")
    if key:
        return str(key).encode()
    # Created under the secrets lock: of two processes starting at once, the second finds the first's key.
    return str(update_secrets(settings, lambda data: data.setdefault("pseudonymization", {}).setdefault(
        "key", secrets.token_hex(32)))).encode()


def pseudonym(user_id: int, key: bytes) -> str:
    """HMAC-SHA256(key, str(user_id)), first 20 hex digits."""
    return hmac.new(key, str(int(user_id)).encode(), hashlib.sha256).hexdigest()[:PSEUDONYM_HEX]


def pseudonymize(user_ids, key: bytes) -> np.ndarray:
    """Vectorized over a column: each distinct id is hashed once."""
    ids = pd.Series(user_ids)
    uniques = ids.dropna().unique()
    mapping = {u: pseudonym(u, key) for u in uniques}
    return ids.map(mapping).to_numpy(dtype=object)
