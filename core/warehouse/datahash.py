"""The data version's content hash, defined so that any engine computes the same value (issue 15).

A data version's hash covers the fact rows that version loaded, chained to the previous
version's hash. Its definition fixes three things, so the embedded ETL (pandas + DuckDB)
and the Spark ETL (executors, any partitioning) get the same hex digest for the same rows:

1. **Canonical ordering.** Rows are grouped by the UTC calendar day of `occurred_at`
   (days ascending); within a day they are ordered by the fact's key `(source, source_id)`
   (`'event'` before `'rating'`, then the operational database's own id: `events.seq`,
   `rating_history.history_id`). Day groups make the hash parallel — each day is hashed
   on its own (Spark: one task per day partition) — and only the small list of day
   digests is combined in order.
2. **Canonical encoding**, per column, independent of any engine's text formatting:

   ============  ====================================================================
   source        per row: byte length (uint32 LE) into one stream, UTF-8 bytes into another
   source_id     int64 little-endian
   user_key      as source (length stream + UTF-8 stream)
   movie_id      int64 little-endian; NULL (a scroll event) → 0 (ids are ≥ 1)
   kind          as source
   value         IEEE-754 binary64 little-endian (the exact bit pattern, no decimal text)
   occurred_at   int64 little-endian microseconds since 1970-01-01T00:00:00 UTC
   ============  ====================================================================

   Each of the ten streams (three columns have two) is hashed with SHA-256 over the
   day's rows in canonical order.
3. **Combination.** day digest = SHA-256 of `"<YYYY-MM-DD>\\n<n rows>\\n"` followed by the
   ten stream digests (hex, in the table's order, each followed by `"\\n"`); the version's
   hash = SHA-256 of `previous_hash + "\\n"` (the empty string for the first version)
   followed by `"<day>\\t<n>\\t<day digest>\\n"` for each day, ascending.

4. **Served lists** (`fact_served`, issue 17). A version that loaded served-list rows hashes them the same way,
   as a second section: rows grouped by the UTC day of `served_at`, ordered by `(serve_id, position)` within a
   day, twelve streams in `SERVED_STREAMS` order (serve_id, position, movie_id, model_version and ranker_version
   as int64 LE with NULL → 0 — versions and ids are ≥ 1 —, user_key, path and arm as length + UTF-8 streams,
   served_at as microseconds); after the fact days the version's hash takes the line `"fact_served\n"` and then
   `"<day>\t<n>\t<day digest>\n"` per served day. A version without served rows has no such section, so its
   hash is exactly the one defined by 1–3 (versions loaded before fact_served existed keep their hashes).

5. **Exploration** (issue 22). Served rows that carry a logging policy (`policy` not NULL) are hashed once more, as
   a third section `"fact_served.exploration\n"` with the same day lines: five streams per day in
   `EXPLORATION_STREAMS` order (serve_id and position as int64 LE, policy as length + UTF-8, propensity and
   slate_propensity as IEEE-754 float64 LE), rows ordered by `(serve_id, position)`. Rows served before
   exploration existed have no policy, so versions without such rows keep exactly the hash of 1–4.

6. **Ads** (issue 25). A version that loaded ad impressions (`fact_ad_impression`) or clicks (`fact_ad_click`) hashes
   each as one more section, `"fact_ad_impression\n"` then `"fact_ad_click\n"`, each followed by its day lines:
   impressions grouped by the UTC day of `shown_at`, clicks by that of `clicked_at`, ordered by `impression_id`
   within a day; streams in `AD_IMPRESSION_COLUMNS` / `AD_CLICK_COLUMNS` order (ids, slot, versions and the
   clicked flag as int64 LE with NULL → 0, user_key, policy and age_band as length + UTF-8, p_click and price as
   IEEE-754 float64 LE with NULL → NaN, times as microseconds). A section appears only when it has rows, so
   versions without ads keep exactly the hash of 1–5.

Nothing in this depends on how an engine splits the rows into batches or partitions:
a day's streams are fed batch by batch in canonical order, and SHA-256 of a stream
does not depend on where it was cut. It replaces the pandas-specific hash the embedded
ETL used before (`hash_pandas_object` over text renderings whose format depended on the
whole column, e.g. fractional seconds shown only when some row had them).
"""
from __future__ import annotations

