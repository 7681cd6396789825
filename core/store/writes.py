"""The validated write API of the operational database.

Every write path (CLI, simulation, importer, dashboard) goes through these
functions. Batches are validated as a whole with vectorized checks; in the
default mode a single bad row rejects the batch and nothing is written. The
`quarantine` mode (used by ingestion paths such as a faulty logger) writes the
valid rows and keeps each invalid one in `rejected_writes` with its reason and the
stable code of the check that refused it (`errors.ValidationError.code`).
"""
from __future__ import annotations

import decimal
import functools
import json
import math
import re
import uuid
from datetime import datetime
from dataclasses import dataclass, field
from typing import Iterable, Literal

import numpy as np
import pandas as pd
import sqlite_utils

from core import bounds, errors
from core.constants import AD_CREATIVE_KINDS, AD_POLICIES, AD_TARGETING, AGE_BANDS, EVENT_KINDS, GENRES, RATING_MAX, RATING_MIN
from core.store import clock, opsdb

OnInvalid = Literal["raise", "quarantine"]
MAX_EVENT_VALUE = 1_000_000   # seconds watched (11.6 days), list positions, titles scrolled past


@dataclass
class WriteResult:
    """What a batch write did: rows stored, retries ignored, rows refused."""

    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    skipped_no_consent: int = 0
    reasons: dict = field(default_factory=dict)
    ids: list = field(default_factory=list, compare=False)   # each stored row's id, when the write was asked for them


# ---------------------------------------------------------------- helpers
_SURROGATE = re.compile("[\ud800-\udfff]")


def _frame(rows, columns: Iterable[str]) -> pd.DataFrame:
    """The batch as a frame with every `columns` present. Records keep their Python values (object columns), so
    None ("not given") stays apart from NaN (invalid); pandas' extension columns (nullable floats and booleans,
    NA-backed or Arrow strings, Arrow, sparse) become such object columns, and in every object column the values
    the checks cannot compare or hash are made plain (`_plain_value`: NA is None, a 0-d array its item, ...)."""
    if isinstance(rows, pd.DataFrame):
        if not rows.columns.is_unique:
            twice = sorted(map(str, rows.columns[rows.columns.duplicated()]))
            raise errors.ValidationError(f"the batch names a column twice: {twice}", code="invalid_batch")
        df = rows.copy()
        df.columns = [_column_name(c) for c in df.columns]
    else:
        records = [{_column_name(k): v for k, v in r.items()} for r in _records(rows)]
        names = list(dict.fromkeys([c for r in records for c in r] + list(columns)))
        df = pd.DataFrame({c: pd.Series([r.get(c) for r in records], dtype=object) for c in names},
                          index=range(len(records)))
    for col in df.columns:
        dtype = df[col].dtype
        if isinstance(dtype, pd.api.extensions.ExtensionDtype) and not _kept_dtype(dtype):
            df[col] = df[col].astype(object)
    for col in columns:
        if col not in df.columns:
            df[col] = None
    return _plain_values(df.reset_index(drop=True))


def _records(rows) -> list[dict]:
    """A batch given as records: a list (or any iterable) of mappings, each as a dict."""
    if rows is None or isinstance(rows, (str, bytes, dict)) or not hasattr(rows, "__iter__"):
        raise errors.ValidationError(f"a batch is a list of records or a DataFrame, not {type(rows).__name__}",
                                     code="invalid_batch")
    records = list(rows)
    for r in records:
        if not hasattr(r, "keys"):
            raise errors.ValidationError(f"each record maps column names to values, not a {type(r).__name__}",
                                         code="invalid_batch")
    return [dict(r) for r in records]


def _kept_dtype(dtype) -> bool:
    """Extension dtypes the checks take as they are: nullable integers (the simulation's movie ids) and pandas'
    NaN-backed str (its missing value is NaN, an invalid value, as in an object column)."""
    return (str(dtype) in _NULLABLE_INTS
            or (isinstance(dtype, pd.StringDtype) and dtype.na_value is not pd.NA and dtype.storage != "python"))


_NULLABLE_INTS = {f"{sign}Int{bits}" for sign in ("", "U") for bits in (8, 16, 32, 64)}


def _column_name(name):
    """A column name as a key of the frame and of a quarantined row's JSON: text, or its repr (a surrogate, a tuple)."""
    return name if isinstance(name, str) and not _SURROGATE.search(name) else repr(name)


def _plain_value(v):
    """`v`, or a stand-in the checks refuse with a clear reason for values they cannot compare or hash: a 0-d array
    is its item; other arrays, pandas objects and a signalling NaN become their repr (an invalid text); NA is None."""
    if v is pd.NA:
        return None
    if isinstance(v, np.ndarray):
        return v.item() if v.ndim == 0 else repr(v)
    if isinstance(v, (pd.Series, pd.DataFrame, pd.Index)):
        return repr(v)
    if isinstance(v, decimal.Decimal) and v.is_snan():
        return repr(v)
    return v


_PLAIN_TYPES = {str, int, float, bool, type(None), list, tuple, dict}


def _plain_values(df: pd.DataFrame) -> pd.DataFrame:
    """`_plain_value` of every value of the object columns; a column of plain Python values only is left as it is
    without a call per value."""
    for col in df.columns:
        if df[col].dtype == object:
            values = df[col].tolist()
            if set(map(type, values)) <= _PLAIN_TYPES:
                continue
            plain = [_plain_value(v) for v in values]
            if any(a is not b for a, b in zip(plain, values)):
                df[col] = pd.Series(plain, index=df.index, dtype=object)
    return df


def _texts(values: pd.Series, fn) -> pd.Series:
    """`values.map(fn)` kept as Python objects: a pandas str column cannot hold a surrogate (it is refused later)."""
    return pd.Series([fn(v) for v in values.tolist()], index=values.index, dtype=object)


def _is_flag(v) -> bool:
    """0 or 1 as an int or bool (not a float, a complex or a time span that compares equal to one)."""
    return isinstance(v, (bool, int, np.bool_, np.integer)) and not isinstance(v, np.timedelta64) and v in (0, 1)


def _as_int(series: pd.Series) -> tuple[pd.Series, pd.Series]:
    """(integer values, ok mask): ok where the value is a whole number of at most MAX_ID in size."""
    num = pd.to_numeric(series, errors="coerce")
    as_float = num.astype(float)
    ok = num.notna() & np.isfinite(as_float) & (as_float == np.round(as_float)) & (as_float.abs() <= bounds.MAX_ID)
    if series.dtype == bool:
        ok &= False
    elif series.dtype == object:
        ok &= ~series.map(lambda v: isinstance(v, (bool, np.bool_)))
    return num.where(ok, 0).astype("int64"), ok


def _timestamps(series: pd.Series, default: str) -> tuple[pd.Series, pd.Series]:
    """(ISO strings, ok mask); values not given take `default` (the service clock).

    ok only for a parsable time on or after 1900-01-01 (a NaN or NaT is invalid, not "not given").
    """
    filled = series.astype(object).where(~bounds.missing_mask(series), default)
    values = filled.tolist()
    texts = values if set(map(type, values)) == {str} else [str(v) for v in values]
    if not "".join(texts).isascii():                       # a text with a surrogate is not a time (nor storable)
        texts = [t if t.isascii() or not _SURROGATE.search(t) else "" for t in texts]
    parsed = pd.to_datetime(pd.Series(texts, index=series.index), errors="coerce", utc=True, format="ISO8601")
    ok = parsed.notna() & (parsed >= pd.Timestamp(bounds.EARLIEST_TIME, tz="UTC"))
    parsed = parsed.where(ok, pd.Timestamp(bounds.EARLIEST_TIME, tz="UTC"))
    seconds = parsed.dt.tz_localize(None).to_numpy().astype("datetime64[s]")
    text = pd.Series(np.datetime_as_string(seconds, unit="s"), index=series.index).where(ok, "")
    return text, ok


