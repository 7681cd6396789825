"""The Spark engine's ETL: operational rows → the validation gate in Spark SQL → the Parquet lake (issue 15).

The embedded ETL (`core.warehouse.etl`) on another engine: the same extraction
(`etl.extract`, reused), the same validation reasons in the same order (first
failing check wins: `VALIDATION_SQL`), duplicates within the batch and of already
loaded rows, pseudonymized users, the same watermarks, daily aggregates, volume
alerts, and a data version with the same counts and the same content hash
(`datahash`: canonical ordering and encoding, so both engines compute it alike; here
one Spark task per day). The lists shown to users become `fact_served` rows by the
embedded ETL's own transform (`etl.served_rows`: no rule to check, the same pandas
code on the driver), written as Parquet partitioned by day like the facts. SQLite's columns are dynamically typed, so the raw values
are typed on the driver with the embedded ETL's own parsers
(`pd.to_numeric(errors="coerce")`, `etl.parse_times`) — two parsers would disagree
on hostile text — and land as Parquet in the run's staging folder; every rule runs in
Spark SQL. The run commits through the lake's pointer (`lake.Lake.commit`): a run
that fails leaves the lake as it was and is recorded in `etl_runs`, as the embedded
ETL records it.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from core import bounds
from core.constants import EVENT_KINDS, RATING_MAX, RATING_MIN
from core.filemodes import private_dir
from core.pseudonym import pseudonym_key, pseudonymize
from core.settings import Settings
from core.store import clock, locks, opsdb
from core.warehouse import datahash, etl
from core.warehouse.lake import PARTITIONED, SPARK_SCHEMA, STAGING, Lake, arrow_ready, table_columns
from core.warehouse.spark import session_for

# The raw rows as typed on the driver (see the module docstring): texts as the embedded ETL renders them
# (`astype(str)`, the keys of its duplicate check and quarantine), numbers as `pd.to_numeric` parses them.
BATCH_SCHEMA = ("source STRING, source_id BIGINT, kind STRING, user_num DOUBLE, movie_num DOUBLE, value_num DOUBLE, "
                "ts TIMESTAMP_NTZ, user_key STRING, user_text STRING, movie_text STRING, value_text STRING, "
                "occurred_text STRING")


def _integral(col: str) -> str:
    return f"({col} IS NOT NULL AND abs({col}) <> double('Infinity') AND {col} = rint({col}))"


def _in_range(col: str) -> str:
    return f"({col} >= 1 AND {col} <= {bounds.MAX_ID})"


_KINDS = ", ".join(f"'{k}'" for k in list(EVENT_KINDS) + ["rating"])
# etl.validate, rule for rule and in its order: the first failing check names the reason.
VALIDATION_SQL = f"""
WITH b AS (
    SELECT b.*, ku.id IS NOT NULL AS user_known, km.id IS NOT NULL AS movie_known,
           row_number() OVER (PARTITION BY user_text, movie_text, kind, value_text, occurred_text
                              ORDER BY source, source_id) AS copy
    FROM batch b
    LEFT JOIN known_users ku ON ku.id = b.user_num
    LEFT JOIN known_movies km ON km.id = b.movie_num)
SELECT b.*, CASE
    WHEN kind NOT IN ({_KINDS}) THEN 'unknown kind'
    WHEN user_num IS NULL THEN 'missing user id'
    WHEN {_integral('user_num')} AND NOT {_in_range('user_num')} THEN 'id out of range'
    WHEN NOT user_known THEN 'orphan user id'
    WHEN movie_num IS NULL AND kind <> 'scroll' THEN 'missing movie id'
    WHEN {_integral('movie_num')} AND NOT {_in_range('movie_num')} THEN 'id out of range'
    WHEN movie_num IS NOT NULL AND NOT movie_known THEN 'orphan movie id'
    WHEN value_num IS NULL THEN 'malformed value'
    WHEN abs(value_num) = double('Infinity') OR value_num > {float(etl.MAX_VALUE)!r} THEN 'value out of range'
    WHEN kind = 'rating' AND (value_num <> rint(value_num) OR value_num < {RATING_MIN} OR value_num > {RATING_MAX})
         THEN 'rating out of range'
    WHEN value_num < 0 THEN 'negative value'
    WHEN ts IS NULL THEN 'malformed timestamp'
    WHEN ts > CAST(:clock AS TIMESTAMP_NTZ) THEN 'timestamp in the future'
    WHEN copy > 1 THEN 'duplicate'
