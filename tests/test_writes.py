"""The validated write API: every rejection names its error and writes nothing; idempotency; quarantine."""
import json
import re
import string

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings as hyp_settings, strategies as st

from core import bounds, errors
from core.store import writes

pytestmark = pytest.mark.both_backends     # the write API's contracts, on SQLite and on PostgreSQL

CLOCK = "2026-01-10T00:00:00"  # the clock of the small_db fixture

TABLES = ("users", "movies", "ratings", "rating_history", "events", "rejected_writes")


def snapshot(db) -> dict:
    """Row count of every table a write can touch."""
    return {t: db.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}


def rows(db, sql, params=()):
    return db.execute(sql, list(params)).fetchall()


def ev(event_id, user_id=1, movie_id=1, kind="click", value=1, occurred_at="2026-01-05T10:00:00"):
    return {"event_id": event_id, "user_id": user_id, "movie_id": movie_id, "kind": kind,
            "value": value, "occurred_at": occurred_at}


def rt(user_id=1, movie_id=1, rating=7, rated_at="2026-01-05T10:00:00"):
    return {"user_id": user_id, "movie_id": movie_id, "rating": rating, "rated_at": rated_at}


# ------------------------------------------------------------------ each rejection, nothing written
BAD_WRITES = {
    "rate-unknown-user": (lambda db: writes.rate(db, 99, 1, 7), errors.UnknownUser, "unknown user 99"),
    "rate-unknown-movie": (lambda db: writes.rate(db, 1, 99, 7), errors.UnknownMovie, "unknown movie 99"),
    "rate-missing-movie": (lambda db: writes.rate(db, 1, None, 7), errors.UnknownMovie, "movie_id is missing"),
    "rating-0": (lambda db: writes.rate(db, 1, 1, 0), errors.InvalidRating, "outside 1..10"),
    "rating-11": (lambda db: writes.rate(db, 1, 1, 11), errors.InvalidRating, "outside 1..10"),
    "rating-7.5": (lambda db: writes.rate(db, 1, 1, 7.5), errors.InvalidRating, "not an integer"),
    "rating-abc": (lambda db: writes.rate(db, 1, 1, "abc"), errors.InvalidRating, "not an integer"),
    "rating-True": (lambda db: writes.rate(db, 1, 1, True), errors.InvalidRating, "not an integer"),
    "rating-None": (lambda db: writes.rate(db, 1, 1, None), errors.InvalidRating, "not an integer"),
    "rating-future": (lambda db: writes.rate(db, 1, 1, 7, rated_at="2026-01-10T00:00:01"),
                      errors.FutureTimestamp, "after the service clock"),
    "rating-bad-ts": (lambda db: writes.rate(db, 1, 1, 7, rated_at="yesterday-ish"),
                      errors.InvalidTimestamp, "not a timestamp"),
    "event-unknown-kind": (lambda db: writes.record_event(db, 1, 1, "teleport"), errors.UnknownEventKind,
                           "unknown event kind 'teleport'"),
    "event-unknown-user": (lambda db: writes.record_event(db, 99, 1, "click"), errors.UnknownUser, "unknown user 99"),
    "event-unknown-movie": (lambda db: writes.record_event(db, 1, 99, "click"), errors.UnknownMovie, "unknown movie 99"),
    "event-no-movie-click": (lambda db: writes.record_event(db, 1, None, "click"), errors.UnknownMovie,
                             "movie_id is missing"),
    "event-negative-watch": (lambda db: writes.record_event(db, 1, 1, "watch", value=-30), errors.InvalidEventValue,
                             "watch time -30"),
    "event-nan-value": (lambda db: writes.record_event(db, 1, 1, "watch", value="lots"), errors.InvalidEventValue,
                        "not a number"),
    "event-future": (lambda db: writes.record_event(db, 1, 1, "click", occurred_at="2026-02-01T00:00:00"),
                     errors.FutureTimestamp, "after the service clock 2026-01-10T00:00:00"),
    "event-bad-ts": (lambda db: writes.record_event(db, 1, 1, "click", occurred_at="31/12/2025 noon"),
                     errors.InvalidTimestamp, "not a timestamp"),
    "event-empty-id": (lambda db: writes.record_event(db, 1, 1, "click", event_id=""), errors.ValidationError,
                       "event_id is empty"),
    "movie-unknown-genre": (lambda db: writes.add_movie(db, "Space Cowboys", 1970, "Western|Space-Opera"),
                            errors.ValidationError, "unknown genre(s) ['Space-Opera']"),
    "movie-empty-title": (lambda db: writes.add_movie(db, "   ", 1970, "Drama"), errors.ValidationError,
                          "title is empty"),
    "movie-bad-year": (lambda db: writes.add_movie(db, "Too Early", 1700, "Drama"), errors.ValidationError,
                       "not a plausible release year"),
    "movie-bad-runtime": (lambda db: writes.add_movie(db, "Short", 1970, "Drama", runtime_min=0),
                          errors.ValidationError, "is not a positive integer"),
    "movie-duplicate-id": (lambda db: writes.add_movie(db, "Again", 1970, "Drama", movie_id=1),
                           errors.ValidationError, "movie 1 already exists"),
    "movie-future": (lambda db: writes.add_movie(db, "Tomorrow", 1970, "Drama", added_at="2026-01-11T00:00:00"),
                     errors.FutureTimestamp, "after the service clock"),
    "movie-bad-ts": (lambda db: writes.add_movie(db, "Whenever", 1970, "Drama", added_at="not a date"),
                     errors.InvalidTimestamp, "not a timestamp"),
    "user-duplicate-id": (lambda db: writes.add_user(db, user_id=1), errors.ValidationError, "user 1 already exists"),
    "user-duplicate-in-batch": (lambda db: writes.add_users(db, [{"user_id": 5}, {"user_id": 5}]),
                                errors.ValidationError, "user 5 appears twice in the batch"),
    "user-negative-id": (lambda db: writes.add_user(db, user_id=-3), errors.ValidationError,
                         "is not a positive integer"),
    "user-future": (lambda db: writes.add_user(db, user_id=9, created_at="2027-01-01T00:00:00"),
                    errors.FutureTimestamp, "after the service clock"),
    "user-bad-ts": (lambda db: writes.add_user(db, user_id=9, created_at="soon"), errors.InvalidTimestamp,
                    "not a timestamp"),
    # Issue 11: values that used to be stored and then blocked every pipeline run.
    "rating-year-minus-1": (lambda db: writes.rate(db, 1, 1, 7, rated_at="-1"), errors.InvalidTimestamp,
                            "between 1900-01-01 and the service clock"),
    "event-year-minus-1": (lambda db: writes.record_event(db, 1, 1, "click", occurred_at="-1"),
                           errors.InvalidTimestamp, "not a timestamp"),
    "event-year-1899": (lambda db: writes.record_event(db, 1, 1, "click", occurred_at="1899-12-31T23:59:59"),
                        errors.InvalidTimestamp, "not a timestamp"),
    "event-nan-timestamp": (lambda db: writes.record_event(db, 1, 1, "click", occurred_at=float("nan")),
                            errors.InvalidTimestamp, "not a timestamp"),
    "event-nan-watch": (lambda db: writes.record_event(db, 1, 1, "watch", value=float("nan")),
                        errors.InvalidEventValue, "not a number"),
    "event-inf-watch": (lambda db: writes.record_event(db, 1, 1, "watch", value=float("inf")),
                        errors.InvalidEventValue, "not a number"),
    "event-huge-watch": (lambda db: writes.record_event(db, 1, 1, "watch", value=1e300),
                         errors.InvalidEventValue, "out of range"),
    "event-nul-id": (lambda db: writes.record_event(db, 1, 1, "click", event_id="a\x00b"), errors.ValidationError,
                     "control characters"),
    "rate-huge-user": (lambda db: writes.rate(db, 2**70, 1, 7), errors.UnknownUser, "not an integer"),
    "rating-nan": (lambda db: writes.rate(db, 1, 1, float("nan")), errors.InvalidRating, "not an integer"),
    "user-id-2**63-1": (lambda db: writes.add_user(db, user_id=2**63 - 1), errors.ValidationError,
                        "is not a positive integer (ids are 1..9007199254740991)"),
    "user-id-2**63": (lambda db: writes.add_user(db, user_id=2**63), errors.ValidationError, "is not a positive integer"),
    "user-id-1.5": (lambda db: writes.add_user(db, user_id=1.5), errors.ValidationError, "is not a positive integer"),
    "user-id-nan": (lambda db: writes.add_user(db, user_id=float("nan")), errors.ValidationError,
                    "is not a positive integer"),
    "movie-nul-title": (lambda db: writes.add_movie(db, "\x00Silent", 1970, "Drama"), errors.ValidationError,
                        "control characters"),
    "movie-newline-title": (lambda db: writes.add_movie(db, "Two\nLines", 1970, "Drama"), errors.ValidationError,
                            "control characters"),
    "movie-nan-year": (lambda db: writes.add_movie(db, "When", float("nan"), "Drama"), errors.ValidationError,
                       "not a plausible release year"),
}


