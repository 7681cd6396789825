"""ETL: incrementality, the validation gate's quarantine, failure rollback, pseudonyms, confidence."""
import re

import pytest
from conftest import legacy_insert

from core.warehouse import dataset, etl, warehouse
from core.store import opsdb, writes
from core.simulation import simulation
from core.pseudonym import pseudonym, pseudonym_key
from core.settings import load_settings


@pytest.fixture
def world(tmp_path):
    settings = load_settings(tmp_path)
    simulation.init_world(settings, seed=11, users=150, movies=80, days=4)
    return settings


def wh(settings, sql):
    with warehouse.session(settings) as con:
        return con.execute(sql).fetchall()


def test_incremental_runs(world):
    first = etl.run_etl(world)
    with opsdb.session(world) as db:
        n_ops = db.execute("SELECT (SELECT count(*) FROM events) + (SELECT count(*) FROM rating_history)").fetchone()[0]
    assert first.status == "loaded" and first.data_version == 1 and first.rows_loaded == n_ops
    assert wh(world, "SELECT count(*) FROM fact_interaction")[0][0] == n_ops

    again = etl.run_etl(world)
    assert again.status == "no-new-data" and again.rows_loaded == 0 and again.data_version is None
    assert wh(world, "SELECT count(*) FROM data_versions")[0][0] == 1

    simulation.simulate(world, 1)
    with opsdb.session(world) as db:
        n_ops2 = db.execute("SELECT (SELECT count(*) FROM events) + (SELECT count(*) FROM rating_history)").fetchone()[0]
    third = etl.run_etl(world)
    assert third.data_version == 2 and third.rows_loaded == n_ops2 - n_ops
    assert wh(world, "SELECT count(*), count(DISTINCT source || source_id) FROM fact_interaction")[0] == (n_ops2, n_ops2)
    v = wh(world, "SELECT total_facts, window_start >= '2026-01-05' FROM data_versions WHERE version = 2")[0]
    assert v == (n_ops2, True)


def test_each_kind_of_bad_row_is_quarantined(world):
    etl.run_etl(world)
    ev = "INSERT INTO events(event_id, user_id, movie_id, kind, value, occurred_at) VALUES (?,?,?,?,?,?)"
    legacy_insert(world, ev, ["x1", 99999, 1, "click", 1, "2026-01-04T10:00:00"])      # orphan user
    legacy_insert(world, ev, ["x2", 1, 99999, "click", 1, "2026-01-04T10:00:00"])      # orphan movie
    legacy_insert(world, ev, ["x3", 1, 1, "teleport", 1, "2026-01-04T10:00:00"])       # unknown kind
    legacy_insert(world, ev, ["x4", 1, 1, "watch", -30, "2026-01-04T10:00:00"])        # negative watch
    legacy_insert(world, ev, ["x5", 1, 1, "click", 1, "yesterday"])                     # malformed timestamp
    legacy_insert(world, ev, ["x6", 1, 1, "click", 1, "2031-01-01T00:00:00"])           # future
    legacy_insert(world, ev, ["x7", 1, 2, "like", 1, "2026-01-04T11:00:00"])            # a good row ...
    legacy_insert(world, ev, ["x8", 1, 2, "like", 1, "2026-01-04T11:00:00"])            # ... and its double
    legacy_insert(world, "INSERT INTO rating_history(user_id, movie_id, rating, rated_at) VALUES (?,?,?,?)",
                  [1, 3, 11, "2026-01-04T12:00:00"])                                     # rating out of range
    with opsdb.session(world) as db:                                                     # refused at ingestion
        writes.record_events(db, [{"event_id": "x9", "user_id": None, "movie_id": 1, "kind": "click"}], on_invalid="quarantine")
    result = etl.run_etl(world)
    reasons = {etl.reason_category(r) for (r,) in wh(world, "SELECT reason FROM quarantine")}
    assert reasons == {"orphan user id", "orphan movie id", "unknown kind", "negative value", "malformed timestamp",
                       "timestamp in the future", "duplicate", "rating out of range", "ingestion: missing user id"}
    assert result.rows_loaded == 1 and result.rows_quarantined == 9
    assert result.report["by_reason"]["duplicate"] == 1
    # Nothing invalid reached the facts.
    assert wh(world, "SELECT count(*) FROM fact_interaction WHERE kind NOT IN "
                     "('impression','click','watch','like','dislike','share','scroll','rating')")[0][0] == 0
    assert wh(world, "SELECT count(*) FROM fact_interaction WHERE value < 0 OR (kind='rating' AND value > 10)")[0][0] == 0
    with opsdb.session(world) as db:
        bad_seqs = [r[0] for r in db.execute("SELECT seq FROM events WHERE event_id IN ('x1','x2','x3','x4','x5','x6','x8')")]
        good_seq = db.execute("SELECT seq FROM events WHERE event_id = 'x7'").fetchone()[0]
    loaded = {s for (s,) in wh(world, "SELECT source_id FROM fact_interaction WHERE source = 'event' AND data_version = 2")}
    assert loaded == {good_seq} and not loaded & set(bad_seqs)
    assert wh(world, "SELECT count(*) FROM quarantine WHERE data_version = 2")[0][0] == 9


