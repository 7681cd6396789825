"""The analytics warehouse: DuckDB in `RETRO_HOME/warehouse.duckdb`, a small star schema.

No DuckDB extension is used (they download at run time and fail offline):
rows arrive from the operational database as pandas frames.
Users appear only as keyed pseudonyms (`user_key`).
Concurrency: readers open short-lived read-only snapshots (`session`, `query`);
writers change a copy and swap it in atomically (`transaction`), so a reader in
any process never blocks a writer and never sees half of a write.
"""
from __future__ import annotations

import os
import shutil
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import duckdb
import pandas as pd

from core.store import locks
from core.filemodes import private_file
from core.store.locks import StoreBusy
from core.settings import Settings

FACT_SERVED_COLUMNS = ("serve_id BIGINT NOT NULL, user_key VARCHAR NOT NULL, served_at TIMESTAMP NOT NULL, "
                       "path VARCHAR NOT NULL, model_version INTEGER, ranker_version INTEGER, arm VARCHAR, "
                       "position INTEGER NOT NULL, movie_id BIGINT NOT NULL, data_version INTEGER NOT NULL, "
                       "policy VARCHAR, propensity DOUBLE, slate_propensity DOUBLE")
# Ads (issue 25): one row per sponsored slot shown (with whether it was clicked and the user's declared age band at
# the time), and one per click with the price charged. Pseudonymized like every fact.
FACT_AD_IMPRESSION_COLUMNS = ("impression_id BIGINT NOT NULL, serve_id BIGINT, user_key VARCHAR NOT NULL, "
                              "campaign_id BIGINT NOT NULL, slot INTEGER NOT NULL, shown_at TIMESTAMP NOT NULL, "
                              "p_click DOUBLE, policy VARCHAR NOT NULL, model_version INTEGER, clicked BOOLEAN NOT NULL, "
                              "age_band VARCHAR, data_version INTEGER NOT NULL")
FACT_AD_CLICK_COLUMNS = ("impression_id BIGINT NOT NULL, user_key VARCHAR NOT NULL, campaign_id BIGINT NOT NULL, "
                         "clicked_at TIMESTAMP NOT NULL, price DOUBLE NOT NULL, policy VARCHAR NOT NULL, "
                         "model_version INTEGER, data_version INTEGER NOT NULL")