@pytest.mark.parametrize("case", list(BAD_WRITES))
def test_invalid_write_raises_named_error_and_writes_nothing(small_db, case):
    call, exc, fragment = BAD_WRITES[case]
    before = snapshot(small_db)
    with pytest.raises(exc) as info:
        call(small_db)
    assert fragment in str(info.value)
    assert snapshot(small_db) == before
    assert before["rejected_writes"] == 0  # raise mode never quarantines


def test_named_errors_are_validation_errors():
    for exc in (errors.UnknownUser, errors.UnknownMovie, errors.InvalidRating, errors.UnknownEventKind,
                errors.InvalidEventValue, errors.FutureTimestamp, errors.InvalidTimestamp):
        assert issubclass(exc, errors.ValidationError) and issubclass(exc, ValueError)


def test_one_bad_rating_rejects_the_whole_batch(small_db):
    before = snapshot(small_db)
    batch = [rt(1, 1, 7), rt(2, 1, 8), rt(1, 2, 11), rt(2, 2, 5)]
    with pytest.raises(errors.InvalidRating, match=r"rating 11 is outside 1\.\.10 \(1 of 4 ratings invalid; nothing written\)"):
        writes.rate_many(small_db, batch)
    assert snapshot(small_db) == before


def test_one_bad_event_rejects_the_whole_batch(small_db):
    before = snapshot(small_db)
    batch = [ev("a"), ev("b", kind="watch", value=600), ev("c", kind="bogus"), ev("d", kind="scroll", movie_id=None)]
    with pytest.raises(errors.UnknownEventKind, match=r"\(1 of 4 events invalid; nothing written\)"):
        writes.record_events(small_db, batch)
    assert snapshot(small_db) == before