def _ids_exist(db: sqlite_utils.Database, table: str, col: str, ids: np.ndarray) -> np.ndarray:
    known = np.array([r[0] for r in db.execute(f"SELECT {col} FROM {table}").fetchall()], dtype="int64")
    return np.isin(ids, known)


class _Reasons:
    """Collects the first failing reason per row (earlier checks win), with its exception class and stable code."""

    def __init__(self, n: int):
        self.reason = np.full(n, None, dtype=object)
        self.kind = np.full(n, None, dtype=object)
        self.code = np.full(n, None, dtype=object)

    def add(self, mask, message_fn, exc: type[errors.ValidationError], code: str | None = None) -> None:
        """`code`: the check's stable name (default: the exception class's code)."""
        mask = np.asarray(mask, dtype=bool) & (self.reason == None)  # noqa: E711
        for i in np.flatnonzero(mask):
            self.reason[i] = message_fn(i)
            self.kind[i] = exc
            self.code[i] = code or exc.code

    @property
    def bad(self) -> np.ndarray:
        return self.reason != None  # noqa: E711

    def raise_first(self, what: str) -> None:
        bad = np.flatnonzero(self.bad)
        if len(bad):
            i = bad[0]
            extra = f" ({len(bad)} of {len(self.reason)} {what} invalid; nothing written)" if len(self.reason) > 1 else ""
            raise self.kind[i](f"{self.reason[i]}{extra}", code=self.code[i])


def _checked_and_written(fn):
    """Run a write with its checks in one transaction that holds the write lock from the start: an erasure cannot
    remove a user between the check that they exist and the row that names them (which failed the foreign key
    and the whole batch), and the counts the checks read are the ones the rows land on."""
    @functools.wraps(fn)
    def run(db, *args, **kwargs):
        with opsdb.write_transaction(db):
            return fn(db, *args, **kwargs)
    return run


def highest_id(db, table: str, col: str) -> int:
    """The largest id this table has ever used, erased rows included (ids are never reused:
    a new user must not inherit an erased user's id, pseudonym or audit trail).

    Ids outside 1..MAX_ID (written by hand or an older version) are ignored, so fresh ids
    always fit; such rows are quarantined by the ETL.
    """
    current = db.execute(f"SELECT coalesce(max({col}), 0) FROM {table} WHERE typeof({col}) = 'integer' "
                         f"AND {col} <= ?", [bounds.MAX_ID]).fetchone()[0]
    row = db.execute("SELECT value FROM meta WHERE key = ?", [f"max_{col}"]).fetchone()
    try:
        recorded = int(row[0]) if row else 0
    except (TypeError, ValueError):
        recorded = 0
    return max(int(current), recorded if 0 <= recorded <= bounds.MAX_ID else 0)


def _no_room(col: str, value) -> str:
    return (f"{col} {value} leaves no room for new ids (a new row's id is at most {bounds.MAX_GIVEN_ID}; "
            f"ids above are kept for fresh ones)")


def _fill_ids(db, table: str, col: str, ids: pd.Series, given: pd.Series) -> list[int]:
    """Given ids as they are; missing ones numbered after the largest id ever used or given."""
    top = max([highest_id(db, table, col)] + ids[given].tolist())
    missing = int((~given).sum())
    if top + missing > bounds.MAX_ID:
        raise errors.ValidationError(f"no {col} values left above {top} (ids are 1..{bounds.MAX_ID}); give ids explicitly",
                                     code="ids_exhausted")
    fresh = iter(range(top + 1, top + 1 + missing))
    out = [int(i) if g else next(fresh) for i, g in zip(ids.tolist(), given.tolist())]
    if out:
        db.execute("INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET "
                   "value = max(CAST(meta.value AS INTEGER), CAST(excluded.value AS INTEGER))", [f"max_{col}", max(out)])
    return out


def _payload(record: dict) -> str:
    """A refused row as JSON: values JSON cannot take as their text, keys too (a tuple, a NumPy integer)."""
    try:
        return json.dumps(record, default=str)
    except (TypeError, ValueError):
        def plain(v):
            if isinstance(v, dict):
                return {k if isinstance(k, str) else repr(k): plain(x) for k, x in v.items()}
            return [plain(x) for x in v] if isinstance(v, (list, tuple)) else v
        return json.dumps(plain(record), default=str)


def _quarantine(db, target: str, df: pd.DataFrame, reasons: np.ndarray, now: str, codes: np.ndarray) -> None:
    rows = [
        (target, str(reasons[i]), _payload(rec), now, codes[i])
        for i, rec in zip(np.flatnonzero(reasons != None), df[reasons != None].to_dict("records"))  # noqa: E711
    ]
    if any(col[1] == "code" for col in db.execute("PRAGMA table_info(rejected_writes)").fetchall()):
        db.conn.executemany(
            "INSERT INTO rejected_writes(target, reason, payload, rejected_at, code) VALUES (?,?,?,?,?)", rows
        )
    else:   # a bulk load runs before the deferred migrations (opsdb.open_db): no code column yet
        db.conn.executemany(
            "INSERT INTO rejected_writes(target, reason, payload, rejected_at) VALUES (?,?,?,?)", [r[:4] for r in rows]
        )


def _reason_counts(reasons: np.ndarray) -> dict:
    bad = [r.split(":")[0] for r in reasons if r is not None]
    return dict(pd.Series(bad, dtype=object).value_counts()) if bad else {}


