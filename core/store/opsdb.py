"""The operational database (OLTP store) of the streaming service.

SQLite through sqlite-utils: schema by migrations, WAL mode, foreign keys on.
Open one connection per call or per thread (Streamlit serves sessions in threads).
"""
from __future__ import annotations

import sqlite3
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import pandas as pd
import sqlite_utils
from sqlite_utils import Migrations

from core.constants import TS_FORMAT
from core.filemodes import create_private, private_file
from core.settings import Settings

migrations = Migrations("retro_ops")
INDEX_MIGRATION = "m002_indexes"


def _run_statements(db: sqlite_utils.Database, script: str) -> None:
    """Run a script statement by statement, inside the migration's transaction.

    (`executescript` would COMMIT first and break the migration's atomicity.)
    """
    for statement in script.split(";\n"):
        if statement.strip():
            db.execute(statement)


@migrations()
def m001_tables(db: sqlite_utils.Database) -> None:
    _run_statements(
        db,
        """
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE movies (
            movie_id INTEGER PRIMARY KEY,
            title TEXT NOT NULL CHECK (length(title) > 0),
            year INTEGER,                    -- NULL only for imported titles without a year
            genres TEXT NOT NULL,            -- '|'-separated, from constants.GENRES
            runtime_min INTEGER NOT NULL DEFAULT 100 CHECK (runtime_min > 0),
            added_at TEXT NOT NULL,
            source TEXT NOT NULL DEFAULT 'sim'
        );
        CREATE TABLE users (
            user_id INTEGER PRIMARY KEY,
            created_at TEXT NOT NULL,
            consent_tracking INTEGER NOT NULL DEFAULT 1 CHECK (consent_tracking IN (0, 1)),
            consent_personalization INTEGER NOT NULL DEFAULT 1 CHECK (consent_personalization IN (0, 1)),
            source TEXT NOT NULL DEFAULT 'sim'
        );
        -- One current rating per (user, movie); every accepted write is also
        -- appended to rating_history, which the warehouse ETL reads.
        CREATE TABLE ratings (
            user_id INTEGER NOT NULL REFERENCES users(user_id) ON DELETE CASCADE,
            movie_id INTEGER NOT NULL REFERENCES movies(movie_id) ON DELETE CASCADE,
            rating INTEGER NOT NULL CHECK (rating BETWEEN 1 AND 10 AND typeof(rating) = 'integer'),
            rated_at TEXT NOT NULL,
            PRIMARY KEY (user_id, movie_id)
        ) WITHOUT ROWID;
        CREATE TABLE rating_history (
            history_id INTEGER PRIMARY KEY AUTOINCREMENT,
            user_id INTEGER NOT NULL REFERENCES users(user_id) ON DELETE CASCADE,
            movie_id INTEGER NOT NULL REFERENCES movies(movie_id) ON DELETE CASCADE,
            rating INTEGER NOT NULL CHECK (rating BETWEEN 1 AND 10),
            rated_at TEXT NOT NULL
        );
        -- seq is the ingestion order (the ETL watermark); event_id is the
        -- client's idempotency key: a retried event id is ignored.
        CREATE TABLE events (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            event_id TEXT NOT NULL UNIQUE,
            user_id INTEGER NOT NULL REFERENCES users(user_id) ON DELETE CASCADE,
            movie_id INTEGER REFERENCES movies(movie_id) ON DELETE CASCADE,
            kind TEXT NOT NULL CHECK (kind IN ('impression','click','watch','like','dislike','share','scroll')),
            value REAL NOT NULL DEFAULT 1,
            occurred_at TEXT NOT NULL
        );
        -- Writes refused by an ingestion path running in quarantine mode
        -- (e.g. a logging fault): kept with the reason, never stored as data.
        CREATE TABLE rejected_writes (
            reject_id INTEGER PRIMARY KEY AUTOINCREMENT,
            target TEXT NOT NULL,
            reason TEXT NOT NULL,
            payload TEXT NOT NULL,
            rejected_at TEXT NOT NULL
        );
        -- Behaviour shifts started in the simulated world (ground truth for monitoring).
        CREATE TABLE sim_shifts (
            shift_id INTEGER PRIMARY KEY AUTOINCREMENT,
            kind TEXT NOT NULL,
            strength REAL NOT NULL,
            start_day INTEGER NOT NULL,
            duration INTEGER NOT NULL,
            params TEXT NOT NULL DEFAULT '{}'
        );
        """
    )