def test_an_unhashable_kind_is_an_unknown_kind_not_a_crash(small_db):
    """A kind that is a list (a JSON client's mistake) was refused as unknown, then broke the in-batch duplicate
    check with a TypeError; it is refused (or quarantined) like any other unknown kind."""
    before = snapshot(small_db)
    batch = [ev("a"), ev("b", kind=["click"])]
    with pytest.raises(errors.UnknownEventKind, match=r"unknown event kind \['click'\]"):
        writes.record_events(small_db, batch)
    assert snapshot(small_db) == before
    result = writes.record_events(small_db, batch, on_invalid="quarantine")
    assert (result.accepted, result.rejected) == (1, 1)
    assert small_db.execute("SELECT code FROM rejected_writes").fetchall() == [("unknown_event_kind",)]


def test_batch_error_reports_first_bad_row_and_count(small_db):
    batch = [rt(1, 1, 7), rt(99, 1, 7), rt(1, 2, 0)]
    with pytest.raises(errors.UnknownUser) as info:
        writes.rate_many(small_db, batch)
    assert str(info.value) == "unknown user 99 (2 of 3 ratings invalid; nothing written)"


def test_bad_movie_in_batch_rejects_all_movies(small_db):
    before = snapshot(small_db)
    with pytest.raises(errors.ValidationError, match="1 of 2 movies invalid"):
        writes.add_movies(small_db, [{"title": "Good One", "year": 1955, "genres": "Drama"},
                                     {"title": "Bad One", "year": 1955, "genres": "Cyberpunk"}])
    assert snapshot(small_db) == before


# ------------------------------------------------------------------ successful writes
def test_add_users_and_movies_assign_ids_and_defaults(small_db):
    assert writes.add_users(small_db, [{}, {}]) == [3, 4]
    assert rows(small_db, "SELECT created_at, consent_tracking, source FROM users WHERE user_id = 3") == [(CLOCK, 1, "sim")]
    mid = writes.add_movie(small_db, "  Return to Tucson  ", 1958, ["Western", "Drama"])
    assert mid == 3
    assert rows(small_db, "SELECT title, year, genres, runtime_min, added_at, source FROM movies WHERE movie_id = 3") == [
        ("Return to Tucson", 1958, "Western|Drama", 100, CLOCK, "manual")]