# ---------------------------------------------------------------- users
@_checked_and_written
def add_users(db: sqlite_utils.Database, rows, *, source: str = "sim") -> list[int]:
    """Insert users (`user_id` optional, `created_at` defaults to the clock; optional columns `age_band` (one of
    AGE_BANDS or None) and `consent_ad_targeting` (0/1, default 1)); returns their ids."""
    df = _frame(rows, ["user_id", "created_at"])
    now = clock.now(db=db)
    created, ok_ts = _timestamps(df["created_at"], now)
    r = _Reasons(len(df))
    given = ~bounds.missing_mask(df["user_id"])     # NaN is given, and invalid
    ids, ok_id = _as_int(df["user_id"])
    r.add(given & ~bounds.id_mask(df["user_id"]), lambda i: f"user_id {df['user_id'][i]!r} is not a positive integer (ids are 1..{bounds.MAX_ID})", errors.ValidationError,
          "invalid_id")
    r.add(given & bounds.id_mask(df["user_id"]) & (ids > bounds.MAX_GIVEN_ID), lambda i: _no_room("user_id", ids[i]),
          errors.ValidationError, "no_room")
    r.add(~ok_ts, lambda i: f"created_at {df['created_at'][i]!r} is not a timestamp between 1900-01-01 and the service clock", errors.InvalidTimestamp)
    r.add(ok_ts & (created > now), lambda i: f"created_at {created[i]} is after the service clock {now}", errors.FutureTimestamp)
    existing = _ids_exist(db, "users", "user_id", ids.to_numpy()) & given.to_numpy()
    r.add(existing, lambda i: f"user {ids[i]} already exists", errors.ValidationError, "already_exists")
    dup = given & ids.duplicated(keep="first")
    r.add(dup, lambda i: f"user {ids[i]} appears twice in the batch", errors.ValidationError, "twice_in_batch")
    extra = [c for c in ("age_band", "consent_ad_targeting") if c in df.columns]   # ads (issue 25): optional
    if "age_band" in extra:
        band = df["age_band"]
        r.add(band.notna() & ~band.isin(list(AGE_BANDS)), lambda i: f"age_band {band[i]!r} is not one of "
              f"{', '.join(AGE_BANDS)}", errors.ValidationError, "unknown_age_band")
    if "consent_ad_targeting" in extra:
        flag = df["consent_ad_targeting"]
        r.add(~flag.map(_is_flag).astype(bool),
              lambda i: f"consent_ad_targeting {flag[i]!r} is not 0/1 or True/False", errors.ValidationError,
              "invalid_flag")
    r.raise_first("users")
    values = [df[c].map(lambda v: None if bounds.is_missing(v) or v != v else v).tolist() if c == "age_band"
              else df[c].astype(int).tolist() for c in extra]
    with db.atomic():
        final = _fill_ids(db, "users", "user_id", ids, given)
        db.conn.executemany(f"INSERT INTO users(user_id, created_at, source{''.join(', ' + c for c in extra)}) "
                            f"VALUES (?,?,?{',?' * len(extra)})",
                            zip(final, created.tolist(), [source] * len(df), *values))
        return final


def add_user(db: sqlite_utils.Database, *, user_id: int | None = None, created_at=None, source: str = "manual") -> int:
    return add_users(db, [{"user_id": user_id, "created_at": created_at}], source=source)[0]


# ---------------------------------------------------------------- movies
@_checked_and_written
def add_movies(db: sqlite_utils.Database, rows, *, source: str = "sim") -> list[int]:
    """Insert catalog entries; genres must come from `constants.GENRES` ('|'-separated or a list)."""
    df = _frame(rows, ["movie_id", "title", "year", "genres", "runtime_min", "added_at"])
    now = clock.now(db=db)
    added, ok_ts = _timestamps(df["added_at"], now)
    r = _Reasons(len(df))
    given = ~bounds.missing_mask(df["movie_id"])
    ids, ok_id = _as_int(df["movie_id"])
    years, ok_year = _as_int(df["year"])
    runtime, ok_rt = _as_int(df["runtime_min"].where(~bounds.missing_mask(df["runtime_min"]), 100))
    genres = _texts(df["genres"], lambda g: "|".join(map(str, g)) if isinstance(g, (list, tuple))
                    else ("" if g is None else str(g)))
    unknown_genre = _texts(genres, lambda g: [x for x in g.split("|") if x and x not in GENRES])
    titles = _texts(df["title"], lambda t: t.strip() if isinstance(t, str) else "")
    r.add(given & ~bounds.id_mask(df["movie_id"]), lambda i: f"movie_id {df['movie_id'][i]!r} is not a positive integer (ids are 1..{bounds.MAX_ID})", errors.ValidationError,
          "invalid_id")
    r.add(given & bounds.id_mask(df["movie_id"]) & (ids > bounds.MAX_GIVEN_ID), lambda i: _no_room("movie_id", ids[i]),
          errors.ValidationError, "no_room")
    r.add(titles == "", lambda i: "title is empty", errors.ValidationError, "empty_title")
    r.add(bounds.bad_texts(titles),
          lambda i: f"title {titles[i][:60]!r} contains control characters or is longer than {bounds.MAX_TEXT} characters",
          errors.ValidationError, "invalid_title")
    year_given = ~bounds.missing_mask(df["year"])
    r.add(year_given & (~ok_year | (years < 1878) | (years > 2100)), lambda i: f"year {df['year'][i]!r} is not a plausible release year", errors.ValidationError,
          "implausible_year")
    r.add(unknown_genre.map(bool), lambda i: f"unknown genre(s) {unknown_genre[i]}; known: {', '.join(GENRES)}", errors.ValidationError,
          "unknown_genre")
    r.add(~ok_rt | (runtime <= 0) | (runtime > 24 * 60), lambda i: f"runtime_min {df['runtime_min'][i]!r} is not a positive integer of minutes (at most 1440)", errors.ValidationError,
          "invalid_runtime")
    r.add(~ok_ts, lambda i: f"added_at {df['added_at'][i]!r} is not a timestamp between 1900-01-01 and the service clock", errors.InvalidTimestamp)
    r.add(ok_ts & (added > now), lambda i: f"added_at {added[i]} is after the service clock {now}", errors.FutureTimestamp)
    existing = _ids_exist(db, "movies", "movie_id", ids.to_numpy()) & given.to_numpy()
    r.add(existing, lambda i: f"movie {ids[i]} already exists", errors.ValidationError, "already_exists")
    r.add(given & ids.duplicated(keep="first"), lambda i: f"movie {ids[i]} appears twice in the batch", errors.ValidationError,
          "twice_in_batch")
    r.raise_first("movies")
    sql = "INSERT INTO movies(movie_id, title, year, genres, runtime_min, added_at, source) VALUES (?,?,?,?,?,?,?)"
    with db.atomic():
        final = _fill_ids(db, "movies", "movie_id", ids, given)
        db.conn.executemany(sql, list(zip(
            final, titles.tolist(), [y if g else None for y, g in zip(years.tolist(), year_given.tolist())], genres.tolist(), runtime.tolist(), added.tolist(), [source] * len(df))))
        return final


def add_movie(db: sqlite_utils.Database, title: str, year: int, genres, *, runtime_min: int = 100,
              movie_id: int | None = None, added_at=None, source: str = "manual") -> int:
    return add_movies(db, [{"movie_id": movie_id, "title": title, "year": year, "genres": genres,
                            "runtime_min": runtime_min, "added_at": added_at}], source=source)[0]


# ---------------------------------------------------------------- ratings
def _validate_user_movie(db, df, r: _Reasons, *, movie_required=True):
    users, ok_u = _as_int(df["user_id"])
    movies, ok_m = _as_int(df["movie_id"])
    r.add(~ok_u, lambda i: f"user_id {df['user_id'][i]!r} is missing or not an integer", errors.UnknownUser,
          "missing_user_id")
    r.add(ok_u & ~_ids_exist(db, "users", "user_id", users.to_numpy()), lambda i: f"unknown user {users[i]}", errors.UnknownUser)
    needs_movie = movie_required if isinstance(movie_required, bool) else movie_required
    absent = df["movie_id"].isna()
    r.add(np.asarray(needs_movie) & absent, lambda i: "movie_id is missing", errors.UnknownMovie, "missing_movie_id")
    r.add(~absent & ~ok_m, lambda i: f"movie_id {df['movie_id'][i]!r} is not an integer", errors.UnknownMovie,
          "movie_id_not_integer")
    r.add(~absent & ok_m & ~_ids_exist(db, "movies", "movie_id", movies.to_numpy()), lambda i: f"unknown movie {movies[i]}", errors.UnknownMovie)
    return users, movies, absent


