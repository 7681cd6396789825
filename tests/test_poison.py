"""The pipeline cannot be poisoned (issue 11).

Rows that today's write API refuses can still be in a store: written by an older version or by
hand. Each kind is planted directly in SQLite; the ETL must quarantine it with a reason and go on,
and `retrain` and a closed-loop `simulate` day must still complete — on every later run too.
"""
import sqlite3

import pytest
from conftest import private_copy

from core.warehouse import etl, warehouse
from core.simulation import loop, simulation
from core.training import pipeline
from core.settings import load_settings

pytestmark = pytest.mark.slow   # etl + retrain + two closed-loop days per planted row

EV = "INSERT INTO events(event_id, user_id, movie_id, kind, value, occurred_at) VALUES (?,?,?,?,?,?)"
RH = "INSERT INTO rating_history(user_id, movie_id, rating, rated_at) VALUES (?,?,?,?)"
BIG = 2**63 - 1

# name -> (statements, the quarantine reason the bad row must get, or None when it is not a fact row)
POISON = {
    "year -1 timestamp": ([(EV, ["p1", 1, 1, "click", 1, "-001-01-01T00:00:00"])], "malformed timestamp"),
    "year 1 timestamp": ([(EV, ["p1", 1, 1, "click", 1, "0001-01-01T00:00:00"])], "malformed timestamp"),
    "timestamp as a number": ([(EV, ["p1", 1, 1, "click", 1, 1e13])], "malformed timestamp"),
    "NaN watch value (text)": ([(EV, ["p1", 1, 1, "watch", "NaN", "2026-01-05T10:00:00"])], "malformed value"),
    "text watch value": ([(EV, ["p1", 1, 1, "watch", "abc", "2026-01-05T10:00:00"])], "malformed value"),
    "huge watch value": ([(EV, ["p1", 1, 1, "watch", 1e308, "2026-01-05T10:00:00"])], "value out of range"),
    "infinite value": ([(EV, ["p1", 1, 1, "watch", float("inf"), "2026-01-05T10:00:00"])], "value out of range"),
    "fractional user id": ([(EV, ["p1", 1.5, 1, "click", 1, "2026-01-05T10:00:00"])], "orphan user id"),
    "text user id": ([(EV, ["p1", "abc", 1, "click", 1, "2026-01-05T10:00:00"])], "missing user id"),
    "user id 2**63-1 with events": ([
        ("INSERT INTO users(user_id, created_at) VALUES (?, ?)", [BIG, "2026-01-02T00:00:00"]),
        (EV, ["p1", BIG, 1, "click", 1, "2026-01-05T10:00:00"])], "id out of range"),
    "movie id 2**63-1 in the catalog": ([
        ("INSERT INTO movies(movie_id, title, year, genres, added_at) VALUES (?,?,?,?,?)",
         [BIG, "Huge", 1960, "Drama", "2026-01-01T00:00:00"]),
        (EV, ["p1", 1, BIG, "click", 1, "2026-01-05T10:00:00"])], "id out of range"),
    "NUL in a title": ([("INSERT INTO movies(movie_id, title, year, genres, added_at) VALUES (?,?,?,?,?)",
                         [5000, "\x00Nul", 1960, "Drama", "2026-01-01T00:00:00"])], None),
    "user created in year -1": ([("INSERT INTO users(user_id, created_at) VALUES (?, ?)",
                                  [5001, "-001-01-01T00:00:00"])], None),
    "movie added at garbage": ([("INSERT INTO movies(movie_id, title, year, genres, added_at) VALUES (?,?,?,?,?)",
                                 [5002, "Garbage", 1960, "Drama", "soon"])], None),
    "fractional rating": ([(RH, [1, 1, 5.5, "2026-01-05T10:00:00"])], "rating out of range"),
    "rating in year -1": ([(RH, [1, 1, 5, "-001-01-01T00:00:00"])], "malformed timestamp"),
    "control character in a kind": ([(EV, ["p1", 1, 1, "cli\x00ck", 1, "2026-01-05T10:00:00"])], "unknown kind"),
    "payload that is not JSON": ([("INSERT INTO rejected_writes(target, reason, payload, rejected_at) VALUES (?,?,?,?)",
                                   ["events", "x", "{not json", "2026-01-05T10:00:00"])], "rejected at ingestion"),
    "reject stamped in year -1": ([("INSERT INTO rejected_writes(target, reason, payload, rejected_at) VALUES (?,?,?,?)",
                                    ["events", "x", "{}", "-001-01-01T00:00:00"])], "rejected at ingestion"),
}


def _plant(settings, statements):
    conn = sqlite3.connect(settings.ops_db, isolation_level=None)
    conn.execute("PRAGMA foreign_keys=OFF")
    conn.execute("PRAGMA ignore_check_constraints=ON")
    for sql, params in statements:
        conn.execute(sql, params)
    conn.close()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    settings = load_settings(tmp_path_factory.mktemp("poison_base"))
    simulation.init_world(settings, seed=5, users=150, movies=80, days=8)
    pipeline.retrain(settings, trigger="test", with_ranker=False)
    return settings


@pytest.mark.slow
@pytest.mark.parametrize("name", list(POISON))
def test_a_planted_bad_row_is_quarantined_and_the_pipeline_goes_on(trained, tmp_path, name):
    settings = private_copy(trained, tmp_path / "w")
    statements, reason = POISON[name]
    _plant(settings, statements + [(EV, ["good", 1, 2, "click", 1, "2026-01-08T09:00:00"])])  # so a load happens

    result = etl.run_etl(settings)
    assert result.status == "loaded"
    if reason is not None:
        with warehouse.session(settings) as con:
            reasons = [r for (r,) in con.execute("SELECT reason FROM quarantine WHERE data_version = ?",
                                                 [result.data_version]).fetchall()]
        assert any(r.startswith(reason) for r in reasons), reasons
    # Nothing out of range reached the facts.
    with warehouse.session(settings) as con:
        assert con.execute("SELECT count(*) FROM fact_interaction WHERE occurred_at < TIMESTAMP '1900-01-01' "
                           "OR NOT isfinite(value) OR value > 1e6").fetchone()[0] == 0

    job = pipeline.retrain(settings, trigger="test", with_ranker=False)
    assert job["run_id"] is not None
    summary = loop.run(settings, 1)
    assert summary["days"] == 1
    # ... and the next run too (the bad row must not block every later run).
    assert etl.run_etl(settings).status in ("loaded", "no-new-data")
    assert loop.run(settings, 1)["days"] == 1
