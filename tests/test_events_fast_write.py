"""`writes.record_events` checks a batch of typed columns in NumPy before its pandas checks (`_plain_events`, what a
simulated day and the importers write). That pass only ever accepts; these tests feed the same batches — valid,
invalid, and of odd types — to the write with and without it and require the same outcome: the rows stored (with
their SQLite types), the result (counts, reasons), the error (class, message, code), the quarantine."""
from __future__ import annotations

import math
import uuid

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings as hyp_settings, strategies as st

from core import errors
from core.store import writes

T = "2026-01-09T10:00:00"         # before the conftest's clock (2026-01-10T00:00:00)


@pytest.fixture
def events_db(small_db):
    """small_db (users 1 and 2, movies 1 and 2) with user 3, who withdrew tracking consent."""
    writes.add_users(small_db, [{"user_id": 3, "created_at": "2025-12-03T00:00:00"}])
    small_db.execute("UPDATE users SET consent_tracking = 0 WHERE user_id = 3")
    return small_db


def base_frame() -> pd.DataFrame:
    """Valid events in the simulation's column types: text ids and times, int64 users, Int64 movies (missing on the
    scroll), float values."""
    return pd.DataFrame({
        "event_id": ["e1", "e2", "e3", "e4", "e5", "e6"],
        "user_id": np.array([1, 1, 2, 2, 1, 3], dtype=np.int64),
        "movie_id": pd.array([1, 2, 2, None, 1, 1], dtype="Int64"),
        "kind": ["impression", "click", "watch", "scroll", "like", "watch"],
        "value": np.array([0.0, 1.0, 3600.0, 12.0, 1.0, 30.0]),
        "occurred_at": [T, "2026-01-09T10:00:20", "2026-01-09T10:00:50", T, "2026-01-09T11:00:00",
                        "2026-01-10T00:00:00"],
    })


