"""The simulated world: determinism, continuation, the catalog, and the direction of each behaviour shift."""
import json
import os
from pathlib import Path

import numpy as np
import pytest

from core import errors
from core.store import opsdb
from core.simulation import simulation
from core.constants import CATALOG_FIRST_YEAR, CATALOG_LAST_YEAR, GENRES, TS_FORMAT
from core.settings import load_settings

TINY = dict(users=200, movies=120)
DUMPS = {
    "users": "SELECT * FROM users ORDER BY user_id",
    "movies": "SELECT * FROM movies ORDER BY movie_id",
    "ratings": "SELECT * FROM ratings ORDER BY user_id, movie_id",
    "rating_history": "SELECT * FROM rating_history ORDER BY history_id",
    "events": "SELECT * FROM events ORDER BY seq",
    "rejected_writes": "SELECT target, reason, payload, rejected_at FROM rejected_writes ORDER BY reject_id",
    "meta": "SELECT * FROM meta ORDER BY key",
}


def build(tmp_path, name, *, seed=7, days=4, **sizes):
    """A fresh world in its own folder under tmp_path."""
    settings = load_settings(tmp_path / name)
    simulation.init_world(settings, seed=seed, days=days, **{**TINY, **sizes})
    return settings


def dump(settings) -> dict:
    with opsdb.session(settings) as db:
        return {name: db.execute(sql).fetchall() for name, sql in DUMPS.items()}


def query(settings, sql, params=()):
    with opsdb.session(settings) as db:
        return db.execute(sql, list(params)).fetchall()


def since(day: int) -> str:
    return simulation.day_start(day).strftime(TS_FORMAT)


def watch_share(settings, genres, start: str) -> float:
    """Share of watch events from `start` on whose movie carries any of `genres`."""
    like = " OR ".join("('|' || m.genres || '|') LIKE ?" for _ in genres)
    (share,) = query(settings, f"""
        SELECT avg(CASE WHEN {like} THEN 1.0 ELSE 0.0 END) FROM events e JOIN movies m USING (movie_id)
        WHERE e.kind = 'watch' AND e.occurred_at >= ?""", [f"%|{g}|%" for g in genres] + [start])[0]
    return share


def same_world_state(a, b) -> None:
    wa, wb = simulation.load_world(a), simulation.load_world(b)
    for name in ("user_ids", "movie_ids", "taste", "watched", "recent_watches", "quality", "genre_matrix"):
        np.testing.assert_array_equal(getattr(wa, name), getattr(wb, name), err_msg=name)


# ------------------------------------------------------------------ determinism
def test_same_seed_same_world(tmp_path):
    a, b = build(tmp_path, "a"), build(tmp_path, "b")
    da, db_ = dump(a), dump(b)
    assert len(da["events"]) > 1000 and len(da["ratings"]) > 50
    assert da == db_
    same_world_state(a, b)


def test_different_seed_different_world(tmp_path):
    a, b = build(tmp_path, "a", seed=7), build(tmp_path, "b", seed=8)
    da, db_ = dump(a), dump(b)
    assert da["events"] != db_["events"]
    assert da["ratings"] != db_["ratings"]
    assert da["movies"] != db_["movies"]


@pytest.mark.slow   # a million rows / a second process / a world built twice
def test_continuing_in_pieces_equals_one_run(tmp_path):
    pieces, whole = build(tmp_path, "pieces", days=2), build(tmp_path, "whole", days=2)
    s1 = simulation.simulate(pieces, 3)
    s2 = simulation.simulate(pieces, 2)
    s = simulation.simulate(whole, 5)
    assert (s1["first_day"], s1["last_day"], s2["first_day"], s2["last_day"]) == (2, 4, 5, 6)
    assert (s["first_day"], s["last_day"]) == (2, 6)
    assert s1["events"] + s2["events"] == s["events"] and s1["ratings"] + s2["ratings"] == s["ratings"]
    assert dump(pieces) == dump(whole)
    same_world_state(pieces, whole)
    # ... and a world initialised with all 7 days at once holds the same service data.
    seven = build(tmp_path, "seven", days=7)
    assert dump(seven) == dump(whole)