@_checked_and_written
def rate_many(db: sqlite_utils.Database, rows, *, on_invalid: OnInvalid = "raise") -> WriteResult:
    """Store ratings (user_id, movie_id, rating 1..10 integer, rated_at); re-rating replaces.

    Each accepted rating is also appended to `rating_history`.
    """
    df = _frame(rows, ["user_id", "movie_id", "rating", "rated_at"])
    now = clock.now(db=db)
    r = _Reasons(len(df))
    users, movies, _ = _validate_user_movie(db, df, r)
    values, ok_v = _as_int(df["rating"])
    r.add(~ok_v, lambda i: f"rating {df['rating'][i]!r} is not an integer (ratings are whole numbers {RATING_MIN}..{RATING_MAX})", errors.InvalidRating,
          "rating_not_integer")
    r.add(ok_v & ((values < RATING_MIN) | (values > RATING_MAX)), lambda i: f"rating {values[i]} is outside {RATING_MIN}..{RATING_MAX}", errors.InvalidRating,
          "rating_out_of_range")
    ts, ok_ts = _timestamps(df["rated_at"], now)
    r.add(~ok_ts, lambda i: f"rated_at {df['rated_at'][i]!r} is not a timestamp between 1900-01-01 and the service clock", errors.InvalidTimestamp)
    r.add(ok_ts & (ts > now), lambda i: f"rated_at {ts[i]} is after the service clock {now}", errors.FutureTimestamp)
    if on_invalid == "raise":
        r.raise_first("ratings")
    good = ~r.bad
    recs = list(zip(users[good].tolist(), movies[good].tolist(), values[good].tolist(), ts[good].tolist()))
    with db.atomic():
        if r.bad.any():
            _quarantine(db, "ratings", df, r.reason, now, r.code)
        db.conn.executemany(
            "INSERT INTO ratings(user_id, movie_id, rating, rated_at) VALUES (?,?,?,?) "
            "ON CONFLICT(user_id, movie_id) DO UPDATE SET rating = excluded.rating, rated_at = excluded.rated_at",
            recs,
        )
        db.conn.executemany("INSERT INTO rating_history(user_id, movie_id, rating, rated_at) VALUES (?,?,?,?)", recs)
    return WriteResult(accepted=len(recs), rejected=int(r.bad.sum()), reasons=_reason_counts(r.reason))


def rate(db: sqlite_utils.Database, user_id: int, movie_id: int, rating: int, rated_at=None) -> WriteResult:
    return rate_many(db, [{"user_id": user_id, "movie_id": movie_id, "rating": rating, "rated_at": rated_at}])


# ---------------------------------------------------------------- events
# A batch of typed columns (what the simulation and the importers write) is first checked column by column in NumPy
# (`_plain_events`): the general checks below cost ~40 ms on a simulated day's 15,000 events, mostly pandas' own
# overhead per check, the plain pass about a third of that. It only ever accepts: a batch with anything it does not
# recognise as valid goes the general way, which decides and says why.
PLAIN_EVENTS = True
_LATEST_TIME = "2261-12-31T23:59:59"      # pandas' nanosecond times end in 2262: later texts go the general way


def _plain_events(db, df: pd.DataFrame, now: str) -> tuple[list[tuple], int] | None:
    """(the rows `record_events` stores, how many it skips for want of tracking consent) when every column is typed —
    ids and kinds as texts, user ids as int64, movie ids as int64 or Int64 (missing only on scrolls), values as
    floats or ints, times as 'YYYY-MM-DDTHH:MM:SS' texts — and every row passes every check, with no id or content
    repeated in the batch; None as soon as one does not. Each value is stored as the general checks store it
    (tests/test_events_fast_write.py feeds both the same batches)."""
    n = len(df)
    user_col, movie_col, value_col = df["user_id"], df["movie_id"], df["value"]
    if not n or user_col.dtype != np.int64 or not (movie_col.dtype == np.int64 or movie_col.dtype == "Int64") \
            or not (isinstance(value_col.dtype, np.dtype) and value_col.dtype.kind in "if"):
        return None
    ids, kinds, times = (df[c].tolist() for c in ("event_id", "kind", "occurred_at"))
    if any(set(map(type, texts)) != {str} for texts in (ids, kinds, times)) or not set(kinds) <= set(EVENT_KINDS):
        return None
    if len(set(ids)) != n or "" in ids or bounds.bad_texts(pd.Series(ids, dtype=object)).any() \
            or set(map(len, times)) != {19}:            # 'YYYY-MM-DDTHH:MM:SS' (no zone: NumPy warns on one)
        return None
    try:
        parsed = np.array(times, dtype="datetime64[s]")
    except (ValueError, OverflowError):
        return None
    if np.isnat(parsed).any() or np.datetime_as_string(parsed, unit="s").tolist() != times \
            or min(times) < bounds.EARLIEST_TIME or max(times) > min(now, _LATEST_TIME):
        return None
    users = user_col.to_numpy()
    absent = movie_col.isna().to_numpy()
    movies = movie_col.to_numpy(dtype=np.int64, na_value=0) if movie_col.dtype == "Int64" else movie_col.to_numpy()
    scroll = np.asarray(kinds, dtype=object) == "scroll"
    values = value_col.to_numpy()
    as_float = values.astype(float)
    if (absent & ~scroll).any() or not (np.isfinite(as_float) & (as_float >= 0) & (as_float <= MAX_EVENT_VALUE)).all():
        return None
    if not _ids_exist(db, "users", "user_id", users).all() \
            or not _ids_exist(db, "movies", "movie_id", movies[~absent]).all():
        return None
    codes = {k: i for i, k in enumerate(EVENT_KINDS)}
    content = pd.DataFrame({"u": users, "m": np.where(absent, -1, movies), "k": [codes[k] for k in kinds],
                            "v": as_float + 0.0, "t": parsed.astype(np.int64)})     # + 0.0: -0.0 is 0.0, as compared
    if content.duplicated().any():
        return None
    keep = np.ones(n, dtype=bool)
    opted_out = [row[0] for row in db.execute("SELECT user_id FROM users WHERE consent_tracking = 0").fetchall()]
    if opted_out:
        keep = ~np.isin(users, opted_out)
    movie_values = np.where(absent, None, movies.astype(object))
    float_values = as_float.tolist()
    rows = zip(ids, users.tolist(), movie_values.tolist(), kinds, float_values, times)
    recs = list(rows) if keep.all() else [rec for rec, k in zip(rows, keep.tolist()) if k]
    return recs, int(n - keep.sum())


def _insert_events(db, recs: list[tuple]) -> int:
    """Insert (retries of a stored event_id ignored); returns how many rows were new."""
    before = db.conn.total_changes
    db.conn.executemany(
        "INSERT OR IGNORE INTO events(event_id, user_id, movie_id, kind, value, occurred_at) VALUES (?,?,?,?,?,?)", recs
    )
    return db.conn.total_changes - before