import hashlib
from typing import Iterable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

COLUMNS = ("source", "source_id", "user_key", "movie_id", "kind", "value", "occurred_at")
TEXT = ("source", "user_key", "kind")
STREAMS = ("source.len", "source.utf8", "source_id", "user_key.len", "user_key.utf8", "movie_id",
           "kind.len", "kind.utf8", "value", "occurred_at")
# The served-list rows (fact_served without data_version), hashed as the facts' second section (point 4).
SERVED_COLUMNS = ("serve_id", "user_key", "served_at", "path", "model_version", "ranker_version", "arm", "position",
                  "movie_id")
SERVED_TEXT = ("user_key", "path", "arm")
SERVED_SECTION = "fact_served"
EXPLORATION_COLUMNS = ("serve_id", "position", "policy", "propensity", "slate_propensity")
EXPLORATION_TEXT = ("policy",)
EXPLORATION_FLOATS = ("propensity", "slate_propensity")
EXPLORATION_SECTION = "fact_served.exploration"
# Ads (point 6): the fact tables without data_version, in their hash order.
AD_IMPRESSION_COLUMNS = ("impression_id", "serve_id", "user_key", "campaign_id", "slot", "shown_at", "p_click",
                         "policy", "model_version", "clicked", "age_band")
AD_CLICK_COLUMNS = ("impression_id", "user_key", "campaign_id", "clicked_at", "price", "policy", "model_version")
AD_SECTIONS = {"fact_ad_impression": (AD_IMPRESSION_COLUMNS, ("user_key", "policy", "age_band"), ("p_click",),
                                      "shown_at"),
               "fact_ad_click": (AD_CLICK_COLUMNS, ("user_key", "policy"), ("price",), "clicked_at")}
TIME_COLUMNS = ("occurred_at", "served_at", "shown_at", "clicked_at")


def _streams(columns: tuple[str, ...], text: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(s for c in columns for s in ((f"{c}.len", f"{c}.utf8") if c in text else (c,)))


SERVED_STREAMS = _streams(SERVED_COLUMNS, SERVED_TEXT)


def _chunks(array) -> list[pa.Array]:
    return array.chunks if isinstance(array, pa.ChunkedArray) else [array]


def _text_blocks(array) -> tuple[bytes, memoryview]:
    """(lengths as uint32 LE, UTF-8 bytes) of a string column (NULL as the empty string)."""
    lengths, data = [], []
    for chunk in _chunks(pc.fill_null(pc.cast(array, pa.large_string()), "")):
        if not len(chunk):
            continue
        offsets = np.frombuffer(chunk.buffers()[1], dtype="<i8", count=len(chunk) + 1, offset=chunk.offset * 8)
        lengths.append(np.diff(offsets).astype("<u4").tobytes())
        data.append(memoryview(chunk.buffers()[2])[int(offsets[0]):int(offsets[-1])])
    return b"".join(lengths), b"".join(data)


def _int64_block(array, null: int = 0) -> bytes:
    return pc.fill_null(pc.cast(array, pa.int64()), null).to_numpy(zero_copy_only=False).astype("<i8").tobytes()


def _micros(array) -> pa.Array:
    """Timestamps (any unit, naive UTC) as int64 microseconds since the epoch."""
    if pa.types.is_timestamp(array.type) and array.type.tz is not None:
        array = pc.cast(array, pa.timestamp(array.type.unit))   # zone dropped: values are UTC instants already
    return pc.cast(pc.cast(array, pa.timestamp("us")), pa.int64())


class DayHasher:
    """The stream hashes of each day, fed with batches of rows in canonical order.

    `update(batch)` takes a pyarrow Table/RecordBatch with `COLUMNS` and a `day` column
    (a date: the UTC day of `occurred_at`), its rows already in canonical order (day, source, source_id);
    a day may continue over several batches. `days()` returns `{day: (n, digest)}`.
    `DayHasher(SERVED_COLUMNS, SERVED_TEXT)` hashes served-list rows instead (day of `served_at`, ordered by
    serve_id, position); columns named neither text, `value` nor a time are int64 (NULL → 0).
    """

    def __init__(self, columns: tuple[str, ...] = COLUMNS, text: tuple[str, ...] = TEXT,
                 floats: tuple[str, ...] = ("value",)) -> None:
        self._columns, self._text, self._floats = columns, text, floats
        self._n_streams = len(_streams(columns, text))
        self._days: dict[str, list] = {}

    def update(self, batch) -> None:
        if not batch.num_rows:
            return
        day = pc.cast(batch.column("day"), pa.date32())
        ordinal = pc.cast(day, pa.int32()).to_numpy(zero_copy_only=False)
        starts = np.flatnonzero(np.r_[True, ordinal[1:] != ordinal[:-1]])
        for start, stop in zip(starts, np.r_[starts[1:], len(ordinal)]):
            name = str(np.datetime64(int(ordinal[start]), "D"))
            self._feed(name, batch.slice(int(start), int(stop - start)))

    def _feed(self, day: str, rows) -> None:
        state = self._days.setdefault(day, [0, [hashlib.sha256() for _ in range(self._n_streams)]])
        state[0] += rows.num_rows
        h = state[1]
        blocks = []
        for name in self._columns:
            col = rows.column(name)
            if name in self._text:
                blocks.extend(_text_blocks(col))
            elif name in self._floats:
                blocks.append(pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False).astype("<f8").tobytes())
            elif name in TIME_COLUMNS:
                blocks.append(_int64_block(_micros(col)))
            else:
                blocks.append(_int64_block(col))
        for hasher, block in zip(h, blocks):
            hasher.update(block)

    def days(self) -> dict[str, tuple[int, str]]:
        out = {}
        for day, (n, streams) in self._days.items():
            head = f"{day}\n{n}\n" + "".join(s.hexdigest() + "\n" for s in streams)
            out[day] = (n, hashlib.sha256(head.encode()).hexdigest())
        return out