def test_a_failed_load_leaves_the_warehouse_as_it_was(world, monkeypatch):
    etl.run_etl(world)
    simulation.simulate(world, 1)
    before = wh(world, "SELECT (SELECT count(*) FROM fact_interaction), (SELECT count(*) FROM daily_aggregates), "
                       "(SELECT count(*) FROM data_versions), (SELECT count(*) FROM quarantine)")
    marks = wh(world, "SELECT key, value FROM etl_state ORDER BY key")

    def boom(con, days):
        raise RuntimeError("disk full (injected)")
    monkeypatch.setattr(etl, "_recompute_daily", boom)
    with pytest.raises(RuntimeError, match="injected"):
        etl.run_etl(world)
    assert wh(world, "SELECT (SELECT count(*) FROM fact_interaction), (SELECT count(*) FROM daily_aggregates), "
                     "(SELECT count(*) FROM data_versions), (SELECT count(*) FROM quarantine)") == before
    assert wh(world, "SELECT key, value FROM etl_state ORDER BY key") == marks
    assert wh(world, "SELECT status, error FROM etl_runs ORDER BY run_id DESC LIMIT 1")[0] == (
        "failed", "RuntimeError: disk full (injected)")
    monkeypatch.undo()
    assert etl.run_etl(world).status == "loaded"


def test_warehouse_holds_only_pseudonyms(world):
    etl.run_etl(world)
    key = pseudonym_key(world)
    keys = {k for (k,) in wh(world, "SELECT DISTINCT user_key FROM fact_interaction")}
    assert all(re.fullmatch(r"[0-9a-f]{20}", k) for k in keys)
    assert pseudonym(1, key) in {k for (k,) in wh(world, "SELECT user_key FROM dim_user")}
    with warehouse.session(world) as con:
        for (table,) in con.execute("SELECT table_name FROM information_schema.tables").fetchall():
            cols = [c[0] for c in con.execute(f"DESCRIBE {table}").fetchall()]
            assert "user_id" not in cols, table
    assert pseudonym(1, key) != pseudonym(1, b"another key")


