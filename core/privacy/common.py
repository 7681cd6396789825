"""What every privacy operation checks and returns the same way: ids, actors, flags, timestamps, JSON.

Where personal data lives (see `export.data_inventory`): raw user ids only in the
operational database; pseudonyms (HMAC-SHA256 of the id, key outside the
warehouse) in the warehouse and in model bundles; counts and operator names in
the ML metadata store. Each store's owner module erases, exports and re-keys its
own data (`opsdb`, `servinglog`, `warehouse`, `artifacts`, `registry`,
`tracking`, `access`); the privacy modules call them in order and record an
`operator_audit` row (target: a pseudonym, never a raw id).

Timestamps default to the service clock (`clock.now`: the simulated clock
when a world runs), the same timeline as the registry and the serving log.
"""
from __future__ import annotations

from datetime import date, datetime

import numpy as np
import pandas as pd

from core.constants import TS_FORMAT
from core.errors import ValidationError
from core.store import clock, mlopsdb


def user_id(value) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ValidationError(f"user id must be an integer, got {value!r}")
    return int(value)


def actor(value) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValidationError("actor must be a non-empty text: the operator (or 'user:self', 'cli:<name>') acting")
    return value.strip()


def flag(value, name: str) -> bool:
    if isinstance(value, (bool, np.bool_)) or (isinstance(value, (int, np.integer)) and value in (0, 1)):
        return bool(value)
    raise ValidationError(f"{name} must be True or False, got {value!r}")


def when(db, at: str | None) -> str:
    """`at` validated, else the service clock."""
    return mlopsdb.timestamp(at) if at is not None else clock.now(db=db)


def jsonable(value):
    """Plain JSON types for a nested structure of rows (NumPy scalars, datetimes, NaN → None)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return [jsonable(v) for v in value.tolist()]
    if isinstance(value, (datetime, pd.Timestamp)):
        return value.strftime(TS_FORMAT)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value