@_checked_and_written
def record_events(db: sqlite_utils.Database, rows, *, on_invalid: OnInvalid = "raise") -> WriteResult:
    """Store behavioural events (event_id, user_id, movie_id, kind, value, occurred_at).

    A repeated event_id (a client retry) is ignored, not duplicated. Events of
    users without tracking consent are not stored (counted as skipped).
    `movie_id` may be empty only for `scroll` events.
    """
    df = _frame(rows, ["event_id", "user_id", "movie_id", "kind", "value", "occurred_at"])
    now = clock.now(db=db)
    plain = _plain_events(db, df, now) if PLAIN_EVENTS else None
    if plain is not None:
        recs, skipped = plain
        with db.atomic():
            inserted = _insert_events(db, recs)
        return WriteResult(accepted=inserted, duplicates=len(recs) - inserted, skipped_no_consent=skipped)
    r = _Reasons(len(df))
    kinds = df["kind"].astype(object)
    r.add(~kinds.isin(list(EVENT_KINDS)), lambda i: f"unknown event kind {df['kind'][i]!r}; known: {', '.join(EVENT_KINDS)}", errors.UnknownEventKind)
    users, movies, movie_absent = _validate_user_movie(db, df, r, movie_required=(kinds != "scroll").to_numpy())
    raw_value = df["value"].where(~bounds.missing_mask(df["value"]), 1)   # NaN stays NaN: invalid
    values = pd.to_numeric(raw_value, errors="coerce")
    r.add(values.isna() | ~np.isfinite(values.fillna(0).astype(float)), lambda i: f"event value {df['value'][i]!r} is not a number", errors.InvalidEventValue,
          "value_not_number")
    r.add(values > MAX_EVENT_VALUE, lambda i: f"event value {values[i]:g} is out of range (at most {MAX_EVENT_VALUE:,})", errors.InvalidEventValue,
          "value_too_large")
    r.add((kinds == "watch") & (values < 0), lambda i: f"watch time {values[i]} s is negative", errors.InvalidEventValue,
          "negative_value")
    r.add((kinds != "watch") & (values < 0), lambda i: f"{kinds[i]} value {values[i]} is negative", errors.InvalidEventValue,
          "negative_value")
    ts, ok_ts = _timestamps(df["occurred_at"], now)
    r.add(~ok_ts, lambda i: f"occurred_at {df['occurred_at'][i]!r} is not a timestamp between 1900-01-01 and the service clock", errors.InvalidTimestamp)
    r.add(ok_ts & (ts > now), lambda i: f"occurred_at {ts[i]} is after the service clock {now}", errors.FutureTimestamp)
    given = df["event_id"].astype(object)
    missing = given.isna().to_numpy()     # None, NaN, NaT, NA: a fresh id each (is_missing / is_nan)
    ids = pd.Series([str(e) for e in given.tolist()], index=given.index, dtype=object)   # object: keeps surrogates
    if missing.any():
        ids[missing] = [uuid.uuid4().hex for _ in range(int(missing.sum()))]
    r.add(ids == "", lambda i: "event_id is empty", errors.ValidationError, "empty_event_id")
    r.add(bounds.bad_texts(ids),
          lambda i: f"event_id {ids[i][:60]!r} contains control characters or is longer than {bounds.MAX_TEXT} characters",
          errors.ValidationError, "invalid_event_id")
    # The same signal logged twice under two ids (a double-logging client) is not a retry: refuse the copy.
    # (kinds as texts: an unhashable kind — a list — is refused above as unknown, and must not break the comparison)
    content = pd.DataFrame({"u": users, "m": _texts(df["movie_id"], str), "k": _texts(kinds, str), "v": values,
                            "t": ts})
    double = content.duplicated(keep="first") & ~ids.duplicated(keep=False)
    r.add(double, lambda i: "duplicate of another event in the batch (same user, movie, kind, value and time under another id)",
          errors.ValidationError, "duplicate_in_batch")
    if on_invalid == "raise":
        r.raise_first("events")
    good = ~r.bad
    no_consent = np.zeros(len(df), dtype=bool)
    opted_out = [row[0] for row in db.execute("SELECT user_id FROM users WHERE consent_tracking = 0").fetchall()]
    if opted_out:
        no_consent = good & np.isin(users.to_numpy(), opted_out)
    keep = good & ~no_consent
    movie_col = movies.astype(object).where(~movie_absent, None)
    recs = list(zip(ids[keep].tolist(), users[keep].tolist(), movie_col[keep].tolist(), kinds[keep].tolist(),
                    values[keep].astype(float).tolist(), ts[keep].tolist()))
    with db.atomic():
        if r.bad.any():
            _quarantine(db, "events", df, r.reason, now, r.code)
        inserted = _insert_events(db, recs)
    return WriteResult(accepted=inserted, duplicates=len(recs) - inserted, rejected=int(r.bad.sum()),
                       skipped_no_consent=int(no_consent.sum()), reasons=_reason_counts(r.reason))


def record_event(db: sqlite_utils.Database, user_id: int, movie_id: int | None, kind: str, value: float = 1,
                 occurred_at=None, event_id: str | None = None) -> WriteResult:
    return record_events(db, [{"event_id": event_id, "user_id": user_id, "movie_id": movie_id, "kind": kind,
                               "value": value, "occurred_at": occurred_at}])


# ---------------------------------------------------------------- ads (issue 25, docs/ads.md)
MAX_AD_SLOT = 101          # a list holds at most 100 titles (bounds.LIMITS['k']); the sponsored slot is extra


def _split_codes(values: pd.Series, known: tuple[str, ...]) -> tuple[pd.Series, pd.Series]:
    """('|'-joined normalized text, the entries not in `known`) of '|'-separated lists (or Python lists)."""
    text = _texts(values, lambda v: "|".join(map(str, v)) if isinstance(v, (list, tuple))
                  else ("" if v is None else str(v)))
    unknown = _texts(text, lambda t: [x for x in t.split("|") if x and x not in known])
    return _texts(text, lambda t: "|".join(x for x in t.split("|") if x)), unknown