def _day_lines(days) -> bytes:
    items = sorted(days.items()) if isinstance(days, dict) else sorted((d, (n, h)) for d, n, h in days)
    return "".join(f"{day}\t{int(n)}\t{digest}\n" for day, (n, digest) in items).encode()


def combine(previous: str | None, days: dict[str, tuple[int, str]] | Iterable[tuple[str, int, str]],
            served_days: dict[str, tuple[int, str]] | None = None,
            exploration_days: dict[str, tuple[int, str]] | None = None,
            ad_days: dict[str, dict[str, tuple[int, str]]] | None = None) -> str:
    """The version's hash from its day digests (`{day: (n, digest)}` or `(day, n, digest)` rows), chained; the
    served-list section (point 4) follows only when `served_days` has a day, the exploration section (point 5)
    only when `exploration_days` has one, each ads section (point 6) only when `ad_days[table]` has one."""
    h = hashlib.sha256(((previous or "") + "\n").encode())
    h.update(_day_lines(days))
    if served_days:
        h.update(f"{SERVED_SECTION}\n".encode())
        h.update(_day_lines(served_days))
    if exploration_days:
        h.update(f"{EXPLORATION_SECTION}\n".encode())
        h.update(_day_lines(exploration_days))
    for section in AD_SECTIONS:
        if (ad_days or {}).get(section):
            h.update(f"{section}\n".encode())
            h.update(_day_lines(ad_days[section]))
    return h.hexdigest()


def canonical_table(facts: pd.DataFrame) -> pa.Table:
    """The facts as an Arrow table in canonical order with a `day` column (the embedded engine's input)."""
    frame = facts[list(COLUMNS)].copy()
    frame["occurred_at"] = pd.to_datetime(frame["occurred_at"])
    frame["movie_id"] = pd.to_numeric(frame["movie_id"]).astype("Int64")
    frame["value"] = frame["value"].astype("float64")
    frame["source_id"] = frame["source_id"].astype("int64")
    frame["day"] = frame["occurred_at"].to_numpy().astype("datetime64[D]")
    frame = frame.sort_values(["day", "source", "source_id"], kind="mergesort")
    return pa.Table.from_pandas(frame, preserve_index=False)


def served_table(served: pd.DataFrame) -> pa.Table:
    """Served-list rows as an Arrow table in canonical order (day of served_at, serve_id, position) with `day`."""
    frame = served[list(SERVED_COLUMNS)].copy()
    frame["served_at"] = pd.to_datetime(frame["served_at"])
    for col in ("serve_id", "position", "movie_id", "model_version", "ranker_version"):
        frame[col] = pd.to_numeric(frame[col]).astype("Int64")
    frame["day"] = frame["served_at"].to_numpy().astype("datetime64[D]")
    frame = frame.sort_values(["day", "serve_id", "position"], kind="mergesort")
    return pa.Table.from_pandas(frame, preserve_index=False)