@migrations()
def m002_indexes(db: sqlite_utils.Database) -> None:
    _run_statements(
        db,
        """
        CREATE INDEX IF NOT EXISTS idx_ratings_movie ON ratings(movie_id, rating);
        CREATE INDEX IF NOT EXISTS idx_history_user ON rating_history(user_id);
        CREATE INDEX IF NOT EXISTS idx_events_user ON events(user_id, occurred_at);
        CREATE INDEX IF NOT EXISTS idx_events_movie ON events(movie_id);
        """
    )


@migrations()
def m003_served_recommendations(db: sqlite_utils.Database) -> None:
    """The serving log: every list shown to a user, with the model and data behind it."""
    _run_statements(
        db,
        """
        CREATE TABLE served_recommendations (
            serve_id INTEGER PRIMARY KEY AUTOINCREMENT,
            user_id INTEGER NOT NULL REFERENCES users(user_id) ON DELETE CASCADE,
            served_at TEXT NOT NULL,
            path TEXT NOT NULL,              -- 'model', or the fallback taken ('top50:cold-start', ...)
            model_version INTEGER,           -- registry version (NULL on a fallback)
            data_version TEXT,
            movie_ids TEXT NOT NULL,         -- JSON list, best first (position = index + 1)
            scores TEXT NOT NULL             -- JSON list, same order
        );
        CREATE INDEX idx_served_user ON served_recommendations(user_id, served_at);
        CREATE INDEX idx_served_at ON served_recommendations(served_at)
        """,
    )


@migrations()
def m004_served_ranker(db: sqlite_utils.Database) -> None:
    """Which ranking model re-ordered the list (NULL: CF order)."""
    db.execute("ALTER TABLE served_recommendations ADD COLUMN ranker_version INTEGER")


@migrations()
def m005_consent_history(db: sqlite_utils.Database) -> None:
    """Every consent change (the current flags live on `users`)."""
    _run_statements(db, """
        CREATE TABLE consent_history (
            change_id INTEGER PRIMARY KEY AUTOINCREMENT,
            user_id INTEGER NOT NULL REFERENCES users(user_id) ON DELETE CASCADE,
            changed_at TEXT NOT NULL,
            tracking INTEGER NOT NULL, personalization INTEGER NOT NULL,
            actor TEXT NOT NULL
        );
        CREATE INDEX idx_consent_user ON consent_history(user_id, changed_at)
        """)


@migrations()
def m006_rejected_write_codes(db: sqlite_utils.Database) -> None:
    """The stable code of the check that refused a write (errors.ValidationError.code), so the ETL files it by
    code, not by its message; NULL on rows written before this migration."""
    db.execute("ALTER TABLE rejected_writes ADD COLUMN code TEXT")


def set_wal(conn: sqlite3.Connection, attempts: int = 100) -> None:
    """Switch to WAL; on a brand-new file several openers race for it and SQLite answers 'locked'
    without waiting for the busy timeout, so retry briefly."""
    import time
    for attempt in range(attempts):
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(0.02)


def private_db_file(path: Path | str) -> None:
    """Create the SQLite file owner-only (0600) before SQLite does, and tighten an older one and its -wal/-shm."""
    if str(path) == ":memory:" or str(path).startswith("file:"):
        return
    create_private(path)
    for suffix in ("-wal", "-shm"):
        private_file(f"{path}{suffix}")


def open_db(path: Path | str, *, apply_migrations: bool = True, defer_indexes: bool = False) -> sqlite_utils.Database:
    """Open the operational database with WAL and foreign keys, migrated to the latest schema.

    `defer_indexes` stops before the index migration so a bulk load can run
    first (indexes built after a load are several times faster than during it).
    A new file is created with mode 0600 (SQLite gives its -wal/-shm the same mode).
    """
    private_db_file(path)
    conn = sqlite3.connect(str(path), check_same_thread=False, timeout=30, isolation_level=None)
    set_wal(conn)
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA synchronous=NORMAL")
    db = sqlite_utils.Database(conn)
    if apply_migrations:
        migrations.apply(db, stop_before=INDEX_MIGRATION if defer_indexes else None)
    return db


