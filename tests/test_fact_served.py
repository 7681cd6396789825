"""fact_served (issue 17): the lists shown to users reach the warehouse, one row per title.

Hand-checked on a small world: what `servinglog` logged comes out exploded, pseudonymized like the facts, with
its path, versions and arm; incrementally (watermark `served_recommendations`); a run with only new lists makes a
data version; the content hash covers the served rows and stays as before without them; erasure, export, key
rotation and retention cover the table; an older warehouse file reads it empty and gains it at the next ETL;
hand-written garbage in the serving log is refused, never loaded and never fatal.
"""
import pandas as pd
import pytest
from conftest import legacy_insert, private_copy

from core.privacy import erasure, export, retention
from core.privacy import keys as key_rotation
from core.pseudonym import pseudonym, pseudonym_key
from core.settings import load_settings
from core.simulation import simulation
from core.store import opsdb, servinglog
from core.warehouse import datahash, etl, warehouse

# The world's days are 2026-01-01 .. 2026-01-04; its clock 2026-01-05T00:00:00.
LIST_A = {"user_id": 1, "served_at": "2026-01-04T09:30:00", "path": "model", "model_version": 3,
          "data_version": "dv1", "movie_ids": [5, 9, 2], "scores": [0.9, 0.5, 0.25], "ranker_version": 2,
          "arm": "canary", "policy": "explore", "propensities": [0.985, 0.0025, 0.985],
          "slate_propensities": [0.985, 0.0075, 0.985]}
LIST_B = {"user_id": 2, "served_at": "2026-01-04T10:00:00+02:00", "path": "top50:cold-start",
          "model_version": None, "data_version": None, "movie_ids": [7, 1], "scores": [8.1, 7.9],
          "ranker_version": None, "arm": "production"}
SHADOW = {"user_id": 1, "served_at": "2026-01-04T09:30:00", "model_version": 4, "movie_ids": [11, 12, 13],
          "scores": [1.0, 0.5, 0.1]}
SERVED = "INSERT INTO served_recommendations(user_id, served_at, path, model_version, data_version, movie_ids, " \
         "scores, ranker_version, arm) VALUES (?,?,?,?,?,?,?,?,?)"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    settings = load_settings(tmp_path_factory.mktemp("served_base"))
    simulation.init_world(settings, seed=11, users=150, movies=80, days=4)
    return settings


@pytest.fixture
def world(base, tmp_path):
    return private_copy(base, tmp_path)


def log(settings, *entries, shadows=()):
    with opsdb.session(settings) as db:
        servinglog.log_lists(db, list(entries), list(shadows))


def served(settings, where: str = "true") -> pd.DataFrame:
    return warehouse.query(settings, f"SELECT * FROM fact_served WHERE {where} ORDER BY serve_id, position")


def test_two_lists_by_hand(world):
    """Every column of every row, worked out from the two logged lists; the shadow list is not loaded."""
    log(world, LIST_A, LIST_B, shadows=[SHADOW])
    result = etl.run_etl(world)
    assert result.status == "loaded" and result.rows_served == 5
    assert result.report["served"] == {"lists": 2, "rows": 5, "refused": 0}
    key = pseudonym_key(world)
    rows = served(world)
    assert rows.drop(columns=["user_key", "served_at"]).astype(object).where(rows.notna(), None).values.tolist() == [
        [1, "model", 3, 2, "canary", 1, 5, 1, "explore", 0.985, 0.985],
        [1, "model", 3, 2, "canary", 2, 9, 1, "explore", 0.0025, 0.0075],
        [1, "model", 3, 2, "canary", 3, 2, 1, "explore", 0.985, 0.985],
        # A list logged without a logging policy (before exploration existed) loads with NULLs there.
        [2, "top50:cold-start", None, None, "production", 1, 7, 1, None, None, None],
        [2, "top50:cold-start", None, None, "production", 2, 1, 1, None, None, None]]
    assert rows["user_key"].tolist() == [pseudonym(1, key)] * 3 + [pseudonym(2, key)] * 2
    # served_at is parsed like occurred_at: UTC, naive (10:00+02:00 is 08:00).
    assert rows["served_at"].astype(str).tolist() == ["2026-01-04 09:30:00"] * 3 + ["2026-01-04 08:00:00"] * 2
    # The pseudonym is fact_interaction's: the lists join the user's behaviour.
    joined = warehouse.query(world, "SELECT count(*) AS n FROM fact_served s JOIN fact_interaction f "
                                    "USING (user_key) WHERE s.serve_id = 1")["n"][0]
    assert joined > 0
    assert warehouse.query(world, "SELECT count(*) AS n FROM fact_served WHERE movie_id IN (11, 12, 13)")["n"][0] == 0
    with warehouse.session(world) as con:
        assert warehouse.served_counts(con) | {"first_served_at": None, "last_served_at": None} == {
            "lists": 2, "rows": 5, "users": 2, "first_served_at": None, "last_served_at": None}


