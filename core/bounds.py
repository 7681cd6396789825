"""The ranges every boundary accepts (write API, importer, CLI, core entry points).

One place for "what is a sane value", so the write API, the ETL gate and the CLI
refuse the same things with the same words (and the same stable `code` on the
error, which programs read instead of the words). Values outside these ranges are the
ones that once blocked the pipeline for good (a year -1 timestamp, an id of
2**63 - 1 after which no new id fits, NaN silently read as "missing").
"""
from __future__ import annotations

import math
import re
import unicodedata
from numbers import Integral, Real

import numpy as np
import pandas as pd

from core import errors

# Ids: 1 .. 2**53 - 1, the integers a float64 column (pandas with a missing value), DuckDB DOUBLE
# and JSON/JavaScript clients all hold exactly; far inside SQLite's signed 64-bit range, so
# fresh ids above the largest one can never overflow.
MAX_ID = 2**53 - 1
# A new row may name its own id only up to MAX_GIVEN_ID: the ids above it are the room fresh ids grow into (a
# given id of MAX_ID left the next sign-up MAX_ID + 1, which every boundary refuses, and wedged the simulation).
# 2**31 fresh ids: ~2 billion more sign-ups or titles after the largest given id.
ID_HEADROOM = 2**31
MAX_GIVEN_ID = MAX_ID - ID_HEADROOM
# Timestamps: from 1900-01-01 up to the service clock (the clock check is the caller's).
EARLIEST_TIME = "1900-01-01T00:00:00"
MAX_TEXT = 500          # characters in a title, genre list, event id or reason
MAX_SEED = 2**32 - 1    # what NumPy's legacy seeding and `implicit` accept

# Limits that more than one boundary checks (the CLI's argument types, the server's query parameters, the
# serving function): one table, so `python -m core recommend --k 500` and GET /recommend?k=500 refuse alike.
# name -> (lowest, highest) accepted, inclusive.
LIMITS = {
    "k": (1, 100),           # titles in one list: /recommend, `recommend --k`, serving.recommend
}
MAX_K = LIMITS["k"][1]


def limit(name: str) -> tuple[int, int]:
    """The (lowest, highest) value boundary `name` accepts; an unknown name lists the known ones."""
    try:
        return LIMITS[name]
    except KeyError:
        raise KeyError(f"no limit named {name!r}; known: {', '.join(sorted(LIMITS))}") from None


def is_missing(value) -> bool:
    """Only None (and pandas' NA) means "not given"; NaN is a value, and an invalid one."""
    return value is None or value is pd.NA


def missing_mask(series: pd.Series) -> pd.Series:
    """`is_missing` of every value of a column, without a Python call per value where the dtype cannot hold
    None or NA (numbers, times, pandas' NaN-backed str); other columns are mapped value by value."""
    dtype = series.dtype
    if (isinstance(dtype, np.dtype) and dtype.kind in "biufcmM") or (
            isinstance(dtype, pd.StringDtype) and dtype.na_value is not pd.NA):
        return pd.Series(False, index=series.index)
    if isinstance(dtype, pd.StringDtype):
        return series.isna().astype(bool)
    return series.map(is_missing).astype(bool)


def is_nan(value) -> bool:
    return (isinstance(value, float) and math.isnan(value)) or value is pd.NaT or (
        isinstance(value, np.floating) and bool(np.isnan(value)))


def control_chars(text: str) -> list[str]:
    """Control, surrogate and unassigned-format characters (NUL, newline, escape, ...) in `text`."""
    return [c for c in text if unicodedata.category(c) in ("Cc", "Cs")]


# Unicode's Cc (U+0000–001F, U+007F–009F) and Cs (U+D800–DFFF) categories as one character class: `control_chars`
# for a whole column at once (a day of the simulated world writes ~15,000 event ids).
_CONTROL_CLASS = "[\x00-\x1f\x7f-\x9f\ud800-\udfff]"


_CONTROL_RE = re.compile(_CONTROL_CLASS)