def _outcome(db, frame: pd.DataFrame, *, plain: bool, **kwargs) -> tuple:
    """What the write does to `frame` (the general checks alone unless `plain`), rolled back afterwards."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(writes, "PLAIN_EVENTS", plain)
        fresh = iter(range(1, 100))        # the fresh ids of events without one: the same on both ways
        patch.setattr(writes.uuid, "uuid4", lambda: uuid.UUID(int=next(fresh)))
        db.conn.execute("BEGIN")
        try:
            try:
                r = writes.record_events(db, frame.copy(), **kwargs)
                said = ("ok", r.accepted, r.duplicates, r.rejected, r.skipped_no_consent, r.reasons)
            except errors.RetroError as exc:
                said = (type(exc).__name__, str(exc), getattr(exc, "code", None))
            stored = db.execute("SELECT seq, event_id, user_id, movie_id, kind, value, occurred_at, typeof(user_id), "
                                "typeof(movie_id), typeof(value) FROM events ORDER BY seq").fetchall()
            quarantined = db.execute("SELECT target, reason, payload, rejected_at, code FROM rejected_writes "
                                     "ORDER BY reject_id").fetchall()
            return said, stored, quarantined
        finally:
            db.conn.execute("ROLLBACK")


def _same(db, frame: pd.DataFrame, **kwargs) -> tuple:
    general = _outcome(db, frame, plain=False, **kwargs)
    assert _outcome(db, frame, plain=True, **kwargs) == general, frame.to_dict("list")
    return general


def test_a_typed_batch_takes_the_plain_pass_and_is_stored_as_the_general_checks_store_it(events_db, monkeypatch):
    taken = []
    plain = writes._plain_events
    monkeypatch.setattr(writes, "_plain_events", lambda *a: taken.append(plain(*a)) or taken[-1])
    said, stored, quarantined = _same(events_db, base_frame())
    assert said == ("ok", 5, 0, 0, 1, {}) and not quarantined          # user 3's watch: no tracking consent
    assert [row[1:] for row in stored] == [
        ("e1", 1, 1, "impression", 0.0, T, "integer", "integer", "real"),
        ("e2", 1, 2, "click", 1.0, "2026-01-09T10:00:20", "integer", "integer", "real"),
        ("e3", 2, 2, "watch", 3600.0, "2026-01-09T10:00:50", "integer", "integer", "real"),
        ("e4", 2, None, "scroll", 12.0, T, "integer", "null", "real"),
        ("e5", 1, 1, "like", 1.0, "2026-01-09T11:00:00", "integer", "integer", "real")]
    assert taken and all(t is not None for t in taken)               # the plain pass accepted the batch itself


def test_a_retry_of_a_stored_event_is_ignored_on_both_ways(events_db):
    writes.record_events(events_db, base_frame().iloc[:2])
    said, stored, _ = _same(events_db, base_frame())
    assert said == ("ok", 3, 2, 0, 1, {}) and len(stored) == 5


NAN = float("nan")
VALUES = {   # per column: values the plain pass takes, values the general checks refuse, and values of other types
    "event_id": ["e9", "", "e2", "x" * 501, "bad\nid", 7, None, NAN, np.str_("e9"), ["e9"]],
    "user_id": [2, 99, 0, -1, 3, 2**53, 2**70, 2.0, "2", True, None, NAN, np.int64(2)],
    "movie_id": [1, 2, 99, 0, -1, None, 2.0, 2.5, "2", True, NAN, 2**60],
    "kind": ["click", "share", "scroll", "rating", "teleport", "Click", None, 3, np.str_("click"), ["click"]],
    "value": [0.0, -0.0, 1.0, 1_000_000.0, 1_000_000.5, -1.0, NAN, math.inf, 2, "3", None, True],
    "occurred_at": [T, "2026-01-10T00:00:00", "2026-01-10T00:00:01", "1900-01-01T00:00:00", "1899-12-31T23:59:59",
                    "2026-01-09T10:00:00.5", "2026-01-09T10:00:00+02:00", "2026-01-09T10:00:00Z", "2026-01-09 10:00:00",
                    "2026-02-30T00:00:00", "2026-1-9T10:00:00", "2026-01-09T24:00:00", "\u0662026-01-09T10:00:00",
                    "9999-01-01T00:00:00", "NaT", "", "soon", None, pd.Timestamp(T), 5, NAN],
}


@pytest.mark.slow
@pytest.mark.parametrize("column", list(VALUES))
def test_every_value_of_every_column_gives_the_same_outcome(events_db, column):
    """One row's value replaced (the column's type then changes with it), in both modes of handling bad rows."""
    for value in VALUES[column]:
        for row in (1, 3):           # a click, and the scroll (which may have no movie)
            frame = base_frame()
            frame[column] = frame[column].astype(object)
            frame.loc[row, column] = value
            for on_invalid in ("raise", "quarantine"):
                _same(events_db, frame, on_invalid=on_invalid)


def test_repeats_inside_a_batch_go_the_general_way_and_are_handled_alike(events_db):
    retried = base_frame()
    retried.loc[2, "event_id"] = "e1"                                      # a retry inside the batch: stored once
    doubled = base_frame()
    doubled.loc[1, ["user_id", "movie_id", "kind", "value", "occurred_at"]] = [1, 1, "impression", -0.0, T]
    for frame in (retried, doubled):
        for on_invalid in ("raise", "quarantine"):
            _same(events_db, frame, on_invalid=on_invalid)
    assert _same(events_db, doubled, on_invalid="quarantine")[0][3] == 1     # the copy under another id: refused


def test_int_values_and_int64_movies_are_stored_as_floats_and_integers_alike(events_db):
    frame = base_frame().iloc[:3].copy()
    frame["value"] = np.array([0, 1, 3600], dtype=np.int64)
    frame["movie_id"] = np.array([1, 2, 2], dtype=np.int64)
    said, stored, _ = _same(events_db, frame)
    assert said[:2] == ("ok", 3) and {row[-1] for row in stored} == {"real"}


@pytest.mark.slow
@hyp_settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, 5), st.sampled_from(list(VALUES)), st.integers(0, 20)), max_size=3),
       st.lists(st.integers(0, 5), min_size=1, max_size=6, unique=True))
def test_any_batch_of_mixed_rows_gives_the_same_outcome(events_db, changes, rows):
    frame = base_frame().iloc[sorted(rows)].reset_index(drop=True)
    for row, column, pick in changes:
        if row < len(frame):
            frame[column] = frame[column].astype(object)
            frame.loc[row, column] = VALUES[column][pick % len(VALUES[column])]
    _same(events_db, frame, on_invalid="quarantine")