def test_a_list_logged_before_releases_counts_as_production(world):
    """A row with arm NULL (logged before releases existed) was production's list."""
    legacy_insert(world, SERVED, [3, "2026-01-03T08:00:00", "model", 1, "dv1", "[4, 6]", "[0.5, 0.4]", None, None])
    etl.run_etl(world)
    assert served(world)[["arm", "position", "movie_id"]].values.tolist() == [["production", 1, 4],
                                                                               ["production", 2, 6]]


def test_incremental_runs_load_each_list_once(world):
    log(world, LIST_A, LIST_B)
    first = etl.run_etl(world)
    assert first.rows_served == 5 and len(served(world)) == 5
    assert warehouse.query(world, "SELECT value FROM etl_state WHERE key = 'served_recommendations'")["value"][0] == 2

    again = etl.run_etl(world)
    assert again.status == "no-new-data" and again.rows_served == 0 and len(served(world)) == 5

    log(world, LIST_A | {"served_at": "2026-01-04T18:00:00", "movie_ids": [8, 3], "scores": [1.0, 0.5],
                         "propensities": [0.985, 0.985], "slate_propensities": [0.985, 0.985]})
    third = etl.run_etl(world)
    assert third.status == "loaded" and third.rows_served == 2
    new = served(world, f"data_version = {third.data_version}")
    assert new[["serve_id", "position", "movie_id"]].values.tolist() == [[3, 1, 8], [3, 2, 3]]
    assert len(served(world)) == 7 and served(world)["serve_id"].value_counts().sort_index().tolist() == [3, 2, 2]


def test_a_run_with_only_new_lists_makes_a_data_version(world):
    etl.run_etl(world)
    before = warehouse.query(world, "SELECT * FROM data_versions ORDER BY version DESC LIMIT 1").iloc[0]
    log(world, LIST_A)
    result = etl.run_etl(world)
    assert (result.status, result.data_version, result.rows_loaded, result.rows_served) == ("loaded", 2, 0, 3)
    version = warehouse.query(world, "SELECT * FROM data_versions WHERE version = 2").iloc[0]
    assert version["total_facts"] == before["total_facts"] and version["rows_loaded"] == 0
    assert '"served_recommendations": 1' in version["watermark"]
    # The hash covers the served rows: not the hash of an empty batch, and it is the documented one.
    no_facts = pd.DataFrame(columns=list(datahash.COLUMNS))
    assert version["content_hash"] != datahash.content_hash(no_facts, before["content_hash"])
    rows = served(world)
    assert version["content_hash"] == datahash.content_hash(no_facts, before["content_hash"], rows)
    assert warehouse.query(world, "SELECT status FROM etl_runs ORDER BY run_id DESC LIMIT 1")["status"][0] == "loaded"


def test_a_version_without_served_rows_keeps_the_facts_only_hash(world):
    """Versions with no new list hash exactly as before fact_served existed (points 1-3 of datahash; the world
    shows ads, whose own sections — point 6 — follow)."""
    etl.run_etl(world)
    simulation.simulate(world, 1)
    etl.run_etl(world)
    versions = warehouse.query(world, "SELECT version, content_hash FROM data_versions ORDER BY version")
    previous = None
    for version, digest in zip(versions["version"], versions["content_hash"]):
        facts = warehouse.query(world, f"SELECT * FROM fact_interaction WHERE data_version = {version}")
        ads = {t: warehouse.query(world, f"SELECT * FROM {t} WHERE data_version = {version}") for t in etl.AD_TABLES}
        assert digest == datahash.content_hash(facts, previous, None, ads) \
            == datahash.content_hash(facts, previous, facts.iloc[:0], ads)
        previous = digest


