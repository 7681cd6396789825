"""Online quality uses the ranking metrics' formulas, over every served user (a hand-computed day)."""
import json

import pytest

from core.monitoring import monitoring
from core.store import opsdb, writes
from core.training import metrics

pytestmark = pytest.mark.both_backends     # tests on `settings`/`db` run on SQLite and on PostgreSQL

DAY = "2026-01-05"
SERVED_AT = "2026-01-05T00:00:00"


def test_all_users_metrics_count_a_user_without_relevant_items_as_a_miss():
    lists, relevant = [[1, 2], [3, 4], [5, 6]], [{2}, {9}, set()]
    assert metrics.hit_rate_at_k(lists, relevant, k=2) == 0.5                      # users 1 and 2 only
    assert metrics.hit_rate_all_users_at_k(lists, relevant, k=2) == pytest.approx(1 / 3)
    assert metrics.precision_at_k(lists, relevant, k=2) == 0.25                    # (1/2 + 0) / 2
    assert metrics.precision_all_users_at_k(lists, relevant, k=2) == pytest.approx(1 / 6)
    assert metrics.hit_rate_all_users_at_k([[2**53 - 1, 7]], [{2**53 - 1}], k=2) == 1.0   # raw catalog ids
    assert metrics.hit_rate_all_users_at_k([[1, 1]], [{1}], k=2) == 1.0
    assert metrics.precision_all_users_at_k([[1, 1]], [{1}], k=2) == 0.5           # a repeat counts once


@pytest.fixture
def served_day(settings, db):
    """Four users served at the start of DAY (k = 3), Top 50 = 1..5.

    user 1  model [6, 7, 8]   watched 1 before DAY; on DAY watches 7 and 1   model: hit, 1/3   control [2,3,4]: miss
    user 2  model [1, 6, 7]   watches nothing                                model: miss, 0    control [1,2,3]: miss
    user 3  model [2, 3, 4]   watches 2 and 3                                model: hit, 2/3   control [1,2,3]: hit, 2/3
    user 4  cold-start Top 50 watches 3                                      (no model list)   control [1,2,3]: hit, 1/3
    """
    opsdb.set_meta(db, "clock", "2026-01-10T00:00:00")
    writes.add_users(db, [{"user_id": u, "created_at": "2025-12-01T00:00:00"} for u in (1, 2, 3, 4)])
    writes.add_movies(db, [{"movie_id": m, "title": f"Film {m}", "year": 1960, "genres": "Drama"} for m in range(1, 9)])
    watch = lambda u, m, at: {"user_id": u, "movie_id": m, "kind": "watch", "value": 3000, "occurred_at": at}  # noqa: E731
    writes.record_events(db, [watch(1, 1, "2026-01-04T20:00:00"), watch(1, 7, "2026-01-05T10:00:00"),
                              watch(1, 1, "2026-01-05T11:00:00"), watch(3, 2, "2026-01-05T12:00:00"),
                              watch(3, 3, "2026-01-05T13:00:00"), watch(4, 3, "2026-01-05T14:00:00"),
                              watch(2, 5, "2026-01-06T09:00:00")])          # the next day: not counted
    served = [(1, "model", [6, 7, 8], [0.9, 0.8, 0.7]), (2, "model", [1, 6, 7], [0.6, 0.5, 0.4]),
              (3, "model", [2, 3, 4], [0.3, 0.2, 0.1]), (4, "top50:cold-start", [1, 2, 3], [0, 0, 0])]
    db.conn.executemany("INSERT INTO served_recommendations(user_id, served_at, path, model_version, data_version, "
                        "movie_ids, scores) VALUES (?, ?, ?, NULL, NULL, ?, ?)",
                        [(u, SERVED_AT, p, json.dumps(ids), json.dumps(sc)) for u, p, ids, sc in served])
    monitoring.record_top50(settings, DAY, [1, 2, 3, 4, 5])
    return settings


def test_online_quality_by_hand(served_day):
    q = monitoring.online_quality(served_day, DAY, k=3)
    assert q["users_served"] == 4 and q["users_model"] == 3
    assert q["paths"] == {"model": 3, "top50:cold-start": 1}
    assert q["hit_rate_model"] == pytest.approx(2 / 3)                  # users 1 and 3 of 1, 2, 3
    assert q["precision_model"] == pytest.approx((1 / 3 + 0 + 2 / 3) / 3)
    assert q["hit_rate_top50"] == pytest.approx(2 / 4)                  # users 3 and 4 of all four
    assert q["precision_top50"] == pytest.approx((0 + 0 + 2 / 3 + 1 / 3) / 4)
    assert q["score_p50"] == pytest.approx(0.5)
    # The offline definition skips user 2 (nothing watched): the two differ by exactly that denominator.
    assert metrics.hit_rate_at_k([[6, 7, 8], [1, 6, 7], [2, 3, 4]], [{1, 7}, set(), {2, 3}], k=3) == 1.0


def test_a_day_nobody_was_served_has_no_rate(settings, db):
    opsdb.set_meta(db, "clock", "2026-01-10T00:00:00")
    q = monitoring.online_quality(settings, DAY, k=3)
    assert q["users_served"] == 0 and q["hit_rate_model"] is None and q["precision_top50"] is None


def test_online_by_day_reads_days_whose_json_holds_nan(settings, db):
    """A monitored day's online JSON may hold NaN (Python's JSON dialect: a rate of an empty arm); PostgreSQL's jsonb
    refuses it, so the history is parsed in Python on both backends (it failed on PostgreSQL)."""
    from core.store import mlopsdb
    with mlopsdb.write_session(settings) as mdb:
        for day, online in (("2026-01-05", {"users_served": 4, "hit_rate_model": 0.5, "hit_rate_top50": float("nan")}),
                            ("2026-01-06", {"users_served": 0, "hit_rate_model": None}), ("2026-01-07", None)):
            mdb.execute("INSERT INTO monitor_days(day, computed_at, online, classification) VALUES (?, ?, ?, ?)",
                        [day, day + "T23:59:59", None if online is None else json.dumps(online), "stable"])
    frame = monitoring.online_by_day(settings)
    assert list(frame["day"].dt.strftime("%Y-%m-%d")) == ["2026-01-05", "2026-01-06", "2026-01-07"]
    assert frame["users_served"].tolist()[:2] == [4.0, 0.0] and frame["hit_rate_model"].iloc[0] == 0.5
    assert frame["hit_rate_top50"].isna().all() and frame["hit_rate_model"].iloc[1:].isna().all()