def test_rate_defaults_to_the_service_clock(small_db):
    result = writes.rate(small_db, 1, 2, 9)
    assert (result.accepted, result.rejected) == (1, 0)
    assert rows(small_db, "SELECT user_id, movie_id, rating, rated_at FROM ratings") == [(1, 2, 9, CLOCK)]


def test_rerating_replaces_current_rating_and_keeps_history(small_db):
    writes.rate(small_db, 1, 1, 4, rated_at="2026-01-02T10:00:00")
    writes.rate(small_db, 1, 1, 9, rated_at="2026-01-03T10:00:00")
    assert rows(small_db, "SELECT user_id, movie_id, rating, rated_at FROM ratings") == [(1, 1, 9, "2026-01-03T10:00:00")]
    assert rows(small_db, "SELECT rating, rated_at FROM rating_history ORDER BY history_id") == [
        (4, "2026-01-02T10:00:00"), (9, "2026-01-03T10:00:00")]


def test_record_events_is_idempotent_on_event_id(small_db):
    batch = [ev("e1"), ev("e2", kind="watch", value=1200), ev("e3", kind="scroll", movie_id=None, value=14)]
    first = writes.record_events(small_db, batch)
    assert (first.accepted, first.duplicates) == (3, 0)
    dump = rows(small_db, "SELECT * FROM events ORDER BY seq")
    second = writes.record_events(small_db, batch)
    assert (second.accepted, second.duplicates, second.rejected) == (0, 3, 0)
    assert rows(small_db, "SELECT * FROM events ORDER BY seq") == dump
    # A retry inside one batch counts once, too; a new id alongside it is stored.
    third = writes.record_events(small_db, [ev("e4", occurred_at="2026-01-05T11:00:00"),
                                            ev("e4", occurred_at="2026-01-05T11:00:00"), ev("e1")])
    assert (third.accepted, third.duplicates) == (1, 2)
    assert rows(small_db, "SELECT event_id FROM events ORDER BY seq") == [("e1",), ("e2",), ("e3",), ("e4",)]


def test_events_store_exact_values(small_db):
    writes.record_events(small_db, [ev("w", kind="watch", value=0), ev("s", user_id=2, kind="scroll", movie_id=None, value=12)])
    assert rows(small_db, "SELECT event_id, user_id, movie_id, kind, value, occurred_at FROM events ORDER BY seq") == [
        ("w", 1, 1, "watch", 0.0, "2026-01-05T10:00:00"), ("s", 2, None, "scroll", 12.0, "2026-01-05T10:00:00")]


def test_double_logged_event_under_a_new_id_is_refused(small_db):
    with pytest.raises(errors.ValidationError, match="duplicate of another event in the batch"):
        writes.record_events(small_db, [ev("a"), ev("b")])   # same signal, two ids
    assert rows(small_db, "SELECT count(*) FROM events") == [(0,)]
    result = writes.record_events(small_db, [ev("a"), ev("b")], on_invalid="quarantine")
    assert (result.accepted, result.rejected) == (1, 1)
    assert rows(small_db, "SELECT target, json_extract(payload, '$.event_id') FROM rejected_writes") == [("events", "b")]


def test_event_without_id_gets_a_generated_one(small_db):
    writes.record_event(small_db, 1, 1, "like")
    writes.record_event(small_db, 1, 1, "like")
    ids = [r[0] for r in rows(small_db, "SELECT event_id FROM events")]
    assert len(ids) == 2 and len(set(ids)) == 2 and all(len(i) == 32 for i in ids)


@pytest.mark.parametrize("raw, stored", [
    ("2026-01-05T10:00:00+02:00", "2026-01-05T08:00:00"),
    ("2026-01-05T10:00:00-05:30", "2026-01-05T15:30:00"),
    ("2026-01-05T23:30:00-01:00", "2026-01-06T00:30:00"),
    ("2026-01-05T10:00:00Z", "2026-01-05T10:00:00"),
    ("2026-01-05T10:00:00.900", "2026-01-05T10:00:00"),
    ("2026-01-05 10:00:00", "2026-01-05T10:00:00"),
    ("2026-01-05", "2026-01-05T00:00:00"),
])
def test_timestamps_normalize_to_utc_iso(small_db, raw, stored):
    writes.rate(small_db, 1, 1, 6, rated_at=raw)
    writes.record_event(small_db, 1, 1, "click", occurred_at=raw, event_id="x")
    assert rows(small_db, "SELECT rated_at FROM ratings") == [(stored,)]
    assert rows(small_db, "SELECT occurred_at FROM events") == [(stored,)]