def test_clock_and_day_advance(tmp_path):
    s = build(tmp_path, "w", days=3)
    with opsdb.session(s) as db:
        c = opsdb.counts(db)
    assert (c["clock"], c["sim_day"]) == ("2026-01-04T00:00:00", 3)
    assert "2026-01-01T00:00:00" <= c["first_activity_at"] <= c["last_activity_at"] < c["clock"]
    simulation.simulate(s, 2)
    with opsdb.session(s) as db:
        assert (opsdb.get_meta(db, "clock"), opsdb.get_meta(db, "sim_day")) == ("2026-01-06T00:00:00", "5")


# ------------------------------------------------------------------ the generated catalog and the shared world
def test_titles_unique_years_and_genres(small_world):
    movies = query(small_world, "SELECT title, year, genres, runtime_min FROM movies")
    assert len(movies) == 120
    titles = [t for t, *_ in movies]
    assert len(set(titles)) == len(titles) and all(t.strip() == t and t for t in titles)
    assert all(CATALOG_FIRST_YEAR <= y <= CATALOG_LAST_YEAR for _, y, _, _ in movies)
    for _, _, g, runtime in movies:
        parts = g.split("|")
        assert 1 <= len(parts) <= 3 and len(set(parts)) == len(parts) and set(parts) <= set(GENRES)
        assert 70 <= runtime <= 200


def test_small_world_data_satisfies_the_schema_contract(small_world):
    assert query(small_world, "SELECT count(*) FROM rejected_writes") == [(0,)]
    assert query(small_world, "SELECT count(*) FROM ratings WHERE rating NOT BETWEEN 1 AND 10 OR typeof(rating) <> 'integer'") == [(0,)]
    assert query(small_world, "SELECT count(*) FROM events WHERE movie_id IS NULL AND kind <> 'scroll'") == [(0,)]
    assert query(small_world, "SELECT count(*) FROM events WHERE movie_id IS NOT NULL AND kind = 'scroll'") == [(0,)]
    # every rating follows a watch of the same movie by the same user
    assert query(small_world, """SELECT count(*) FROM ratings r WHERE NOT EXISTS (
        SELECT 1 FROM events e WHERE e.kind = 'watch' AND e.user_id = r.user_id AND e.movie_id = r.movie_id)""") == [(0,)]
    # nobody watches the same movie twice (the simulated humans remember)
    assert query(small_world, """SELECT count(*) FROM (SELECT user_id, movie_id FROM events WHERE kind = 'watch'
        GROUP BY 1, 2 HAVING count(*) > 1)""") == [(0,)]
    (n_users,) = query(small_world, "SELECT count(*) FROM users")[0]
    assert n_users >= 200


# ------------------------------------------------------------------ shifts: direction against the same world without the shift
SHIFT_START = 4  # the shifted and plain worlds are both initialised with 4 days, then run 4 more


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """Seed 7, 4 days, then 4 more days without any shift (read-only)."""
    settings = build(tmp_path_factory.mktemp("plain"), "w", days=SHIFT_START)
    simulation.simulate(settings, 4)
    return settings


def shifted(tmp_path, kind, **kwargs):
    settings = build(tmp_path, "shifted", days=SHIFT_START)
    summary = simulation.simulate(settings, 4, shift=kind, **kwargs)
    assert summary["shift"]["kind"] == kind and summary["shift"]["start_day"] == SHIFT_START
    return settings, summary


def test_trend_raises_the_genre_share(tmp_path, plain):
    s, summary = shifted(tmp_path, "trend", params={"genre": "Western"})
    base, after = watch_share(plain, ["Western"], since(SHIFT_START)), watch_share(s, ["Western"], since(SHIFT_START))
    assert after > 2 * base
    # before the shift both worlds are identical
    before_sql = "SELECT * FROM events WHERE occurred_at < ? ORDER BY seq"
    assert query(s, before_sql, [since(SHIFT_START)]) == query(plain, before_sql, [since(SHIFT_START)])
    assert query(s, "SELECT kind, strength, start_day, duration, params FROM sim_shifts") == [
        ("trend", 1.0, SHIFT_START, 4, json.dumps({"genre": "Western"}))]


