"""The engine-independent content hash of a data version (core/warehouse/datahash.py)."""
import hashlib
import struct

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from core.warehouse import datahash

ROWS = pd.DataFrame({
    "source": ["event", "rating", "event"],
    "source_id": [7, 3, 9],
    "user_key": ["aaaa", "bbbb", "aaaa"],
    "movie_id": pd.array([12, 5, None], dtype="Int64"),
    "kind": ["watch", "rating", "scroll"],
    "value": [1800.0, 8.0, 3.0],
    "occurred_at": pd.to_datetime(["2026-01-02 10:00:00", "2026-01-01 00:00:00", "2026-01-02 10:00:00.5"], format="ISO8601"),
})


def _by_hand(frame: pd.DataFrame, previous: str | None) -> str:
    """The module docstring's definition, written out again with nothing but hashlib and struct."""
    frame = frame.assign(day=frame["occurred_at"].dt.strftime("%Y-%m-%d"))
    lines = []
    for day, rows in sorted(frame.groupby("day")):
        rows = rows.sort_values(["source", "source_id"])
        streams = {name: b"" for name in datahash.STREAMS}
        for r in rows.itertuples():
            for col in ("source", "user_key", "kind"):
                text = getattr(r, col).encode()
                streams[f"{col}.len"] += struct.pack("<I", len(text))
                streams[f"{col}.utf8"] += text
            streams["source_id"] += struct.pack("<q", r.source_id)
            streams["movie_id"] += struct.pack("<q", 0 if pd.isna(r.movie_id) else int(r.movie_id))
            streams["value"] += struct.pack("<d", r.value)
            micros = (r.occurred_at - pd.Timestamp("1970-01-01")) // pd.Timedelta(microseconds=1)
            streams["occurred_at"] += struct.pack("<q", micros)
        head = f"{day}\n{len(rows)}\n" + "".join(hashlib.sha256(streams[s]).hexdigest() + "\n" for s in datahash.STREAMS)
        lines.append(f"{day}\t{len(rows)}\t{hashlib.sha256(head.encode()).hexdigest()}\n")
    return hashlib.sha256(((previous or "") + "\n" + "".join(lines)).encode()).hexdigest()


def test_the_hash_is_the_documented_definition():
    assert datahash.content_hash(ROWS, None) == _by_hand(ROWS, None)
    assert datahash.content_hash(ROWS, "ab" * 32) == _by_hand(ROWS, "ab" * 32)


def test_row_order_and_batch_boundaries_do_not_matter():
    shuffled = ROWS.sample(frac=1, random_state=3)
    assert datahash.content_hash(shuffled, None) == datahash.content_hash(ROWS, None)
    table = datahash.canonical_table(ROWS)
    for size in (1, 2):                                  # a day continued over several batches
        hasher = datahash.DayHasher()
        for batch in table.to_batches(max_chunksize=size):
            hasher.update(batch)
        assert datahash.combine(None, hasher.days()) == datahash.content_hash(ROWS, None)


def test_a_day_digest_depends_on_that_days_rows_only():
    """The old pandas hash rendered timestamps per column (no time of day when every row was at midnight,
    fractions when any row had one): a row's bytes depended on its neighbours. Here they do not."""
    alone = datahash.DayHasher()
    alone.update(datahash.canonical_table(ROWS[ROWS["occurred_at"].dt.day == 1]))
    together = datahash.DayHasher()
    together.update(datahash.canonical_table(ROWS))
    assert alone.days()["2026-01-01"] == together.days()["2026-01-01"]


@pytest.mark.parametrize("column, value", [("value", np.nextafter(1800.0, 2000.0)), ("movie_id", 13),
                                           ("user_key", "aaab"), ("source_id", 8),
                                           ("occurred_at", pd.Timestamp("2026-01-02 10:00:00.000001"))])
def test_any_change_changes_the_hash(column, value):
    changed = ROWS.copy()
    changed.loc[0, column] = value
    assert datahash.content_hash(changed, None) != datahash.content_hash(ROWS, None)


def test_empty_and_chained():
    empty = ROWS.iloc[:0]
    assert datahash.content_hash(empty, None) == hashlib.sha256(b"\n").hexdigest()
    first = datahash.content_hash(ROWS, None)
    assert datahash.content_hash(ROWS, first) != first                 # chained to the previous version


def test_arrow_input_with_float_ids_and_other_units_hashes_alike():
    """What Spark hands a Python worker: nullable ids as float64, timestamps in microseconds."""
    table = datahash.canonical_table(ROWS)
    spark_like = table.set_column(table.schema.get_field_index("movie_id"), "movie_id",
                                  table.column("movie_id").cast(pa.float64()))
    spark_like = spark_like.set_column(spark_like.schema.get_field_index("occurred_at"), "occurred_at",
                                       spark_like.column("occurred_at").cast(pa.timestamp("us")))
    a, b = datahash.DayHasher(), datahash.DayHasher()
    a.update(table)
    b.update(spark_like)
    assert a.days() == b.days()