def served_days(served: pd.DataFrame | None) -> dict[str, tuple[int, str]]:
    """`{day: (n, digest)}` of served-list rows (empty for None or no rows): the hash's served section."""
    hasher = DayHasher(SERVED_COLUMNS, SERVED_TEXT)
    if served is not None and len(served):
        hasher.update(served_table(served))
    return hasher.days()


def exploration_days(served: pd.DataFrame | None) -> dict[str, tuple[int, str]]:
    """`{day: (n, digest)}` of the served rows that carry a logging policy (point 5; empty when none do)."""
    if served is None or not len(served) or "policy" not in served or served["policy"].isna().all():
        return {}
    frame = served.loc[served["policy"].notna(), ["serve_id", "position", "served_at", *EXPLORATION_COLUMNS[2:]]].copy()
    frame["day"] = pd.to_datetime(frame["served_at"]).to_numpy().astype("datetime64[D]")
    for col in ("serve_id", "position"):
        frame[col] = pd.to_numeric(frame[col]).astype("Int64")
    for col in EXPLORATION_FLOATS:
        frame[col] = pd.to_numeric(frame[col]).astype("float64")
    frame = frame.sort_values(["day", "serve_id", "position"], kind="mergesort").drop(columns="served_at")
    hasher = DayHasher(EXPLORATION_COLUMNS, EXPLORATION_TEXT, EXPLORATION_FLOATS)
    hasher.update(pa.Table.from_pandas(frame, preserve_index=False))
    return hasher.days()


def ad_days(ads: dict[str, pd.DataFrame] | None) -> dict[str, dict[str, tuple[int, str]]]:
    """`{table: {day: (n, digest)}}` of the ad fact rows a version loaded (point 6; `ads`: {'fact_ad_impression':
    frame, 'fact_ad_click': frame}, either may be missing or empty)."""
    out = {}
    for section, (columns, text, floats, at) in AD_SECTIONS.items():
        frame = (ads or {}).get(section)
        if frame is None or not len(frame):
            continue
        frame = frame[list(columns)].copy()
        frame[at] = pd.to_datetime(frame[at])
        for col in columns:
            if col not in text and col not in floats and col != at:
                frame[col] = pd.to_numeric(frame[col]).astype("Int64")
        for col in floats:
            frame[col] = pd.to_numeric(frame[col]).astype("float64")
        frame["day"] = frame[at].to_numpy().astype("datetime64[D]")
        frame = frame.sort_values(["day", "impression_id"], kind="mergesort")
        hasher = DayHasher(columns, text, floats)
        hasher.update(pa.Table.from_pandas(frame, preserve_index=False))
        out[section] = hasher.days()
    return out


def content_hash(facts: pd.DataFrame, previous: str | None, served: pd.DataFrame | None = None,
                 ads: dict[str, pd.DataFrame] | None = None) -> str:
    """SHA-256 over the loaded rows (pandas), chained to the previous version's hash (see the module docstring);
    `served`: the served-list rows the version loaded (point 4; none → the hash of points 1–3 alone); `ads`: the
    ad fact rows (point 6)."""
    hasher = DayHasher()
    if len(facts):
        hasher.update(canonical_table(facts))
    return combine(previous, hasher.days(), served_days(served), exploration_days(served), ad_days(ads))


def arrow_day_digests(batches):
    """`mapInArrow` body (Spark): the day digests of one partition whose rows are in canonical order.

    Yields one record batch of (day, n, digest); a day lies wholly in one partition
    (the caller repartitions by day), so the driver only combines the days.
    """
    hasher = DayHasher()
    for batch in batches:
        hasher.update(batch)
    days = hasher.days()
    schema = pa.schema([("day", pa.string()), ("n", pa.int64()), ("digest", pa.string())])
    yield pa.RecordBatch.from_pydict({"day": list(days), "n": [n for n, _ in days.values()],
                                      "digest": [d for _, d in days.values()]}, schema=schema)