SCHEMA = """
CREATE TABLE IF NOT EXISTS dim_movie (
    movie_id BIGINT PRIMARY KEY, title VARCHAR, year INTEGER, genres VARCHAR,
    runtime_min INTEGER, added_at TIMESTAMP);
CREATE TABLE IF NOT EXISTS dim_user (
    user_key VARCHAR PRIMARY KEY, created_at TIMESTAMP, personalization BOOLEAN);
-- One row per user-movie signal: a rating (kind 'rating', value 1..10) or a behavioural event.
CREATE TABLE IF NOT EXISTS fact_interaction (
    source VARCHAR NOT NULL, source_id BIGINT NOT NULL, user_key VARCHAR NOT NULL, movie_id BIGINT,
    kind VARCHAR NOT NULL, value DOUBLE NOT NULL, occurred_at TIMESTAMP NOT NULL, data_version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS quarantine (
    source VARCHAR, source_id BIGINT, reason VARCHAR NOT NULL, user_key VARCHAR, movie_id BIGINT,
    kind VARCHAR, value VARCHAR, occurred_at VARCHAR, data_version INTEGER, quarantined_at TIMESTAMP,
    code VARCHAR);
-- The write API's check code of an ingestion reject (files its category); NULL for the ETL's own checks and for
-- rows loaded before the column existed (those are filed by their text, etl.reason_category).
ALTER TABLE quarantine ADD COLUMN IF NOT EXISTS code VARCHAR;
CREATE TABLE IF NOT EXISTS daily_aggregates (
    day DATE NOT NULL, kind VARCHAR NOT NULL, n BIGINT, users BIGINT, movies BIGINT, value_sum DOUBLE,
    PRIMARY KEY (day, kind));
CREATE TABLE IF NOT EXISTS data_versions (
    version INTEGER PRIMARY KEY, created_at TIMESTAMP, etl_run_id INTEGER, rows_extracted BIGINT,
    rows_loaded BIGINT, rows_quarantined BIGINT, total_facts BIGINT, content_hash VARCHAR,
    window_start TIMESTAMP, window_end TIMESTAMP, validation VARCHAR, watermark VARCHAR);
CREATE TABLE IF NOT EXISTS etl_runs (
    run_id INTEGER PRIMARY KEY, started_at TIMESTAMP, finished_at TIMESTAMP, status VARCHAR,
    error VARCHAR, data_version INTEGER, rows_extracted BIGINT, rows_loaded BIGINT, rows_quarantined BIGINT);
CREATE TABLE IF NOT EXISTS etl_state (key VARCHAR PRIMARY KEY, value BIGINT);
""" + f"""
-- One row per title of a list shown to a user (served_recommendations, exploded; position 1 = first). Shadow lists
-- are not here (nobody saw them). Added after the first release: an older file gains it at its next write, and
-- the exploration columns (the list's logging policy, the title's propensities; NULL before they existed) too.
CREATE TABLE IF NOT EXISTS fact_served ({FACT_SERVED_COLUMNS});
ALTER TABLE fact_served ADD COLUMN IF NOT EXISTS "policy" VARCHAR;
ALTER TABLE fact_served ADD COLUMN IF NOT EXISTS propensity DOUBLE;
ALTER TABLE fact_served ADD COLUMN IF NOT EXISTS slate_propensity DOUBLE;
-- Ads (issue 25): added after fact_served; an older file gains them at its next write.
CREATE TABLE IF NOT EXISTS fact_ad_impression ({FACT_AD_IMPRESSION_COLUMNS});
CREATE TABLE IF NOT EXISTS fact_ad_click ({FACT_AD_CLICK_COLUMNS});
"""


class WarehouseBusy(StoreBusy):
    """The warehouse file could not be opened for reading (another program holds a conflicting lock)."""


READ_RETRY_SECONDS = 10.0
ALIAS = "warehouse"          # the catalog name every query runs in (DuckDB's default for warehouse.duckdb)
NEXT_SUFFIX = ".next"         # the copy a writer changes before it is swapped in
COMPACT_SUFFIX = ".compact"   # the rewrite of that copy that holds live rows only


def _wal(path: Path) -> Path:
    return Path(f"{path}.wal")


