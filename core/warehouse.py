"""The analytics warehouse: DuckDB in `RETRO_HOME/warehouse.duckdb`, a small star schema.

No DuckDB extension is used (they download at run time and fail offline):
rows arrive from the operational database as pandas frames.
Users appear only as keyed pseudonyms (`user_key`).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import duckdb
import pandas as pd

from .filemodes import private_file
from .settings import Settings

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
    kind VARCHAR, value VARCHAR, occurred_at VARCHAR, data_version INTEGER, quarantined_at TIMESTAMP);
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
"""


def connect(settings: Settings, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection; the file (which DuckDB creates itself) is made owner-only (0600) at once."""
    if read_only and not settings.warehouse.exists():
        read_only = False
    con = duckdb.connect(str(settings.warehouse), read_only=read_only)
    _tighten(settings)
    if not read_only:
        con.execute(SCHEMA)
    return con


def _tighten(settings: Settings) -> None:
    # DuckDB creates its files 0666 minus the umask and refuses a pre-created empty file, so chmod after
    # the fact (inside the 0700 data folder nobody else can reach them in between).
    private_file(settings.warehouse)
    private_file(f"{settings.warehouse}.wal")


@contextmanager
def session(settings: Settings, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
    con = connect(settings, read_only=read_only)
    try:
        yield con
    finally:
        con.close()
        _tighten(settings)


def query(settings: Settings, sql: str, params: list | None = None) -> pd.DataFrame:
    """A read for pages and reports: a fresh connection, a DataFrame back."""
    with session(settings) as con:
        return con.execute(sql, params or []).df()


def latest_version(con: duckdb.DuckDBPyConnection) -> dict | None:
    df = con.execute("SELECT * FROM data_versions ORDER BY version DESC LIMIT 1").df()
    return None if df.empty else df.iloc[0].to_dict()


def watermarks(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    return dict(con.execute("SELECT key, value FROM etl_state").fetchall())