@_checked_and_written
def add_ad_campaigns(db: sqlite_utils.Database, rows) -> list[int]:
    """Insert campaigns (docs/ads.md: advertiser, creative_kind 'title' with movie_id or 'product' with product,
    target_genres and target_age_bands '|'-separated or lists ('' = any), bid and daily_budget > 0, frequency_cap
    >= 1, active 0/1, created_at defaulting to the clock; campaign_id optional); returns their ids. One bad row
    refuses the batch."""
    df = _frame(rows, ["campaign_id", "advertiser", "creative_kind", "movie_id", "product", "target_genres",
                       "target_age_bands", "bid", "daily_budget", "frequency_cap", "active", "created_at"])
    # Another targeting criterion would be stored nowhere and silently ignored: the advertiser would believe they
    # targeted it. Refused by name — targeting is by genre interest and age band only, never a sensitive attribute.
    other = sorted(str(c) for c in df.columns if str(c).startswith("target_") and c not in AD_TARGETING)
    if other:
        raise errors.ValidationError(f"campaigns target by {' and '.join(AD_TARGETING)} only; {', '.join(other)} "
                                     "is not a targeting criterion (no campaign targets a sensitive attribute: "
                                     "docs/ads.md)", code="unknown_targeting")
    now = clock.now(db=db)
    r = _Reasons(len(df))
    given = ~bounds.missing_mask(df["campaign_id"])
    ids, _ = _as_int(df["campaign_id"])
    r.add(given & ~bounds.id_mask(df["campaign_id"]), lambda i: f"campaign_id {df['campaign_id'][i]!r} is not a "
          f"positive integer", errors.ValidationError, "invalid_id")
    advertiser = _texts(df["advertiser"], lambda t: t.strip() if isinstance(t, str) else "")
    r.add((advertiser == "") | bounds.bad_texts(advertiser),
          lambda i: f"advertiser {df['advertiser'][i]!r} is empty, too long or has control characters",
          errors.ValidationError, "invalid_advertiser")
    kind = df["creative_kind"]
    r.add(~kind.isin(list(AD_CREATIVE_KINDS)), lambda i: f"creative_kind {kind[i]!r} is not one of "
          f"{', '.join(AD_CREATIVE_KINDS)}", errors.ValidationError, "invalid_creative")
    movies, ok_m = _as_int(df["movie_id"])
    has_movie = ~bounds.missing_mask(df["movie_id"])
    product = _texts(df["product"], lambda t: t.strip() if isinstance(t, str) else "")
    r.add((kind == "title") & (~has_movie | ~ok_m | ~_ids_exist(db, "movies", "movie_id", movies.to_numpy())),
          lambda i: f"a title creative needs a catalogue movie_id, got {df['movie_id'][i]!r}", errors.UnknownMovie)
    r.add((kind == "product") & ((product == "") | has_movie), lambda i: "a product creative needs "
          "a product name and no movie_id", errors.ValidationError, "invalid_creative")
    r.add(bounds.bad_texts(product),
          lambda i: "product name too long or has control characters", errors.ValidationError, "invalid_creative")
    genres, bad_genres = _split_codes(df["target_genres"], GENRES)
    bands, bad_bands = _split_codes(df["target_age_bands"], AGE_BANDS)
    r.add(bad_genres.map(bool), lambda i: f"unknown genre(s) {bad_genres[i]}; known: {', '.join(GENRES)}",
          errors.ValidationError, "unknown_genre")
    r.add(bad_bands.map(bool), lambda i: f"unknown age band(s) {bad_bands[i]}; known: {', '.join(AGE_BANDS)}",
          errors.ValidationError, "unknown_age_band")
    money = {c: pd.to_numeric(df[c], errors="coerce").astype(float) for c in ("bid", "daily_budget")}
    for col, values in money.items():
        r.add(~(np.isfinite(values) & (values > 0) & (values <= 1e9)), lambda i, c=col: f"{c} {df[c][i]!r} is not "
              "a positive amount", errors.ValidationError, "invalid_amount")
    cap, ok_cap = _as_int(df["frequency_cap"].where(~bounds.missing_mask(df["frequency_cap"]), 1))
    r.add(~ok_cap | (cap < 1) | (cap > 1000), lambda i: f"frequency_cap {df['frequency_cap'][i]!r} is not an "
          "integer in 1..1000", errors.ValidationError, "invalid_cap")
    active = df["active"].where(~bounds.missing_mask(df["active"]), 1)
    r.add(~active.map(_is_flag).astype(bool),
          lambda i: f"active {df['active'][i]!r} is not 0/1", errors.ValidationError, "invalid_flag")
    created, ok_ts = _timestamps(df["created_at"], now)
    r.add(~ok_ts, lambda i: f"created_at {df['created_at'][i]!r} is not a timestamp", errors.InvalidTimestamp)
    r.add(ok_ts & (created > now), lambda i: f"created_at {created[i]} is after the service clock {now}",
          errors.FutureTimestamp)
    r.add(given & _ids_exist(db, "ad_campaigns", "campaign_id", ids.to_numpy()), lambda i: f"campaign {ids[i]} "
          "already exists", errors.ValidationError, "already_exists")
    r.add(given & ids.duplicated(keep="first"), lambda i: f"campaign {ids[i]} appears twice in the batch",
          errors.ValidationError, "twice_in_batch")
    r.raise_first("campaigns")
    with db.atomic():
        final = _fill_ids(db, "ad_campaigns", "campaign_id", ids, given)
        db.conn.executemany(
            "INSERT INTO ad_campaigns(campaign_id, advertiser, creative_kind, movie_id, product, target_genres, "
            "target_age_bands, bid, daily_budget, frequency_cap, active, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            list(zip(final, advertiser.tolist(), kind.tolist(),
                     [int(m) if k == "title" else None for m, k in zip(movies.tolist(), kind.tolist())],
                     [p if k == "product" else None for p, k in zip(product.tolist(), kind.tolist())],
                     genres.tolist(), bands.tolist(), money["bid"].tolist(), money["daily_budget"].tolist(),
                     cap.tolist(), active.astype(int).tolist(), created.tolist())))
        return final


def _existing_pairs(db, sql: str, ids: np.ndarray) -> dict[int, object]:
    """{id: value} for the distinct `ids` found by `sql` (a SELECT id, value … WHERE id IN ({marks})), in chunks."""
    found: dict[int, object] = {}
    distinct = sorted({int(i) for i in ids})
    for start in range(0, len(distinct), 500):
        chunk = distinct[start:start + 500]
        found |= dict(db.execute(sql.format(marks=",".join("?" * len(chunk))), chunk).fetchall())
    return found


# A batch of at most this many records is first checked row by row in plain Python (`_plain_ad_impressions`): the
# pandas checks below cost ~25 ms however few the rows (the model server writes one to eight per batch), a plain
# pass ~0.2 ms. The plain pass only ever accepts: anything it does not recognise as valid goes the general way.
SMALL_AD_BATCH = 32
_ISO_SECOND = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}")
_AD_INSERT = ("INSERT INTO ad_impressions(served_id, user_id, campaign_id, slot, shown_at, price, p_click, policy, "
              "model_version, clicked, clicked_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)")


def _plain_int(v) -> bool:
    """A Python int (not a bool) that `_as_int` takes as it is."""
    return type(v) is int and -bounds.MAX_ID <= v <= bounds.MAX_ID


def _plain_time(v) -> str | None:
    """`v` when it is a 'YYYY-MM-DDTHH:MM:SS' text that `_timestamps` parses to itself (a real date and time from
    1900 to 2261, inside pandas' range), else None."""
    if type(v) is not str or not _ISO_SECOND.fullmatch(v) or not "1900" <= v[:4] <= "2261":
        return None
    try:
        datetime.strptime(v, "%Y-%m-%dT%H:%M:%S")
    except ValueError:
        return None
    return v