def test_viral_raises_the_movies_watches(tmp_path, plain):
    s, summary = shifted(tmp_path, "viral", strength=2)
    movie = summary["shift"]["params"]["movie_id"]
    sql = "SELECT count(*) FROM events WHERE kind = ? AND movie_id = ? AND occurred_at >= ?"
    for kind in ("impression", "watch"):
        base = query(plain, sql, [kind, movie, since(SHIFT_START)])[0][0]
        after = query(s, sql, [kind, movie, since(SHIFT_START)])[0][0]
        assert after > 2 * max(base, 1), kind


def test_viral_with_a_chosen_movie(tmp_path, plain):
    s, summary = shifted(tmp_path, "viral", strength=2, params={"movie_id": 10})
    assert summary["shift"]["params"] == {"movie_id": 10}
    sql = "SELECT count(*) FROM events WHERE kind = 'impression' AND movie_id = 10 AND occurred_at >= ?"
    assert query(s, sql, [since(SHIFT_START)])[0][0] > 2 * max(query(plain, sql, [since(SHIFT_START)])[0][0], 1)


def test_new_releases_add_movies_that_get_impressions(tmp_path, plain):
    s, summary = shifted(tmp_path, "new-releases", strength=0.2)
    new_ids = summary["shift"]["params"]["movie_ids"]
    assert new_ids == list(range(121, 131))  # round(50 * 0.2) = 10 new titles after the 120
    movies = query(s, "SELECT movie_id, title, year, genres, added_at, source FROM movies WHERE movie_id > 120 ORDER BY movie_id")
    assert [m[0] for m in movies] == new_ids
    assert all(m[4] == since(SHIFT_START) and m[5] == "sim" for m in movies)
    assert all(CATALOG_FIRST_YEAR <= m[2] <= CATALOG_LAST_YEAR and 1 <= len(m[3].split("|")) <= 3 for m in movies)
    assert query(s, "SELECT count(DISTINCT title) = count(*) FROM movies") == [(1,)]
    shown = dict(query(s, "SELECT movie_id, count(*) FROM events WHERE kind = 'impression' AND movie_id > 120 GROUP BY 1"))
    assert set(shown) == set(new_ids) and sum(shown.values()) >= 3 * len(new_ids)
    assert query(plain, "SELECT count(*) FROM movies") == [(120,)]
    world = simulation.load_world(s)
    assert world.movie_ids.tolist() == list(range(1, 131)) and world.watched.shape[1] == 130


def test_life_event_moves_tastes_toward_family_genres(tmp_path, plain):
    s, summary = shifted(tmp_path, "life-event")
    assert summary["shift"]["params"]["users_changed"] > 0
    family = ["Children", "Animation"]
    base, after = watch_share(plain, family, since(SHIFT_START)), watch_share(s, family, since(SHIFT_START))
    assert after > 1.5 * base
    w_plain, w_shift = simulation.load_world(plain), simulation.load_world(s)
    changed = np.flatnonzero(~np.isclose(w_plain.taste[:200], w_shift.taste[:200]).all(axis=1))
    assert len(changed) == summary["shift"]["params"]["users_changed"]
    np.testing.assert_allclose(w_shift.taste.sum(axis=1), 1.0)


def test_halloween_raises_horror(tmp_path, plain):
    s, _ = shifted(tmp_path, "seasonal", params={"season": "halloween"})
    assert watch_share(s, ["Horror"], since(SHIFT_START)) > 1.5 * watch_share(plain, ["Horror"], since(SHIFT_START))


# ------------------------------------------------------------------ data-quality shift
@pytest.fixture(scope="module")
def faulty(tmp_path_factory):
    """A world with a strong logging fault for 4 days (read-only); returns (settings, summary)."""
    settings = build(tmp_path_factory.mktemp("faulty"), "w", days=3)
    summary = simulation.simulate(settings, 4, shift="data-quality", strength=2)
    return settings, summary