def test_an_older_warehouse_reads_fact_served_empty_and_gains_it_at_the_next_etl(world):
    log(world, LIST_A, LIST_B)
    etl.run_etl(world)
    with warehouse.transaction(world) as con:      # the file as a version before fact_served wrote it
        con.execute("DROP TABLE fact_served")
        con.execute("DELETE FROM etl_state WHERE key = 'served_recommendations'")
    with warehouse.session(world) as con:
        assert con.execute("SELECT count(*) FROM fact_served").fetchone()[0] == 0
        assert warehouse.served_counts(con)["lists"] == 0
    simulation.simulate(world, 1)
    result = etl.run_etl(world)
    assert result.rows_served == 5 and len(served(world)) == 5          # the whole serving log, backfilled once
    assert etl.run_etl(world).status == "no-new-data"


def test_garbage_in_the_serving_log_is_refused_and_the_etl_goes_on(world):
    good = [1, "2026-01-04T09:00:00", "model", 1, "dv1", "[3, 4]", "[1, 0.5]", None, "production"]
    for bad in (["5", "not json"], ["5", '{"a": 1}'], ["5", "[1, null]"], ["5", "[1, true]"], ["5", "[0, 3]"],
                ["5", f"[{2**60}]"], ["1", "[1],[2"], ["1", 7]):
        legacy_insert(world, SERVED, [1, "2026-01-04T09:00:00", "model", 1, "dv1", bad[1], "[]", None, "production"])
    legacy_insert(world, SERVED, [1, "yesterday", "model", 1, "dv1", "[3]", "[1]", None, "production"])
    legacy_insert(world, SERVED, ["abc", "2026-01-04T09:00:00", "model", 1, "dv1", "[3]", "[1]", None, "production"])
    legacy_insert(world, SERVED, [1, "2026-01-04T09:00:00", "model", "v2", "dv1", "[3]", "[1]", None, "production"])
    legacy_insert(world, SERVED, [1, "2026-01-04T09:00:00", "model", 1, "dv1", "[]", "[]", None, "production"])
    legacy_insert(world, SERVED, good)
    legacy_insert(world, SERVED, [1, "2026-01-04T09:00:00", "model", 1, "dv1", "[ 8 ,\n 9.0 ]", "[1, 1]", None, "canary"])
    result = etl.run_etl(world)
    assert result.status == "loaded"
    assert result.report["served"] == {"lists": 14, "rows": 4, "refused": 11}
    assert served(world)[["serve_id", "position", "movie_id", "arm"]].values.tolist() == [
        [13, 1, 3, "production"], [13, 2, 4, "production"], [14, 1, 8, "canary"], [14, 2, 9, "canary"]]
    assert etl.run_etl(world).status == "no-new-data"        # refused lists are not retried


# ------------------------------------------------------------------ privacy
def test_export_erasure_and_counts_cover_fact_served(world):
    log(world, LIST_A, LIST_B)
    etl.run_etl(world)
    uid, key = 1, pseudonym(1, pseudonym_key(world))
    doc = export.export_user(world, uid, actor="alice")
    assert doc["warehouse"]["fact_served"]["count"] == 3 == doc["stores"]["warehouse.fact_served"]
    assert [r["movie_id"] for r in doc["warehouse"]["fact_served"]["rows"]] == [5, 9, 2]
    assert "user_key" not in doc["warehouse"]["fact_served"]["rows"][0]
    # The exploration columns travel with the rows: the user sees how each title came to be shown.
    assert [(r["policy"], r["propensity"]) for r in doc["warehouse"]["fact_served"]["rows"]] == [
        ("explore", 0.985), ("explore", 0.0025), ("explore", 0.985)]
    listed = doc["served_recommendations"][0]
    assert listed["policy"] == "explore" and [(i["movie_id"], i["propensity"], i["slate_propensity"])
                                               for i in listed["items"]] == [(5, 0.985, 0.985), (9, 0.0025, 0.0075),
                                                                             (2, 0.985, 0.985)]
    assert export.held_counts(world, uid)["warehouse.fact_served"] == 3
    assert any(r["table"] == "fact_served" for r in export.data_inventory())

    summary = erasure.forget_user(world, uid, actor="alice")
    assert summary["warehouse"]["fact_served"] == 3
    assert served(world, f"user_key = '{key}'").empty and len(served(world)) == 2
    assert not warehouse.holds_user(world, key)
    assert key.encode() not in world.warehouse.read_bytes()
    assert etl.run_etl(world).rows_served == 0                  # nothing of the user comes back