def test_mixed_offsets_in_one_batch(small_db):
    writes.rate_many(small_db, [rt(1, 1, 5, "2026-01-05T10:00:00+02:00"), rt(2, 1, 6, "2026-01-05T10:00:00-03:00"),
                                rt(1, 2, 7, "2026-01-05T10:00:00")])
    assert rows(small_db, "SELECT user_id, movie_id, rated_at FROM ratings ORDER BY user_id, movie_id") == [
        (1, 1, "2026-01-05T08:00:00"), (1, 2, "2026-01-05T10:00:00"), (2, 1, "2026-01-05T13:00:00")]


def test_offset_is_applied_before_the_future_check(small_db):
    # 23:00 at -02:00 is 01:00 UTC the next day, after the clock (2026-01-10T00:00:00).
    with pytest.raises(errors.FutureTimestamp, match="2026-01-10T01:00:00"):
        writes.rate(small_db, 1, 1, 6, rated_at="2026-01-09T23:00:00-02:00")
    # 01:00 at +02:00 is 23:00 UTC the day before: accepted.
    writes.rate(small_db, 1, 1, 6, rated_at="2026-01-10T01:00:00+02:00")
    assert rows(small_db, "SELECT rated_at FROM ratings") == [("2026-01-09T23:00:00",)]


# ------------------------------------------------------------------ quarantine mode
def test_quarantine_writes_valid_rows_and_keeps_invalid_with_reason(small_db):
    result = writes.rate_many(small_db, [rt(1, 1, 7), rt(1, 2, 55), rt(99, 1, 3), rt(2, 2, 8)], on_invalid="quarantine")
    assert (result.accepted, result.rejected) == (2, 2)
    assert rows(small_db, "SELECT user_id, movie_id, rating FROM ratings ORDER BY user_id, movie_id") == [(1, 1, 7), (2, 2, 8)]
    assert rows(small_db, "SELECT count(*) FROM rating_history") == [(2,)]
    rejected = rows(small_db, "SELECT target, reason, payload, rejected_at FROM rejected_writes ORDER BY reject_id")
    assert [(t, r) for t, r, _, _ in rejected] == [("ratings", "rating 55 is outside 1..10"), ("ratings", "unknown user 99")]
    assert json.loads(rejected[0][2])["rating"] == 55 and json.loads(rejected[1][2])["user_id"] == 99
    assert {ts for *_, ts in rejected} == {CLOCK}


def test_quarantine_events(small_db):
    batch = [ev("ok1"), ev("neg", kind="watch", value=-5), ev("nouser", user_id=None), ev("ok2", kind="share"),
             ev("ghost", movie_id=-1)]
    result = writes.record_events(small_db, batch, on_invalid="quarantine")
    assert (result.accepted, result.rejected, result.duplicates) == (2, 3, 0)
    assert rows(small_db, "SELECT event_id FROM events ORDER BY seq") == [("ok1",), ("ok2",)]
    reasons = [r[0] for r in rows(small_db, "SELECT reason FROM rejected_writes ORDER BY reject_id")]
    assert len(reasons) == 3
    assert re.fullmatch(r"watch time -5(\.0)? s is negative", reasons[0])
    # (the missing id is shown as None or nan depending on the column dtype)
    assert re.fullmatch(r"user_id .* is missing or not an integer", reasons[1])
    assert reasons[2] == "unknown movie -1"
    assert all(r[0] == "events" for r in rows(small_db, "SELECT target FROM rejected_writes"))


def test_quarantine_of_an_all_good_batch_rejects_nothing(small_db):
    result = writes.rate_many(small_db, [rt(1, 1, 1), rt(2, 1, 10)], on_invalid="quarantine")
    assert (result.accepted, result.rejected, result.reasons) == (2, 0, {})
    assert snapshot(small_db)["rejected_writes"] == 0


