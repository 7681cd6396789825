"""The Spark engine's warehouse: the same star schema as Parquet files in a lake (issue 15).

Layout under the lake root (`Settings.lake_uri`, i.e. $RETRO_LAKE_URI, else RETRO_HOME/lake)::

    _lake.json                           the commit pointer (below)
    fact_interaction/day=YYYY-MM-DD/     facts, partitioned by the UTC day of occurred_at; files only added
    fact_served/day=YYYY-MM-DD/          titles of the lists shown, partitioned by the UTC day of served_at; files
                                         only added (a lake written before it existed has none: an empty view)
    fact_ad_impression/day=…/            sponsored slots shown, by the UTC day of shown_at; files only added
    fact_ad_click/day=…/                 their clicks, by the UTC day of clicked_at; files only added
    quarantine/                          quarantined rows; files only added
    dim_user/commit-000007/  dim_movie/…  daily_aggregates/…  data_versions/…  etl_runs/…  etl_state/…
                                         small tables, rewritten whole: one snapshot folder per commit
    _staging/run-N/                      a run's new files before they are committed

The tables and their columns are `warehouse.SCHEMA`'s (`SPARK_SCHEMA`); `lake_etl` loads
them, `lake_dataset` reads training data from them.

Commit protocol (plain Parquet has no transactions; Delta Lake's jars cannot be
fetched here): a run writes its facts and quarantine rows under `_staging/run-N/`
and new snapshot folders for the small tables, lists its file moves in
`_staging/run-N/moves.json`, moves the files into the tables, then replaces
`_lake.json` (a rename on a local disk; a single PUT on object storage). Readers
use the snapshots `_lake.json` names and only the fact and quarantine rows with
`data_version <=` its data version, so a run that fails, or is killed at any
point, changes nothing they see; the next writer (under the store lock) deletes
what it left behind (`Lake.recover`). One writer at a time: the data folder's
store lock (`core.store.locks`).

Erasure (`erase_user`) and key rotation (`rekey`) rewrite only the files that hold
the pseudonyms concerned: the fact and fact_served partitions (days) of the user, the
quarantine files, a new dim_user snapshot — so the old bytes leave the lake.

DuckDB reads the lake without any extension (`connect`, `session`, `query`): an
in-memory database with one view per warehouse table over the committed lake, so
the dashboard's warehouse views and `dataset.interactions(con=…)` work whichever
engine loaded the data.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

import duckdb
import pandas as pd

from core.errors import RetroError
from core.filemodes import private_dir, private_tree
from core.settings import Settings
from core.store import locks
from core.warehouse import warehouse
from core.warehouse.spark import session_for

POINTER = "_lake.json"
STAGING = "_staging"
FORMAT = 1
APPEND_TABLES = ("fact_interaction", "quarantine", "fact_served", "fact_ad_impression",
                 "fact_ad_click")   # files only added; rows carry data_version
# Append tables in day=YYYY-MM-DD folders, by the UTC day of this column.
PARTITIONED = {"fact_interaction": "occurred_at", "fact_served": "served_at", "fact_ad_impression": "shown_at",
               "fact_ad_click": "clicked_at"}
SNAPSHOT_TABLES = ("dim_user", "dim_movie", "daily_aggregates", "data_versions", "etl_runs", "etl_state")
ALL_TABLES = APPEND_TABLES + SNAPSHOT_TABLES
USER_TABLES = ("fact_interaction", "quarantine", "dim_user", "fact_served", "fact_ad_impression",
               "fact_ad_click")  # tables holding pseudonyms

# Spark types of the warehouse tables (`warehouse.SCHEMA`, column for column; a test compares the two).
SPARK_SCHEMA = {
    "fact_interaction": "source STRING, source_id BIGINT, user_key STRING, movie_id BIGINT, kind STRING, "
                        "value DOUBLE, occurred_at TIMESTAMP_NTZ, data_version INT",
    "quarantine": "source STRING, source_id BIGINT, reason STRING, user_key STRING, movie_id BIGINT, kind STRING, "
                  "value STRING, occurred_at STRING, data_version INT, quarantined_at TIMESTAMP_NTZ, code STRING",
    "dim_user": "user_key STRING, created_at TIMESTAMP_NTZ, personalization BOOLEAN",
    "dim_movie": "movie_id BIGINT, title STRING, year INT, genres STRING, runtime_min INT, added_at TIMESTAMP_NTZ",
    "daily_aggregates": "day DATE, kind STRING, n BIGINT, users BIGINT, movies BIGINT, value_sum DOUBLE",
    "data_versions": "version INT, created_at TIMESTAMP_NTZ, etl_run_id INT, rows_extracted BIGINT, "
                     "rows_loaded BIGINT, rows_quarantined BIGINT, total_facts BIGINT, content_hash STRING, "
                     "window_start TIMESTAMP_NTZ, window_end TIMESTAMP_NTZ, validation STRING, watermark STRING",
    "etl_runs": "run_id INT, started_at TIMESTAMP_NTZ, finished_at TIMESTAMP_NTZ, status STRING, error STRING, "
                "data_version INT, rows_extracted BIGINT, rows_loaded BIGINT, rows_quarantined BIGINT",
    "etl_state": "key STRING, value BIGINT",
    "fact_served": "serve_id BIGINT, user_key STRING, served_at TIMESTAMP_NTZ, path STRING, model_version INT, "
                   "ranker_version INT, arm STRING, position INT, movie_id BIGINT, data_version INT, policy STRING, "
                   "propensity DOUBLE, slate_propensity DOUBLE",
    "fact_ad_impression": "impression_id BIGINT, serve_id BIGINT, user_key STRING, campaign_id BIGINT, slot INT, "
                          "shown_at TIMESTAMP_NTZ, p_click DOUBLE, policy STRING, model_version INT, clicked BOOLEAN, "
                          "age_band STRING, data_version INT",
    "fact_ad_click": "impression_id BIGINT, user_key STRING, campaign_id BIGINT, clicked_at TIMESTAMP_NTZ, "
                     "price DOUBLE, policy STRING, model_version INT, data_version INT",
}


class LakeError(RetroError):
    """The lake cannot be read or written as asked (e.g. DuckDB asked to read a lake on object storage)."""


def lake_uri(settings: Settings) -> str:
    """Where the lake lives: `settings.lake_uri` ($RETRO_LAKE_URI, e.g. s3a://bucket/retro), else the data folder's `lake/`."""
    return settings.lake_uri or str(settings.lake_dir)


def _is_local(uri: str) -> bool:
    return urlparse(uri).scheme in ("",)


# ------------------------------------------------------------------ files
class _Files:
    """File operations on the lake: plain paths through `os`, URIs (s3a://, gs://, abfs://, file://) through
    Hadoop's FileSystem API in the Spark JVM, so object storage works with the same code."""

    def __init__(self, root: str, spark=None):
        self.root = root.rstrip("/")
        self.local = _is_local(root)
        self._spark = spark

    def join(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    # Hadoop side (URIs)
    def _fs(self, path: str):
        jvm = self._spark._jvm
        p = jvm.org.apache.hadoop.fs.Path(path)
        return p.getFileSystem(self._spark._jsc.hadoopConfiguration()), p

    def exists(self, path: str) -> bool:
        if self.local:
            return os.path.exists(path)
        fs, p = self._fs(path)
        return bool(fs.exists(p))

    def read_text(self, path: str) -> str:
        if self.local:
            return Path(path).read_text()
        fs, p = self._fs(path)
        stream = fs.open(p)
        try:
            jvm = self._spark._jvm
            return str(jvm.org.apache.commons.io.IOUtils.toString(stream, "UTF-8"))
        finally:
            stream.close()

    def write_text(self, path: str, text: str) -> None:
        """Replace `path` atomically (local: write aside, fsync, rename; object storage: one PUT)."""
        if self.local:
            tmp = Path(f"{path}.{uuid.uuid4().hex}.tmp")
            private_dir(tmp.parent)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, text.encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
            return
        fs, p = self._fs(path)
        out = fs.create(p, True)
        try:
            out.write(bytearray(text.encode()))
        finally:
            out.close()

    def delete(self, path: str) -> None:
        if self.local:
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            elif os.path.exists(path):
                os.unlink(path)
            return
        fs, p = self._fs(path)
        fs.delete(p, True)

    def rename(self, src: str, dst: str) -> None:
        """Move a file or folder; the destination's parent is created; an existing destination is an error."""
        if self.local:
            private_dir(Path(dst).parent)
            os.rename(src, dst)
            return
        fs, p = self._fs(src)
        _, q = self._fs(dst)
        fs.mkdirs(q.getParent())
        if not fs.rename(p, q):
            raise LakeError(f"could not move {src} to {dst}")

    def files(self, path: str) -> list[str]:
        """Data files under `path`, recursively, as paths relative to it (hidden and checksum files left out)."""
        out = []
        if self.local:
            if not os.path.isdir(path):
                return []
            for root, _, names in os.walk(path):
                for name in names:
                    if not name.startswith((".", "_")):
                        out.append(os.path.relpath(os.path.join(root, name), path))
            return sorted(out)
        fs, p = self._fs(path)
        if not fs.exists(p):
            return []
        it = fs.listFiles(p, True)
        base = str(fs.makeQualified(p).toString()).rstrip("/")
        while it.hasNext():
            full = str(it.next().getPath().toString())
            name = full.rsplit("/", 1)[-1]
            if not name.startswith((".", "_")):
                out.append(full[len(base) + 1:])
        return sorted(out)

    def listdir(self, path: str) -> list[str]:
        if self.local:
            return sorted(os.listdir(path)) if os.path.isdir(path) else []
        fs, p = self._fs(path)
        if not fs.exists(p):
            return []
        return sorted(str(s.getPath().getName()) for s in fs.listStatus(p))


# ------------------------------------------------------------------ the lake
class Lake:
    """One lake root: its pointer, its committed tables as Spark DataFrames, and commits."""

    def __init__(self, settings: Settings, spark=None):
        self.settings = settings
        self.uri = lake_uri(settings)
        self.spark = spark
        self.files = _Files(self.uri, spark)

    # ---- reading
    def pointer(self) -> dict:
        path = self.files.join(POINTER)
        if not self.files.exists(path):
            return {"format": FORMAT, "commit": 0, "data_version": 0, "run_id": 0, "snapshots": {}}
        pointer = json.loads(self.files.read_text(path))
        if pointer.get("format") != FORMAT:
            raise LakeError(f"{path} has format {pointer.get('format')!r}; this version reads format {FORMAT}")
        return pointer

    def table(self, name: str, pointer: dict | None = None):
        """A committed table as a Spark DataFrame (empty with the schema when it has no rows yet)."""
        pointer = pointer or self.pointer()
        spark = self.spark
        if name in APPEND_TABLES:
            path = self.files.join(name)
            schema = SPARK_SCHEMA[name] + (", day DATE" if name in PARTITIONED else "")
            if not self.files.files(path):
                return spark.createDataFrame([], schema)
            df = spark.read.schema(schema).option("basePath", path).parquet(path)
            df = df.where(f"data_version <= {int(pointer['data_version'])}")
            return df
        snap = pointer["snapshots"].get(name)
        if snap is None:
            return spark.createDataFrame([], SPARK_SCHEMA[name])
        return spark.read.schema(SPARK_SCHEMA[name]).parquet(self.files.join(snap))

    def frame(self, name: str, pointer: dict | None = None) -> pd.DataFrame:
        """A small committed table as pandas."""
        return self.table(name, pointer).toPandas()

    # ---- writing
    def recover(self) -> None:
        """Delete what a failed or killed writer left: staged files, files it moved but never committed, and
        snapshot folders newer than the pointer. Call under the store lock."""
        pointer = self.pointer()
        staging = self.files.join(STAGING)
        for name in self.files.listdir(staging):
            manifest = self.files.join(STAGING, name, "moves.json")
            if self.files.exists(manifest):
                for _, dst in json.loads(self.files.read_text(manifest)):
                    self.files.delete(dst)
            self.files.delete(self.files.join(STAGING, name))
        for table in SNAPSHOT_TABLES:
            for snap in self.files.listdir(self.files.join(table)):
                if snap.startswith("commit-") and int(snap.split("-")[1]) > int(pointer["commit"]):
                    self.files.delete(self.files.join(table, snap))

    def write_snapshot(self, name: str, df, commit: int) -> str:
        """Write a small table's new snapshot folder (not yet visible); returns its path relative to the root."""
        rel = f"{name}/commit-{commit:06d}"
        if isinstance(df, pd.DataFrame):
            df = self.spark.createDataFrame(arrow_ready(df, name), SPARK_SCHEMA[name])
        df.selectExpr(*table_columns(name)).coalesce(1).write.mode("overwrite").parquet(self.files.join(rel))
        return rel

    def commit(self, pointer: dict, *, data_version: int, run_id: int, snapshots: dict[str, str],
               moves: list[tuple[str, str]], staging: str | None) -> dict:
        """Move staged files into their tables and publish the new pointer (the one atomic step)."""
        if staging is not None:
            self.files.write_text(self.files.join(staging, "moves.json"), json.dumps(moves))
        for src, dst in moves:
            self.files.rename(src, dst)
        new = {"format": FORMAT, "commit": int(pointer["commit"]) + 1, "data_version": int(data_version),
               "run_id": int(run_id), "snapshots": pointer["snapshots"] | snapshots}
        self.files.write_text(self.files.join(POINTER), json.dumps(new, indent=2))
        if staging is not None:
            self.files.delete(self.files.join(staging))
        self._drop_old_snapshots(new)
        if self.files.local:
            private_tree(Path(self.uri))
        return new

    def _drop_old_snapshots(self, pointer: dict, keep: int = 2) -> None:
        """Snapshot folders older than the last `keep` commits (a reader that opened one a moment ago keeps it)."""
        for table in SNAPSHOT_TABLES:
            current = pointer["snapshots"].get(table)
            for snap in self.files.listdir(self.files.join(table)):
                if snap.startswith("commit-") and f"{table}/{snap}" != current \
                        and int(snap.split("-")[1]) <= int(pointer["commit"]) - keep:
                    self.files.delete(self.files.join(table, snap))


def table_columns(name: str) -> list[str]:
    """The column names of a lake table, in `warehouse.SCHEMA`'s order."""
    return [part.strip().split(" ")[0] for part in SPARK_SCHEMA[name].split(",")]


def arrow_ready(frame: pd.DataFrame, name: str) -> pd.DataFrame:
    """A pandas frame with the table's columns, nullable integers and naive timestamps (for createDataFrame)."""
    out = pd.DataFrame({c: frame[c] if c in frame else None for c in table_columns(name)})
    for col, kind in (part.strip().split(" ")[:2] for part in SPARK_SCHEMA[name].split(",")):
        if kind in ("BIGINT", "INT"):
            out[col] = pd.to_numeric(out[col]).astype("Int64")
        elif kind == "TIMESTAMP_NTZ":
            text = out[col].dtype == object
            out[col] = pd.to_datetime(out[col], format="ISO8601") if text else pd.to_datetime(out[col])
        elif kind == "DOUBLE":
            out[col] = pd.to_numeric(out[col]).astype("float64")
        elif kind == "DATE":
            out[col] = pd.to_datetime(out[col]).dt.date
        elif kind == "STRING":
            out[col] = out[col].astype(object).where(out[col].notna(), None)
    return out


# ------------------------------------------------------------------ a user's rows: export, erasure, re-keying
def exists(settings: Settings) -> bool:
    """True when the settings have a lake: a local one whose pointer was written, or one configured at a URI
    (looking there needs the JVM; privacy then goes through Spark, which names what is missing)."""
    uri = lake_uri(settings)
    return (Path(uri) / POINTER).exists() if _is_local(uri) else True


def _user_rows(settings: Settings, table: str, user_key: str) -> pd.DataFrame:
    """The pseudonym's committed rows of one of `USER_TABLES` (DuckDB for a local lake, else Spark)."""
    if _is_local(lake_uri(settings)):
        return query(settings, f"SELECT * FROM {table} WHERE user_key = ?", [user_key])
    lake = Lake(settings, session_for(settings))
    quoted = "'" + user_key.replace("'", "''") + "'"
    return lake.table(table).where(f"user_key = {quoted}").selectExpr(*table_columns(table)).toPandas()


def export_user(settings: Settings, user_key: str) -> dict[str, list[dict]]:
    """{table: the pseudonym's rows, without the key column} for each of `USER_TABLES` (empty without a lake)."""
    if not exists(settings):
        return {t: [] for t in USER_TABLES}
    out = {}
    for t in USER_TABLES:
        rows = _user_rows(settings, t, user_key).drop(columns="user_key").astype(object)
        out[t] = rows.where(rows.notna(), None).to_dict("records")
    return out


def held_counts(settings: Settings, user_key: str) -> dict[str, int]:
    """{table: committed rows under the pseudonym} for each of `USER_TABLES` (zeros without a lake)."""
    if not exists(settings):
        return {t: 0 for t in USER_TABLES}
    return {t: len(_user_rows(settings, t, user_key)) for t in USER_TABLES}


def holds_user(settings: Settings, user_key: str) -> bool:
    """True when any lake table holds a row under the pseudonym."""
    return any(held_counts(settings, user_key).values())


def user_keys(settings: Settings) -> set[str]:
    """Every pseudonym in the lake (what a key rotation must map); empty without a lake."""
    if not exists(settings):
        return set()
    if _is_local(lake_uri(settings)):
        union = " UNION ".join(f"SELECT DISTINCT user_key FROM {t} WHERE user_key IS NOT NULL" for t in USER_TABLES)
        return set(query(settings, union)["user_key"])
    lake = Lake(settings, session_for(settings))
    frames = [lake.table(t).select("user_key").where("user_key IS NOT NULL").distinct() for t in USER_TABLES]
    union = frames[0]
    for frame in frames[1:]:
        union = union.union(frame)
    return {r[0] for r in union.distinct().collect()}


def _rewrite(lake: Lake, spark, name: str, transform, where: str | None) -> int:
    """Rewrite the files of table `name` that hold rows matching `where` (a SQL condition), through `transform`
    (DataFrame → DataFrame). Day-partitioned tables (`PARTITIONED`): only the day partitions concerned, each
    written aside then swapped in.
    Returns the rows that matched."""
    path = lake.files.join(name)
    if not lake.files.files(path):
        return 0
    reader = spark.read.schema(SPARK_SCHEMA[name] + (", day DATE" if name in PARTITIONED else ""))
    full = reader.option("basePath", path).parquet(path)
    hits = full.where(where) if where else full
    matched = hits.count()
    if not matched:
        return 0
    work = f"{STAGING}/rewrite-{uuid.uuid4().hex}"
    if name in PARTITIONED:
        days = sorted({str(r[0]) for r in hits.select("day").distinct().collect()})
        parts = [f"day={d}" for d in days]
    else:
        parts = [None]
    done = []
    for part in parts:
        src = lake.files.join(name, part) if part else path
        rows = spark.read.schema(SPARK_SCHEMA[name]).parquet(src)
        out = lake.files.join(work, "new", part) if part else lake.files.join(work, "new", name)
        transform(rows).selectExpr(*table_columns(name)).coalesce(1).write.parquet(out)
        done.append((src, out, lake.files.join(work, "old", part or name)))
    for src, out, old in done:          # each swap: the old folder aside, the new one in, the old one deleted
        lake.files.rename(src, old)
        lake.files.rename(out, src)
    lake.files.delete(lake.files.join(work))
    return int(matched)


@locks.exclusive(locks.ERASURE)
def erase_user(settings: Settings, user_key: str, *, spark=None) -> dict:
    """Remove every row of one pseudonym from the lake: the fact and fact_served partitions and quarantine files
    that hold it are rewritten (so its bytes leave the files), and dim_user gets a snapshot without it. Returns
    rows removed per table."""
    spark = spark or session_for(settings)
    lake = Lake(settings, spark)
    lake.recover()
    pointer = lake.pointer()
    quoted = "'" + user_key.replace("'", "''") + "'"
    counts = {}
    for name in APPEND_TABLES:
        counts[name] = _rewrite(lake, spark, name, lambda df: df.where(f"user_key IS NULL OR user_key <> {quoted}"),
                                f"user_key = {quoted}")
    users = lake.table("dim_user", pointer)
    counts["dim_user"] = users.where(f"user_key = {quoted}").count()
    if counts["dim_user"]:
        snap = lake.write_snapshot("dim_user", users.where(f"user_key <> {quoted}"), int(pointer["commit"]) + 1)
        lake.commit(pointer, data_version=pointer["data_version"], run_id=pointer["run_id"],
                    snapshots={"dim_user": snap}, moves=[], staging=None)
        old = [s for s in lake.files.listdir(lake.files.join("dim_user")) if f"dim_user/{s}" != snap]
        for s in old:                     # earlier snapshots hold the pseudonym too
            lake.files.delete(lake.files.join("dim_user", s))
    if lake.files.local:
        private_tree(Path(lake.uri))
    return counts


# What a retention purge removes from the lake, as the warehouse's `RETAINED`: (time column, rows it may remove).
RETAINED = {"fact_interaction": ("occurred_at", "kind <> 'rating'"), "fact_served": ("served_at", "true"),
            "fact_ad_impression": ("shown_at", "true"), "fact_ad_click": ("clicked_at", "true")}


def _older(table: str, cutoff: str) -> str:
    at, removable = RETAINED[table]
    stamp = pd.Timestamp(cutoff).strftime("%Y-%m-%d %H:%M:%S")
    return f"({removable}) AND {at} < CAST('{stamp}' AS TIMESTAMP_NTZ)"


def rows_before(settings: Settings, cutoff: str) -> dict[str, int]:
    """{table: committed rows a retention purge at `cutoff` would remove} (zeros without a lake); ratings stay."""
    if not exists(settings):
        return {t: 0 for t in RETAINED}
    if _is_local(lake_uri(settings)):
        stamp = pd.Timestamp(cutoff).to_pydatetime()
        return {t: int(query(settings, f"SELECT count(*) AS n FROM {t} WHERE {RETAINED[t][1]} AND "
                                        f"{RETAINED[t][0]} < ?", [stamp])["n"][0]) for t in RETAINED}
    lake = Lake(settings, session_for(settings))
    return {t: lake.table(t).where(_older(t, cutoff)).count() if lake.files.files(lake.files.join(t)) else 0
            for t in RETAINED}


def purge_before(settings: Settings, cutoff: str, *, spark=None) -> dict[str, int]:
    """Retention in the lake: behavioural events (every kind but 'rating'), served lists and ad impressions and
    clicks older than `cutoff` leave it — the day partitions holding them are rewritten (`_rewrite`, the same
    swap as an erasure), so their bytes leave the files; the other partitions are not touched. The caller holds
    the retention lock. Returns the rows removed per table."""
    spark = spark or session_for(settings)
    lake = Lake(settings, spark)
    lake.recover()
    counts = {}
    for name in RETAINED:
        where = _older(name, cutoff)
        counts[name] = _rewrite(lake, spark, name, lambda df, w=where: df.where(f"NOT coalesce(({w}), false)"), where)
    if lake.files.local:
        private_tree(Path(lake.uri))
    return counts


@locks.exclusive("key rotation")
def rekey(settings: Settings, mapping: dict[str, str], *, spark=None) -> dict:
    """Replace pseudonyms old → new (key rotation) in every lake table that holds them; files rewritten."""
    spark = spark or session_for(settings)
    lake = Lake(settings, spark)
    lake.recover()
    if not mapping:
        return {t: 0 for t in USER_TABLES}
    pointer = lake.pointer()
    table = spark.createDataFrame(pd.DataFrame({"old_key": list(mapping), "new_key": list(mapping.values())}),
                                  "old_key STRING, new_key STRING")
    table.createOrReplaceTempView("key_map")
    from pyspark.sql import functions as F

    def remap(df):
        joined = df.join(F.broadcast(table), df["user_key"] == table["old_key"], "left")
        return joined.withColumn("user_key", F.coalesce("new_key", "user_key")).drop("old_key", "new_key")

    counts = {}
    for name in APPEND_TABLES:
        counts[name] = _rewrite(lake, spark, name, remap, "user_key IN (SELECT old_key FROM key_map)")
    users = lake.table("dim_user", pointer)
    counts["dim_user"] = users.join(table, users["user_key"] == table["old_key"], "left_semi").count()
    if counts["dim_user"]:
        snap = lake.write_snapshot("dim_user", remap(users), int(pointer["commit"]) + 1)
        lake.commit(pointer, data_version=pointer["data_version"], run_id=pointer["run_id"],
                    snapshots={"dim_user": snap}, moves=[], staging=None)
        for s in lake.files.listdir(lake.files.join("dim_user")):
            if f"dim_user/{s}" != snap:
                lake.files.delete(lake.files.join("dim_user", s))
    if lake.files.local:
        private_tree(Path(lake.uri))
    return counts


# ------------------------------------------------------------------ DuckDB over the lake
def connect(settings: Settings) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with one view per warehouse table over the committed lake.

    Column names and types are those of `warehouse.SCHEMA` (the same queries run on either
    engine's warehouse). DuckDB reads Parquet natively: no extension is installed or loaded.
    A local lake only: DuckDB would need its httpfs extension for object storage.
    """
    uri = lake_uri(settings)
    if not _is_local(uri):
        raise LakeError(f"DuckDB reads a local lake only (the lake is at {uri}); read it with Spark "
                        "(lake.Lake.table) or copy it to local disk")
    lake = Lake(settings)
    pointer = lake.pointer()
    # Parquet is built into DuckDB; extensions never are fetched or loaded here (they would need the network).
    con = duckdb.connect(":memory:", config={"autoinstall_known_extensions": False,
                                             "autoload_known_extensions": False})
    try:
        con.execute(warehouse.SCHEMA)
        for name in ALL_TABLES:
            if name in APPEND_TABLES:
                files = lake.files.files(lake.files.join(name))
                source = lake.files.join(name, "**", "*.parquet") if name in PARTITIONED else \
                    lake.files.join(name, "*.parquet")
                where = f" WHERE data_version <= {int(pointer['data_version'])}"
            else:
                snap = pointer["snapshots"].get(name)
                files = lake.files.files(lake.files.join(snap)) if snap else []
                source, where = (lake.files.join(snap, "*.parquet") if snap else ""), ""
            if not files:
                continue                      # no rows yet: the empty table of the schema stays
            cols = con.execute(f"SELECT column_name, data_type FROM duckdb_columns() WHERE table_name = '{name}' "
                               "ORDER BY column_index").fetchall()
            # Files written before a column existed (fact_served's exploration columns) read it as NULL.
            present = {c for (c, *_) in con.execute(f"DESCRIBE SELECT * FROM read_parquet({_sql_text(source)}, "
                                                    "hive_partitioning = false, union_by_name = true)").fetchall()}
            select = ", ".join(f"CAST({c if c in present else 'NULL'} AS {t}) AS {c}" for c, t in cols)
            con.execute(f"DROP TABLE {name}")
            con.execute(f"CREATE VIEW {name} AS SELECT {select} FROM read_parquet({_sql_text(source)}, "
                        f"hive_partitioning = false, union_by_name = true){where}")
    except BaseException:
        con.close()
        raise
    return con


def _sql_text(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


@contextmanager
def session(settings: Settings) -> Iterator[duckdb.DuckDBPyConnection]:
    """`warehouse.session`'s twin over the lake: a DuckDB connection closed afterwards."""
    con = connect(settings)
    try:
        yield con
    finally:
        con.close()


def query(settings: Settings, sql: str, params: list | None = None) -> pd.DataFrame:
    """`warehouse.query`'s twin over the lake."""
    with session(settings) as con:
        return con.execute(sql, params or []).df()
