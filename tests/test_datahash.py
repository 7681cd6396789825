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


# ------------------------------------------------------------------ served lists (fact_served, issue 17)
SERVED = pd.DataFrame({
    "serve_id": [4, 4, 2, 9],
    "user_key": ["aaaa", "aaaa", "bbbb", "aaaa"],
    "served_at": pd.to_datetime(["2026-01-02 00:00:00", "2026-01-02 00:00:00", "2026-01-02 08:00:00",
                                 "2026-01-01 23:59:59"]),
    "path": ["model", "model", "top50:cold-start", "model"],
    "model_version": pd.array([3, 3, None, 3], dtype="Int64"),
    "ranker_version": pd.array([2, 2, None, None], dtype="Int64"),
    "arm": ["canary", "canary", "production", "production"],
    "position": [2, 1, 1, 1],
    "movie_id": [12, 5, 7, 5],
})


def _served_by_hand(frame: pd.DataFrame) -> list[str]:
    """Point 4 of the module docstring written out: the served section's day lines."""
    frame = frame.assign(day=frame["served_at"].dt.strftime("%Y-%m-%d"))
    lines = []
    for day, rows in sorted(frame.groupby("day")):
        rows = rows.sort_values(["serve_id", "position"])
        streams = {name: b"" for name in datahash.SERVED_STREAMS}
        for r in rows.itertuples():
            for col in ("user_key", "path", "arm"):
                text = getattr(r, col).encode()
                streams[f"{col}.len"] += struct.pack("<I", len(text))
                streams[f"{col}.utf8"] += text
            for col in ("serve_id", "position", "movie_id", "model_version", "ranker_version"):
                value = getattr(r, col)
                streams[col] += struct.pack("<q", 0 if pd.isna(value) else int(value))
            micros = (r.served_at - pd.Timestamp("1970-01-01")) // pd.Timedelta(microseconds=1)
            streams["served_at"] += struct.pack("<q", micros)
        head = f"{day}\n{len(rows)}\n" + "".join(hashlib.sha256(streams[s]).hexdigest() + "\n"
                                                 for s in datahash.SERVED_STREAMS)
        lines.append(f"{day}\t{len(rows)}\t{hashlib.sha256(head.encode()).hexdigest()}\n")
    return lines


def test_served_rows_are_a_second_section_of_the_documented_hash():
    assert datahash.SERVED_STREAMS == ("serve_id", "user_key.len", "user_key.utf8", "served_at", "path.len",
                                       "path.utf8", "model_version", "ranker_version", "arm.len", "arm.utf8",
                                       "position", "movie_id")
    fact_days = datahash.DayHasher()                    # the fact day lines (checked by hand above)
    fact_days.update(datahash.canonical_table(ROWS))
    lines = "".join(f"{d}\t{n}\t{h}\n" for d, (n, h) in sorted(fact_days.days().items()))
    text = "ab" * 32 + "\n" + lines + "fact_served\n" + "".join(_served_by_hand(SERVED))
    expected = hashlib.sha256(text.encode()).hexdigest()
    assert datahash.content_hash(ROWS, "ab" * 32, SERVED) == expected != _by_hand(ROWS, "ab" * 32)
    assert [line.split("\t")[0] for line in _served_by_hand(SERVED)] == ["2026-01-01", "2026-01-02"]


def test_no_served_rows_leave_the_hash_as_it_was():
    """Known answers of versions loaded before fact_served existed stay byte-identical."""
    empty = SERVED.iloc[:0]
    assert datahash.content_hash(ROWS, None, empty) == datahash.content_hash(ROWS, None, None) == _by_hand(ROWS, None)
    assert datahash.content_hash(ROWS.iloc[:0], None, empty) == hashlib.sha256(b"\n").hexdigest()


@pytest.mark.parametrize("column, value", [("serve_id", 5), ("user_key", "aaab"), ("path", "top50:no-model"),
                                           ("model_version", 4), ("ranker_version", None), ("arm", "production"),
                                           ("position", 3), ("movie_id", 13),
                                           ("served_at", pd.Timestamp("2026-01-02 00:00:00.000001"))])
def test_any_change_of_a_served_row_changes_the_hash(column, value):
    changed = SERVED.copy()
    changed.loc[0, column] = value
    assert datahash.content_hash(ROWS, None, changed) != datahash.content_hash(ROWS, None, SERVED)
    shuffled = SERVED.sample(frac=1, random_state=5)
    assert datahash.content_hash(ROWS, None, shuffled) == datahash.content_hash(ROWS, None, SERVED)