def test_confidence_weights_by_hand(tmp_path):
    settings = load_settings(tmp_path)
    with opsdb.session(settings) as db:
        opsdb.set_meta(db, "clock", "2026-02-01T00:00:00")
        writes.add_movies(db, [{"movie_id": 1, "title": "A", "year": 1960, "genres": "Drama", "runtime_min": 100},
                               {"movie_id": 2, "title": "B", "year": 1970, "genres": "Comedy", "runtime_min": 50}])
        writes.add_users(db, [{"user_id": 7}])
        writes.record_events(db, [
            {"event_id": "a", "user_id": 7, "movie_id": 1, "kind": "watch", "value": 3000, "occurred_at": "2026-01-02T10:00:00"},
            {"event_id": "b", "user_id": 7, "movie_id": 1, "kind": "click", "occurred_at": "2026-01-02T09:59:00"},
            {"event_id": "c", "user_id": 7, "movie_id": 1, "kind": "impression", "value": 0, "occurred_at": "2026-01-02T09:58:00"},
            {"event_id": "d", "user_id": 7, "movie_id": 2, "kind": "watch", "value": 600, "occurred_at": "2026-01-03T10:00:00"},
            {"event_id": "e", "user_id": 7, "movie_id": 2, "kind": "dislike", "occurred_at": "2026-01-03T10:30:00"},
        ])
        writes.rate(db, 7, 1, 4, "2026-01-02T12:00:00")
        writes.rate(db, 7, 1, 10, "2026-01-05T12:00:00")   # the latest rating counts
    etl.run_etl(settings)
    flat = dataset.ConfidenceWeights(half_life_days=None)
    pairs = dataset.interactions(settings, weights=flat).set_index("movie_id")["confidence"]
    # movie 1: watch 2·min(1, 3000/6000) = 1.0, click 0.5, rated 1 + 2·(10−5.5)/4.5 = 3 → 4.5
    assert pairs[1] == pytest.approx(4.5)
    # movie 2: watch 2·(600/3000) = 0.4, dislike −3 → −2.6 ≤ 0, dropped
    assert 2 not in pairs.index
    # Recency (default half-life 7 days), measured from the window's latest event (the rating, 01-05 12:00):
    # the watch is 3 days 2 h old, the click one minute more; the rating itself has age 0.
    decayed = dataset.interactions(settings).set_index("movie_id")["confidence"]
    age_watch = (3 * 24 + 2) / 24
    assert decayed[1] == pytest.approx(1.0 * 0.5 ** (age_watch / 7) + 0.5 * 0.5 ** ((age_watch + 1 / 1440) / 7) + 3.0)
    assert 2 not in decayed.index            # decay never changes a sign
    # ...never below the floor: with a 1-hour half-life the watch and click keep 5 % of their weight
    tiny = dataset.ConfidenceWeights(half_life_days=1 / 24)
    assert dataset.interactions(settings, weights=tiny).set_index("movie_id")["confidence"][1] == \
        pytest.approx(0.05 * 1.5 + 3.0)
    # With consent to personalization withdrawn, the user's data leaves the training matrix.
    with opsdb.session(settings) as db:
        db.execute("UPDATE users SET consent_personalization = 0 WHERE user_id = 7")
        writes.record_event(db, 7, 1, "click", occurred_at="2026-01-06T00:00:00")
    etl.run_etl(settings)
    assert dataset.interactions(settings).empty


def test_key_and_operators_from_streamlit_secrets(tmp_path, monkeypatch):
    from core.privacy import access, keys
    from core import pseudonym as ps
    from core.errors import RetroError
    monkeypatch.delenv(ps.KEY_ENV, raising=False)
    settings = load_settings(tmp_path / "home")
    own = ps.pseudonym_key(settings)                        # generated into the data folder
    assert ps.key_source(settings) == "data folder"
    managed = tmp_path / "secrets.toml"
    managed.write_text('[pseudonymization]\nkey = "from-streamlit"\n\n[operators]\nops = "%s"\n'
                       % access.hash_token("long-enough-token"))
    monkeypatch.setattr(ps, "STREAMLIT_SECRETS", managed)
    assert ps.pseudonym_key(settings) == b"from-streamlit" != own and ps.key_source(settings) == "streamlit"
    assert access.check(settings, "ops", "long-enough-token") and not access.check(settings, "ops", "wrong-token")
    with pytest.raises(RetroError, match="managed outside"):
        keys.rotate_key(settings, actor="test")
    monkeypatch.setenv(ps.KEY_ENV, "from-env")
    assert ps.pseudonym_key(settings) == b"from-env" and ps.key_source(settings) == "environment"


def test_the_etl_reports_each_stage_with_the_rows_it_handles(world):
    """The Data page's "Run ETL now" draws these (it showed a spinner only): fractions rise, messages count rows."""
    heard = []
    result = etl.run(world, progress=lambda f, m: heard.append((f, m)))
    fractions = [f for f, _ in heard]
    assert fractions == sorted(fractions) and fractions[0] == 0.0 and fractions[-1] == 1.0
    text = " | ".join(m for _, m in heard)
    assert f"validating {result.rows_extracted:,} extracted rows" in text
    assert f"loading {result.rows_loaded:,} facts" in text and "as data version dv1" in text
    assert "committing data version dv1" in text
    assert heard[-1][1] == f"loaded: {result.rows_loaded:,} rows loaded, {result.rows_quarantined:,} quarantined"
    heard.clear()
    assert etl.run(world, progress=lambda f, m: heard.append((f, m))).status == "no-new-data"
    assert heard[-1] == (1.0, "no-new-data: 0 rows loaded, 0 quarantined")