def _plain_ad_impressions(db, records: list[dict], now: str) -> list[tuple] | None:
    """The rows `record_ad_impressions` stores for `records` when every value is a plain Python value and every
    check passes; None as soon as one is not (the general checks then decide, and say why). Only a subset of
    what the general checks accept is accepted here — plain ints, floats and 'YYYY-MM-DDTHH:MM:SS' texts — and
    each is stored as the general path stores it (tests/test_ads_fast_write.py feeds both the same rows)."""
    users, camps, serves = set(), set(), set()
    for r in records:
        u, c, s = r.get("user_id"), r.get("campaign_id"), r.get("served_id")
        if not (_plain_int(u) and _plain_int(c) and (s is None or _plain_int(s))):
            return None
        users.add(u)
        camps.add(c)
        if s is not None:
            serves.add(s)
    known = _existing_pairs(db, "SELECT user_id, consent_ad_targeting = 1 FROM users WHERE user_id IN ({marks})",
                            users)
    campaign = {c: (bid, genres, bands) for c, bid, genres, bands in _existing_rows(
        db, "SELECT campaign_id, bid, target_genres, target_age_bands FROM ad_campaigns WHERE campaign_id IN "
            "({marks})", camps)}
    owner = {}
    if serves:
        if not _table_exists(db, "served_recommendations"):
            return None
        owner = _existing_pairs(db, "SELECT serve_id, user_id FROM served_recommendations WHERE serve_id IN ({marks})",
                                serves)
    out = []
    for r in records:
        u, c, s = r["user_id"], r["campaign_id"], r.get("served_id")
        slot, policy, p, model = r.get("slot"), r.get("policy"), r.get("p_click"), r.get("model_version")
        clicked, clicked_at, price = r.get("clicked"), r.get("clicked_at"), r.get("price")
        shown = _plain_time(r.get("shown_at"))
        if u not in known or c not in campaign or (s is not None and (type(owner.get(s)) is not int or owner[s] != u)):
            return None
        if not (_plain_int(slot) and 1 <= slot <= MAX_AD_SLOT) or type(policy) is not str or policy not in AD_POLICIES:
            return None
        if shown is None or shown > now:
            return None
        if (p is None) != (policy == "untargeted") or not (p is None or (type(p) is float and 0 <= p <= 1)):
            return None
        if (model is None) != (policy != "model") or not (model is None or (_plain_int(model) and model >= 1)):
            return None
        clicked = 0 if clicked is None else clicked
        if not (type(clicked) is int and clicked in (0, 1)) or (clicked_at is None) != (clicked == 0):
            return None
        if clicked_at is not None and ((clicked_at := _plain_time(clicked_at)) is None or clicked_at < shown
                                       or clicked_at > now):
            return None
        price = 0.0 if price is None else price
        if not (type(price) is float or (type(price) is int and abs(price) <= bounds.MAX_ID)):
            return None
        price = float(price)
        bid, genres, bands = campaign[c]
        if not (math.isfinite(price) and price >= 0) or (clicked == 0 and price != 0) or type(bid) is not float \
                or price > bid + 1e-9:
            return None
        consent = known[u]
        if consent not in (0, 1) or not all(t is None or type(t) is str for t in (genres, bands)):
            return None
        if not consent and (policy != "untargeted" or (genres or "") + (bands or "") != ""):
            return None
        out.append((s, u, c, slot, shown, price, p, policy, model, clicked, clicked_at))
    return out


def _existing_rows(db, sql: str, ids) -> list[tuple]:
    """The rows `sql` (a SELECT … WHERE id IN ({marks})) finds for the distinct `ids`, in chunks."""
    found: list[tuple] = []
    distinct = sorted({int(i) for i in ids})
    for start in range(0, len(distinct), 500):
        chunk = distinct[start:start + 500]
        found += db.execute(sql.format(marks=",".join("?" * len(chunk))), chunk).fetchall()
    return found


def _insert_ad_impressions(db, recs: list[tuple], return_ids: bool) -> list[int]:
    if not return_ids:
        db.conn.executemany(_AD_INSERT, recs)
        return []
    return [int(db.conn.execute(_AD_INSERT, rec).lastrowid) for rec in recs]


@_checked_and_written
def record_ad_impressions(db: sqlite_utils.Database, rows, *, on_invalid: OnInvalid = "raise",
                          return_ids: bool = False) -> WriteResult:
    """Store sponsored slots shown, with their clicks (docs/ads.md's `ad_impressions`): served_id (optional: the
    user's logged list it was shown with), user_id, campaign_id, slot (1..101), shown_at, price, p_click, policy,
    model_version, clicked, clicked_at.

    Beyond types and ranges: p_click is NULL exactly for `untargeted`, model_version given exactly for `model`;
    a click has a clicked_at not before shown_at and a price of at most the campaign's bid, no click has neither
    (price 0); a user without ad-targeting consent gets only untargeted ads of campaigns without targeting
    criteria (code 'no_ad_consent'). Invalid rows refuse the batch, or with `on_invalid='quarantine'` go to
    `rejected_writes` (target 'ad_impressions') while the valid ones are stored. `return_ids`: each stored row's
    impression_id in `WriteResult.ids`, in order (one INSERT per row).
    """
    if not isinstance(rows, pd.DataFrame):
        rows = _records(rows)
        if 0 < len(rows) <= SMALL_AD_BATCH:
            recs = _plain_ad_impressions(db, rows, clock.now(db=db))
            if recs is not None:
                with db.atomic():
                    ids = _insert_ad_impressions(db, recs, return_ids)
                return WriteResult(accepted=len(recs), ids=ids)
    df = _frame(rows, ["served_id", "user_id", "campaign_id", "slot", "shown_at", "price", "p_click", "policy",
                       "model_version", "clicked", "clicked_at"])
    now = clock.now(db=db)
    r = _Reasons(len(df))
    users, ok_u = _as_int(df["user_id"])
    r.add(~ok_u, lambda i: f"user_id {df['user_id'][i]!r} is missing or not an integer", errors.UnknownUser,
          "missing_user_id")
    r.add(ok_u & ~_ids_exist(db, "users", "user_id", users.to_numpy()), lambda i: f"unknown user {users[i]}",
          errors.UnknownUser)
    served_given = ~bounds.missing_mask(df["served_id"])
    served, ok_s = _as_int(df["served_id"])
    lists = _existing_pairs(db, "SELECT serve_id, user_id FROM served_recommendations WHERE serve_id IN ({marks})",
                            served[served_given & ok_s].to_numpy()) \
        if (served_given & ok_s).any() and _table_exists(db, "served_recommendations") else {}
    owner = served.map(lambda s: lists.get(int(s)))
    r.add(served_given & (~ok_s | owner.isna()), lambda i: f"served_id {df['served_id'][i]!r} is not a logged list",
          errors.ValidationError, "unknown_served_id")
    r.add(served_given & owner.notna() & (owner != users), lambda i: f"served list {served[i]} was shown to another "
          "user", errors.ValidationError, "served_id_other_user")
    camp = pd.DataFrame(db.execute(
        "SELECT campaign_id, bid, target_genres, target_age_bands FROM ad_campaigns").fetchall(),
        columns=["campaign_id", "bid", "target_genres", "target_age_bands"]).set_index("campaign_id")
    campaign, ok_c = _as_int(df["campaign_id"])
    known_c = ok_c & campaign.isin(camp.index)
    r.add(~known_c, lambda i: f"unknown campaign {df['campaign_id'][i]!r}", errors.ValidationError,
          "unknown_campaign")
    slot, ok_slot = _as_int(df["slot"])
    r.add(~ok_slot | (slot < 1) | (slot > MAX_AD_SLOT), lambda i: f"slot {df['slot'][i]!r} is not a position in "
          f"1..{MAX_AD_SLOT}", errors.ValidationError, "invalid_slot")
    policy = df["policy"].astype(object)
    r.add(~policy.isin(list(AD_POLICIES)), lambda i: f"unknown ad policy {df['policy'][i]!r}; known: "
          f"{', '.join(AD_POLICIES)}", errors.ValidationError, "unknown_policy")
    shown, ok_shown = _timestamps(df["shown_at"], now)
    r.add(~ok_shown, lambda i: f"shown_at {df['shown_at'][i]!r} is not a timestamp", errors.InvalidTimestamp)
    r.add(ok_shown & (shown > now), lambda i: f"shown_at {shown[i]} is after the service clock {now}",
          errors.FutureTimestamp)
    p_given = ~bounds.missing_mask(df["p_click"])
    p_click = pd.to_numeric(df["p_click"], errors="coerce").astype(float)
    r.add(p_given & ~((p_click >= 0) & (p_click <= 1)), lambda i: f"p_click {df['p_click'][i]!r} is not a "
          "probability", errors.ValidationError, "invalid_probability")
    r.add(p_given == (policy == "untargeted"), lambda i: "p_click must be given for a targeted ad and empty for an "
          "untargeted one", errors.ValidationError, "invalid_probability")
    m_given = ~bounds.missing_mask(df["model_version"])
    model, ok_model = _as_int(df["model_version"])
    r.add(m_given != (policy == "model"), lambda i: "model_version is given exactly for policy 'model'",
          errors.ValidationError, "invalid_model_version")
    r.add(m_given & (~ok_model | (model < 1)), lambda i: f"model_version {df['model_version'][i]!r} is not a "
          "version", errors.ValidationError, "invalid_model_version")
    clicked = df["clicked"].where(~bounds.missing_mask(df["clicked"]), 0)
    ok_clicked = clicked.map(_is_flag).astype(bool)
    r.add(~ok_clicked, lambda i: f"clicked {df['clicked'][i]!r} is not 0/1", errors.ValidationError, "invalid_flag")
    click = ok_clicked & (clicked.where(ok_clicked, 0).astype(int) == 1)
    at_given = ~bounds.missing_mask(df["clicked_at"])
    clicked_at, ok_at = _timestamps(df["clicked_at"].where(at_given, "1900-01-01T00:00:00"), now)
    r.add(click != at_given, lambda i: "clicked_at is given exactly for a click", errors.ValidationError,
          "invalid_click")
    r.add(at_given & (~ok_at | (clicked_at < shown) | (clicked_at > now)), lambda i: f"clicked_at "
          f"{df['clicked_at'][i]!r} is not a time between shown_at and the service clock", errors.InvalidTimestamp)
    price_given = ~bounds.missing_mask(df["price"])
    price = pd.to_numeric(df["price"].where(price_given, 0), errors="coerce").astype(float)
    bid = campaign.map(camp["bid"]).astype(float)
    r.add(~(np.isfinite(price) & (price >= 0)), lambda i: f"price {df['price'][i]!r} is not an amount",
          errors.ValidationError, "invalid_amount")
    r.add(~click & (price != 0), lambda i: "an impression without a click is not charged (price 0)",
          errors.ValidationError, "invalid_amount")
    r.add(known_c & (price > bid + 1e-9), lambda i: f"price {price[i]:g} is above the campaign's bid {bid[i]:g}",
          errors.ValidationError, "above_bid")
    consent = pd.Series(opsdb.ad_targeting_consent(db, users.to_numpy()), index=df.index)
    targets = campaign.map(camp["target_genres"].fillna("") + camp["target_age_bands"].fillna("")).fillna("")
    r.add(ok_u & ~consent & ((policy != "untargeted") | (targets != "")), lambda i: f"user {users[i]} has not "
          "consented to ad targeting: only untargeted ads of campaigns without targeting criteria",
          errors.ValidationError, "no_ad_consent")
    if on_invalid == "raise":
        r.raise_first("ad impressions")
    good = ~r.bad
    none = lambda s, mask: s.astype(object).where(mask, None)  # noqa: E731
    recs = list(zip(none(served, served_given)[good].tolist(), users[good].tolist(), campaign[good].tolist(),
                    slot[good].tolist(), shown[good].tolist(), price[good].tolist(),
                    none(p_click, p_given)[good].tolist(), policy[good].tolist(), none(model, m_given)[good].tolist(),
                    click[good].astype(int).tolist(), none(clicked_at, at_given)[good].tolist()))
    with db.atomic():
        if r.bad.any():
            _quarantine(db, "ad_impressions", df, r.reason, now, r.code)
        ids = _insert_ad_impressions(db, recs, return_ids)
    return WriteResult(accepted=len(recs), rejected=int(r.bad.sum()), reasons=_reason_counts(r.reason), ids=ids)


