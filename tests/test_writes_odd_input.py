"""The write API refuses odd input with a validation error (or quarantines it) and never crashes.

Each case below broke a write with a TypeError, ValueError, UnicodeEncodeError or sqlite3 error before: pandas'
nullable and Arrow columns (what `DataFrame.convert_dtypes()` gives an importer), a surrogate in a text or a key,
0-d arrays and other NumPy or pandas objects as values, a signalling NaN, a complex or a time span as a 0/1 flag,
keys JSON cannot take in a quarantined row, and batches of the wrong shape. Found by fuzzing the API.
"""
from __future__ import annotations

import json
from decimal import Decimal

import numpy as np
import pandas as pd
import pytest

from core import errors
from core.store import writes

EV = {"event_id": "e1", "user_id": 1, "movie_id": 1, "kind": "watch", "value": 30.0,
      "occurred_at": "2026-01-09T10:00:00"}
RT = {"user_id": 1, "movie_id": 1, "rating": 7, "rated_at": "2026-01-09T10:00:00"}
CAMPAIGN = {"advertiser": "X", "creative_kind": "product", "product": "P", "bid": 1.0, "daily_budget": 1.0}


def _stored(db, table: str) -> list:
    return db.execute(f"SELECT * FROM {table}").fetchall()


# ------------------------------------------------------------------ valid data in pandas' other column types
def test_convert_dtypes_frames_are_stored_like_plain_ones(small_db):
    """Valid rows in nullable and NA-backed string columns: stored as the same rows in plain columns are."""
    writes.add_movies(small_db, pd.DataFrame([{"movie_id": 7, "title": "A", "year": 1950, "genres": "Drama"}])
                      .convert_dtypes())
    writes.add_movies(small_db, pd.DataFrame({"movie_id": [8], "title": ["B"], "genres": pd.Series(["Drama|Comedy"],
                                                                                                 dtype="string")}))
    assert [r[:4] for r in _stored(small_db, "movies")][-2:] == [(7, "A", 1950, "Drama"), (8, "B", None, "Drama|Comedy")]
    ids = writes.add_users(small_db, pd.DataFrame({"user_id": [5, 6], "age_band": pd.Series(["18-24", None],
                                                                                            dtype="string")}))
    bands = small_db.execute("SELECT user_id, age_band FROM users WHERE user_id IN (5, 6) ORDER BY 1").fetchall()
    assert ids == [5, 6] and bands == [(5, "18-24"), (6, None)]
    writes.add_ad_campaigns(small_db, pd.DataFrame([CAMPAIGN | {"target_genres": "Drama"}]).convert_dtypes())
    assert small_db.execute("SELECT target_genres FROM ad_campaigns").fetchall() == [("Drama",)]
    writes.rate_many(small_db, pd.DataFrame([RT]).assign(rated_at=pd.array([pd.NA], dtype="Int64")))
    assert small_db.execute("SELECT rated_at FROM ratings").fetchall() == [("2026-01-10T00:00:00",)]   # the clock


def test_a_boolean_id_column_is_refused_not_read_as_1(small_db):
    batch = pd.DataFrame([RT, RT]).assign(user_id=pd.array([True, pd.NA], dtype="boolean"))
    with pytest.raises(errors.UnknownUser, match="user_id True is missing or not an integer"):
        writes.rate_many(small_db, batch)
    assert _stored(small_db, "ratings") == []


def test_a_string_column_with_blank_values_is_refused(small_db):
    with pytest.raises(errors.InvalidEventValue, match="event value '' is not a number"):
        writes.record_events(small_db, pd.DataFrame([EV | {"value": ""}]).convert_dtypes())


