"""The operational database (OLTP store) of the streaming service.

SQLite through sqlite-utils: schema by migrations, WAL mode, foreign keys on.
Open one connection per call or per thread (Streamlit serves sessions in threads).
"""
from __future__ import annotations

import json
import math
import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import sqlite_utils
from sqlite_utils import Migrations

from core.errors import RetroError
from core.filemodes import create_private, private_file
from core.settings import Settings
from core.store import database

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
            -- ORs, not `kind IN (...)`: SQLite rebuilds an IN list's lookup table for every row a CHECK tests
            -- (1 s of a first start's 2.8 s of event inserts); the rule is the same.
            kind TEXT NOT NULL CHECK (kind = 'impression' OR kind = 'click' OR kind = 'watch' OR kind = 'like'
                                      OR kind = 'dislike' OR kind = 'share' OR kind = 'scroll'),
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


@migrations()
def m007_release_arms(db: sqlite_utils.Database) -> None:
    """Releases (issue 16): which arm of a canary release a shown list came from (`arm`: 'production' or
    'canary'; NULL on lists served before releases existed, which were production's), and the shadow log —
    lists a shadow candidate computed beside production and nobody saw (so no reader of the serving log,
    which holds what users were shown, ever mistakes one for a shown list)."""
    _run_statements(db, """
        ALTER TABLE served_recommendations ADD COLUMN arm TEXT;
        CREATE TABLE shadow_recommendations (
            shadow_id INTEGER PRIMARY KEY AUTOINCREMENT,
            user_id INTEGER NOT NULL REFERENCES users(user_id) ON DELETE CASCADE,
            served_at TEXT NOT NULL,         -- when production's list was served beside it
            model_version INTEGER NOT NULL,  -- the shadow candidate
            movie_ids TEXT NOT NULL,         -- JSON list, best first
            scores TEXT NOT NULL
        );
        CREATE INDEX idx_shadow_at ON shadow_recommendations(served_at);
        CREATE INDEX idx_shadow_user ON shadow_recommendations(user_id, served_at)
        """)


@migrations()
def m008_served_exploration(db: sqlite_utils.Database) -> None:
    """Exploration (issue 22): the logging policy of a shown list ('deterministic' or 'explore'; NULL on lists
    served before exploration existed, which were deterministic) and, per title in list order, the exact
    probability that the logging policy shows that title at that position (`propensities`) and anywhere in
    the list (`slate_propensities`), as JSON lists — what counterfactual evaluation weighs the log by."""
    _run_statements(db, """
        ALTER TABLE served_recommendations ADD COLUMN policy TEXT;
        ALTER TABLE served_recommendations ADD COLUMN propensities TEXT;
        ALTER TABLE served_recommendations ADD COLUMN slate_propensities TEXT
        """)


@migrations()
def m009_served_impressions(db: sqlite_utils.Database) -> None:
    """Impressions: who confirmed that a logged list was shown (`shown_by`). 'in-process' for lists served by
    the platform's own front ends (the closed loop, the dashboard, the CLI), 'client:NAME' for a model-server
    answer a client confirmed with its API key (POST /impressions), NULL for a server answer nobody confirmed
    (it was computed and logged, not known to be seen). The default 'logged' marks lists written before
    impressions existed (or by a writer that does not say): they were all shown, as they always counted.
    Online quality and the release policy count only lists whose `shown_by` is not NULL."""
    _run_statements(db, """
        ALTER TABLE served_recommendations ADD COLUMN shown_by TEXT DEFAULT 'logged'
        """)


ADS_TABLES = """
    CREATE TABLE IF NOT EXISTS ad_campaigns (
        campaign_id INTEGER PRIMARY KEY,
        advertiser TEXT NOT NULL CHECK (length(advertiser) > 0),
        creative_kind TEXT NOT NULL CHECK (creative_kind IN ('title', 'product')),
        movie_id INTEGER REFERENCES movies(movie_id),    -- the promoted title (creative 'title'), else NULL
        product TEXT,                                    -- the outside product (creative 'product'), else NULL
        target_genres TEXT NOT NULL DEFAULT '',          -- '|'-separated GENRES; '' = any
        target_age_bands TEXT NOT NULL DEFAULT '',       -- '|'-separated AGE_BANDS; '' = any
        bid REAL NOT NULL CHECK (bid > 0),               -- currency units per click
        daily_budget REAL NOT NULL CHECK (daily_budget > 0),
        frequency_cap INTEGER NOT NULL DEFAULT 1 CHECK (frequency_cap >= 1),   -- per user per day
        active INTEGER NOT NULL DEFAULT 1 CHECK (active IN (0, 1)),
        created_at TEXT NOT NULL
    );
    -- One row per sponsored slot shown; the click (if any) is written with it. served_id names the list it was
    -- shown with (NULL: a session without a logged list); checked by the write API, no foreign key (a bulk load
    -- of a new world runs before the serving log's table exists).
    CREATE TABLE IF NOT EXISTS ad_impressions (
        impression_id INTEGER PRIMARY KEY AUTOINCREMENT,
        served_id INTEGER,
        user_id INTEGER NOT NULL REFERENCES users(user_id) ON DELETE CASCADE,
        campaign_id INTEGER NOT NULL REFERENCES ad_campaigns(campaign_id),
        slot INTEGER NOT NULL CHECK (slot >= 1),
        shown_at TEXT NOT NULL,
        price REAL NOT NULL DEFAULT 0 CHECK (price >= 0),   -- second price charged on a click; 0 until clicked
        p_click REAL CHECK (p_click IS NULL OR p_click BETWEEN 0 AND 1),
        policy TEXT NOT NULL CHECK (policy = 'untargeted' OR policy = 'campaign-rate' OR policy = 'model'),
        model_version INTEGER,
        clicked INTEGER NOT NULL DEFAULT 0 CHECK (clicked = 0 OR clicked = 1),    -- ORs: as events.kind
        clicked_at TEXT
    );
    CREATE INDEX IF NOT EXISTS idx_ad_impressions_user ON ad_impressions(user_id, shown_at);
    CREATE INDEX IF NOT EXISTS idx_ad_impressions_campaign ON ad_impressions(campaign_id, shown_at, clicked, price);
    CREATE INDEX IF NOT EXISTS idx_ad_impressions_shown ON ad_impressions(shown_at)
"""
# Columns the ads add to `users` (issue 25): the declared age band (NULL: unknown, matches no age target) and the
# ad-targeting consent, separate from personalization (1: as every consent flag of a simulated user starts).
ADS_USER_COLUMNS = {"age_band": "TEXT",
                    "consent_ad_targeting": "INTEGER NOT NULL DEFAULT 1 CHECK (consent_ad_targeting IN (0, 1))"}


def ensure_ads_schema(db: sqlite_utils.Database) -> None:
    """The ads tables and user columns, created when missing (idempotent). Migration m010 runs it; a new world's
    bulk load runs it too, before the deferred migrations (`open_db(defer_indexes=True)`), since its days already
    show ads."""
    have = {c[1] for c in db.execute("PRAGMA table_info(users)").fetchall()}
    for name, kind in ADS_USER_COLUMNS.items():
        if name not in have:
            db.execute(f"ALTER TABLE users ADD COLUMN {name} {kind}")
    _run_statements(db, ADS_TABLES)


@migrations()
def m010_ads(db: sqlite_utils.Database) -> None:
    """Ads (issue 25, docs/ads.md): campaigns, the impressions shown (with their clicks), users' age band and
    ad-targeting consent, and the consent history's ad-targeting column (NULL on changes made before it)."""
    ensure_ads_schema(db)
    db.execute("ALTER TABLE consent_history ADD COLUMN ad_targeting INTEGER")


@migrations()
def m011_ad_late_clicks(db: sqlite_utils.Database) -> None:
    """A click reported after its impression was stored (`writes.record_ad_clicks`) gets `click_seq`, the order in
    which such clicks arrived (NULL for a click written with its impression): the ETL's watermark `ad_clicks`, so a
    click that arrives after its impression's ETL run still reaches the warehouse's fact_ad_click."""
    have = {c[1] for c in db.execute("PRAGMA table_info(ad_impressions)").fetchall()}
    if "click_seq" not in have:
        db.execute("ALTER TABLE ad_impressions ADD COLUMN click_seq INTEGER")
    db.execute("CREATE UNIQUE INDEX IF NOT EXISTS idx_ad_impressions_click_seq ON ad_impressions(click_seq) "
               "WHERE click_seq IS NOT NULL")


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


SCHEMA = "retro_ops"       # the store's schema when it lives in PostgreSQL (settings.database_url)


def connect(settings: Settings, *, apply_migrations: bool = True, defer_indexes: bool = False) -> sqlite_utils.Database:
    """The operational store: the SQLite file `settings.ops_db` (`open_db`), or schema `retro_ops` of
    `settings.database_url` (the same migrations through `core.store.database`)."""
    if settings.database_url is None:
        return open_db(settings.ops_db, apply_migrations=apply_migrations, defer_indexes=defer_indexes)
    db = database.PgDatabase(settings.database_url, SCHEMA)
    try:
        if apply_migrations:
            database.apply_pg_migrations(db, migrations, stop_before=INDEX_MIGRATION if defer_indexes else None)
    except BaseException:
        db.close()
        raise
    return db


def exists(settings: Settings) -> bool:
    """Whether the operational store has been created: its SQLite file, or its PostgreSQL schema's tables."""
    if settings.database_url is None:
        return settings.ops_db.exists()
    return database.pg_store_exists(settings.database_url, SCHEMA)


def drop_stores(settings: Settings) -> None:
    """Remove the operational and ML metadata stores from PostgreSQL (a world replaced with --force); on SQLite
    the caller deletes the files (`settings.store_paths()`), and this does nothing."""
    if settings.database_url is not None:
        from core.store import mlopsdb
        database.drop_schemas(settings.database_url, [SCHEMA, mlopsdb.SCHEMA])


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
    if not exists(settings):
        return False
    with session(settings) as db:
        return bool(db.execute("SELECT (SELECT count(*) FROM movies) + (SELECT count(*) FROM users)").fetchone()[0])


def finish_deferred_migrations(db: sqlite_utils.Database) -> None:
    if database.dialect(db) == "postgresql":
        database.apply_pg_migrations(db, migrations)
    else:
        migrations.apply(db)


def get_meta(db: sqlite_utils.Database, key: str, default: str | None = None) -> str | None:
    row = db.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
    return row[0] if row else default


def set_meta(db: sqlite_utils.Database, key: str, value) -> None:
    db.execute(
        "INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        [key, str(value)],
    )


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


def current_rating(db: sqlite_utils.Database, user_id: int, movie_id: int) -> dict | None:
    """A user's current rating of a movie (user_id, movie_id, rating, rated_at), None if there is none.

    What `rate` shows after writing: the stored row, so the output says what the store now holds.
    """
    row = db.execute("SELECT user_id, movie_id, rating, rated_at FROM ratings WHERE user_id = ? AND movie_id = ?",
                     [user_id, movie_id]).fetchone()
    return None if row is None else dict(zip(["user_id", "movie_id", "rating", "rated_at"], row))


def movie_labels(db: sqlite_utils.Database, movie_ids: list[int]) -> dict[int, str]:
    """movie_id -> 'Title (Year)' ('?' for an unknown year) for the given movies; unknown ids are absent."""
    marks = ",".join("?" * len(movie_ids)) or "NULL"
    return dict(db.execute(f"SELECT movie_id, title || ' (' || coalesce(CAST(year AS TEXT), '?') || ')' FROM movies "
                           f"WHERE movie_id IN ({marks})", list(movie_ids)).fetchall())

# --- reads for other stages (issue 14: only this module names the operational tables) ---

USER_COLUMNS = ("user_id", "created_at", "consent_tracking", "consent_personalization", "source")
NO_SUCH_USER = "no such user in the operational database"


def require_user(db: sqlite_utils.Database, user_id: int, detail: str | None = NO_SUCH_USER) -> dict:
    """The user's row (USER_COLUMNS) — or UnknownUser, so every caller refuses an unknown id the same way.

    The message is 'unknown user N: <detail>' ('unknown user N' when `detail` is None).
    """
    from core.errors import UnknownUser
    row = db.execute(f"SELECT {', '.join(USER_COLUMNS)} FROM users WHERE user_id = ?", [int(user_id)]).fetchone()
    if row is None:
        raise UnknownUser(f"unknown user {user_id}" + (f": {detail}" if detail else ""))
    return dict(zip(USER_COLUMNS, row))


def titles(db: sqlite_utils.Database, movie_ids) -> dict[int, tuple[str, int | None]]:
    """{movie_id: (title, year)} of the given movies; ids not in the catalog are absent (year None: unknown)."""
    ids = [int(m) for m in movie_ids]
    marks = ",".join("?" * len(ids)) or "NULL"
    return {m: (t, y) for m, t, y in db.execute(
        f"SELECT movie_id, title, year FROM movies WHERE movie_id IN ({marks})", ids).fetchall()}


def catalog(db: sqlite_utils.Database) -> pd.DataFrame:
    """movie_id, title, year, genres of every movie in the catalog (see `movie_details` for some)."""
    rows = db.execute("SELECT movie_id, title, year, genres FROM movies").fetchall()
    return pd.DataFrame(rows, columns=["movie_id", "title", "year", "genres"])


def catalog_ids(db: sqlite_utils.Database) -> tuple[tuple, np.ndarray]:
    """(a marker that changes when the catalogue does, every movie id sorted): the exploration's far pool."""
    marker = tuple(db.execute("SELECT count(*), max(movie_id) FROM movies").fetchone())
    ids = np.array([m for (m,) in db.execute("SELECT movie_id FROM movies ORDER BY movie_id").fetchall()],
                   dtype=np.int64)
    return marker, ids


def catalog_marker(db: sqlite_utils.Database) -> tuple:
    """(movies, highest movie id): changes whenever a title is added."""
    return tuple(db.execute("SELECT count(*), max(movie_id) FROM movies").fetchone())


def user_ids(db: sqlite_utils.Database) -> list[int]:
    """Every user id of the operational database."""
    return [u for (u,) in db.execute("SELECT user_id FROM users").fetchall()]


def user_count(db: sqlite_utils.Database) -> int:
    return db.execute("SELECT count(*) FROM users").fetchone()[0]


def user_directory(db: sqlite_utils.Database) -> pd.DataFrame:
    """user_id, created_at, watches, ratings of every user, by id (a searchable picker's rows)."""
    rows = db.execute("""
        SELECT u.user_id, u.created_at,
               (SELECT count(*) FROM events e WHERE e.user_id = u.user_id AND e.kind = 'watch') AS watches,
               (SELECT count(*) FROM ratings r WHERE r.user_id = u.user_id) AS ratings
        FROM users u ORDER BY u.user_id""").fetchall()
    return pd.DataFrame(rows, columns=["user_id", "created_at", "watches", "ratings"])


def watched_titles(db: sqlite_utils.Database, user_id: int) -> pd.DataFrame:
    """One row per title the user watched, latest watch first: movie_id, title, year, genres,
    last_watched, seconds (the longest watch), runtime_min."""
    rows = db.execute("""
        SELECT e.movie_id, m.title, m.year, m.genres, max(e.occurred_at) AS last_watched, max(e.value) AS seconds,
               m.runtime_min
        FROM events e JOIN movies m USING (movie_id) WHERE e.user_id = ? AND e.kind = 'watch'
        GROUP BY e.movie_id, m.title, m.year, m.genres, m.runtime_min ORDER BY last_watched DESC""",
        [int(user_id)]).fetchall()
    return pd.DataFrame(rows, columns=["movie_id", "title", "year", "genres", "last_watched", "seconds", "runtime_min"])


def rating_summary(db: sqlite_utils.Database, user_id: int) -> tuple[int, float | None]:
    """(number of current ratings, their mean or None) of one user."""
    n, mean = db.execute("SELECT count(*), avg(rating) FROM ratings WHERE user_id = ?", [int(user_id)]).fetchone()
    return n, mean


def watchers_per_movie(db: sqlite_utils.Database) -> dict[int, int]:
    """{movie_id: distinct users who watched it}, from the raw events (the warehouse has the same for its facts)."""
    return dict(db.execute("SELECT movie_id, count(DISTINCT user_id) FROM events WHERE kind = 'watch' "
                           "GROUP BY movie_id").fetchall())


def change_marks(db: sqlite_utils.Database) -> tuple:
    """(max event seq, max rating-history id, users, movies, max serve id, clock): changes whenever anything is
    written, so caches keyed on it are invalidated by any write."""
    return tuple(db.execute(
        "SELECT (SELECT max(seq) FROM events), (SELECT max(history_id) FROM rating_history), "
        "(SELECT count(*) FROM users), (SELECT count(*) FROM movies), "
        "(SELECT max(serve_id) FROM served_recommendations), (SELECT value FROM meta WHERE key = 'clock')").fetchone())

# --- reads and writes for serving, the simulation and the importer (issue 14: one owner per store) ---

def personalization_consent(db: sqlite_utils.Database, user_ids: list[int]) -> dict[int, int]:
    """{user_id: consent_personalization (0/1)} of the given users; unknown ids are absent."""
    ids = [int(u) for u in user_ids]
    marks = ",".join("?" * len(ids)) or "NULL"
    return dict(db.execute(f"SELECT user_id, consent_personalization FROM users WHERE user_id IN ({marks})",
                           ids).fetchall())


def seen_pairs(db: sqlite_utils.Database, user_ids: list[int]) -> list[tuple[int, int]]:
    """(user_id, movie_id) of every title these users watched or rated (serving never recommends them again)."""
    ids = [int(u) for u in user_ids]
    marks = ",".join("?" * len(ids)) or "NULL"
    return db.execute(f"SELECT user_id, movie_id FROM events WHERE kind = 'watch' AND user_id IN ({marks}) "
                      f"UNION SELECT user_id, movie_id FROM ratings WHERE user_id IN ({marks})", ids + ids).fetchall()


def ratings_marker(db: sqlite_utils.Database) -> tuple:
    """(max history_id, count) of the rating history: changes whenever a rating is written or erased, so a
    cache of anything computed from ratings (the Top 50) can key on it."""
    return tuple(db.execute("SELECT max(history_id), count(*) FROM rating_history").fetchone())


def holds_movies_or_users(db: sqlite_utils.Database) -> bool:
    """True when the database has any movie or user (an import needs an empty one)."""
    return bool(db.execute("SELECT (SELECT count(*) FROM movies) + (SELECT count(*) FROM users)").fetchone()[0])


def add_sim_shift(db: sqlite_utils.Database, kind: str, strength: float, start_day: int, duration: int,
                  params: dict) -> None:
    """Record a behaviour shift started in the simulated world (params stored as JSON)."""
    import json
    db.execute("INSERT INTO sim_shifts(kind, strength, start_day, duration, params) VALUES (?,?,?,?,?)",
               [kind, strength, start_day, duration, json.dumps(params)])


def sim_shifts(db: sqlite_utils.Database) -> list[tuple[str, float, int, int, dict]]:
    """(kind, strength, start_day, duration, params) of every recorded shift, in the order they started."""
    import json
    rows = db.execute("SELECT kind, strength, start_day, duration, params FROM sim_shifts ORDER BY shift_id").fetchall()
    return [(k, s, d, n, json.loads(p)) for k, s, d, n, p in rows]

# --- a user's personal data: consent, export, erasure, retention (orchestrated by core/privacy) ----------------
def consent_flags(db: sqlite_utils.Database, user_id: int) -> tuple[bool, bool] | None:
    """(tracking, personalization) of a user; None for an unknown id."""
    row = db.execute("SELECT consent_tracking, consent_personalization FROM users WHERE user_id = ?",
                     [user_id]).fetchone()
    return None if row is None else (bool(row[0]), bool(row[1]))


def set_consent(db: sqlite_utils.Database, user_id: int, *, tracking: bool | None, personalization: bool | None,
                actor: str, at: str, ad_targeting: bool | None = None) -> dict | None:
    """Change the given flags (None: unchanged) and append the change to `consent_history`, in one transaction.

    Returns the new {'tracking', 'personalization', 'ad_targeting'}; None for an unknown id (nothing is written).
    """
    with db.atomic():
        row = db.execute("SELECT consent_tracking, consent_personalization, consent_ad_targeting FROM users "
                         "WHERE user_id = ?", [user_id]).fetchone()
        if row is None:
            return None
        new = {"tracking": bool(row[0]) if tracking is None else bool(tracking),
               "personalization": bool(row[1]) if personalization is None else bool(personalization),
               "ad_targeting": bool(row[2]) if ad_targeting is None else bool(ad_targeting)}
        db.execute("UPDATE users SET consent_tracking = ?, consent_personalization = ?, consent_ad_targeting = ? "
                   "WHERE user_id = ?", [int(new["tracking"]), int(new["personalization"]), int(new["ad_targeting"]),
                                         user_id])
        db.execute("INSERT INTO consent_history(user_id, changed_at, tracking, personalization, ad_targeting, actor) "
                   "VALUES (?, ?, ?, ?, ?, ?)", [user_id, at, int(new["tracking"]), int(new["personalization"]),
                                                 int(new["ad_targeting"]), actor])
    return new


# Up to this many distinct users, a per-user read asks for those users by key; more read the whole column once.
FEW_USERS = 500


def _of_users(db: sqlite_utils.Database, ids: np.ndarray, column: str, where: str) -> list[tuple]:
    """(user_id, `column`) of the users matching `where`: of `ids` alone when they are few, else of every user."""
    distinct = np.unique(ids).tolist()
    if len(distinct) > FEW_USERS:
        return db.execute(f"SELECT user_id, {column} FROM users WHERE {where}").fetchall()
    return db.execute(f"SELECT user_id, {column} FROM users WHERE {where} AND user_id IN "
                      f"({','.join('?' * len(distinct)) or 'NULL'})", distinct).fetchall()


def ad_targeting_consent(db: sqlite_utils.Database, user_ids) -> np.ndarray:
    """(n,) bool: whether each user consents to ad targeting (False for an unknown id: untargeted ads only)."""
    ids = np.asarray(user_ids, dtype=np.int64)
    yes = np.array([u for u, _ in _of_users(db, ids, "1", "consent_ad_targeting = 1")], dtype=np.int64)
    return np.isin(ids, yes)


def age_bands(db: sqlite_utils.Database, user_ids) -> np.ndarray:
    """(n,) object: each user's declared age band (None: unknown, or an unknown id)."""
    ids = np.asarray(user_ids, dtype=np.int64)
    found = dict(_of_users(db, ids, "age_band", "age_band IS NOT NULL"))
    if len(ids) <= FEW_USERS:
        out = np.empty(len(ids), dtype=object)
        out[:] = [found.get(u) for u in ids.tolist()]
        return out
    bands = pd.Series(ids, dtype="int64").map(found).astype(object)
    return bands.where(bands.notna(), None).to_numpy()


def set_age_bands(db: sqlite_utils.Database, user_ids, bands) -> int:
    """Record users' declared age bands where none is recorded yet (an older database switching ads on); returns
    how many rows changed. Bands outside AGE_BANDS are refused."""
    from core.constants import AGE_BANDS
    from core.errors import ValidationError
    pairs = [(str(b), int(u)) for u, b in zip(user_ids, bands)]
    bad = sorted({b for b, _ in pairs if b not in AGE_BANDS})
    if bad:
        raise ValidationError(f"unknown age band(s) {bad}; known: {', '.join(AGE_BANDS)}", code="unknown_age_band")
    with db.atomic():
        before = db.conn.total_changes
        db.conn.executemany("UPDATE users SET age_band = ? WHERE user_id = ? AND age_band IS NULL", pairs)
        return db.conn.total_changes - before


def consent_history(db: sqlite_utils.Database, user_id: int) -> list[dict]:
    """A user's consent changes, oldest first: changed_at, tracking, personalization, ad_targeting (0/1; NULL on
    changes recorded before the ads existed), actor."""
    return list(db.query("SELECT changed_at, tracking, personalization, ad_targeting, actor FROM consent_history "
                         "WHERE user_id = ? ORDER BY changed_at, change_id", [user_id]))


def personalization_withdrawals(db: sqlite_utils.Database) -> dict[int, list[tuple[str, int]]]:
    """{user id: [(changed_at, personalization), ...] oldest first} for every user whose personalization is off
    (in user id order; an empty list when the flag was never changed through consent_history)."""
    withdrawn = {r[0]: [] for r in db.execute("SELECT user_id FROM users WHERE consent_personalization = 0 "
                                                "ORDER BY user_id")}
    for uid, changed_at, pers in db.execute(
            "SELECT h.user_id, h.changed_at, h.personalization FROM consent_history h "
            "JOIN users u ON u.user_id = h.user_id WHERE u.consent_personalization = 0 "
            "ORDER BY h.user_id, h.changed_at, h.change_id"):
        if uid in withdrawn:
            withdrawn[uid].append((changed_at, pers))
    return withdrawn


def movie_titles(db: sqlite_utils.Database) -> dict[int, str]:
    """{movie_id: title} of the whole catalogue."""
    return {m: t for m, t in db.execute("SELECT movie_id, title FROM movies")}


def user_exists(db: sqlite_utils.Database, user_id: int) -> bool:
    return db.execute("SELECT 1 FROM users WHERE user_id = ?", [user_id]).fetchone() is not None


def payload_user(payload: str) -> int | None:
    """The user id inside a rejected write's JSON payload, read the way the ETL reads it (7, 7.0, '7')."""
    try:
        value = json.loads(payload).get("user_id")
    except (ValueError, AttributeError):
        return None
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return int(number) if math.isfinite(number) and number == round(number) else None


def rejected_for(db: sqlite_utils.Database, user_id: int) -> list[dict]:
    """The rejected writes whose payload names the user (reject_id, target, reason, payload, rejected_at)."""
    rows = db.query("SELECT reject_id, target, reason, payload, rejected_at FROM rejected_writes ORDER BY reject_id")
    return [r for r in rows if payload_user(r["payload"]) == user_id]


def known_user_ids(db: sqlite_utils.Database) -> set[int]:
    """Every user id the store knows: users, and ids named in rejected-write payloads (a key rotation's input)."""
    ids = {r[0] for r in db.execute("SELECT user_id FROM users")}
    return ids | {u for (p,) in db.execute("SELECT payload FROM rejected_writes") if (u := payload_user(p)) is not None}


def export_user(db: sqlite_utils.Database, user_id: int) -> dict[str, list[dict]] | None:
    """Every row held about a user, per table (users, consent_history, ratings, rating_history, events,
    rejected_writes); None for an unknown id. The serving log's rows come from `servinglog.export_user`."""
    profile = list(db.query("SELECT * FROM users WHERE user_id = ?", [user_id]))
    if not profile:
        return None
    q = lambda sql: list(db.query(sql, [user_id]))  # noqa: E731
    return {
        "users": profile,
        "consent_history": consent_history(db, user_id),
        "ratings": q("SELECT movie_id, rating, rated_at FROM ratings WHERE user_id = ? ORDER BY rated_at, movie_id"),
        "rating_history": q("SELECT history_id, movie_id, rating, rated_at FROM rating_history WHERE user_id = ? "
                            "ORDER BY history_id"),
        "events": q("SELECT event_id, movie_id, kind, value, occurred_at FROM events WHERE user_id = ? ORDER BY seq"),
        "rejected_writes": rejected_for(db, user_id),
    }


def _user_id_tables(db: sqlite_utils.Database) -> list[str]:
    """Every table with a `user_id` column (users first): what an erasure must leave without the user's rows."""
    names = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
    found = [n for n in names if any(c[1] == "user_id" for c in db.execute(f'PRAGMA table_info("{n}")'))]
    return sorted(found, key=lambda n: n != "users")


def held_counts(db: sqlite_utils.Database, user_id: int) -> dict[str, int]:
    """Rows held about a user per table (every table with a user_id column, and rejected_writes by payload)."""
    counts = {t: db.execute(f'SELECT count(*) FROM "{t}" WHERE user_id = ?', [user_id]).fetchone()[0]
              for t in _user_id_tables(db)}
    counts["rejected_writes"] = len(rejected_for(db, user_id))
    return counts


@contextmanager
def write_transaction(db: sqlite_utils.Database) -> Iterator[sqlite_utils.Database]:
    """One transaction that takes the write lock up front (`BEGIN IMMEDIATE`; a savepoint inside an open one).

    For read-then-write: a deferred transaction that read first fails at once with "database is locked" when
    another connection commits between its read and its first write (SQLite cannot upgrade a stale snapshot,
    and no busy timeout helps); an immediate one waits for the other writer (30 s busy timeout) instead."""
    if db.conn.in_transaction:
        with db.atomic():
            yield db
        return
    db.conn.execute("BEGIN IMMEDIATE")
    try:
        yield db
        db.conn.execute("COMMIT")
    except BaseException:
        if db.conn.in_transaction:
            db.conn.execute("ROLLBACK")
        raise


def erase_user(db: sqlite_utils.Database, user_id: int) -> dict[str, int]:
    """Delete every row about a user in one transaction; returns the rows deleted per table.

    The `users` row goes and its foreign keys cascade to every child table (the serving log included);
    rejected writes whose payload names the user go too. Verified before commit: a table left with a row
    for the user raises RetroError and nothing is deleted. secure_delete zeroes freed pages and the WAL is
    checkpointed, so the deleted bytes leave both files.
    """
    db.execute("PRAGMA secure_delete = ON")   # freed pages are zeroed, not left readable in the file
    tables = _user_id_tables(db)
    count = lambda t: db.execute(f'SELECT count(*) FROM "{t}" WHERE user_id = ?', [user_id]).fetchone()[0]  # noqa: E731
    with write_transaction(db):       # counts, deletes and checks see one state: no writer commits in between
        before = {t: count(t) for t in tables}
        rejected = [r["reject_id"] for r in rejected_for(db, user_id)]
        db.execute("DELETE FROM users WHERE user_id = ?", [user_id])   # cascades to every child table
        db.conn.executemany("DELETE FROM rejected_writes WHERE reject_id = ?", [(r,) for r in rejected])
        left = {t: n for t in tables if (n := count(t))}
        if left or any(payload_user(p) == user_id for (p,) in db.execute("SELECT payload FROM rejected_writes")):
            raise RetroError(f"erasure incomplete: rows remain in {sorted(left) or ['rejected_writes']} "
                             "(a table without ON DELETE CASCADE?); nothing was deleted")
    database.vacuum(db, [t for t in tables if before.get(t)] + (["rejected_writes"] if rejected else []))
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return before | {"rejected_writes": len(rejected)}


def events_before(db: sqlite_utils.Database, cutoff: str) -> tuple[int, int, str | None]:
    """(events before `cutoff`, all events, the oldest event's time): what a retention purge would delete."""
    n, total, oldest = db.execute("SELECT count(*) FILTER (WHERE occurred_at < ?), count(*), min(occurred_at) "
                                  "FROM events", [cutoff]).fetchone()
    return int(n), int(total), oldest


def purge_events(db: sqlite_utils.Database, cutoff: str) -> int:
    """Delete behavioural events before `cutoff` (one transaction, freed pages zeroed, WAL checkpointed);
    returns how many. Ratings are the user's explicit input and stay."""
    db.execute("PRAGMA secure_delete = ON")
    with db.atomic():
        n = db.conn.execute("DELETE FROM events WHERE occurred_at < ?", [cutoff]).rowcount
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return int(n)

# ---------------------------------------------------------------- reads for monitoring and the ETL
def watches_between(db, start: str, end: str) -> list[tuple]:
    """(user_id, movie_id) of every watch event in [start, end) (ISO text): what users watched on a day."""
    return db.execute("SELECT user_id, movie_id FROM events WHERE kind = 'watch' AND occurred_at >= ? "
                      "AND occurred_at < ?", [start, end]).fetchall()


def seen_before(db, before: str) -> dict[int, set]:
    """{user_id: titles watched or rated before `before`}: what serving would have filtered out of a list served
    at that time (counterfactual evaluation and the simulated truth replay lists as of then)."""
    rows = db.execute("SELECT user_id, movie_id FROM events WHERE kind = 'watch' AND occurred_at < ? "
                      "AND movie_id IS NOT NULL UNION SELECT user_id, movie_id FROM ratings WHERE rated_at < ?",
                      [before, before]).fetchall()
    seen: dict[int, set] = {}
    for u, m in rows:
        seen.setdefault(int(u), set()).add(int(m))
    return seen


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
    must never change the operational store (on PostgreSQL: a session with default_transaction_read_only)."""
    if settings.database_url is not None:
        pg = database.PgDatabase(settings.database_url, SCHEMA, read_only=True)
        try:
            yield pg.conn
        finally:
            pg.close()
        return
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
    return database.read_sql_query("SELECT seq AS source_id, user_id, movie_id, kind, value, occurred_at FROM events "
                             "WHERE seq > ? ORDER BY seq", _raw(conn), params=(seq,))


def rating_history_after(conn, history_id: int) -> pd.DataFrame:
    """Rating history past the ETL watermark `history_id`, as the ETL's rows: source_id (= history_id), user_id,
    movie_id, kind ('rating'), value (the rating), occurred_at (rated_at)."""
    return database.read_sql_query("SELECT history_id AS source_id, user_id, movie_id, 'rating' AS kind, rating AS value, "
                             "rated_at AS occurred_at FROM rating_history WHERE history_id > ? ORDER BY history_id",
                             _raw(conn), params=(history_id,))


def rejected_writes_after(conn, reject_id: int) -> pd.DataFrame:
    """Writes refused at ingestion past the ETL watermark `reject_id`: reject_id, target, reason, payload,
    rejected_at, code (None before migration m006, or on a store not migrated yet: a read-only reader
    cannot migrate it)."""
    raw = _raw(conn)
    has_code = any(col[1] == "code" for col in raw.execute("PRAGMA table_info(rejected_writes)").fetchall())
    return database.read_sql_query(f"SELECT reject_id, target, reason, payload, rejected_at, "
                             f"{'code' if has_code else 'NULL AS code'} FROM rejected_writes "
                             f"WHERE reject_id > ? ORDER BY reject_id", raw, params=(reject_id,))


def users_with_valid_ids(conn) -> pd.DataFrame:
    """user_id, created_at, consent_personalization of users whose id is an integer in 1..bounds.MAX_ID.

    Rows with another id (only ever written around the write API) are left out: their facts are quarantined.
    """
    from core import bounds
    return database.read_sql_query("SELECT user_id, created_at, consent_personalization FROM users "
                             "WHERE typeof(user_id) = 'integer' AND user_id BETWEEN 1 AND ?", _raw(conn),
                             params=(bounds.MAX_ID,))


def movies_with_valid_ids(conn) -> pd.DataFrame:
    """movie_id, title, year, genres, runtime_min, added_at of movies whose id is an integer in 1..bounds.MAX_ID
    (values as stored)."""
    from core import bounds
    return database.read_sql_query("SELECT movie_id, title, year, genres, runtime_min, added_at FROM movies "
                             "WHERE typeof(movie_id) = 'integer' AND movie_id BETWEEN 1 AND ?", _raw(conn),
                             params=(bounds.MAX_ID,))