# ------------------------------------------------------------------ consent
def test_no_tracking_consent_skips_events_but_keeps_ratings(small_db):
    small_db.execute("UPDATE users SET consent_tracking = 0 WHERE user_id = 2")
    result = writes.record_events(small_db, [ev("u1", user_id=1), ev("u2a", user_id=2), ev("u2b", user_id=2, kind="watch", value=60)])
    assert (result.accepted, result.skipped_no_consent, result.duplicates, result.rejected) == (1, 2, 0, 0)
    assert rows(small_db, "SELECT user_id FROM events") == [(1,)]
    r = writes.rate(small_db, 2, 1, 8)
    assert r.accepted == 1
    assert rows(small_db, "SELECT user_id, movie_id, rating FROM ratings") == [(2, 1, 8)]
    assert rows(small_db, "SELECT user_id, rating FROM rating_history") == [(2, 8)]


# ------------------------------------------------------------------ properties
RATING_DB_SETTINGS = dict(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@hyp_settings(**RATING_DB_SETTINGS)
@given(value=st.integers(min_value=1, max_value=10))
def test_any_integer_rating_1_to_10_round_trips(small_db, value):
    n_hist = small_db.execute("SELECT count(*) FROM rating_history").fetchone()[0]
    result = writes.rate(small_db, 1, 1, value)
    assert result.accepted == 1
    assert rows(small_db, "SELECT rating, typeof(rating) FROM ratings WHERE user_id = 1 AND movie_id = 1") == [(value, "integer")]
    assert small_db.execute("SELECT count(*) FROM rating_history").fetchone()[0] == n_hist + 1


def _not_a_valid_rating():
    """Values outside the rating domain (whole-number floats in 1..10 are accepted as ints by design, so excluded)."""
    return st.one_of(
        st.integers().filter(lambda x: not 1 <= x <= 10),
        st.floats(allow_nan=True, allow_infinity=True).filter(lambda x: not (x == x and x.is_integer() and 1 <= x <= 10)),
        st.text(alphabet=string.ascii_letters + " -_", min_size=0, max_size=8),
        st.booleans(),
        st.none(),
    )


@hyp_settings(**RATING_DB_SETTINGS)
@given(value=_not_a_valid_rating())
def test_anything_else_is_rejected(small_db, value):
    before = snapshot(small_db)
    with pytest.raises(errors.InvalidRating):
        writes.rate(small_db, 2, 2, value)
    assert snapshot(small_db) == before


# ------------------------------------------------------------------ mixed given and omitted ids
def test_mixed_auto_and_explicit_ids_never_collide(small_db):
    # Users 1 and 2 exist; the omitted id is numbered after the largest existing *or given* id (3) → 4.
    assert writes.add_users(small_db, [{"user_id": None}, {"user_id": 3}]) == [4, 3]
    assert {r[0] for r in rows(small_db, "SELECT user_id FROM users")} == {1, 2, 3, 4}
    ids = writes.add_movies(small_db, [{"title": "Auto", "year": 1960, "genres": "Drama"},
                                       {"movie_id": 3, "title": "Given", "year": 1961, "genres": "Drama"}])
    assert ids == [4, 3]


def test_ids_of_deleted_users_are_never_reused(small_db):
    # Users 1, 2 exist; 3 is created and then deleted (an erasure); the next new user must not become 3 again.
    assert writes.add_user(small_db) == 3
    small_db.execute("DELETE FROM users WHERE user_id = 3")
    assert writes.add_user(small_db) == 4


def test_a_refused_huge_id_leaves_fresh_ids_working(small_db):
    """Issue 11: add_user(user_id=2**63-1) was accepted, then every add_user() without an id overflowed."""
    with pytest.raises(errors.ValidationError):
        writes.add_user(small_db, user_id=2**63 - 1)
    assert writes.add_user(small_db) == 3
    # A huge id planted around the API (an older version, a hand edit) is ignored when numbering new users.
    small_db.execute("INSERT INTO users(user_id, created_at) VALUES (?, ?)", [2**63 - 1, "2026-01-01T00:00:00"])
    assert writes.highest_id(small_db, "users", "user_id") == 3
    assert writes.add_user(small_db) == 4


def test_bad_texts_flags_exactly_what_control_chars_and_the_length_limit_flag():
    """The column-at-once check (record_events' event ids, titles, advertisers, products) against the per-text
    definition, on every control-like character class and the length limit."""
    texts = ["plain", "tab\there", "nul\x00", "del\x7f", "c1\x85", "surrogate\ud800", "é ü ✓ 🎬", "\u200b zero-width",
             "x" * bounds.MAX_TEXT, "x" * (bounds.MAX_TEXT + 1), ""]
    expected = [bool(bounds.control_chars(t)) or len(t) > bounds.MAX_TEXT for t in texts]
    assert bounds.bad_texts(pd.Series(texts, dtype=object)).tolist() == expected
    assert expected == [False, True, True, True, True, True, False, False, False, True, False]
    # Clean batches take the joined-text shortcut: only the lengths are left, and still every one is checked.
    clean = ["plain", "é ü ✓ 🎬", "x" * bounds.MAX_TEXT, "x" * (bounds.MAX_TEXT + 1), "", "d00001-0000001"]
    assert bounds.bad_texts(pd.Series(clean, dtype=object)).tolist() == [False, False, False, True, False, False]
    # A value that is not text (a number, a missing one) cannot be joined: the per-value way, as before.
    mixed = pd.Series(["ok", 7, None, "bad\x00"], dtype=object)
    assert bounds.bad_texts(mixed).tolist() == [False, False, False, True]


@pytest.mark.parametrize("column", [
    pd.Series(["a", None, float("nan")]), pd.Series(["a", None], dtype="string"), pd.Series([1, None], dtype="Int64"),
    pd.Series([1.0, float("nan")]), pd.Series([1, 2]), pd.Series([True, False]),
    pd.Series(["a", None, pd.NA, float("nan"), pd.NaT, 0], dtype=object),
    pd.Series([pd.Timestamp("2020-01-01"), None]), pd.Series([1.5, None], dtype="Float64"), pd.Series([], dtype=object)])
def test_missing_mask_is_is_missing_of_every_value(column):
    """The column-at-once shortcut (numbers and NaN-backed text cannot hold None or NA) says what is_missing says
    value by value, on every dtype the writes meet."""
    column.index = column.index + 10           # the mask keeps the column's index
    mask = bounds.missing_mask(column)
    assert mask.index.equals(column.index) and mask.dtype == bool
    assert mask.tolist() == column.map(bounds.is_missing).astype(bool).tolist()


def test_events_without_an_id_get_a_fresh_one_each_and_numbers_keep_their_text(small_db):
    """None and NaN ids are replaced by distinct fresh ids; a numeric id is stored as its str()."""
    result = writes.record_events(small_db, [ev(None), ev(float("nan"), kind="watch", value=60), ev(7, value=2)])
    ids = [r[0] for r in rows(small_db, "SELECT event_id FROM events ORDER BY seq")]
    assert result.accepted == 3 and ids[2] == "7"
    assert len(set(ids[:2])) == 2 and all(len(i) == 32 and int(i, 16) >= 0 for i in ids[:2])


def test_an_event_id_with_a_surrogate_is_refused_with_a_clear_error(small_db):
    with pytest.raises(errors.ValidationError, match="control characters"):
        writes.record_events(small_db, [ev("a\ud800b")])
    assert rows(small_db, "SELECT count(*) FROM events") == [(0,)]


@pytest.mark.sqlite_only   # the constraint's text: SQLite's own CHECK (PostgreSQL runs the same expression)
def test_the_events_kind_check_refuses_what_the_api_refuses(small_db):
    """The store's last line of defence, written as ORs for speed (an IN list is rebuilt per row): every kind the
    write API knows passes, anything else is refused even by a writer that bypasses the API."""
    import sqlite3
    conn = small_db.conn
    for i, kind in enumerate(writes.EVENT_KINDS):
        conn.execute("INSERT INTO events(event_id, user_id, movie_id, kind, value, occurred_at) "
                     "VALUES (?, 1, 1, ?, 1, '2026-01-05T00:00:00')", [f"ok-{i}", kind])
    for bad in ("Watch", "view", "", "watch "):
        with pytest.raises(sqlite3.IntegrityError, match="CHECK constraint failed"):
            conn.execute("INSERT INTO events(event_id, user_id, movie_id, kind, value, occurred_at) "
                         "VALUES ('bad', 1, 1, ?, 1, '2026-01-05T00:00:00')", [bad])
    assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == len(writes.EVENT_KINDS) == 7