def test_key_rotation_rekeys_fact_served(world):
    log(world, LIST_A, LIST_B)
    etl.run_etl(world)
    old = pseudonym(2, pseudonym_key(world))
    result = key_rotation.rotate_key(world, actor="alice")
    new = pseudonym(2, pseudonym_key(world))
    assert new != old and result["warehouse_rows_rekeyed"]["fact_served"] == 5
    assert served(world, f"user_key = '{new}'")["movie_id"].tolist() == [7, 1]
    assert served(world, f"user_key = '{old}'").empty
    # Rekeying rewrites whole rows: the exploration columns of user 1's list are unchanged.
    rows = served(world, f"user_key = '{pseudonym(1, pseudonym_key(world))}'")
    assert rows["policy"].tolist() == ["explore"] * 3 and rows["slate_propensity"].tolist() == [0.985, 0.0075, 0.985]
    users = warehouse.query(world, f"SELECT count(*) AS n FROM dim_user WHERE user_key = '{new}'")["n"][0]
    assert users == 1                                            # still joins the user's other rows


def test_retention_purges_old_served_lists(world):
    log(world, LIST_A | {"served_at": "2026-01-01T12:00:00"}, LIST_B)     # 3 titles on day 1, 2 on day 4
    etl.run_etl(world)
    status = retention.retention_status(world, 2)                         # cutoff 2026-01-03T00:00:00
    assert (status["warehouse_served_to_purge"], status["warehouse_served"]) == (3, 5)
    assert str(status["oldest_warehouse_served"]).startswith("2026-01-01")
    result = retention.retention(world, 2, actor="alice")
    assert result["warehouse_served_deleted"] == 3 and result["warehouse_events_deleted"] > 0
    assert served(world)["serve_id"].tolist() == [2, 2]
    assert retention.retention_status(world, 2)["warehouse_served_to_purge"] == 0


@pytest.mark.parametrize("policy, props, why", [
    ("greedy", "[0.5, 0.5]", "unknown policy"),
    ("explore", "[0.5]", "fewer probabilities than titles"),
    ("explore", "[0.5, 1.5]", "a probability above 1"),
    ("explore", "[0.5, 0]", "a probability of 0 (the title could not have been shown)"),
    ("explore", "[0.5, \"x\"]", "not a number"),
])
def test_bad_exploration_fields_refuse_the_list(world, policy, props, why):
    """A list whose logging policy or propensities the serving log could not have written is refused whole
    (IPS would divide by them); the good list beside it loads."""
    legacy_insert(world, "INSERT INTO served_recommendations(user_id, served_at, path, model_version, data_version, "
                  "movie_ids, scores, ranker_version, arm, policy, propensities, slate_propensities) "
                  "VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                  [1, "2026-01-04T09:00:00", "model", 1, "dv1", "[5, 9]", "[0.5, 0.4]", None, "production", policy,
                   props, props])
    log(world, LIST_A)
    result = etl.run_etl(world)
    assert result.report["served"] == {"lists": 2, "rows": 3, "refused": 1}, why
    assert served(world)["serve_id"].unique().tolist() == [2]


def test_the_content_hash_covers_the_exploration_columns(world):
    """A propensity or a policy that differs gives a different data version hash; lists without a logging policy
    hash exactly as before (the served section alone)."""
    from core.warehouse.datahash import combine, exploration_days, served_days
    rows, _ = etl.served_rows(servinglog_frame(world, LIST_A, LIST_B), pseudonym_key(world))
    base = combine(None, {}, served_days(rows), exploration_days(rows))
    changed = rows.copy()
    changed.loc[changed["movie_id"] == 9, "propensity"] = 0.0026
    assert combine(None, {}, served_days(changed), exploration_days(changed)) != base
    relabelled = rows.copy()
    relabelled["policy"] = relabelled["policy"].where(relabelled["policy"].isna(), "deterministic")
    assert combine(None, {}, served_days(relabelled), exploration_days(relabelled)) != base
    plain = rows.assign(policy=None, propensity=float("nan"), slate_propensity=float("nan"))
    assert exploration_days(plain) == {}
    assert combine(None, {}, served_days(plain), exploration_days(plain)) == combine(None, {}, served_days(plain))


def servinglog_frame(settings, *entries):
    with opsdb.session(settings) as db:
        servinglog.log_lists(db, list(entries))
        return servinglog.lists_after(db, 0)