def connect(settings: Settings, **kwargs) -> sqlite_utils.Database:
    return open_db(settings.ops_db, **kwargs)


@contextmanager
def session(settings: Settings, **kwargs) -> Iterator[sqlite_utils.Database]:
    """A connection that is closed afterwards, for CLI commands and page reads."""
    db = connect(settings, **kwargs)
    try:
        yield db
    finally:
        db.conn.close()


def holds_data(settings: Settings) -> bool:
    """True when the operational database exists and has any movie or user."""
    if not settings.ops_db.exists():
        return False
    with session(settings) as db:
        return bool(db.execute("SELECT (SELECT count(*) FROM movies) + (SELECT count(*) FROM users)").fetchone()[0])


def finish_deferred_migrations(db: sqlite_utils.Database) -> None:
    migrations.apply(db)


def get_meta(db: sqlite_utils.Database, key: str, default: str | None = None) -> str | None:
    row = db.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
    return row[0] if row else default


def set_meta(db: sqlite_utils.Database, key: str, value) -> None:
    db.execute(
        "INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        [key, str(value)],
    )


def utc_now_iso() -> str:
    return datetime.now(timezone.utc).strftime(TS_FORMAT)


def clock_now(db: sqlite_utils.Database) -> str:
    """The service's current time: the simulated clock if a world runs here, else real UTC time."""
    return get_meta(db, "clock") or utc_now_iso()


def counts(db: sqlite_utils.Database) -> dict:
    """Row counts and the date range of activity (the `stats` command)."""
    q = lambda sql: db.execute(sql).fetchone()  # noqa: E731
    kinds = dict(db.execute("SELECT kind, count(*) FROM events GROUP BY kind ORDER BY kind").fetchall())
    first_ev, last_ev = q("SELECT min(occurred_at), max(occurred_at) FROM events")
    first_r, last_r = q("SELECT min(rated_at), max(rated_at) FROM rating_history")
    starts = [t for t in (first_ev, first_r) if t]
    ends = [t for t in (last_ev, last_r) if t]
    return {
        "users": q("SELECT count(*) FROM users")[0],
        "movies": q("SELECT count(*) FROM movies")[0],
        "ratings": q("SELECT count(*) FROM ratings")[0],
        "rating_history": q("SELECT count(*) FROM rating_history")[0],
        "events": q("SELECT count(*) FROM events")[0],
        "events_by_kind": kinds,
        "rejected_writes": q("SELECT count(*) FROM rejected_writes")[0],
        "first_activity_at": min(starts) if starts else None,
        "last_activity_at": max(ends) if ends else None,
        "clock": get_meta(db, "clock"),
        "sim_day": int(get_meta(db, "sim_day", "0") or 0) if get_meta(db, "clock") else None,
    }


def movie_votes(db: sqlite_utils.Database) -> pd.DataFrame:
    """Per-movie vote count and rating sum (the Top 50's input)."""
    rows = db.execute(
        "SELECT movie_id, count(*) AS votes, sum(rating) AS rating_sum FROM ratings GROUP BY movie_id"
    ).fetchall()
    return pd.DataFrame(rows, columns=["movie_id", "votes", "rating_sum"])


def movie_details(db: sqlite_utils.Database, movie_ids: list[int]) -> pd.DataFrame:
    """movie_id, title, year, genres of the given movies (unknown ids are absent)."""
    ids = [int(m) for m in movie_ids]
    if not ids:
        return pd.DataFrame(columns=["movie_id", "title", "year", "genres"])
    marks = ",".join("?" * len(ids))
    rows = db.execute(f"SELECT movie_id, title, year, genres FROM movies WHERE movie_id IN ({marks})", ids).fetchall()
    return pd.DataFrame(rows, columns=["movie_id", "title", "year", "genres"])


# ---------------------------------------------------------------- reads for monitoring and the ETL
def watches_between(db, start: str, end: str) -> list[tuple]:
    """(user_id, movie_id) of every watch event in [start, end) (ISO text): what users watched on a day."""
    return db.execute("SELECT user_id, movie_id FROM events WHERE kind = 'watch' AND occurred_at >= ? "
                      "AND occurred_at < ?", [start, end]).fetchall()