END AS reason
FROM b
"""
# Rows of this batch equal to a fact an earlier run loaded (a double-logged event arriving late).
LOADED_DUPLICATES_SQL = """
SELECT DISTINCT b.source, b.source_id
FROM new_facts b JOIN loaded_facts f
  ON f.user_key = b.user_key AND f.kind = b.kind AND f.value = b.value AND f.occurred_at = b.occurred_at
 AND f.movie_id <=> b.movie_id
WHERE f.occurred_at >= (SELECT min(occurred_at) FROM new_facts)
"""
# etl._recompute_daily for the touched days, over the committed rows and this run's.
DAILY_SQL = """
SELECT CAST(occurred_at AS DATE) AS day, kind, count(*) AS n, count(DISTINCT user_key) AS users,
       count(DISTINCT movie_id) AS movies, sum(value) AS value_sum
FROM all_facts WHERE CAST(occurred_at AS DATE) IN (SELECT day FROM touched) GROUP BY 1, 2
UNION ALL
SELECT d AS day, 'quarantined' AS kind, count(*) AS n, count(DISTINCT user_key) AS users,
       count(DISTINCT movie_id) AS movies, CAST(0 AS DOUBLE) AS value_sum
FROM (SELECT *, coalesce(CAST(try_cast(occurred_at AS TIMESTAMP_NTZ) AS DATE), CAST(quarantined_at AS DATE)) AS d
      FROM all_quarantine)
WHERE d IN (SELECT day FROM touched) GROUP BY 1
"""


@locks.exclusive("ETL")
def run_etl(settings: Settings, *, at: str | None = None, spark=None) -> etl.EtlResult:
    """One incremental ETL run into the lake with Spark; the embedded `etl.run_etl`'s twin (same result type)."""
    spark = spark or session_for(settings)
    lake = Lake(settings, spark)
    lake.recover()
    key = pseudonym_key(settings)
    if at is None:
        with opsdb.session(settings) as db:
            at = clock.now(db=db)
    started = at
    pointer = lake.pointer()
    runs = lake.frame("etl_runs", pointer)
    run_id = int(runs["run_id"].max()) + 1 if len(runs) else 1
    try:
        return _run(lake, spark, settings, key, run_id, started, pointer, runs)
    except Exception as exc:
        # Nothing of the run is visible (its files were never committed); only the failure is recorded.
        lake.recover()
        failed = pd.DataFrame([{"run_id": run_id, "started_at": started, "finished_at": started,
                                "status": "failed", "error": f"{type(exc).__name__}: {exc}"}])
        snap = lake.write_snapshot("etl_runs", pd.concat([runs, failed], ignore_index=True), pointer["commit"] + 1)
        lake.commit(pointer, data_version=pointer["data_version"], run_id=run_id, snapshots={"etl_runs": snap},
                    moves=[], staging=None)
        raise


def _number(values: pd.Series) -> pd.Series:
    """`pd.to_numeric(errors="coerce")` as the embedded validation applies it, as float64 (NaN = not a number)."""
    num = pd.to_numeric(values, errors="coerce")
    return pd.Series(np.asarray(num, dtype="float64"), index=values.index)


def _typed_batch(rows: pd.DataFrame, key: bytes) -> pd.DataFrame:
    """The extracted rows, typed for Spark (see the module docstring and BATCH_SCHEMA)."""
    return pd.DataFrame({
        "source": rows["source"].astype(str), "source_id": rows["source_id"].astype("int64"),
        "kind": rows["kind"].astype(str),
        "user_num": _number(rows["user_id"]), "movie_num": _number(rows["movie_id"]),
        "value_num": _number(rows["value"]), "ts": etl.parse_times(rows["occurred_at"]),
        "user_key": etl._user_keys(rows["user_id"].reset_index(drop=True), key),
        "user_text": rows["user_id"].astype(str), "movie_text": rows["movie_id"].astype(str),
        "value_text": rows["value"].astype(str), "occurred_text": rows["occurred_at"].astype(str)})