def _quoted(path: Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"


def _open(path: Path, read_only: bool) -> duckdb.DuckDBPyConnection:
    """A connection of its own to `path`, in the `warehouse` catalog.

    `duckdb.connect(path)` shares one database instance per path and process (a
    cache), so a connection opened while another is still open would see the
    file as it was when the first opened, and a read-only and a read-write open
    of one path in one process conflict. An in-memory instance with the file
    ATTACHed is private to this connection and opens the file as it is now.
    """
    con = duckdb.connect(":memory:")
    try:
        con.execute(f"ATTACH {_quoted(path)} AS {ALIAS} ({'READ_ONLY' if read_only else 'READ_WRITE'})")
        con.execute(f"USE {ALIAS}")
    except BaseException:
        con.close()
        raise
    return con


def _create_if_missing(settings: Settings) -> None:
    """An empty warehouse (the schema only), created atomically: built aside, then hard-linked into place."""
    path = settings.warehouse
    settings.home.mkdir(parents=True, exist_ok=True)
    fresh = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.new")
    fresh.unlink(missing_ok=True)
    try:
        con = _open(fresh, read_only=False)
        try:
            con.execute(SCHEMA)
        finally:
            con.close()
        private_file(fresh)    # owner-only, like every file in the data folder
        os.link(fresh, path)   # fails if a writer or another reader created it first: theirs is kept
    except FileExistsError:
        pass
    finally:
        fresh.unlink(missing_ok=True)
        _wal(fresh).unlink(missing_ok=True)


def connect(settings: Settings) -> duckdb.DuckDBPyConnection:
    """A read-only connection to the warehouse of the settings' engine, as it is now.

    With `engine = "spark"` the warehouse is the Parquet lake, read through DuckDB views with the same
    tables and columns (`lake.connect`); otherwise the DuckDB file (`file_connect`).
    """
    if settings.engine == "spark":
        from core.warehouse import lake          # lake imports this module: imported on use
        return lake.connect(settings)
    return file_connect(settings)


def exists(settings: Settings) -> bool:
    """True when the engine's warehouse has been written: the DuckDB file, or (engine=spark) the lake."""
    if settings.engine == "spark":
        from core.warehouse import lake
        return lake.exists(settings)
    return settings.warehouse.exists()


def changed_at(settings: Settings) -> int | None:
    """When the engine's warehouse last changed (ns; a cache key), None before it exists."""
    path = settings.warehouse
    if settings.engine == "spark":
        from core.warehouse import lake
        path = Path(lake.lake_uri(settings)) / lake.POINTER
    return path.stat().st_mtime_ns if path.exists() else None


def file_connect(settings: Settings) -> duckdb.DuckDBPyConnection:
    """A read-only connection to the warehouse file as it is now (a consistent snapshot until closed).

    Writers never change the file readers open (see `transaction`), so a reader
    never blocks a writer and never sees half of a write. Keep it short-lived:
    a reader sees later writes only through a new connection. Should the open
    fail on a file lock (a program outside this module holding the file), it
    is retried for `READ_RETRY_SECONDS`, then `WarehouseBusy` is raised.
    """
    if not settings.warehouse.exists():
        _create_if_missing(settings)
    deadline = time.monotonic() + READ_RETRY_SECONDS
    delay = 0.02
    while True:
        try:
            con = _open(settings.warehouse, read_only=True)
        except duckdb.IOException as exc:
            if time.monotonic() >= deadline:
                raise WarehouseBusy(f"the warehouse ({settings.warehouse.name}) cannot be opened for reading: "
                                    f"{str(exc).splitlines()[0]} — try again in a moment") from None
            time.sleep(delay)
            delay = min(delay * 2, 0.5)
            continue
        try:
            return _with_later_tables(con)
        except BaseException:
            con.close()
            raise


LATER_TABLES = {"fact_served": FACT_SERVED_COLUMNS,     # tables a file written by an older version may lack
                "fact_ad_impression": FACT_AD_IMPRESSION_COLUMNS, "fact_ad_click": FACT_AD_CLICK_COLUMNS}


def _with_later_tables(con: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    """A read-only snapshot of a file written before a table existed gets that table empty (a TEMP table, gone at
    close), so every read works on any file; the file itself gains the table at its next write (`transaction`)."""
    have = {t for (t,) in con.execute("SELECT table_name FROM duckdb_tables() WHERE database_name = ?",
                                      [ALIAS]).fetchall()}
    for name, columns in LATER_TABLES.items():
        if name not in have:
            con.execute(f"CREATE TEMP TABLE {name} ({columns})")
    return con


@contextmanager
def session(settings: Settings) -> Iterator[duckdb.DuckDBPyConnection]:
    """A short-lived read-only connection to the engine's warehouse (see `connect`), closed afterwards."""
    con = connect(settings)
    try:
        yield con
    finally:
        con.close()


@contextmanager
def _file_session(settings: Settings) -> Iterator[duckdb.DuckDBPyConnection]:
    """`session` on the warehouse file whatever the engine (this module's per-user and retention functions)."""
    con = file_connect(settings)
    try:
        yield con
    finally:
        con.close()


def query(settings: Settings, sql: str, params: list | None = None) -> pd.DataFrame:
    """A read for pages and reports: a fresh connection, a DataFrame back."""
    with session(settings) as con:
        return con.execute(sql, params or []).df()


def _fsync(path: Path, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def transaction(settings: Settings, *, compact: bool = False,
                purpose: str = "warehouse write") -> Iterator[duckdb.DuckDBPyConnection]:
    """The one way to change the warehouse: on a copy, in one transaction, swapped in atomically.

    Under the store lock (taken here; re-entrant for callers that hold it):
    warehouse.duckdb is copied to warehouse.duckdb.next, the block runs there
    inside BEGIN … COMMIT, the copy is checkpointed (no WAL left), closed and
    fsynced, then `os.replace`d over warehouse.duckdb. Readers that opened the
    old file keep reading it until they close; new readers open the new one.
    An exception (or a killed process) leaves warehouse.duckdb as it was.
    `compact=True` swaps in a rewrite of the copy (`COPY FROM DATABASE` into a
    fresh file) instead: DuckDB keeps deleted rows' bytes in a file's blocks,
    and an erasure must not leave them behind.
    """
    path = settings.warehouse
    nxt = path.with_name(path.name + NEXT_SUFFIX)
    fresh = path.with_name(path.name + COMPACT_SUFFIX)
    with locks.store_lock(settings, purpose):
        leftovers = (nxt, _wal(nxt), fresh, _wal(fresh))
        for leftover in leftovers:          # of a writer killed half-way: never swapped in
            leftover.unlink(missing_ok=True)
        settings.home.mkdir(parents=True, exist_ok=True)
        if path.exists():
            shutil.copyfile(path, nxt)
            if _wal(path).exists():         # a WAL of an older version of this module: replayed into the copy
                shutil.copyfile(_wal(path), _wal(nxt))
        try:
            con = _open(nxt, read_only=False)
            try:
                con.execute(SCHEMA)
                con.execute("BEGIN TRANSACTION")
                try:
                    yield con
                except BaseException:
                    try:
                        con.execute("ROLLBACK")
                    except duckdb.Error:    # the copy is thrown away anyway; keep the caller's error
                        pass
                    raise
                con.execute("COMMIT")
                if compact:
                    con.execute(f"ATTACH {_quoted(fresh)} AS warehouse_compact")
                    con.execute(f"COPY FROM DATABASE {ALIAS} TO warehouse_compact")
                    con.execute("DETACH warehouse_compact")      # written and closed: no WAL
                else:
                    con.execute(f"CHECKPOINT {ALIAS}")
            finally:
                con.close()
            done = fresh if compact else nxt
            if _wal(done).exists():
                raise RuntimeError(f"{_wal(done).name} remains after the checkpoint; the warehouse was not changed")
            private_file(done)             # owner-only, like every file in the data folder
            _fsync(done)
            _wal(path).unlink(missing_ok=True)
            os.replace(done, path)
            _fsync(path.parent, directory=True)
        finally:
            for leftover in leftovers:
                leftover.unlink(missing_ok=True)


def latest_version(con: duckdb.DuckDBPyConnection) -> dict | None:
    df = con.execute("SELECT * FROM data_versions ORDER BY version DESC LIMIT 1").df()
    return None if df.empty else df.iloc[0].to_dict()


def watermarks(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    return dict(con.execute("SELECT key, value FROM etl_state").fetchall())


# --- reads for other stages (issue 14: only the warehouse modules name its tables) ---

def status_counts(con: duckdb.DuckDBPyConnection) -> dict:
    """facts, quarantined (row counts), last_etl (start time as text) and last_etl_status (None before any run)."""
    out = {"facts": con.execute("SELECT count(*) FROM fact_interaction").fetchone()[0],
           "quarantined": con.execute("SELECT count(*) FROM quarantine").fetchone()[0],
           "last_etl": None, "last_etl_status": None}
    last = con.execute("SELECT started_at, status FROM etl_runs ORDER BY run_id DESC LIMIT 1").fetchone()
    if last:
        out["last_etl"], out["last_etl_status"] = str(last[0]), last[1]
    return out


def served_counts(con: duckdb.DuckDBPyConnection) -> dict:
    """lists (distinct serve_id), rows (titles shown), users (distinct keys) and first/last served_at of
    fact_served (None when empty)."""
    lists, rows, users, first, last = con.execute(
        "SELECT count(DISTINCT serve_id), count(*), count(DISTINCT user_key), min(served_at), max(served_at) "
        "FROM fact_served").fetchone()
    return {"lists": int(lists), "rows": int(rows), "users": int(users), "first_served_at": first,
            "last_served_at": last}


def ad_counts(con: duckdb.DuckDBPyConnection) -> dict:
    """impressions, clicks, revenue (prices summed), users (distinct keys) and first/last shown_at of the ad facts."""
    n, users, first, last = con.execute("SELECT count(*), count(DISTINCT user_key), min(shown_at), max(shown_at) "
                                        "FROM fact_ad_impression").fetchone()
    clicks, revenue = con.execute("SELECT count(*), coalesce(sum(price), 0) FROM fact_ad_click").fetchone()
    return {"impressions": int(n), "clicks": int(clicks), "revenue": float(revenue), "users": int(users),
            "first_shown_at": first, "last_shown_at": last}


def ad_impressions(con: duckdb.DuckDBPyConnection, start=None, end=None) -> pd.DataFrame:
    """Impressions shown in [start, end) (None: unbounded) with their outcome: impression_id, serve_id, user_key,
    campaign_id, slot, shown_at, p_click, policy, model_version, age_band, clicked (0/1), clicked_at (NaT unless
    clicked), price (0 unless clicked), data_version — by shown_at, impression_id. The click comes from
    fact_ad_click: one reported after its impression was loaded arrives in a later version (the impression's own
    row keeps clicked false)."""
    return con.execute("""
        SELECT i.impression_id, i.serve_id, i.user_key, i.campaign_id, i.slot, i.shown_at, i.p_click, i.policy,
               i.model_version, i.age_band, CAST(i.clicked OR c.impression_id IS NOT NULL AS INTEGER) AS clicked,
               c.clicked_at,
               coalesce(c.price, 0.0) AS price, i.data_version
        FROM fact_ad_impression i LEFT JOIN fact_ad_click c USING (impression_id)
        WHERE ($start IS NULL OR i.shown_at >= $start) AND ($end IS NULL OR i.shown_at < $end)
        ORDER BY i.shown_at, i.impression_id""", {"start": None if start is None else pd.Timestamp(start).to_pydatetime(),
                                                 "end": None if end is None else pd.Timestamp(end).to_pydatetime()}).df()


def watchers_per_movie(con: duckdb.DuckDBPyConnection) -> dict[int, int]:
    """{movie_id: distinct users (keys) who watched it} over every fact."""
    return dict(con.execute("SELECT movie_id, count(DISTINCT user_key) FROM fact_interaction WHERE kind = 'watch' "
                            "GROUP BY movie_id").fetchall())


def user_quarantine_reasons(con: duckdb.DuckDBPyConnection, user_key: str, since) -> list[tuple[str, int]]:
    """(reason, rows) of the user's rows quarantined at or after `since`, most frequent first."""
    return con.execute("SELECT reason, count(*) FROM quarantine WHERE user_key = ? AND quarantined_at >= ? "
                       "GROUP BY reason ORDER BY 2 DESC, 1", [user_key, since]).fetchall()


def catalogue_size(con: duckdb.DuckDBPyConnection) -> int:
    """Titles in the catalogue (dim_movie): the item columns a model trained now would have."""
    return int(con.execute("SELECT count(*) FROM dim_movie").fetchone()[0])


def movie_genres(con: duckdb.DuckDBPyConnection) -> pd.Series:
    """'|'-separated genres indexed by movie_id, for every movie of dim_movie."""
    return con.execute("SELECT movie_id, genres FROM dim_movie").df().set_index("movie_id")["genres"]


def data_versions(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """Every data version, newest first (`validation` still JSON text)."""
    return con.execute("SELECT * FROM data_versions ORDER BY version DESC").df()


def recent_quarantine(con: duckdb.DuckDBPyConnection, limit: int = 500) -> pd.DataFrame:
    """The latest `limit` quarantined rows, newest first (no user key)."""
    return con.execute("SELECT source, source_id, reason, kind, value, occurred_at, data_version, quarantined_at "
                       f"FROM quarantine ORDER BY quarantined_at DESC LIMIT {int(limit)}").df()


def quarantine_reasons(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """reason, code, data_version of every quarantined row."""
    return con.execute("SELECT reason, code, data_version FROM quarantine").df()


def daily_volumes(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """day, kind, n, users, movies of the daily aggregates, by day and kind."""
    return con.execute("SELECT day, kind, n, users, movies FROM daily_aggregates ORDER BY day, kind").df()


def etl_runs(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """Every ETL run, newest first."""
    return con.execute("SELECT * FROM etl_runs ORDER BY run_id DESC").df()

# --- a user's rows, keyed by pseudonym: export, erasure, key rotation, retention (orchestrated by core/privacy)
USER_TABLES = ("fact_interaction", "quarantine", "dim_user", "fact_served", "fact_ad_impression",
               "fact_ad_click")   # what an export shows and counts


def _user_key_tables(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Every table with a `user_key` column: what an erasure or a key rotation must cover."""
    return [r[0] for r in con.execute("SELECT DISTINCT table_name FROM information_schema.columns "
                                      "WHERE column_name = 'user_key' AND table_schema = 'main' ORDER BY 1").fetchall()]


def _dicts(cursor: duckdb.DuckDBPyConnection) -> list[dict]:
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, r)) for r in cursor.fetchall()]


def export_user(settings: Settings, user_key: str) -> dict[str, list[dict]]:
    """{table: the pseudonym's rows, without the key column} for each of `USER_TABLES` (empty without a warehouse)."""
    if not settings.warehouse.exists():
        return {t: [] for t in USER_TABLES}
    with _file_session(settings) as con:
        return {t: _dicts(con.execute(f"SELECT * EXCLUDE (user_key) FROM {t} WHERE user_key = ?", [user_key]))
                for t in USER_TABLES}


def held_counts(settings: Settings, user_key: str) -> dict[str, int]:
    """{table: rows under the pseudonym} for each of `USER_TABLES` (zeros without a warehouse)."""
    counts = {t: 0 for t in USER_TABLES}
    if settings.warehouse.exists():
        with _file_session(settings) as con:
            for t in USER_TABLES:
                counts[t] = int(con.execute(f"SELECT count(*) FROM {t} WHERE user_key = ?", [user_key]).fetchone()[0])
    return counts


def holds_user(settings: Settings, user_key: str) -> bool:
    """True when any table with a user_key column has a row under the pseudonym."""
    if settings.warehouse.exists():
        with _file_session(settings) as con:
            for table in _user_key_tables(con):
                if con.execute(f"SELECT count(*) FROM {table} WHERE user_key = ?", [user_key]).fetchone()[0]:
                    return True
    return False


def erase_user(settings: Settings, user_key: str) -> dict:
    """Delete the pseudonym's rows from every table with a user_key column, in one transaction; returns the
    rows deleted per table and 'file_compacted' ({} without a warehouse).

    The file swapped in is a rewrite (`transaction(compact=True)`): DuckDB keeps deleted rows' bytes in a
    file's blocks. Daily aggregates (counts, no key) are kept.
    """
    if not settings.warehouse.exists():
        return {}
    with transaction(settings, compact=True, purpose="erasure") as con:
        counts = {}
        for table in _user_key_tables(con):
            counts[table] = int(con.execute(f"SELECT count(*) FROM {table} WHERE user_key = ?",
                                            [user_key]).fetchone()[0])
            con.execute(f"DELETE FROM {table} WHERE user_key = ?", [user_key])
    counts["file_compacted"] = True
    return counts


def rekey(settings: Settings, new_for) -> tuple[dict[str, int], dict[str, str]] | None:
    """Replace pseudonyms in every table with a user_key column, in one swap; None without a warehouse.

    `new_for(keys present)` returns {old key: new key} for the keys that change. The mapping is joined as a
    registered DataFrame and the file rewritten (`transaction(compact=True)`), so the old pseudonyms' bytes
    leave the file too. Returns (rows re-keyed per table, the mapping applied).
    """
    if not settings.warehouse.exists():
        return None
    with transaction(settings, compact=True, purpose="key rotation") as con:
        tables = _user_key_tables(con)
        present = set()
        for t in tables:
            present |= {k for (k,) in con.execute(f"SELECT DISTINCT user_key FROM {t} "
                                                  "WHERE user_key IS NOT NULL").fetchall()}
        table = new_for(present)
        frame = pd.DataFrame({"old_key": list(table), "new_key": list(table.values())}, dtype=str)
        rekeyed = {t: 0 for t in tables}
        if len(frame):
            con.register("key_map", frame)
            try:
                for t in tables:
                    rekeyed[t] = int(con.execute(f"UPDATE {t} SET user_key = m.new_key FROM key_map m "
                                                 f"WHERE {t}.user_key = m.old_key").fetchone()[0])
            finally:
                con.unregister("key_map")
    return rekeyed, table


# What a retention purge deletes, per table: (its time column, which rows it may delete at all).
RETAINED = {"fact_interaction": ("occurred_at", "kind <> 'rating'"), "fact_served": ("served_at", "true"),
            "fact_ad_impression": ("shown_at", "true"), "fact_ad_click": ("clicked_at", "true")}


def events_before(settings: Settings, cutoff: str) -> tuple[int, int, object]:
    """(behavioural events before `cutoff`, all behavioural events, the oldest one's time) in fact_interaction
    — ratings excluded: a retention purge keeps them. (0, 0, None) without a warehouse."""
    return _before(settings, "fact_interaction", cutoff)


def ads_before(settings: Settings, cutoff: str) -> tuple[int, int, object]:
    """(fact_ad_impression rows shown before `cutoff`, all of them, the oldest one's time); (0, 0, None) without
    a warehouse. (Clicks go with them: a click is never older than its impression.)"""
    return _before(settings, "fact_ad_impression", cutoff)


def served_before(settings: Settings, cutoff: str) -> tuple[int, int, object]:
    """(fact_served rows served before `cutoff`, all of them, the oldest one's time); (0, 0, None) without a
    warehouse."""
    return _before(settings, "fact_served", cutoff)


def _before(settings: Settings, table: str, cutoff: str) -> tuple[int, int, object]:
    if not settings.warehouse.exists():
        return 0, 0, None
    at, keep = RETAINED[table]
    with _file_session(settings) as con:
        n, total, oldest = con.execute(f"SELECT count(*) FILTER (WHERE {at} < ?), count(*), min({at}) FROM {table} "
                                       f"WHERE {keep}", [pd.Timestamp(cutoff).to_pydatetime()]).fetchone()
    return int(n), int(total), oldest


def purge_events(settings: Settings, cutoff: str) -> dict[str, int]:
    """Delete what is older than `cutoff`: behavioural events (every kind but 'rating') from fact_interaction,
    served lists from fact_served, ad impressions and clicks; returns the rows deleted per table. Deleted and compacted in one swap, and
    only when there is something to delete."""
    counts = {table: _before(settings, table, cutoff)[0] for table in RETAINED}
    if any(counts.values()):
        with transaction(settings, compact=True, purpose="retention purge") as con:
            for table, (at, keep) in RETAINED.items():
                counts[table] = int(con.execute(f"DELETE FROM {table} WHERE {keep} AND {at} < ?",
                                                [pd.Timestamp(cutoff).to_pydatetime()]).fetchone()[0])
    return counts