def test_data_quality_faults_are_quarantined_with_reasons(faulty):
    s, summary = faulty
    rejected = query(s, "SELECT target, reason, payload, rejected_at FROM rejected_writes")
    assert len(rejected) == summary["rejected"] > 0
    assert summary["duplicates_ignored"] > 0  # retried events with the same id
    assert {t for t, *_ in rejected} == {"events", "ratings"}
    for target, reason, payload, rejected_at in rejected:
        assert reason and json.loads(payload) and rejected_at.startswith("2026-01-0")
        if target == "ratings":
            assert reason.endswith("is outside 1..10") and json.loads(payload)["rating"] > 10
        else:
            assert (reason == "unknown movie -1" or reason.endswith("is missing or not an integer")
                    or reason.startswith("duplicate of another event in the batch"))
    double_logged = [r for t, r, p, _ in rejected if t == "events" and json.loads(p)["event_id"].endswith("-dup")]
    assert double_logged and all(r.startswith("duplicate of another event") for r in double_logged)


def test_data_quality_never_stores_invalid_rows(faulty):
    s, _ = faulty
    checks = {
        "bad rating": "SELECT count(*) FROM ratings WHERE typeof(rating) <> 'integer' OR rating NOT BETWEEN 1 AND 10",
        "bad history": "SELECT count(*) FROM rating_history WHERE typeof(rating) <> 'integer' OR rating NOT BETWEEN 1 AND 10",
        "negative value": "SELECT count(*) FROM events WHERE value < 0",
        "null user": "SELECT count(*) FROM events WHERE user_id IS NULL",
        "orphan user": "SELECT count(*) FROM events WHERE user_id NOT IN (SELECT user_id FROM users)",
        "orphan movie": "SELECT count(*) FROM events WHERE movie_id IS NOT NULL AND movie_id NOT IN (SELECT movie_id FROM movies)",
        "missing movie": "SELECT count(*) FROM events WHERE movie_id IS NULL AND kind <> 'scroll'",
        "orphan rating": "SELECT count(*) FROM ratings WHERE movie_id NOT IN (SELECT movie_id FROM movies)",
        "broken event stored": "SELECT count(*) FROM events WHERE event_id LIKE '%-bad'",
    }
    found = {name: query(s, sql)[0][0] for name, sql in checks.items()}
    assert found == dict.fromkeys(checks, 0)


def test_data_quality_double_logged_events_are_not_stored(faulty):
    s, _ = faulty
    content_dups = query(s, """SELECT count(*) FROM (SELECT 1 FROM events
        GROUP BY user_id, movie_id, kind, value, occurred_at HAVING count(*) > 1)""")[0][0]
    assert query(s, "SELECT count(*) FROM events WHERE event_id LIKE '%-dup'") == [(0,)]
    assert content_dups == 0


def test_no_content_duplicates_without_a_fault(small_world):
    assert query(small_world, """SELECT count(*) FROM (SELECT 1 FROM events
        GROUP BY user_id, movie_id, kind, value, occurred_at HAVING count(*) > 1)""") == [(0,)]


# ------------------------------------------------------------------ errors
@pytest.fixture
def tiny(tmp_path):
    return build(tmp_path, "tiny", days=1, users=20, movies=15)


def test_unknown_shift_kind_lists_the_kinds_and_changes_nothing(tiny):
    before = dump(tiny)
    with pytest.raises(errors.ValidationError) as info:
        simulation.simulate(tiny, 1, shift="alien-invasion")
    message = str(info.value)
    assert "alien-invasion" in message and all(kind in message for kind in simulation.SHIFT_KINDS)
    assert dump(tiny) == before


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(shift="trend", strength=0), "strength must be in (0, 5]"),
    (dict(shift="trend", strength=5.5), "strength must be in (0, 5]"),
    (dict(shift="trend", duration=-2), "at least 1 day"),
    (dict(shift="trend", params={"genre": "Space-Opera"}), "unknown genre 'Space-Opera'"),
    (dict(shift="seasonal", params={"season": "monsoon"}), "unknown season 'monsoon'"),
])
def test_invalid_shift_parameters(tiny, kwargs, fragment):
    before = dump(tiny)
    with pytest.raises(errors.ValidationError) as info:
        simulation.simulate(tiny, 1, **kwargs)
    assert fragment in str(info.value)
    assert dump(tiny) == before