LANDING_CHUNK = 1_000_000


def _land_batch(lake: Lake, spark, staging: str, rows: pd.DataFrame, key: bytes):
    """The extracted rows as a Spark DataFrame of `BATCH_SCHEMA`, typed chunk by chunk.

    A local lake gets them as a Parquet file under the run's staging folder (the driver holds one chunk of
    typed rows at a time and the JVM reads the file, instead of holding the whole batch in its heap); a lake at
    a URI (a cluster's executors cannot read the driver's disk) gets them through `createDataFrame`.
    Typing per chunk gives the same values: every conversion is element-wise on the frame's own column dtypes.
    """
    if not lake.files.local:
        return _spark_frame(spark, _typed_batch(rows, key), BATCH_SCHEMA)
    import pyarrow as pa
    import pyarrow.parquet as pq
    schema = pa.schema([("source", pa.string()), ("source_id", pa.int64()), ("kind", pa.string()),
                        ("user_num", pa.float64()), ("movie_num", pa.float64()), ("value_num", pa.float64()),
                        ("ts", pa.timestamp("us")), ("user_key", pa.string()), ("user_text", pa.string()),
                        ("movie_text", pa.string()), ("value_text", pa.string()), ("occurred_text", pa.string())])
    path = Path(lake.files.join(staging, "batch.parquet"))
    private_dir(path.parent)
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, len(rows), LANDING_CHUNK):
            typed = _typed_batch(rows.iloc[start:start + LANDING_CHUNK], key)
            typed["ts"] = typed["ts"].astype("datetime64[us]")
            writer.write_table(pa.Table.from_pandas(typed, schema=schema, preserve_index=False))
    return spark.read.schema(BATCH_SCHEMA).parquet(str(path))


def _spark_frame(spark, frame: pd.DataFrame, schema: str):
    """A Spark DataFrame from pandas through Arrow, NaN/NaT/None as NULL (they mean "missing" here)."""
    import pyarrow as pa
    if not len(frame):
        return spark.createDataFrame([], schema)
    return spark.createDataFrame(pa.Table.from_pandas(frame, preserve_index=False), schema)


def _volume_alerts(per_day: pd.Series, daily: pd.DataFrame, clock: str) -> list[dict]:
    """etl._volume_alerts on per-day counts: days before the clock's day vs the trailing 7-day mean."""
    if per_day.empty:                  # a run with served lists only: no day (and no DatetimeIndex to compare)
        return []
    per_day = per_day[per_day.index < pd.Timestamp(clock).normalize()].sort_index()
    if per_day.empty:
        return []
    hist = daily[daily["kind"] != "quarantined"].groupby("day")["n"].sum() if len(daily) else pd.Series(dtype=float)
    hist = pd.Series(hist.to_numpy(), index=pd.to_datetime(hist.index)).sort_index() if len(hist) else \
        pd.Series(dtype=float, index=pd.DatetimeIndex([]))
    alerts = []
    for day, n in per_day.items():
        prior = hist[(hist.index < day) & (hist.index >= day - pd.Timedelta(days=7))]
        if len(prior) >= 3:
            baseline = float(prior.mean())
            ratio = n / baseline if baseline else float("inf")
            if ratio > etl.VOLUME_RATIO or ratio < 1 / etl.VOLUME_RATIO:
                alerts.append({"day": str(day.date()), "rows": int(n), "trailing_mean": round(baseline, 1),
                               "ratio": round(ratio, 2)})
        hist.loc[day] = n
    return alerts