def bad_texts(texts: pd.Series) -> np.ndarray:
    """Per text of a column of str: has a control character or is longer than MAX_TEXT (`control_chars`).

    A column of plain texts is first searched as one joined text (joined by spaces, never a control character):
    when none is found anywhere — every batch of well-formed ids — only the lengths are left to check."""
    texts = texts.astype(object)
    values = texts.tolist()
    try:
        joined = " ".join(values)
    except TypeError:               # a value that is not text: the per-value way below
        joined = None
    if joined is not None and _CONTROL_RE.search(joined) is None:
        return np.fromiter(map(len, values), dtype=np.int64, count=len(values)) > MAX_TEXT
    return (texts.str.contains(_CONTROL_CLASS, regex=True).fillna(False).to_numpy(dtype=bool)
            | (texts.str.len().fillna(0).to_numpy() > MAX_TEXT))


def check_id(value, what: str = "id") -> int:
    """An integer id in 1..MAX_ID (bools, floats with a fraction, NaN and strings of those refused)."""
    if isinstance(value, bool):
        raise errors.ValidationError(f"{what} {value!r} is not an integer", code="not_an_integer")
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise errors.ValidationError(f"{what} {value!r} is not an integer", code="not_an_integer") from None
    if isinstance(value, Real) and not isinstance(value, Integral):
        if not math.isfinite(value) or value != int(value):
            raise errors.ValidationError(f"{what} {value!r} is not an integer", code="not_an_integer")
        value = int(value)
    if not isinstance(value, Integral):
        raise errors.ValidationError(f"{what} {value!r} is not an integer", code="not_an_integer")
    value = int(value)
    if not 1 <= value <= MAX_ID:
        raise errors.ValidationError(f"{what} {value} is out of range (ids are 1..{MAX_ID})", code="out_of_range")
    return value


def check_int(value, what: str, lo: int, hi: int) -> int:
    """An integer in lo..hi."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        try:
            if isinstance(value, str):
                value = int(value.strip())
            elif isinstance(value, Real) and math.isfinite(value) and value == int(value):
                value = int(value)
            else:
                raise ValueError
        except (ValueError, TypeError):
            raise errors.ValidationError(f"{what} {value!r} is not an integer", code="not_an_integer") from None
    value = int(value)
    if not lo <= value <= hi:
        raise errors.ValidationError(f"{what} must be in {lo}..{hi}, got {value}", code="out_of_range")
    return value


def check_float(value, what: str, lo: float, hi: float, *, lo_open: bool = False) -> float:
    """A finite number in [lo, hi] (or (lo, hi] with lo_open)."""
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise errors.ValidationError(f"{what} {value!r} is not a number", code="not_a_number") from None
    if not math.isfinite(number):
        raise errors.ValidationError(f"{what} must be a finite number, got {value!r}", code="not_finite")
    if number < lo or number > hi or (lo_open and number == lo):
        raise errors.ValidationError(f"{what} must be in {'(' if lo_open else '['}{lo:g}, {hi:g}], got {number:g}",
                                     code="out_of_range")
    return number


def check_text(value, what: str, max_len: int = MAX_TEXT) -> str:
    """Printable text: no control characters, at most `max_len` characters."""
    if not isinstance(value, str):
        raise errors.ValidationError(f"{what} {value!r} is not text", code="not_text")
    bad = control_chars(value)
    if bad:
        raise errors.ValidationError(f"{what} contains control characters ({', '.join(sorted({repr(c) for c in bad}))})",
                                     code="control_characters")
    if len(value) > max_len:
        raise errors.ValidationError(f"{what} is longer than {max_len} characters", code="too_long")
    return value


def id_mask(values: pd.Series) -> pd.Series:
    """Vectorized `check_id`: True where the value is an integer id in 1..MAX_ID."""
    num = pd.to_numeric(values, errors="coerce")
    as_float = num.astype(float)
    ok = num.notna() & np.isfinite(as_float) & (as_float == np.round(as_float)) & (as_float >= 1) & (as_float <= MAX_ID)
    if values.dtype == object:
        ok &= ~values.map(lambda v: isinstance(v, (bool, np.bool_)))
    elif values.dtype == bool:
        ok &= False
    return ok