def watched_before(db, movie_ids: list[int], before: str) -> list[tuple]:
    """Distinct (user_id, movie_id) watches of the given movies before `before` (a seen filter limited to them)."""
    marks = ",".join("?" * len(movie_ids)) or "NULL"
    return db.execute(f"SELECT DISTINCT user_id, movie_id FROM events WHERE kind = 'watch' "
                      f"AND movie_id IN ({marks}) AND occurred_at < ?", list(movie_ids) + [before]).fetchall()


def movie_genres(db) -> dict:
    """movie_id → '|'-separated genres of the whole catalog."""
    return dict(db.execute("SELECT movie_id, genres FROM movies").fetchall())


@contextmanager
def read_only(settings: Settings) -> Iterator[sqlite3.Connection]:
    """A plain read-only connection (no migration, no write lock), closed afterwards: bulk extraction (the ETL)
    must never change the operational store."""
    conn = sqlite3.connect(f"file:{settings.ops_db}?mode=ro", uri=True)
    try:
        yield conn
    finally:
        conn.close()


def _raw(conn) -> sqlite3.Connection:
    """The sqlite3 connection under a sqlite-utils Database (pandas reads need the plain one)."""
    return getattr(conn, "conn", conn)


def events_after(conn, seq: int) -> pd.DataFrame:
    """Events past the ETL watermark `seq`, in ingestion order, as the ETL's rows: source_id (= seq), user_id,
    movie_id, kind, value, occurred_at — values as stored (the ETL gate validates them)."""
    return pd.read_sql_query("SELECT seq AS source_id, user_id, movie_id, kind, value, occurred_at FROM events "
                             "WHERE seq > ? ORDER BY seq", _raw(conn), params=(seq,))


def rating_history_after(conn, history_id: int) -> pd.DataFrame:
    """Rating history past the ETL watermark `history_id`, as the ETL's rows: source_id (= history_id), user_id,
    movie_id, kind ('rating'), value (the rating), occurred_at (rated_at)."""
    return pd.read_sql_query("SELECT history_id AS source_id, user_id, movie_id, 'rating' AS kind, rating AS value, "
                             "rated_at AS occurred_at FROM rating_history WHERE history_id > ? ORDER BY history_id",
                             _raw(conn), params=(history_id,))


def rejected_writes_after(conn, reject_id: int) -> pd.DataFrame:
    """Writes refused at ingestion past the ETL watermark `reject_id`: reject_id, target, reason, payload,
    rejected_at, code (None before migration m006, or on a store not migrated yet: a read-only reader
    cannot migrate it)."""
    raw = _raw(conn)
    has_code = any(col[1] == "code" for col in raw.execute("PRAGMA table_info(rejected_writes)").fetchall())
    return pd.read_sql_query(f"SELECT reject_id, target, reason, payload, rejected_at, "
                             f"{'code' if has_code else 'NULL AS code'} FROM rejected_writes "
                             f"WHERE reject_id > ? ORDER BY reject_id", raw, params=(reject_id,))


def users_with_valid_ids(conn) -> pd.DataFrame:
    """user_id, created_at, consent_personalization of users whose id is an integer in 1..bounds.MAX_ID.

    Rows with another id (only ever written around the write API) are left out: their facts are quarantined.
    """
    from core import bounds
    return pd.read_sql_query("SELECT user_id, created_at, consent_personalization FROM users "
                             "WHERE typeof(user_id) = 'integer' AND user_id BETWEEN 1 AND ?", _raw(conn),
                             params=(bounds.MAX_ID,))


def movies_with_valid_ids(conn) -> pd.DataFrame:
    """movie_id, title, year, genres, runtime_min, added_at of movies whose id is an integer in 1..bounds.MAX_ID
    (values as stored)."""
    from core import bounds
    return pd.read_sql_query("SELECT movie_id, title, year, genres, runtime_min, added_at FROM movies "
                             "WHERE typeof(movie_id) = 'integer' AND movie_id BETWEEN 1 AND ?", _raw(conn),
                             params=(bounds.MAX_ID,))