def content_hash(facts, previous: str | None, served: pd.DataFrame | None = None,
                 ads: dict[str, pd.DataFrame] | None = None) -> str:
    """`datahash` in Spark: each day hashed by one task (rows in canonical order), the days combined here; the
    served-list and ad rows (pandas, on the driver: `etl.served_rows`, `etl.ad_rows`) by `datahash` itself."""
    ordered = (facts.select(*datahash.COLUMNS, "day").repartition("day")
               .sortWithinPartitions("day", "source", "source_id"))
    days = ordered.mapInArrow(datahash.arrow_day_digests, "day STRING, n BIGINT, digest STRING").collect()
    return datahash.combine(previous, [(r["day"], r["n"], r["digest"]) for r in days], datahash.served_days(served),
                            datahash.exploration_days(served), datahash.ad_days(ads))


def _stage_served(lake: Lake, spark, staging: str, served: pd.DataFrame, version: int) -> list[tuple[str, str]]:
    """Write the run's fact_served rows under `staging`, partitioned by the UTC day of served_at; returns the
    moves that put them into the table."""
    frame = arrow_ready(served.assign(data_version=version), "fact_served")
    frame["day"] = pd.to_datetime(frame["served_at"]).dt.date
    _spark_frame(spark, frame, SPARK_SCHEMA["fact_served"] + ", day DATE").repartition("day") \
        .write.partitionBy("day").parquet(lake.files.join(staging, "fact_served"))
    return [(lake.files.join(staging, "fact_served", rel), lake.files.join("fact_served", rel))
            for rel in lake.files.files(lake.files.join(staging, "fact_served"))]


def _stage_ads(lake: Lake, spark, staging: str, ads: dict[str, pd.DataFrame], version: int) -> list[tuple[str, str]]:
    """Write the run's ad fact rows under `staging`, each table partitioned by the UTC day of its time column (the
    embedded ETL's `etl.ad_rows`); returns the moves that put them into the tables."""
    moves = []
    for table, frame in ads.items():
        if not len(frame):
            continue
        ready = arrow_ready(frame.assign(data_version=version), table)
        ready["day"] = pd.to_datetime(ready[PARTITIONED[table]]).dt.date
        _spark_frame(spark, ready, SPARK_SCHEMA[table] + ", day DATE").repartition("day") \
            .write.partitionBy("day").parquet(lake.files.join(staging, table))
        moves += [(lake.files.join(staging, table, rel), lake.files.join(table, rel))
                  for rel in lake.files.files(lake.files.join(staging, table))]
    return moves


def _dimensions(ex: dict, key: bytes) -> tuple[pd.DataFrame, pd.DataFrame]:
    users = pd.DataFrame({"user_key": pseudonymize(ex["users"]["user_id"], key),
                          "created_at": etl.parse_times(ex["users"]["created_at"]),
                          "personalization": ex["users"]["consent_personalization"].astype(bool)})
    movies = ex["movies"].assign(added_at=lambda d: etl.parse_times(d["added_at"]),
                                 title=lambda d: d["title"].map(etl._printable))
    return users, movies


def _upsert(old, new, key: str):
    """INSERT OR REPLACE by `key`: old rows whose key is not in `new`, then `new`."""
    return old.join(new.select(key), key, "left_anti").unionByName(new)


