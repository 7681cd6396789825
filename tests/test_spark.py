"""The Spark engine (issue 15) against the embedded one, on one small simulated world.

Both ETLs load the same operational rows (including hostile ones written around the write API and a
data-quality day); then: the same facts per kind, quarantine reasons, watermarks, daily aggregates and data
version (counts and content hash), the same fact_served rows (issue 17: lists logged after the first run, so
the first lake has no fact_served yet, as a lake of an older version); the same confidence matrix (1e-9) and split;
Spark ALS within 10 % of
`implicit`'s nDCG@10 on the same holdout; a Spark-trained bundle served, explained and erased by the unchanged
code; an erasure and a re-keying of the Parquet lake (partitions rewritten, raw bytes searched).

One SparkSession for the whole test session: local[2], or the master named by RETRO_SPARK_MASTER
(tests/test_spark_cluster.py runs this file again against a standalone cluster of two workers). Without pyspark
or Java the tests are skipped with the reason — unless CI=true, where a missing engine fails (`make test` installs
both).
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import legacy_insert

from core.warehouse import spark as engine

SPARK_MASTER = os.environ.get("RETRO_SPARK_MASTER") or "local[2]"
WORLD = dict(seed=21, users=300, movies=200, days=9)
EVENTS = "INSERT INTO events(event_id, user_id, movie_id, kind, value, occurred_at) VALUES (?,?,?,?,?,?)"
HISTORY = "INSERT INTO rating_history(user_id, movie_id, rating, rated_at) VALUES (?,?,?,?)"


# ------------------------------------------------------------------ without the engine
def test_a_missing_piece_is_named_with_its_install_command(monkeypatch):
    """EngineUnavailable says what is missing and how to install it (no JVM needed for this test)."""
    monkeypatch.setitem(sys.modules, "pyspark", None)            # `import pyspark` raises ImportError
    with pytest.raises(engine.EngineUnavailable, match=r"pyspark.*pip install -r requirements-spark.txt"):
        engine.check_available()
    monkeypatch.delitem(sys.modules, "pyspark")
    pytest.importorskip("pyspark")
    monkeypatch.setenv("JAVA_HOME", "/nonexistent-jdk")
    with pytest.raises(engine.EngineUnavailable, match=r"Java runtime.*apt-get install default-jre-headless"):
        engine.check_available()
    monkeypatch.delenv("JAVA_HOME")
    monkeypatch.setenv("PATH", "/nonexistent")
    # as in a process without a session yet (an earlier test file, e.g. test_ads_data, may have started one;
    # get_session then returns it without looking for Java); the real session is put back after the test
    monkeypatch.setattr(engine, "_session", None)
    with pytest.raises(engine.EngineUnavailable, match=r"no `java` on PATH"):
        engine.get_session()
    assert not engine.available()


def test_the_embedded_default_imports_no_pyspark():
    """`make run` needs neither pyspark nor Java: only the Spark engine's modules import pyspark, lazily."""
    import subprocess
    code = ("import sys; import core.cli, core.warehouse.etl, core.training.pipeline, core.serving.serving; "
            "import core.warehouse.lake, core.warehouse.lake_etl, core.warehouse.lake_dataset, core.training.spark_als; "
            "print('pyspark' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "False"
    requirements = (Path(__file__).resolve().parents[1] / "requirements.txt").read_text()
    assert "pyspark" not in requirements


# ------------------------------------------------------------------ the engine and the twin world
@pytest.fixture(scope="session")
def spark_session():
    """The one SparkSession of the test session (SPARK_MASTER); skipped without the engine unless CI=true."""
    try:
        engine.check_available()
    except engine.EngineUnavailable as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but the Spark engine is not installed: {exc}")
        pytest.skip(f"Spark engine not installed: {exc}")
    session = engine.get_session(SPARK_MASTER)
    yield session
    engine.stop_session()


@pytest.mark.spark
def test_the_session_runs_on_the_configured_master(spark_session):
    """local[2], or (RETRO_SPARK_MASTER=spark://…) executors in other processes that import `core` from the zip
    the driver shipped, in their own working folders — nothing of the driver's process or folder."""
    sc = spark_session.sparkContext
    assert sc.master == SPARK_MASTER
    if SPARK_MASTER.startswith("local"):
        return

    def where(_):
        import core
        return os.getpid(), os.getcwd(), core.__file__
    seen = set(sc.parallelize(range(8), 8).map(where).collect())
    pids = {pid for pid, _, _ in seen}
    assert os.getpid() not in pids and engine.jvm_pid(spark_session) not in pids
    assert all(".zip" in path for _, _, path in seen), seen          # not the driver's project folder
    assert not any(cwd == os.getcwd() for _, cwd, _ in seen)


def _hostile_rows(settings) -> None:
    """Rows written around the write API: one per validation reason, typed oddly, and a late double."""
    from core.store import opsdb, writes
    rows = [
        ["h1", 99999, 1, "click", 1, "2026-01-09T10:00:00"],                # orphan user id
        ["h2", 1, 99999, "click", 1, "2026-01-09T10:00:00"],                # orphan movie id
        ["h3", 1, 1, "teleport", 1, "2026-01-09T10:00:00"],                 # unknown kind
        ["h4", 1, 1, "watch", -30, "2026-01-09T10:00:00"],                  # negative value
        ["h5", 1, 1, "click", 1, "yesterday"],                              # malformed timestamp
        ["h6", 1, 1, "click", 1, "2031-01-01T00:00:00"],                    # timestamp in the future
        ["h7", 1, 2, "like", 1, "2026-01-09T11:00:00"],                     # a good row ...
        ["h8", 1, 2, "like", 1, "2026-01-09T11:00:00"],                     # ... and its double (duplicate)
        ["h9", 1, 3, "click", "abc", "2026-01-09T10:00:00"],                # malformed value
        ["h10", 1, 3, "watch", 5e7, "2026-01-09T10:00:00"],                 # value out of range
        ["h11", 1, 2**60, "click", 1, "2026-01-09T10:00:00"],               # id out of range
        ["h12", 1.5, 3, "click", 1, "2026-01-09T10:00:00"],                 # orphan user id (not an integer)
        ["h13", "2", "4", "click", "1", "2026-01-09T12:00:00+02:00"],       # valid once typed (text ids, offset)
        ["h14", 2, None, "scroll", 7, "2026-01-09T12:30:00"],               # valid: a scroll has no movie
        ["h15", 3, None, "click", 1, "2026-01-09T12:30:00"],                # missing movie id
    ]
    for row in rows:
        legacy_insert(settings, EVENTS, row)
    legacy_insert(settings, HISTORY, [1, 3, 11, "2026-01-09T12:00:00"])     # rating out of range
    legacy_insert(settings, HISTORY, [1, 5, 7.5, "2026-01-09T12:00:00"])    # rating out of range (a fraction)
    with opsdb.session(settings) as db:
        loaded = db.execute("SELECT user_id, movie_id, kind, value, occurred_at FROM events "
                            "WHERE kind = 'watch' ORDER BY seq LIMIT 1").fetchone()
        writes.record_events(db, [{"event_id": "x9", "user_id": None, "movie_id": 1, "kind": "click"}],
                             on_invalid="quarantine")                        # refused at ingestion
    legacy_insert(settings, EVENTS, ["late-double", *loaded])               # duplicate of a loaded row


def _counts(settings, query) -> dict:
    return query(settings, "SELECT (SELECT count(*) FROM fact_interaction) AS facts, (SELECT count(*) FROM "
                           "quarantine) AS quarantine, (SELECT count(*) FROM data_versions) AS versions, "
                           "(SELECT count(*) FROM daily_aggregates) AS daily, "
                           "(SELECT count(*) FROM fact_served) AS served").iloc[0].to_dict()


SERVED_SQL = "INSERT INTO served_recommendations(user_id, served_at, path, model_version, data_version, movie_ids, " \
             "scores, ranker_version, arm) VALUES (?,?,?,?,?,?,?,?,?)"


def _served_lists(settings) -> None:
    """A list for every user over two days (model/canary and fallback paths), one logged before releases (arm
    NULL) and two the serving log could not have written (refused by both engines)."""
    from core.store import opsdb, servinglog
    entries = [{"user_id": u, "served_at": f"2026-01-{8 + u % 2:02d}T{u % 24:02d}:00:00",
                "path": "model" if u % 3 else "top50:cold-start", "model_version": 2 if u % 3 else None,
                "data_version": "dv1", "movie_ids": [(u * 7 + j) % WORLD["movies"] + 1 for j in range(10 - u % 4)],
                "scores": [1.0 - j / 10 for j in range(10 - u % 4)], "ranker_version": 1 if u % 5 == 0 else None,
                "arm": "canary" if u % 7 == 0 else "production"} for u in range(1, WORLD["users"] + 1)]
    with opsdb.session(settings) as db:
        servinglog.log_lists(db, entries)
    legacy_insert(settings, SERVED_SQL, [5, "2026-01-09T06:00:00", "model", 1, "dv1", "[3, 4]", "[1, 1]", None, None])
    # (fallback paths: the evaluation's served_pairs reads model lists, and decodes them without a check)
    legacy_insert(settings, SERVED_SQL, [6, "2026-01-09T06:00:00", "top50:no-model", None, "dv1", "[3, x]", "[1, 1]",
                                         None, None])
    legacy_insert(settings, SERVED_SQL, [7, "soon", "top50:no-model", None, "dv1", "[3]", "[1]", None, "production"])


@pytest.fixture(scope="module")
def twin(spark_session, tmp_path_factory):
    """One world loaded by both engines: a first ETL; hostile rows and a data-quality day; a second ETL that fails
    in both engines (injected), then succeeds. Returns (settings, what the failed lake run left)."""
    from core.simulation import simulation
    from core.settings import load_settings
    from core.warehouse import etl, lake, lake_etl, warehouse
    settings = load_settings(tmp_path_factory.mktemp("spark_twin"))
    simulation.init_world(settings, **WORLD)
    etl.run_etl(settings)
    lake_etl.run_etl(settings, spark=spark_session)
    older_lake = {"served_view": lake.query(settings, "SELECT count(*) AS n FROM fact_served")["n"][0],
                  "served_folder": (Path(lake.lake_uri(settings)) / "fact_served").exists()}
    _hostile_rows(settings)
    _served_lists(settings)
    simulation.simulate(settings, 1, shift="data-quality", strength=2.0)

    seen = {"older_lake": older_lake, "before": _counts(settings, lake.query),
            "marks_before": lake.query(settings, "SELECT * FROM etl_state ORDER BY key").to_dict("list")}
    with pytest.MonkeyPatch.context() as mp:
        def boom(con, days):
            raise RuntimeError("disk full (injected)")
        mp.setattr(etl, "_recompute_daily", boom)
        with pytest.raises(RuntimeError, match="injected"):
            etl.run_etl(settings)
        moved = []
        rename = lake._Files.rename

        def rename_then_fail(self, src, dst):   # a kill half-way through the moves: some files already moved
            if len(moved) == 1:
                raise OSError("disk full (injected)")
            moved.append(dst)
            return rename(self, src, dst)
        mp.setattr(lake._Files, "rename", rename_then_fail)
        with pytest.raises(OSError, match="injected"):
            lake_etl.run_etl(settings, spark=spark_session)
    seen |= {"after": _counts(settings, lake.query), "moved": moved,
             "marks_after": lake.query(settings, "SELECT * FROM etl_state ORDER BY key").to_dict("list"),
             "last_run": lake.query(settings, "SELECT status, error FROM etl_runs ORDER BY run_id DESC LIMIT 1")
             .iloc[0].to_dict(),
             "staging_left": lake.Lake(settings).files.listdir(str(Path(lake.lake_uri(settings)) / lake.STAGING)),
             "all_files_rows": _raw_fact_rows(settings)}
    etl.run_etl(settings)
    lake_etl.run_etl(settings, spark=spark_session)
    assert warehouse.query(settings, "SELECT count(*) AS n FROM data_versions")["n"][0] == 2
    return settings, seen


def _raw_fact_rows(settings) -> int:
    """Rows in every fact file of the lake, committed or not (no data_version filter)."""
    import duckdb
    from core.warehouse import lake
    files = list((Path(lake.lake_uri(settings)) / "fact_interaction").rglob("*.parquet"))
    if not files:
        return 0
    return duckdb.sql(f"SELECT count(*) FROM read_parquet({[str(f) for f in files]!r})").fetchall()[0][0]


# ------------------------------------------------------------------ ETL equivalence
@pytest.mark.spark
@pytest.mark.slow
def test_both_engines_load_the_same_facts_quarantine_and_data_version(twin):
    from core.warehouse import lake, warehouse
    settings, _ = twin
    both = lambda sql: (warehouse.query(settings, sql), lake.query(settings, sql))  # noqa: E731
    embedded, spark = both("SELECT kind, count(*) AS n FROM fact_interaction GROUP BY 1 ORDER BY 1")
    pd.testing.assert_frame_equal(embedded, spark)
    assert set(embedded["kind"]) >= {"impression", "click", "watch", "rating", "scroll"}
    embedded, spark = both("SELECT reason, count(*) AS n FROM quarantine GROUP BY 1 ORDER BY 1")
    pd.testing.assert_frame_equal(embedded, spark)
    reasons = set(embedded["reason"].map(lambda r: r if not r.startswith("rejected") else "ingestion"))
    assert reasons >= {"orphan user id", "orphan movie id", "unknown kind", "negative value", "malformed timestamp",
                       "timestamp in the future", "duplicate", "malformed value", "value out of range",
                       "id out of range", "missing movie id", "rating out of range", "duplicate of a loaded row",
                       "ingestion"}
    # The served lists: every list but the two refused ones, title by title.
    embedded, spark = both("SELECT count(DISTINCT serve_id) AS lists, count(*) AS n FROM fact_served")
    assert embedded["lists"][0] == WORLD["users"] + 1 and embedded["n"][0] > 2000
    # The data versions: counts, content hash, window, watermark and the validation report.
    embedded, spark = both("SELECT * FROM data_versions ORDER BY version")
    reports = [json.loads(v) for v in embedded["validation"]]
    for col in ("validation",):
        assert [json.loads(v) for v in embedded.pop(col)] == [json.loads(v) for v in spark.pop(col)]
    pd.testing.assert_frame_equal(embedded, spark)
    assert embedded["content_hash"].nunique() == 2
    assert reports[1]["served"] == {"lists": WORLD["users"] + 3, "refused": 2,
                                    "rows": int(both("SELECT count(*) AS n FROM fact_served")[0]["n"][0])}
    # Every table, row for row and type for type (the failed and the successful second run included).
    for table, key in (("fact_interaction", "source, source_id"), ("quarantine", "source, source_id, reason"),
                       ("dim_user", "user_key"), ("dim_movie", "movie_id"), ("daily_aggregates", "day, kind"),
                       ("etl_runs", "run_id"), ("etl_state", "key"), ("fact_served", "serve_id, position")):
        embedded, spark = both(f"SELECT * FROM {table} ORDER BY {key}")
        if table == "etl_runs":        # the failure messages name each engine's own failing step
            assert embedded.pop("error").notna().tolist() == spark.pop("error").notna().tolist()
        pd.testing.assert_frame_equal(embedded, spark, obj=table)
        pd.testing.assert_frame_equal(*both(f"SELECT column_name, column_type FROM (DESCRIBE {table})"),
                                      obj=f"columns of {table}")


@pytest.mark.spark
@pytest.mark.slow
def test_a_failed_lake_run_changes_nothing_and_leaves_nothing(twin):
    """Killed half-way through moving its files: readers see the lake as it was, the next run cleans up."""
    settings, seen = twin
    assert seen["moved"], "the injected failure must come after a file was moved into a table"
    assert seen["after"] == seen["before"]
    assert seen["marks_after"] == seen["marks_before"]
    assert seen["last_run"] == {"status": "failed", "error": "OSError: disk full (injected)"}
    assert seen["staging_left"] == []
    assert seen["all_files_rows"] == seen["before"]["facts"]     # the moved file was deleted, not just hidden


@pytest.mark.spark
@pytest.mark.slow
def test_a_lake_without_fact_served_reads_it_empty(twin):
    """The first lake had no list to load, like a lake written before fact_served existed: no folder, and the
    DuckDB view of the table is there, empty (a warehouse read of fact_served works on it)."""
    _, seen = twin
    assert seen["older_lake"] == {"served_view": 0, "served_folder": False}


@pytest.mark.spark
@pytest.mark.slow
def test_a_run_with_only_new_lists_gives_the_same_version_on_both_engines(twin, spark_session, tmp_path):
    from core.store import opsdb, servinglog
    from core.store.mlopsdb import clone_home
    from core.warehouse import etl, lake, lake_etl, warehouse
    settings = clone_home(twin[0], tmp_path / "served-only")
    with opsdb.session(settings) as db:
        servinglog.log_lists(db, [{"user_id": 3, "served_at": "2026-01-10T12:00:00", "path": "model",
                                   "model_version": 2, "data_version": "dv2", "movie_ids": [9, 4, 1],
                                   "scores": [0.3, 0.2, 0.1], "ranker_version": None, "arm": "canary"}])
    embedded, spark = etl.run_etl(settings), lake_etl.run_etl(settings, spark=spark_session)
    for result in (embedded, spark):
        assert (result.status, result.data_version, result.rows_loaded, result.rows_served) == ("loaded", 3, 0, 3)
    sql = "SELECT * FROM data_versions WHERE version = 3"
    a, b = warehouse.query(settings, sql), lake.query(settings, sql)
    pd.testing.assert_frame_equal(a.drop(columns="validation"), b.drop(columns="validation"))
    assert json.loads(a["validation"][0]) == json.loads(b["validation"][0])
    sql = "SELECT * FROM fact_served WHERE data_version = 3 ORDER BY position"
    pd.testing.assert_frame_equal(warehouse.query(settings, sql), lake.query(settings, sql))
    assert lake.query(settings, sql)["movie_id"].tolist() == [9, 4, 1]


@pytest.mark.spark
@pytest.mark.slow
def test_the_lake_is_parquet_partitioned_by_day_and_duckdb_reads_it_without_extensions(twin):
    from core.warehouse import lake
    settings, _ = twin
    root = Path(lake.lake_uri(settings))
    days = sorted(p.name for p in (root / "fact_interaction").iterdir())
    expected = lake.query(settings, "SELECT DISTINCT CAST(occurred_at AS DATE) AS d FROM fact_interaction ORDER BY 1")
    assert days == [f"day={d.date()}" for d in pd.to_datetime(expected["d"])]
    served_days = sorted(p.name for p in (root / "fact_served").iterdir())
    expected = lake.query(settings, "SELECT DISTINCT CAST(served_at AS DATE) AS d FROM fact_served ORDER BY 1")
    assert served_days == [f"day={d.date()}" for d in pd.to_datetime(expected["d"])] == ["day=2026-01-08",
                                                                                          "day=2026-01-09"]
    assert all(f.suffix == ".parquet" for f in (root / "fact_interaction").rglob("*") if f.is_file()
               and not f.name.startswith("."))
    pointer = json.loads((root / lake.POINTER).read_text())
    assert pointer["data_version"] == 2 and set(pointer["snapshots"]) == set(lake.SNAPSHOT_TABLES)
    source = Path(lake.__file__).read_text()
    assert "INSTALL " not in source.upper().replace("INSTALLED", "") and "LOAD " not in source
    with lake.session(settings) as con:
        assert con.execute("SELECT count(*) FROM duckdb_extensions() WHERE loaded AND "
                           "install_mode <> 'STATICALLY_LINKED'").fetchone()[0] == 0
        # The dashboard's kind of query, on the lake.
        assert con.execute("SELECT count(*) FROM fact_interaction f JOIN dim_movie m USING (movie_id)").fetchone()[0]
    assert os.stat(root).st_mode & 0o077 == 0            # owner-only, like the rest of the data folder


# ------------------------------------------------------------------ training
@pytest.fixture(scope="module")
def splits(twin, spark_session):
    from core.serving import serving
    from core.training import evaluation
    from core.warehouse import lake_dataset
    settings, _ = twin
    served = lambda a, b: serving.served_pairs(settings, a, b)  # noqa: E731
    return evaluation.holdout_split(settings), lake_dataset.time_split(settings, served_pairs=served,
                                                                       spark=spark_session)


@pytest.mark.spark
@pytest.mark.slow
def test_the_confidence_matrix_is_the_same_to_1e9(twin, splits, spark_session):
    from core.warehouse import dataset, lake_dataset
    settings, _ = twin
    for weights in (dataset.ConfidenceWeights(), dataset.ConfidenceWeights(half_life_days=None)):
        embedded = dataset.interactions(settings, weights=weights).sort_values(["user_key", "movie_id"])
        spark = lake_dataset.interactions_frame(settings, weights=weights, spark=spark_session) \
            .sort_values(["user_key", "movie_id"])
        assert len(embedded) == len(spark) > 1000
        assert (embedded[["user_key", "movie_id"]].to_numpy() == spark[["user_key", "movie_id"]].to_numpy()).all()
        np.testing.assert_allclose(spark["confidence"], embedded["confidence"], rtol=0, atol=1e-9)
        for col in ("last_at", "first_at"):
            assert (pd.to_datetime(spark[col]).to_numpy() == pd.to_datetime(embedded[col]).to_numpy()).all()
    a, b = splits
    assert list(a.train.user_keys) == list(b.train.user_keys) and list(a.train.movie_ids) == list(b.train.movie_ids)
    assert abs(a.train.user_items - b.train.user_items).max() <= 1e-6          # float32 cells of the same pairs
    assert a.holdout == b.holdout and (a.cutoff, a.end) == (b.cutoff, b.end)


@pytest.fixture(scope="module")
def spark_model(splits, spark_session):
    from core.training.spark_als import SparkALSRecommender
    return SparkALSRecommender(spark=spark_session).fit(splits[1].train.user_items)


@pytest.mark.spark
@pytest.mark.slow
def test_spark_als_is_within_10_percent_of_implicit_on_the_same_holdout(splits, spark_model):
    from core.training import evaluation
    from core.training.models import ALSRecommender
    embedded_split, spark_split = splits
    implicit_ndcg = evaluation.evaluate_model(ALSRecommender().fit(embedded_split.train.user_items),
                                              embedded_split)["ndcg@10"]
    spark_ndcg = evaluation.evaluate_model(spark_model, spark_split)["ndcg@10"]
    assert implicit_ndcg > 0.1
    assert spark_ndcg >= 0.9 * implicit_ndcg, (spark_ndcg, implicit_ndcg)
    params = spark_model.mllib_params(spark_split.train.user_items)
    assert params["implicitPrefs"] and params["rank"] == spark_model.factors
    assert params["maxIter"] == spark_model.iterations and params["seed"] == spark_model.random_state


@pytest.fixture(scope="module")
def spark_bundle(twin, splits, spark_model, tmp_path_factory):
    """A copy of the world with a Spark-trained bundle recorded as a run (engine 'spark') and registered."""
    from core.store.mlopsdb import clone_home
    from core.training import registry, tracking
    from core.training.artifacts import save_bundle
    settings = clone_home(twin[0], tmp_path_factory.mktemp("spark_bundle"))
    split = splits[1]
    params = spark_model.run_params()
    run_id = tracking.start_run(settings, "als", params, spark_model.random_state, "dv2")
    path = settings.models_dir / f"run-{run_id}"
    meta = {"run_id": run_id, "model_kind": "als", "params": spark_model.params(), "engine": "spark",
            "seed": spark_model.random_state, "data_version": "dv2", "holdout_cutoff": str(split.cutoff),
            "trained_until": str(split.end), "weights": {}}
    digest = save_bundle(path, spark_model, split.train, meta)
    tracking.finish_run(settings, run_id, {"ndcg@10": 0.0}, {}, {}, path, digest)
    registry.register(settings, run_id)
    return settings, path


@pytest.mark.spark
@pytest.mark.slow
def test_a_spark_trained_bundle_is_served_and_explained_by_the_unchanged_code(spark_bundle, spark_model):
    from core.training import tracking
    from core.training.artifacts import load_bundle
    from core.training.models import ALSRecommender
    settings, path = spark_bundle
    bundle = load_bundle(path)
    assert type(bundle.model) is ALSRecommender and bundle.meta["engine"] == "spark"
    np.testing.assert_array_equal(bundle.model.user_factors_, spark_model.user_factors_)
    ids, scores = bundle.model.recommend([0, 1], bundle.matrix.user_items, 10)
    assert (ids >= 0).all() and np.isfinite(scores).all()
    seen = set(bundle.matrix.user_items[0].indices)
    assert not seen & set(ids[0].tolist())
    total, because = bundle.model.explain_score(0, bundle.matrix.user_items, int(ids[0, 0]))
    assert because and all(item in seen for item, _ in because)
    params = tracking.get_run(settings, bundle.meta["run_id"])["params"]
    assert params["engine"] == "spark" and params["reg_scaling"] == "per-pair"


# ------------------------------------------------------------------ erasure and re-keying
def _lake_holds(root: Path, needle: str) -> tuple[bool, bool]:
    """(in the raw bytes of any lake file, in any decoded value or column statistic of any Parquet file)."""
    import pyarrow.parquet as pq
    raw = decoded = False
    for path in root.rglob("*"):
        if not path.is_file():
            continue
        raw |= needle.encode() in path.read_bytes()
        if path.suffix == ".parquet":
            table = pq.read_table(path)
            decoded |= any(needle in str(v) for col in table.columns if str(col.type) in ("string", "large_string")
                           for v in col.to_pylist() if v is not None)
            meta = pq.ParquetFile(path).metadata
            for g in range(meta.num_row_groups):
                for c in range(meta.num_columns):
                    stats = meta.row_group(g).column(c).statistics
                    if stats is not None and stats.has_min_max:
                        decoded |= needle in (str(stats.min), str(stats.max))
    return raw, decoded


@pytest.mark.spark
@pytest.mark.slow
def test_erasure_rewrites_the_lake_partitions_and_the_spark_bundle(spark_bundle, spark_session):
    from core.privacy import erasure
    from core.pseudonym import pseudonym, pseudonym_key
    from core.training.artifacts import load_bundle
    from core.warehouse import lake
    settings, path = spark_bundle
    root = Path(lake.lake_uri(settings))
    key = pseudonym_key(settings)
    # A user whose pseudonym is visible in the raw bytes before (Snappy hides some): the search can find it.
    counts = lake.query(settings, "SELECT user_key, count(*) AS n FROM fact_interaction GROUP BY 1 ORDER BY n DESC")
    ids = {pseudonym(u, key): u for u in range(1, WORLD["users"] + 1)}
    target = next(k for k in counts["user_key"] if k in ids and _lake_holds(root, k)[0])
    uid = ids[target]
    days = lake.query(settings, "SELECT DISTINCT CAST(occurred_at AS DATE) AS d FROM fact_interaction "
                                f"WHERE user_key = '{target}'")["d"]
    touched = {f"day={pd.Timestamp(d).date()}" for d in days}
    files_before = {p.relative_to(root / "fact_interaction") for p in (root / "fact_interaction").rglob("*.parquet")}
    before = _counts(settings, lake.query)
    n_user = int(counts.set_index("user_key")["n"][target])
    n_served = lake.query(settings, f"SELECT count(*) AS n FROM fact_served WHERE user_key = '{target}'")["n"][0]
    assert n_served > 0

    summary = lake.erase_user(settings, target, spark=spark_session)
    assert summary["fact_interaction"] == n_user and summary["dim_user"] == 1 and summary["fact_served"] == n_served
    assert _lake_holds(root, target) == (False, False)
    after = _counts(settings, lake.query)
    assert after["facts"] == before["facts"] - n_user and after["served"] == before["served"] - n_served
    for table in lake.USER_TABLES:
        assert lake.query(settings, f"SELECT count(*) AS n FROM {table} WHERE user_key = '{target}'")["n"][0] == 0
    files_after = {p.relative_to(root / "fact_interaction") for p in (root / "fact_interaction").rglob("*.parquet")}
    rewritten = {p.parts[0] for p in files_before - files_after}
    assert rewritten == touched                         # only the user's day partitions were rewritten
    assert {p for p in files_before if p.parts[0] not in touched} <= files_after

    # The Spark-trained bundle: the unchanged erasure of the privacy module.
    erasure.forget_user(settings, uid, actor="test")
    bundle = load_bundle(path)
    assert target not in set(bundle.matrix.user_keys.tolist())
    blob = b"".join(p.read_bytes() for p in path.iterdir() if p.is_file())
    assert target.encode() not in blob
    assert not bundle.model.user_factors_.all(axis=1).all()      # the erased row is zeroed


@pytest.mark.spark
@pytest.mark.slow
def test_key_rotation_rekeys_the_lake(twin, spark_session, tmp_path):
    from core.store.mlopsdb import clone_home
    from core.warehouse import lake
    settings = clone_home(twin[0], tmp_path / "rekey")
    old = lake.query(settings, "SELECT DISTINCT user_key FROM dim_user")["user_key"].tolist()
    mapping = {k: f"new{k[3:]}" for k in old}
    facts = lake.query(settings, "SELECT user_key, count(*) AS n FROM fact_interaction GROUP BY 1")
    served = lake.query(settings, "SELECT user_key, count(*) AS n FROM fact_served GROUP BY 1")
    assert set(served["user_key"]) <= set(old) and len(served) > 100
    assert set(served["user_key"]) <= lake.user_keys(settings)
    counts = lake.rekey(settings, mapping, spark=spark_session)
    assert counts["dim_user"] == len(old) and counts["fact_interaction"] == int(facts["n"].sum())
    assert counts["fact_served"] == int(served["n"].sum())
    after = lake.query(settings, "SELECT user_key, count(*) AS n FROM fact_served GROUP BY 1")
    assert sorted(zip(after["user_key"], after["n"])) == sorted(zip(served["user_key"].map(mapping), served["n"]))
    after = lake.query(settings, "SELECT user_key, count(*) AS n FROM fact_interaction GROUP BY 1")
    assert sorted(zip(after["user_key"], after["n"])) == sorted(zip(facts["user_key"].map(mapping), facts["n"]))
    root = Path(lake.lake_uri(settings))
    assert not any(_lake_holds(root, k)[1] for k in old[:5])



@pytest.mark.spark
@pytest.mark.slow
def test_a_retention_purge_reaches_the_lake(twin, spark_session, tmp_path):
    """`privacy retention`: the lake loses what the warehouse loses (events but ratings, served lists, ads older
    than the cutoff) — only the older day partitions are rewritten — and both engines hold the same rows after."""
    from core.privacy import retention
    from core.store.mlopsdb import clone_home
    from core.warehouse import lake, warehouse
    settings = clone_home(twin[0], tmp_path / "retention")
    root = Path(lake.lake_uri(settings)) / "fact_interaction"
    files_before = {p.relative_to(root): p.stat().st_mtime_ns for p in root.rglob("*.parquet")}
    status = retention.retention_status(settings, 4)
    assert status["lake_events_to_purge"] == status["warehouse_events_to_purge"] > 0
    assert status["lake_served_to_purge"] == status["warehouse_served_to_purge"]
    done = retention.retention(settings, 4, actor="test")
    assert done["lake_events_deleted"] == done["warehouse_events_deleted"] == status["lake_events_to_purge"]
    assert done["lake_served_deleted"] == done["warehouse_served_deleted"]
    cutoff = pd.Timestamp(done["cutoff"])
    sql = ("SELECT kind, count(*) AS n, min(occurred_at) AS oldest FROM fact_interaction "
           "WHERE kind <> 'rating' GROUP BY 1 ORDER BY 1")
    on_lake, in_warehouse = lake.query(settings, sql), warehouse.query(settings, sql)
    pd.testing.assert_frame_equal(on_lake, in_warehouse)
    assert (pd.to_datetime(on_lake["oldest"]) >= cutoff).all()
    assert lake.query(settings, "SELECT count(*) AS n FROM fact_interaction WHERE kind = 'rating' AND "
                                "occurred_at < ?", [cutoff.to_pydatetime()])["n"][0] > 0      # ratings stay
    assert lake.rows_before(settings, done["cutoff"]) == {t: 0 for t in lake.RETAINED}
    after = {p.relative_to(root): p.stat().st_mtime_ns for p in root.rglob("*.parquet")}
    newer = {p for p in files_before if pd.Timestamp(p.parts[0].removeprefix("day=")) >= cutoff.normalize()
             + pd.Timedelta(days=1)}
    assert newer and all(after.get(p) == files_before[p] for p in newer)     # newer partitions untouched


@pytest.mark.spark
@pytest.mark.slow
def test_a_lake_at_a_uri_goes_through_hadoops_filesystem(small_world, spark_session, tmp_path, monkeypatch):
    """Settings.lake_uri ($RETRO_LAKE_URI: s3a://, gs://, … — here file://) moves every file operation to Hadoop's FileSystem API
    in the JVM: the same ETL, commit and erasure code; DuckDB (no httpfs extension) refuses such a lake."""
    from core.store import opsdb
    from core.store.mlopsdb import clone_home
    from core.warehouse import lake, lake_etl
    settings = replace(clone_home(small_world, tmp_path / "home"), lake_uri=f"file://{tmp_path}/remote-lake")
    result = lake_etl.run_etl(settings, spark=spark_session)
    with opsdb.session(settings) as db:
        rows = db.execute("SELECT (SELECT count(*) FROM events) + (SELECT count(*) FROM rating_history)").fetchone()[0]
    assert result.status == "loaded" and result.rows_loaded + result.rows_quarantined == rows
    assert (tmp_path / "remote-lake" / lake.POINTER).exists() and not (settings.home / "lake").exists()
    store = lake.Lake(settings, spark_session)
    assert store.table("fact_interaction").count() == result.rows_loaded
    key = store.table("dim_user").first()["user_key"]
    assert lake.erase_user(settings, key, spark=spark_session)["dim_user"] == 1
    assert store.table("fact_interaction").where(f"user_key = '{key}'").count() == 0
    assert lake_etl.run_etl(settings, spark=spark_session).status == "no-new-data"
    assert store.pointer()["data_version"] == 1
    with pytest.raises(lake.LakeError, match="DuckDB reads a local lake only"):
        lake.connect(settings)


# ------------------------------------------------------------------ the engine setting, end to end (issue 15 wiring)
def test_etl_with_the_spark_engine_but_no_pyspark_says_so_in_one_line(small_world, tmp_path):
    """`etl --engine spark` without pyspark: exit 1 and one `error:` line naming pyspark and its install command.
    (Another process: this one may already hold a SparkSession.)"""
    import subprocess
    from core.store.mlopsdb import clone_home
    settings = clone_home(small_world, tmp_path / "home")
    code = ("import sys; sys.modules['pyspark'] = None; from core.cli import main; "   # `import pyspark` fails
            f"sys.exit(main(['etl', '--engine', 'spark', '--home', {str(settings.home)!r}]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 1 and out.stdout == ""
    err = out.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "pyspark" in err[0] and "requirements-spark" in err[0]
    assert not (settings.home / "lake").exists() and not settings.warehouse.exists()


def _cli_json(capsys, *argv) -> object:
    from core.cli import main
    capsys.readouterr()
    assert main([*argv, "--json"]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


@pytest.mark.spark
@pytest.mark.slow
def test_the_spark_engine_from_the_cli_etl_retrain_serve_report_forget(spark_session, tmp_path, capsys,
                                                                        monkeypatch):
    """`etl --engine spark` and `retrain --engine spark` on a fresh copy of a world: the lake is loaded, a Spark-
    trained model is promoted and served, `runs` says engine spark, the Data page's report reads the lake, and
    `privacy forget` removes the user from the lake."""
    from core.governance import insights
    from core.pseudonym import pseudonym, pseudonym_key
    from core.serving import serving
    from core.settings import load_settings
    from core.simulation import simulation
    from core.warehouse import lake
    monkeypatch.delenv("RETRO_ENGINE", raising=False)
    settings = load_settings(tmp_path / "home")
    simulation.init_world(settings, **WORLD)
    home = ["--home", str(settings.home)]

    etl_result = _cli_json(capsys, "etl", "--engine", "spark", *home)
    assert etl_result["status"] == "loaded" and (settings.home / "lake" / lake.POINTER).exists()
    assert not settings.warehouse.exists()                      # the embedded warehouse was not touched
    job = _cli_json(capsys, "retrain", "--engine", "spark", *home)
    assert job["promoted"] and job["etl"]["status"] == "no-new-data"
    runs = _cli_json(capsys, "runs", "list", *home)
    trained = next(r for r in runs if r["run_id"] == job["run_id"])
    assert trained["engine"] == "spark" and trained["param.engine"] == "spark" and trained["model_kind"] == "als"

    spark_settings = replace(settings, engine="spark")
    served = serving.recommend_many(spark_settings, range(1, WORLD["users"] + 1), log=False)
    assert sum(r.path == "model" and r.model_version == job["version"] for r in served.values()) > WORLD["users"] // 2
    report = insights.etl_report(spark_settings)
    assert report["versions"]["version"].tolist() == [1] and len(report["daily"])
    assert insights.system_status(spark_settings)["warehouse"]["facts"] == etl_result["rows_loaded"]

    uid = next(u for u in range(1, WORLD["users"] + 1)
               if lake.held_counts(settings, pseudonym(u, pseudonym_key(settings)))["fact_interaction"])
    key = pseudonym(uid, pseudonym_key(settings))
    forgotten = _cli_json(capsys, "privacy", "forget", "--user", str(uid), *home)
    assert forgotten["lake"]["fact_interaction"] > 0 and forgotten["lake"]["dim_user"] == 1
    assert lake.held_counts(settings, key) == {t: 0 for t in lake.USER_TABLES}
    root = settings.home / "lake"
    assert not any(_lake_holds(root, key))


def test_churn_snapshots_are_the_same_on_both_engines(twin):
    """The churn model's point-in-time features (served share included) read the same from the DuckDB file and
    from the lake's views, so a churn model trains and scores whichever engine loaded the data."""
    from dataclasses import replace
    from core.warehouse import churn_data
    settings, _ = twin
    lo, hi = churn_data.data_bounds(settings)
    assert churn_data.data_bounds(replace(settings, engine="spark")) == (lo, hi)
    dates = [hi - pd.Timedelta(days=1), hi]
    embedded = churn_data.snapshots(settings, dates)
    on_lake = churn_data.snapshots(replace(settings, engine="spark"), dates)
    assert len(embedded) > 50 and embedded["served_lists_28d"].gt(0).any()
    pd.testing.assert_frame_equal(embedded, on_lake)
    assert churn_data.served_versions(settings, lo, hi + pd.Timedelta(days=1)) == churn_data.served_versions(
        replace(settings, engine="spark"), lo, hi + pd.Timedelta(days=1))