# ------------------------------------------------------------------ odd values: a clear refusal each
REFUSED = [
    ("created_at with a surrogate", lambda db: writes.add_users(db, [{"created_at": "\ud800"}]),
     errors.InvalidTimestamp, "is not a timestamp"),
    ("title with a surrogate", lambda db: writes.add_movies(db, [{"title": "\ud800", "genres": "Drama"}]),
     errors.ValidationError, "contains control characters"),
    ("movie id with a surrogate", lambda db: writes.record_events(db, [EV | {"movie_id": "\ud800"}]),
     errors.UnknownMovie, "is not an integer"),
    ("a genre that is a number", lambda db: writes.add_movies(db, [{"title": "A", "genres": [1]}]),
     errors.ValidationError, r"unknown genre\(s\) \['1'\]"),
    ("target genres with a number", lambda db: writes.add_ad_campaigns(db, [CAMPAIGN | {"target_genres": [1]}]),
     errors.ValidationError, r"unknown genre\(s\) \['1'\]"),
    ("a signalling NaN rating", lambda db: writes.rate_many(db, [RT | {"rating": Decimal("sNaN")}]),
     errors.InvalidRating, "is not an integer"),
    ("a complex consent flag", lambda db: writes.add_users(db, [{"consent_ad_targeting": 1 + 0j}]),
     errors.ValidationError, r"consent_ad_targeting \(1\+0j\) is not 0/1"),
    ("a time span as consent", lambda db: writes.add_users(db, [{"consent_ad_targeting": np.timedelta64(1, "s")}]),
     errors.ValidationError, "is not 0/1"),
    ("an array as consent", lambda db: writes.add_users(db, [{"consent_ad_targeting": np.array([1])}]),
     errors.ValidationError, "is not 0/1"),
    ("NA as consent", lambda db: writes.add_users(db, [{"consent_ad_targeting": pd.NA}]),
     errors.ValidationError, "is not 0/1"),
    ("an empty array as a kind", lambda db: writes.record_events(db, [EV | {"kind": np.array([])}]),
     errors.UnknownEventKind, "unknown event kind"),
    ("a complex active flag", lambda db: writes.add_ad_campaigns(db, [CAMPAIGN | {"active": 1 + 0j}]),
     errors.ValidationError, r"active \(1\+0j\) is not 0/1"),
    ("a Series as a creative kind", lambda db: writes.add_ad_campaigns(db, [CAMPAIGN | {"creative_kind": pd.Series([1])}]),
     errors.ValidationError, "creative_kind .* is not one of title, product"),
    ("an Arrow int age band", lambda db: writes.add_users(db, pd.DataFrame({"user_id": [7], "age_band": pd.array(
        [1], dtype="int64[pyarrow]")})), errors.ValidationError, "age_band 1 is not one of"),
    ("a column named twice", lambda db: writes.rate_many(db, pd.concat([pd.DataFrame([RT]),
                                                                       pd.DataFrame([RT])[["user_id"]]], axis=1)),
     errors.ValidationError, r"names a column twice: \['user_id'\]"),
    ("a record that is a number", lambda db: writes.rate_many(db, [1]), errors.ValidationError,
     "each record maps column names to values"),
    ("no batch at all", lambda db: writes.record_events(db, None), errors.ValidationError,
     "a batch is a list of records or a DataFrame"),
    ("one record, not a list", lambda db: writes.record_ad_impressions(db, {"user_id": 1}), errors.ValidationError,
     "a batch is a list of records or a DataFrame"),
]


@pytest.mark.parametrize("write, exc, message", [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_odd_values_get_a_validation_error_and_nothing_is_written(small_db, write, exc, message):
    before = [_stored(small_db, t) for t in ("users", "movies", "ratings", "events", "ad_campaigns")]
    with pytest.raises(exc, match=message):
        write(small_db)
    assert [_stored(small_db, t) for t in ("users", "movies", "ratings", "events", "ad_campaigns")] == before


def test_a_0d_array_is_its_value(small_db):
    writes.rate_many(small_db, [RT | {"user_id": np.array(1), "rating": np.array(8)}])
    assert small_db.execute("SELECT user_id, rating FROM ratings").fetchall() == [(1, 8)]


def test_a_quarantined_row_with_keys_json_cannot_take_keeps_them_as_text(small_db):
    """A refused row's payload is JSON: a tuple key (or a surrogate in a key) is kept as its repr."""
    result = writes.rate_many(small_db, [RT, RT | {"rating": {(1, 2): 1}, (3, 4): "x", "\ud800": 5}],
                              on_invalid="quarantine")
    assert (result.accepted, result.rejected) == (1, 1)
    payload = json.loads(small_db.execute("SELECT payload FROM rejected_writes").fetchone()[0])
    assert payload["rating"] == {"(1, 2)": 1} and payload["(3, 4)"] == "x" and payload["'\\ud800'"] == 5