def test_zero_shift_duration_is_rejected(tiny):
    before = dump(tiny)
    with pytest.raises(errors.ValidationError, match="at least 1 day"):
        simulation.simulate(tiny, 2, shift="trend", duration=0)
    assert dump(tiny) == before


@pytest.mark.parametrize("days", [0, -1, 1.5])
def test_simulate_rejects_bad_day_counts(tiny, days):
    with pytest.raises(errors.ValidationError, match="--days must be a positive integer"):
        simulation.simulate(tiny, days)


def test_simulate_without_a_world(settings):
    with pytest.raises(errors.WorldNotFound):
        simulation.simulate(settings, 1)


def test_init_refuses_a_non_empty_folder_and_force_rebuilds(tiny):
    before = dump(tiny)
    with pytest.raises(errors.NotEmpty, match="--force"):
        simulation.init_world(tiny, seed=8, users=30, movies=12, days=0)
    assert dump(tiny) == before
    simulation.init_world(tiny, seed=8, users=30, movies=12, days=0, force=True)
    with opsdb.session(tiny) as db:
        c = opsdb.counts(db)
        assert (c["users"], c["movies"], c["events"], c["ratings"], c["sim_day"]) == (30, 12, 0, 0, 0)
        assert opsdb.get_meta(db, "seed") == "8"
    assert simulation.load_world(tiny).seed == 8


def test_init_refuses_a_database_holding_service_data(small_db, settings):
    with pytest.raises(errors.NotEmpty):
        simulation.init_world(settings, seed=1, users=5, movies=10, days=0)
    assert small_db.execute("SELECT count(*) FROM users").fetchone()[0] == 2


@pytest.mark.parametrize("sizes", [dict(users=0), dict(movies=5), dict(days=-1), dict(users=2.5)])
def test_init_rejects_bad_sizes(settings, sizes):
    with pytest.raises(errors.ValidationError):
        simulation.init_world(settings, **{**dict(seed=1, users=5, movies=10, days=0), **sizes})
    assert not settings.ops_db.exists()



# ------------------------------------------------------------------ churn in the world (issue 17)
def test_users_who_left_produce_no_events_and_some_come_back(tmp_path):
    s = build(tmp_path, "w", days=30, users=400, movies=200)
    world = simulation.load_world(s)
    gone = world.user_ids[world.left]
    assert 0 < len(gone) < 0.5 * len(world.user_ids)           # some left, most stayed
    with opsdb.session(s) as db:
        day = int(opsdb.get_meta(db, "sim_day"))
    before = world.left.copy()
    summary = simulation.simulate(s, 5)
    after = simulation.load_world(s)
    # who was gone all five days wrote nothing in them
    stayed_gone = after.user_ids[: len(before)][before & after.left[: len(before)]]
    rows = query(s, f"SELECT count(*) FROM events WHERE occurred_at >= ? AND user_id IN ({','.join('?' * len(stayed_gone))})",
                 [since(day), *map(int, stayed_gone)])
    assert len(stayed_gone) and rows == [(0,)]
    assert summary["left"] - summary["returned"] == int(after.left.sum()) - int(before.sum())   # the day counts add up


def test_hazard_rises_with_poor_lists_and_falls_with_good_sessions():
    from core.simulation import world as world_mod
    w, _ = world_mod.create_world(1, 4, 30)
    active = np.array([0, 1])
    fit = np.zeros((2, 30))
    row = np.zeros((2, 30), dtype=bool)
    row[:, :10] = True
    # user 0 watched title 3 from the row; user 1 watched title 20, which the row did not offer
    left, back = simulation._churn(w, 0, active, fit, row, np.array([0, 1]), np.array([3, 20]))
    assert w.hazard[0] == pytest.approx(-simulation.GOOD_SESSION_HAZARD)
    assert w.hazard[1] == pytest.approx(simulation.POOR_LIST_HAZARD)
    assert w.hazard[2] == w.hazard[3] == 0.0                  # no session, no change
    simulation._churn(w, 1, np.zeros(0, dtype=int), fit[:0], row[:0], np.zeros(0, int), np.zeros(0, int))
    assert w.hazard[1] == pytest.approx(simulation.POOR_LIST_HAZARD * simulation.HAZARD_DECAY)  # relaxes daily