@_checked_and_written
def record_ad_clicks(db: sqlite_utils.Database, rows, *, on_invalid: OnInvalid = "raise") -> WriteResult:
    """Store clicks reported after their impression (a front end reports a click on a slot the server logged
    unclicked): impression_id, clicked_at, price (what the click is charged, at most the campaign's bid).

    Refused (codes): `unknown_impression`, `already_clicked` (also a second click on the same impression in the
    batch), `invalid_timestamp` (clicked_at not a time between the impression's shown_at and the service clock),
    `invalid_amount`, `above_bid`. Each stored click gets the next `click_seq`, the ETL's watermark for late clicks
    (`adslog.late_clicks`). Invalid rows refuse the batch, or with `on_invalid='quarantine'` go to
    `rejected_writes` (target 'ad_impressions') while the valid ones are stored.
    """
    df = _frame(rows, ["impression_id", "clicked_at", "price"])
    now = clock.now(db=db)
    r = _Reasons(len(df))
    imp, ok_i = _as_int(df["impression_id"])
    ids = sorted({int(i) for i in imp[ok_i]})
    found_rows = []
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        found_rows += db.execute("SELECT i.impression_id, i.shown_at, i.clicked, c.bid FROM ad_impressions i JOIN "
                                 f"ad_campaigns c USING (campaign_id) WHERE i.impression_id IN "
                                 f"({','.join('?' * len(chunk))})", chunk).fetchall()
    known = pd.DataFrame(found_rows, columns=["impression_id", "shown_at", "clicked", "bid"]).set_index("impression_id")
    found = ok_i & imp.isin(known.index)
    r.add(~found, lambda i: f"unknown ad impression {df['impression_id'][i]!r}", errors.ValidationError,
          "unknown_impression")
    before = imp.map(known["clicked"]).fillna(0).astype(int) == 1
    again = imp.where(found).duplicated(keep="first") & found
    r.add(found & (before | again), lambda i: f"ad impression {imp[i]} already has its click",
          errors.ValidationError, "already_clicked")
    clicked_at, ok_at = _timestamps(df["clicked_at"].where(~bounds.missing_mask(df["clicked_at"]),
                                                           "invalid"), now)
    shown = imp.map(known["shown_at"]).astype(object).where(found, "")
    r.add(found & (~ok_at | (clicked_at < shown) | (clicked_at > now)), lambda i: f"clicked_at "
          f"{df['clicked_at'][i]!r} is not a time between the impression's shown_at and the service clock",
          errors.InvalidTimestamp)
    price = pd.to_numeric(df["price"], errors="coerce").astype(float)
    r.add(~(np.isfinite(price) & (price >= 0)), lambda i: f"price {df['price'][i]!r} is not an amount",
          errors.ValidationError, "invalid_amount")
    bid = imp.map(known["bid"]).astype(float)
    r.add(found & (price > bid + 1e-9), lambda i: f"price {price[i]:g} is above the campaign's bid {bid[i]:g}",
          errors.ValidationError, "above_bid")
    if on_invalid == "raise":
        r.raise_first("ad clicks")
    good = ~r.bad
    recs = list(zip(clicked_at[good].tolist(), price[good].tolist(), imp[good].tolist()))
    with db.atomic():
        if r.bad.any():
            _quarantine(db, "ad_impressions", df, r.reason, now, r.code)
        db.conn.executemany(
            "UPDATE ad_impressions SET clicked = 1, clicked_at = ?, price = ?, click_seq = (SELECT coalesce(max("
            "click_seq), 0) + 1 FROM ad_impressions) WHERE impression_id = ? AND clicked = 0", recs)
    return WriteResult(accepted=len(recs), rejected=int(r.bad.sum()), reasons=_reason_counts(r.reason))


def _table_exists(db, name: str) -> bool:
    return db.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?", [name]).fetchone()[0] > 0