def _run(lake: Lake, spark, settings: Settings, key: bytes, run_id: int, started: str, pointer: dict,
         runs: pd.DataFrame) -> etl.EtlResult:
    from pyspark.sql import functions as F
    state = lake.frame("etl_state", pointer)
    marks = dict(zip(state["key"], state["value"].astype(int))) if len(state) else {}
    ex = etl.extract(settings, marks)
    rows, rejects = ex["rows"], ex["rejects"]
    result = etl.EtlResult(run_id=run_id, status="no-new-data", rows_extracted=len(rows) + len(rejects))
    commit = int(pointer["commit"]) + 1
    run_row = {"run_id": run_id, "started_at": started, "finished_at": started}
    if rows.empty and rejects.empty and ex["served"].empty and not etl.has_ad_rows(ex):
        snapshots = _sync_consent(lake, pointer, ex["users"], key, commit)
        snapshots["etl_runs"] = lake.write_snapshot("etl_runs", pd.concat([runs, pd.DataFrame([run_row | {
            "status": result.status, "rows_extracted": 0, "rows_loaded": 0, "rows_quarantined": 0}])],
            ignore_index=True), commit)
        lake.commit(pointer, data_version=pointer["data_version"], run_id=run_id, snapshots=snapshots, moves=[],
                    staging=None)
        return result

    versions = lake.frame("data_versions", pointer)
    prev = versions.sort_values("version").iloc[-1].to_dict() if len(versions) else None
    version = int(prev["version"]) + 1 if prev else 1
    clock = pd.Timestamp(ex["clock"]).isoformat(sep=" ")
    started_ts = pd.Timestamp(started)

    # ---- validate (Spark SQL)
    n_rows = len(rows)
    batch = _land_batch(lake, spark, f"{STAGING}/run-{run_id}", rows, key)
    ex["rows"] = rows = None           # the driver's copy is not needed any more (memory: the batch is on disk)
    batch.createOrReplaceTempView("batch")
    _spark_frame(spark, pd.DataFrame({"id": ex["users"]["user_id"].astype("float64")}), "id DOUBLE") \
        .createOrReplaceTempView("known_users")
    _spark_frame(spark, pd.DataFrame({"id": ex["movies"]["movie_id"].astype("float64")}), "id DOUBLE") \
        .createOrReplaceTempView("known_movies")
    checked = spark.sql(VALIDATION_SQL, args={"clock": clock}).persist()
    new_facts = checked.where("reason IS NULL").selectExpr(
        "source", "source_id", "user_key", "CAST(movie_num AS BIGINT) AS movie_id", "kind", "value_num AS value",
        "ts AS occurred_at")
    new_facts.createOrReplaceTempView("new_facts")
    loaded = lake.table("fact_interaction", pointer)
    first = new_facts.selectExpr("min(occurred_at)").collect()[0][0]
    if first is not None:
        loaded.where(f"day >= DATE '{pd.Timestamp(first).date()}'").createOrReplaceTempView("loaded_facts")
        dups = spark.sql(LOADED_DUPLICATES_SQL)
    else:
        dups = spark.createDataFrame([], "source STRING, source_id BIGINT")
    dups = dups.withColumn("loaded_dup", _lit(True))
    validated = checked
    checked = checked.join(dups, ["source", "source_id"], "left").persist()
    checked.count()                    # materialized before the validation's own cache goes
    validated.unpersist()
    facts = checked.where("reason IS NULL AND loaded_dup IS NULL").selectExpr(
        "source", "source_id", "user_key", "CAST(movie_num AS BIGINT) AS movie_id", "kind", "value_num AS value",
        "ts AS occurred_at", f"{version} AS data_version", "CAST(ts AS DATE) AS day").persist()

    # ---- quarantine: failed checks, duplicates of loaded rows, and the write API's ingestion rejects
    movie_ok = f"{_integral('movie_num')} AND {_in_range('movie_num')}"
    bad = checked.where("reason IS NOT NULL OR loaded_dup").selectExpr(
        "source", "source_id", "coalesce(reason, 'duplicate of a loaded row') AS reason", "user_key",
        f"CASE WHEN {movie_ok} THEN CAST(movie_num AS BIGINT) END AS movie_id", "kind", "value_text AS value",
        # A duplicate of a loaded row was parsed before it was quarantined: its time is shown as a timestamp.
        "CASE WHEN reason IS NULL THEN " + _timestamp_text("ts") + " ELSE occurred_text END AS occurred_at",
        f"{version} AS data_version", f"CAST('{started_ts.isoformat(sep=' ')}' AS TIMESTAMP_NTZ) AS quarantined_at",
        "CAST(NULL AS STRING) AS code", "ts AS day_ts", "CASE WHEN reason IS NULL THEN 1 ELSE 0 END AS seen")
    ingest = etl._ingestion_rejects(rejects, key, started)
    quarantine_cols = table_columns("quarantine")
    q_bad = bad
    if len(ingest):
        ingest = ingest.assign(data_version=version, day_ts=etl.parse_times(ingest["occurred_at"]))
        q_ing = _spark_frame(spark, arrow_ready(ingest, "quarantine").assign(day_ts=ingest["day_ts"].to_numpy(),
                                                                              seen=2),
                             SPARK_SCHEMA["quarantine"] + ", day_ts TIMESTAMP_NTZ, seen INT")
        q_new = q_bad.unionByName(q_ing)
    else:
        q_new = q_bad
    q_new = q_new.persist()

    # ---- report, hash and counts
    counts, first_seen = {}, {}
    for r in q_new.groupBy("reason", "code").agg(F.count("*").alias("n"),
                                                 F.min(F.struct("seen", "source", "source_id")).alias("first")).collect():
        counts[(r["reason"], r["code"])] = int(r["n"])
        first_seen[(r["reason"], r["code"])] = tuple(r["first"])
    by_reason: dict[str, int] = {}
    order: dict[str, tuple] = {}
    for (reason, code), n in counts.items():     # filed as etl._categories files them: by code where there is one
        cat = etl.reason_category(reason, code)
        by_reason[cat] = by_reason.get(cat, 0) + n
        order[cat] = min(order.get(cat, first_seen[(reason, code)]), first_seen[(reason, code)])
    # As pandas' value_counts lists them: most rows first, ties in order of first appearance in the quarantine.
    by_reason = dict(sorted(by_reason.items(), key=lambda kv: (-kv[1], order[kv[0]])))
    n_facts = facts.count()
    n_quarantine = sum(counts.values())
    per_day_rows = facts.groupBy("day").count().collect()
    per_day = pd.Series({pd.Timestamp(r["day"]): int(r["count"]) for r in per_day_rows}, dtype="int64")
    daily_old = lake.frame("daily_aggregates", pointer)
    if len(daily_old):
        daily_old["day"] = pd.to_datetime(daily_old["day"])
    served, refused = etl.served_rows(ex["served"], key)
    ads, ads_refused, late_clicks = etl.ad_batch(ex, key)
    report = {"extracted": int(n_rows), "ingestion_rejects": int(len(rejects)), "valid": int(n_facts),
              "quarantined": int(n_quarantine), "by_reason": by_reason,
              "volume_alerts": _volume_alerts(per_day, daily_old, ex["clock"]),
              "served": etl.served_report(ex["served"], served, refused),
              "ads": etl.ads_report(ex["ads"], ads, ads_refused, late_clicks)}
    digest = content_hash(facts, prev["content_hash"] if prev else None, served, ads)
    window = facts.selectExpr("min(occurred_at)", "max(occurred_at)").collect()[0]

    # ---- stage the new facts and quarantine rows
    staging = f"{STAGING}/run-{run_id}"
    moves: list[tuple[str, str]] = []
    if n_facts:
        facts.write.partitionBy("day").parquet(lake.files.join(staging, "fact_interaction"))
        for rel in lake.files.files(lake.files.join(staging, "fact_interaction")):
            moves.append((lake.files.join(staging, "fact_interaction", rel), lake.files.join("fact_interaction", rel)))
    if n_quarantine:
        q_new.selectExpr(*quarantine_cols).coalesce(1).write.parquet(lake.files.join(staging, "quarantine"))
        for rel in lake.files.files(lake.files.join(staging, "quarantine")):
            moves.append((lake.files.join(staging, "quarantine", rel), lake.files.join("quarantine", rel)))
    if len(served):
        moves += _stage_served(lake, spark, staging, served, version)
    moves += _stage_ads(lake, spark, staging, ads, version)

    # ---- small tables: dimensions, daily aggregates, data version, run, watermarks
    users, movies = _dimensions(ex, key)
    snapshots = {
        "dim_user": lake.write_snapshot("dim_user", _upsert(lake.table("dim_user", pointer), _spark_frame(
            spark, arrow_ready(users, "dim_user"), SPARK_SCHEMA["dim_user"]), "user_key"), commit),
        "dim_movie": lake.write_snapshot("dim_movie", _upsert(lake.table("dim_movie", pointer), _spark_frame(
            spark, arrow_ready(movies, "dim_movie"), SPARK_SCHEMA["dim_movie"]), "movie_id"), commit)}
    touched = {d.date() for d in per_day.index}
    touched |= {r[0] for r in q_new.selectExpr("CAST(day_ts AS DATE)").distinct().collect() if r[0] is not None}
    touched |= {r[0] for r in q_new.selectExpr("CAST(quarantined_at AS DATE)").distinct().collect() if r[0] is not None}
    if touched:
        loaded.drop("day").unionByName(facts.drop("day")).createOrReplaceTempView("all_facts")
        lake.table("quarantine", pointer).unionByName(q_new.drop("day_ts", "seen")) \
            .createOrReplaceTempView("all_quarantine")
        spark.createDataFrame([(d,) for d in sorted(touched)], "day DATE").createOrReplaceTempView("touched")
        fresh = spark.sql(DAILY_SQL).toPandas()
        keep = daily_old[~daily_old["day"].dt.date.isin(touched)] if len(daily_old) else daily_old
        daily = pd.concat([f for f in (keep, fresh) if len(f)], ignore_index=True) if len(keep) or len(fresh) else fresh
        snapshots["daily_aggregates"] = lake.write_snapshot("daily_aggregates", daily, commit)
    total = (loaded.count() if int(pointer["data_version"]) else 0) + n_facts
    version_row = {"version": version, "created_at": started, "etl_run_id": run_id,
                   "rows_extracted": n_rows + len(rejects), "rows_loaded": n_facts, "rows_quarantined": n_quarantine,
                   "total_facts": total, "content_hash": digest, "window_start": window[0], "window_end": window[1],
                   "validation": json.dumps(report), "watermark": json.dumps(ex["max"])}
    snapshots["data_versions"] = lake.write_snapshot(
        "data_versions", pd.concat([versions, pd.DataFrame([version_row])], ignore_index=True), commit)
    result.status, result.data_version = "loaded", version
    result.rows_loaded, result.rows_quarantined, result.report = int(n_facts), int(n_quarantine), report
    result.rows_served = int(len(served))
    result.rows_ads = int(len(ads["fact_ad_impression"]))
    snapshots["etl_runs"] = lake.write_snapshot("etl_runs", pd.concat([runs, pd.DataFrame([run_row | {
        "status": "loaded", "data_version": version, "rows_extracted": result.rows_extracted,
        "rows_loaded": result.rows_loaded, "rows_quarantined": result.rows_quarantined}])], ignore_index=True), commit)
    marks = marks | {name: int(value) for name, value in ex["max"].items()}   # watermarks move with the commit
    snapshots["etl_state"] = lake.write_snapshot("etl_state", pd.DataFrame({"key": list(marks),
                                                                            "value": list(marks.values())}), commit)
    lake.commit(pointer, data_version=version, run_id=run_id, snapshots=snapshots, moves=moves, staging=staging)
    for df in (checked, facts, q_new):
        df.unpersist()
    return result