def test_life_event_raises_the_hazard_of_the_users_it_changes(tmp_path):
    s = build(tmp_path, "w", days=3)
    world = simulation.load_world(s)
    before_taste, before_hazard = world.taste.copy(), world.hazard.copy()
    with opsdb.session(s) as db:
        shift = simulation.start_shift(db, world, "life-event", 1.0, 2, 3)
    changed = ~np.isclose(world.taste, before_taste).all(axis=1)
    assert changed.sum() == shift.params["users_changed"] > 0
    np.testing.assert_allclose(world.hazard[changed], np.minimum(before_hazard[changed] + simulation.LIFE_EVENT_HAZARD,
                                                                 simulation.HAZARD_RANGE[1]))
    np.testing.assert_array_equal(world.hazard[~changed], before_hazard[~changed])


def test_a_world_saved_before_churn_existed_still_loads(tmp_path):
    s = build(tmp_path, "w", days=2)
    world = simulation.load_world(s)
    with np.load(s.world_file) as data:
        old = {k: data[k] for k in data.files if k not in ("hazard", "left")}
    np.savez_compressed(s.world_file, **old)
    again = simulation.load_world(s)
    assert not again.left.any() and (again.hazard == 0).all() and len(again.left) == len(world.user_ids)
    simulation.simulate(s, 1)                                   # and it continues


def test_the_world_file_round_trips_with_watched_as_packed_bits_and_old_files_still_load(tmp_path):
    """world.npz holds `watched` as packed bits (saved after every simulated day; zlib over the bool matrix was
    most of the save): every field comes back equal, the file holds no bool matrix, and a file written the old
    way (compressed, with `watched` itself) loads to the same world."""
    from dataclasses import fields
    from core.simulation import world as world_mod
    s = build(tmp_path, "w", days=2)
    world = simulation.load_world(s)
    assert world.watched.shape[1] == len(world.genre_matrix) and world.watched.any()
    world.save(s.world_file)
    with np.load(s.world_file) as data:
        assert "watched" not in data.files and data[world_mod.WATCHED_BITS].dtype == np.uint8
        old = {f.name: np.asarray(getattr(world, f.name)) for f in fields(world)}
    for again in (world_mod.World.load(s.world_file), None):
        if again is None:
            np.savez_compressed(s.world_file, **old)                    # the format before packed bits
            again = world_mod.World.load(s.world_file)
        for f in fields(world):
            np.testing.assert_array_equal(np.asarray(getattr(again, f.name)), np.asarray(getattr(world, f.name)),
                                          err_msg=f.name)
        assert again.watched.dtype == bool


def test_simulated_days_run_on_one_blas_thread(tmp_path):
    """A second OpenBLAS thread spins on a day's small matrix products: the default world took 12 s of CPU with
    two and 7.4 s with one (core/threads.py). In a fresh process, since the pin is process-wide."""
    import subprocess
    import sys
    code = ("import json, sys\nfrom threadpoolctl import threadpool_info\nfrom core.settings import load_settings\n"
            "from core.simulation import simulation\n"
            "before = [i['num_threads'] for i in threadpool_info() if i['user_api'] == 'blas']\n"
            "simulation.init_world(load_settings(sys.argv[1]), seed=3, users=20, movies=20, days=1)\n"
            "after = [i['num_threads'] for i in threadpool_info() if i['user_api'] == 'blas']\n"
            "print(json.dumps([before, after]))\n")
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}   # the library defaults
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "w")], capture_output=True, text=True,
                         env=env, cwd=Path(__file__).resolve().parents[1], check=True)
    before, after = json.loads(out.stdout.strip().splitlines()[-1])
    assert after and set(after) == {1}
    if (os.cpu_count() or 1) > 1:
        assert max(before) > 1          # it was the pin, not the library default