def _lit(value):
    from pyspark.sql import functions
    return functions.lit(value)


def _timestamp_text(col: str) -> str:
    """str(pd.Timestamp) in Spark SQL: 'YYYY-MM-DD HH:MM:SS', with '.ffffff' only when there are microseconds."""
    return (f"CASE WHEN unix_micros(CAST({col} AS TIMESTAMP)) % 1000000 = 0 "
            f"THEN date_format({col}, 'yyyy-MM-dd HH:mm:ss') ELSE date_format({col}, 'yyyy-MM-dd HH:mm:ss.SSSSSS') END")


def _sync_consent(lake: Lake, pointer: dict, users: pd.DataFrame, key: bytes, commit: int) -> dict:
    """etl._sync_consent: personalization flags of known users follow the operational database."""
    if users.empty or "dim_user" not in pointer["snapshots"]:
        return {}
    current = lake.frame("dim_user", pointer)
    flags = dict(zip(pseudonymize(users["user_id"], key), users["consent_personalization"].astype(bool)))
    new = current["user_key"].map(flags)
    changed = new.notna() & (new.astype(object) != current["personalization"].astype(object))
    if not changed.any():
        return {}
    current.loc[changed, "personalization"] = new[changed].astype(bool)
    return {"dim_user": lake.write_snapshot("dim_user", current, commit)}
