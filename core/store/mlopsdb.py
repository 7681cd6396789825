"""The ML metadata store: experiment runs, model registry, pipeline jobs, monitoring, privacy requests.

A separate SQLite file (`settings.mlops_db`) that holds no raw user ids — only
models, metrics, timings, alerts and counts. The exceptions: the operator
audit log, whose targets may be pseudonyms (an erasure redacts those), and a
pending erasure request, which remembers whom to erase until it completes. Same
conventions as `opsdb`: sqlite-utils, schema by migrations, WAL, foreign keys
on, one connection per call.
"""
from __future__ import annotations

import json
import sqlite3
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

import sqlite_utils
from sqlite_utils import Migrations

from core.constants import TS_FORMAT
from core.errors import InvalidTimestamp
from core.store import database
from core.store.opsdb import private_db_file, set_wal
from core.settings import Settings

migrations = Migrations("retro_mlops")


M001_SQL = """
        CREATE TABLE jobs (
            job_id INTEGER PRIMARY KEY AUTOINCREMENT,
            kind TEXT NOT NULL CHECK (length(kind) > 0),        -- e.g. 'retrain'
            trigger TEXT NOT NULL CHECK (length(trigger) > 0),  -- 'manual', 'scheduled', 'drift-alert', 'cli'
            started_at TEXT NOT NULL,
            finished_at TEXT,
            status TEXT NOT NULL DEFAULT 'running' CHECK (status IN ('running','finished','failed')),
            stage TEXT,                                          -- last stage reached
            error TEXT,
            result TEXT                                          -- JSON object
        );
        CREATE TABLE runs (
            run_id INTEGER PRIMARY KEY AUTOINCREMENT,
            model_kind TEXT NOT NULL CHECK (length(model_kind) > 0),
            started_at TEXT NOT NULL,
            finished_at TEXT,
            status TEXT NOT NULL DEFAULT 'running' CHECK (status IN ('running','finished','failed')),
            params TEXT NOT NULL DEFAULT '{}',       -- JSON: hyper-parameters
            metrics TEXT,                            -- JSON: {'ndcg@10': 0.21, 'coverage': 0.3, ...}
            baselines TEXT,                          -- JSON: {baseline name: metrics} on the same split
            data_version TEXT,
            seed INTEGER,
            code_version TEXT,
            timings TEXT,                            -- JSON: seconds per stage
            artifact_path TEXT,
            artifact_hash TEXT,                      -- sha256 of the artifact file
            error TEXT,
            job_id INTEGER REFERENCES jobs(job_id)
        );
        CREATE TABLE model_versions (
            version INTEGER PRIMARY KEY AUTOINCREMENT,
            run_id INTEGER NOT NULL UNIQUE REFERENCES runs(run_id),
            model_kind TEXT NOT NULL,
            family TEXT NOT NULL,                    -- 'cf' for als/bpr, 'ranker' (one production each)
            created_at TEXT NOT NULL,
            stage TEXT NOT NULL DEFAULT 'candidate' CHECK (stage IN ('candidate','production','archived')),
            artifact_path TEXT,
            artifact_hash TEXT,
            data_version TEXT,
            metrics TEXT,                            -- JSON, copied from the run
            params TEXT,                             -- JSON, copied from the run
            depends_on INTEGER REFERENCES model_versions(version)
        );
        -- At most one production version per family, enforced by the database.
        CREATE UNIQUE INDEX idx_versions_one_production ON model_versions(family) WHERE stage = 'production';
        CREATE TABLE registry_events (
            event_id INTEGER PRIMARY KEY AUTOINCREMENT,
            version INTEGER NOT NULL REFERENCES model_versions(version),
            from_stage TEXT,                         -- NULL for the registration event
            to_stage TEXT NOT NULL,
            at TEXT NOT NULL,
            actor TEXT NOT NULL,
            reason TEXT NOT NULL,
            gate TEXT                                -- JSON GateDecision, when a gate decided
        );
        CREATE INDEX idx_events_version ON registry_events(version, event_id);
        CREATE INDEX idx_runs_job ON runs(job_id);
"""


@migrations()
def m001_tables(db: sqlite_utils.Database) -> None:
    # One statement at a time: `executescript` would COMMIT the migration's transaction.
    for statement in M001_SQL.split(";\n"):
        if statement.strip():
            db.execute(statement)


M002_SQL = """
        CREATE TABLE monitor_days (
            day TEXT PRIMARY KEY,                    -- the monitored simulated day (YYYY-MM-DD)
            computed_at TEXT NOT NULL,
            model_version INTEGER,                   -- production model serving that day
            reference_start TEXT, reference_end TEXT,
            online TEXT,                             -- JSON: hit rate / precision of model and Top 50 control
            quality TEXT,                            -- JSON: quarantine rate
            model TEXT,                              -- JSON: score quantiles, recommended genre mix
            classification TEXT                      -- 'stable', 'taste shift', 'data incident', 'no reference'
        );
        CREATE TABLE drift_scores (
            day TEXT NOT NULL, feature TEXT NOT NULL, test TEXT NOT NULL,
            score REAL, threshold REAL NOT NULL, drifted INTEGER NOT NULL,
            PRIMARY KEY (day, feature, test)
        );
        CREATE TABLE alerts (
            alert_id INTEGER PRIMARY KEY AUTOINCREMENT,
            kind TEXT NOT NULL,                      -- 'data-drift', 'concept-drift', 'data-quality'
            metric TEXT NOT NULL,                    -- feature or metric name
            test TEXT,
            severity TEXT NOT NULL,                  -- 'warning' or 'critical'
            value REAL, threshold REAL,
            window_start TEXT, window_end TEXT,
            opened_at TEXT NOT NULL, closed_at TEXT,
            last_value REAL, classification TEXT
        );
        CREATE UNIQUE INDEX idx_alerts_open ON alerts(kind, metric) WHERE closed_at IS NULL;
        CREATE TABLE policy (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE actions (
            action_id INTEGER PRIMARY KEY AUTOINCREMENT,
            at TEXT NOT NULL, day TEXT,
            kind TEXT NOT NULL,                      -- 'retrain', 'policy-change'
            actor TEXT NOT NULL,                     -- 'policy:on-alert', 'policy:scheduled', an operator
            cause TEXT NOT NULL,
            job_id INTEGER REFERENCES jobs(job_id),
            result TEXT                              -- JSON
        );
        CREATE TABLE daily_top50 (day TEXT PRIMARY KEY, movie_ids TEXT NOT NULL)
"""


@migrations()
def m002_monitoring(db: sqlite_utils.Database) -> None:
    for statement in M002_SQL.split(";\n"):
        if statement.strip():
            db.execute(statement)


M003_SQL = """
        CREATE TABLE erasure_requests (                 -- no personal data: counts only
            request_id INTEGER PRIMARY KEY AUTOINCREMENT,
            requested_at TEXT NOT NULL, completed_at TEXT,
            state TEXT NOT NULL CHECK (state IN ('received','completed','failed')),
            actor TEXT NOT NULL, summary TEXT
        );
        CREATE TABLE operator_audit (                   -- who did what, when (targets are pseudonyms)
            audit_id INTEGER PRIMARY KEY AUTOINCREMENT,
            at TEXT NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL,
            target TEXT, outcome TEXT NOT NULL
        )
"""


@migrations()
def m003_privacy(db: sqlite_utils.Database) -> None:
    for statement in M003_SQL.split(";\n"):
        if statement.strip():
            db.execute(statement)


M004_SQL = """
        CREATE TABLE signin_failures (                  -- consecutive failed operator sign-ins per name tried
            name TEXT PRIMARY KEY,
            failures INTEGER NOT NULL CHECK (failures > 0),
            last_failed_at REAL NOT NULL                -- seconds since the epoch (the throttle's clock)
        )
"""


@migrations()
def m004_signin_throttle(db: sqlite_utils.Database) -> None:
    db.execute(M004_SQL)


STATUSES = "'running','finished','failed'"
INTERRUPTED_STATUSES = "'running','finished','failed','interrupted'"


def _widen_status_check(db: sqlite_utils.Database, table: str) -> None:
    """Allow status 'interrupted' in `table`'s CHECK by editing its stored CREATE statement (on PostgreSQL: the
    named CHECK constraint is dropped and added back wider, in the migration's transaction).

    The procedure SQLite documents for changing a CHECK constraint without
    rebuilding the table (https://www.sqlite.org/lang_altertable.html, "making
    other kinds of table schema changes"): safe here because every existing row
    already satisfies the wider constraint and no index or foreign key changes.
    """
    if database.dialect(db) == "postgresql":
        db.execute(f"ALTER TABLE {table} DROP CONSTRAINT {table}_status_check, ADD CONSTRAINT {table}_status_check "
                   f"CHECK (status IN ({INTERRUPTED_STATUSES}))")
        return
    sql = db.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", [table]).fetchone()[0]
    if STATUSES not in sql:
        raise RuntimeError(f"mlops.db table {table}: unexpected status constraint, cannot add 'interrupted'")
    version = db.execute("PRAGMA schema_version").fetchone()[0]
    db.execute("PRAGMA writable_schema = ON")
    try:
        db.execute("UPDATE sqlite_master SET sql = ? WHERE type = 'table' AND name = ?",
                   [sql.replace(STATUSES, INTERRUPTED_STATUSES), table])
        db.execute(f"PRAGMA schema_version = {int(version) + 1}")
    finally:
        db.execute("PRAGMA writable_schema = OFF")


@migrations()
def m005_interrupted(db: sqlite_utils.Database) -> None:
    """Jobs and runs can end 'interrupted': found 'running' when the store lock was next taken (`recovery`)."""
    for table in ("jobs", "runs"):
        _widen_status_check(db, table)


@migrations()
def m006_resumable_erasure(db: sqlite_utils.Database) -> None:
    """Erasure requests are resumable (`erasure.forget_user`).

    A pending request keeps whom to erase only until it completes
    (`pending_user_id`, the raw id, until the operational store is done;
    `pending_user_key`, the pseudonym, until every store is), the steps done so
    far (`steps_done`, JSON list) and the hashes of the artifacts it is
    rewriting (`pending_hashes`, JSON {artifact directory: sha256}).
    `model_versions.pending_hash` is the hash an artifact will have once an
    erasure's file swap is done: serving accepts it too, so a kill between the
    swap and the registry update never breaks serving.
    """
    for column, kind in (("pending_user_id", "INTEGER"), ("pending_user_key", "TEXT"), ("steps_done", "TEXT"),
                         ("pending_hashes", "TEXT")):
        db.execute(f"ALTER TABLE erasure_requests ADD COLUMN {column} {kind}")
    db.execute("ALTER TABLE model_versions ADD COLUMN pending_hash TEXT")


@migrations()
def m007_drift_insufficient(db: sqlite_utils.Database) -> None:
    """A drift score can be 'insufficient': the day's window was too small to judge (issue 12)."""
    db.execute("ALTER TABLE drift_scores ADD COLUMN insufficient INTEGER NOT NULL DEFAULT 0")
    db.execute("ALTER TABLE drift_scores ADD COLUMN n_current INTEGER")


@migrations()
def m008_relative_artifact_paths(db: sqlite_utils.Database) -> None:
    """Artifact paths relative to the data folder (`models/run-7`); absolute ones are cut at their `models/` part."""
    for table, pk in (("runs", "run_id"), ("model_versions", "version")):
        for ident, path in db.execute(f"SELECT {pk}, artifact_path FROM {table} "
                                      "WHERE artifact_path LIKE '/%' AND artifact_path LIKE '%/models/%'").fetchall():
            parts = Path(path).parts
            tail = Path(*parts[len(parts) - 1 - parts[::-1].index("models"):]).as_posix()
            db.execute(f"UPDATE {table} SET artifact_path = ? WHERE {pk} = ?", [tail, ident])


M009_SQL = """
        CREATE TABLE deployments (                      -- releases of a candidate beside production (issue 16)
            deployment_id INTEGER PRIMARY KEY AUTOINCREMENT,
            version INTEGER NOT NULL REFERENCES model_versions(version),
            mode TEXT NOT NULL CHECK (mode IN ('shadow','canary')),
            share REAL,                                 -- canary: share of users in its arm; shadow: NULL
            production_version INTEGER,                 -- production when the release started
            state TEXT NOT NULL CHECK (state IN ('active','promoted','rolled-back','stopped')),
            policy TEXT,                                -- JSON: the rules the release is judged by
            started_at TEXT NOT NULL, started_by TEXT NOT NULL, reason TEXT NOT NULL,
            updated_at TEXT NOT NULL,                   -- last change (start, ramp, end)
            ended_at TEXT, ended_by TEXT, end_reason TEXT
        );
        CREATE UNIQUE INDEX idx_one_active_deployment ON deployments(state) WHERE state = 'active';
        CREATE TABLE release_decisions (                -- every review of a release, with its numbers
            decision_id INTEGER PRIMARY KEY AUTOINCREMENT,
            deployment_id INTEGER NOT NULL REFERENCES deployments(deployment_id),
            at TEXT NOT NULL, day TEXT,
            decision TEXT NOT NULL CHECK (decision IN ('continue','ramp','promote','rollback','stop')),
            actor TEXT NOT NULL, reason TEXT NOT NULL,
            days INTEGER,                               -- monitored days of evidence
            point REAL, lo REAL, hi REAL,               -- hit-rate difference (canary − production) and interval
            hit_rate_canary REAL, hit_rate_production REAL,
            users_canary INTEGER, users_production INTEGER,   -- lists judged, summed over the days
            users_affected INTEGER,                     -- distinct users the candidate's lists were shown to
            share REAL,                                 -- canary share after the decision
            evidence TEXT                               -- JSON: per-day numbers and the policy
        );
        CREATE INDEX idx_release_decisions ON release_decisions(deployment_id, decision_id)
"""


@migrations()
def m009_releases(db: sqlite_utils.Database) -> None:
    """Shadow and canary releases (`serving.deployments`) and the release policy's decisions (`monitoring.release`)."""
    for statement in M009_SQL.split(";\n"):
        if statement.strip():
            db.execute(statement)


M010_SQL = """
        CREATE TABLE churn_predictions (                -- every stored churn score (issue 17); user_key: a pseudonym
            prediction_id INTEGER PRIMARY KEY AUTOINCREMENT,
            model_version INTEGER NOT NULL REFERENCES model_versions(version),
            user_key TEXT NOT NULL,
            as_of TEXT NOT NULL,                        -- the instant the features stop (data up to, excluding)
            scored_at TEXT NOT NULL,                    -- service clock when it was scored
            risk REAL NOT NULL,                         -- calibrated P(no watch in the 14 days from as_of)
            features TEXT NOT NULL                      -- JSON: the feature values the model saw
        );
        CREATE INDEX idx_churn_predictions_asof ON churn_predictions(as_of, model_version);
        CREATE INDEX idx_churn_predictions_user ON churn_predictions(user_key, as_of)
"""


@migrations()
def m010_churn_predictions(db: sqlite_utils.Database) -> None:
    """Stored churn scores (`core.training.churn_pipeline`), checked against who actually churned later."""
    for statement in M010_SQL.split(";\n"):
        if statement.strip():
            db.execute(statement)


@migrations()
def m011_drift_chance_level(db: sqlite_utils.Database) -> None:
    """Drift scores and alerts keep their chance level beside the threshold: a drift alert needs a change both
    material (≥ threshold) and beyond chance at the day's window sizes (`drift.null_quantile`).

    drift_scores.null_q99 — the score's 99th percentile with nothing changed (NULL: not judged, or stored
    before); drift_scores.beyond_chance — score > null_q99 (NULL before); alerts.chance_level — the level the
    metric had to pass to be beyond chance when the alert opened (a drift score's null_q99, the hit rate of
    `monitoring.hit_rate_chance_level`; NULL for other alerts and older ones).
    """
    db.execute("ALTER TABLE drift_scores ADD COLUMN null_q99 REAL")
    db.execute("ALTER TABLE drift_scores ADD COLUMN beyond_chance INTEGER")
    db.execute("ALTER TABLE alerts ADD COLUMN chance_level REAL")


@migrations()
def m012_operator_roles(db: sqlite_utils.Database) -> None:
    """Audit rows name the person and the role they acted in (`core/privacy/roles.py`); failed sign-ins under
    names that are no operator are counted in one row per day and action (`attempts`), so a flood of guesses
    cannot grow the log without limit. Older rows: person and role NULL, attempts 1."""
    db.execute("ALTER TABLE operator_audit ADD COLUMN person TEXT")
    db.execute("ALTER TABLE operator_audit ADD COLUMN role TEXT")
    db.execute("ALTER TABLE operator_audit ADD COLUMN attempts INTEGER NOT NULL DEFAULT 1")
    db.execute("CREATE INDEX idx_operator_audit_actor ON operator_audit(actor, action, at)")


@migrations()
def m013_audit_clock(db: sqlite_utils.Database) -> None:
    """Audit rows say which clock their `at` is on (`clock`: 'simulated' — a world's clock — or 'real') and when
    they were written in real UTC (`recorded_at`), so rows written before and after a world existed sort on one
    clock. Older rows: both NULL."""
    db.execute("ALTER TABLE operator_audit ADD COLUMN clock TEXT")
    db.execute("ALTER TABLE operator_audit ADD COLUMN recorded_at TEXT")


# Tables whose writes do not change what the dashboard shows from its caches: the operator audit (every personal
# view and sign-in writes a row, and is read uncached) and the sign-in throttle. Every other table's writes bump
# `change_counter` (triggers), the store's part of the dashboard's cache key (`insights.state_token`).
CHANGE_EXEMPT = ("operator_audit", "signin_failures", "change_counter")


def install_change_triggers(db: sqlite_utils.Database, table: str) -> None:
    """Count every INSERT, UPDATE and DELETE on `table` in `change_counter` (a migration adding a table calls it;
    tests/test_model_pages_first_day.py checks that every table but CHANGE_EXEMPT has them). On PostgreSQL the
    same row-level triggers call one plpgsql function (`count_change`, created by m014)."""
    if database.dialect(db) == "postgresql":
        for op in ("INSERT", "UPDATE", "DELETE"):
            db.execute(f'CREATE OR REPLACE TRIGGER "count_{table}_{op.lower()}" AFTER {op} ON "{table}" '
                       "FOR EACH ROW EXECUTE FUNCTION count_change()")
        return
    for op in ("INSERT", "UPDATE", "DELETE"):
        db.execute(f'CREATE TRIGGER IF NOT EXISTS "count_{table}_{op.lower()}" AFTER {op} ON "{table}" '
                   "BEGIN UPDATE change_counter SET n = n + 1 WHERE id = 1; END")


@migrations()
def m014_change_counter(db: sqlite_utils.Database) -> None:
    """One counter of the writes that change what the dashboard shows (every table but CHANGE_EXEMPT): the
    dashboard's cache key read the file's modification time, so each audited personal view (a row in
    operator_audit) emptied every cache and opening Explanations & Governance recomputed all of it (4.3–4.7 s)."""
    db.execute("CREATE TABLE change_counter (id INTEGER PRIMARY KEY CHECK (id = 1), n INTEGER NOT NULL)")
    db.execute("INSERT INTO change_counter VALUES (1, 0)")
    if database.dialect(db) == "postgresql":
        db.execute("CREATE OR REPLACE FUNCTION count_change() RETURNS trigger LANGUAGE plpgsql AS "
                   "$$ BEGIN UPDATE change_counter SET n = n + 1 WHERE id = 1; RETURN NULL; END $$")
    for (table,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
        if table not in CHANGE_EXEMPT and not table.startswith(("sqlite_", "_")):
            install_change_triggers(db, table)


@migrations()
def m015_ads_days(db: sqlite_utils.Database) -> None:
    """One row per monitored day of the ads (`core.monitoring.ads_monitoring`): click rate, revenue, the online
    calibration of the stored p_click against the clicks, and budget pacing per campaign (JSON in `signals`)."""
    db.execute("""
        CREATE TABLE ads_days (
            day TEXT PRIMARY KEY,                       -- YYYY-MM-DD (UTC) of the impressions' shown_at
            computed_at TEXT NOT NULL,
            impressions INTEGER NOT NULL,
            clicks INTEGER NOT NULL,
            click_rate REAL,                            -- NULL without an impression
            baseline_click_rate REAL,                   -- pooled over the previous stored days (NULL: too few)
            revenue REAL NOT NULL,                      -- what the day's clicks were charged
            ece REAL,                                   -- ECE (10 bins) of stored p_click vs clicks; NULL: no such row
            ece_rows INTEGER NOT NULL,
            ece_chance REAL,                            -- its 99th percentile if the predictions were calibrated
            model_version INTEGER,                      -- the ads model in production at the day's end
            signals TEXT NOT NULL                       -- JSON: per policy, pacing per campaign, chance levels
        )""")
    install_change_triggers(db, "ads_days")


def change_mark(settings: Settings) -> int | None:
    """How many counted writes the ML metadata store has seen (None without a store yet)."""
    if not exists(settings):
        return None
    with session(settings) as db:
        return db.execute("SELECT n FROM change_counter WHERE id = 1").fetchone()[0]


SCHEMA = "retro_mlops"     # the store's schema when it lives in PostgreSQL (settings.database_url)
# Tables that may hold a pseudonym or a raw id (the audit's targets, a pending erasure, churn scores): on
# PostgreSQL a session that updated or deleted rows in them VACUUMs them when it closes (docs/postgres.md).
PERSONAL_TABLES = frozenset({"operator_audit", "erasure_requests", "churn_predictions"})


def exists(settings: Settings) -> bool:
    """Whether the ML metadata store has been created: its SQLite file, or its PostgreSQL schema's tables."""
    if settings.database_url is None:
        return settings.mlops_db.exists()
    return database.pg_store_exists(settings.database_url, SCHEMA)


def open_mlops(settings: Settings) -> sqlite_utils.Database:
    """Open the ML metadata database with WAL and foreign keys, migrated to the latest schema (SQLite file
    `settings.mlops_db`, or schema `retro_mlops` of `settings.database_url`)."""
    if settings.database_url is not None:
        db = database.PgDatabase(settings.database_url, SCHEMA, vacuum_tables=PERSONAL_TABLES)
        try:
            database.apply_pg_migrations(db, migrations)
        except BaseException:
            db.close()
            raise
        return db
    return open_path(settings.mlops_db)


def open_path(path: Path | str) -> sqlite_utils.Database:
    private_db_file(path)
    conn = sqlite3.connect(str(path), check_same_thread=False, timeout=30, isolation_level=None)
    set_wal(conn)
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA synchronous=NORMAL")
    db = sqlite_utils.Database(conn)
    if migrations.pending(db):
        # A training thread and a dashboard session may open a fresh file at
        # the same moment: the write lock makes the second one wait, re-check
        # and find nothing left to apply (each migration nests as a savepoint).
        conn.execute("BEGIN IMMEDIATE")
        try:
            migrations.apply(db)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    return db


@contextmanager
def session(settings: Settings) -> Iterator[sqlite_utils.Database]:
    """A connection that is closed afterwards (reads, and single-statement writes)."""
    db = open_mlops(settings)
    try:
        yield db
    finally:
        db.conn.close()


@contextmanager
def write_session(settings: Settings) -> Iterator[sqlite_utils.Database]:
    """A connection inside one `BEGIN IMMEDIATE` transaction, committed on success.

    For read-check-write sequences (promote, rollback): the write lock is taken
    up front, so a concurrent writer waits instead of failing with SQLITE_BUSY
    when a deferred transaction tries to upgrade. `db.atomic()` inside nests as
    a savepoint.
    """
    with session(settings) as db:
        db.conn.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.conn.execute("ROLLBACK")
            raise
        db.conn.execute("COMMIT")


# The audit row of the privileged action under way in this thread (set by `core.privacy.access.audited`): the
# action writes it with `audit_in(db)` inside the transaction that makes it, so a kill can never leave the action
# committed and unaudited. A one-element list: the row is written once, by the action's first decisive write.
_audit_row: ContextVar[list | None] = ContextVar("audit_row", default=None)


@contextmanager
def audit_row(write) -> Iterator[None]:
    """Within the block, the first `audit_in(db)` calls `write(db)` (which inserts the audit row on `db`)."""
    token = _audit_row.set([write])
    try:
        yield
    finally:
        _audit_row.reset(token)


def audit_in(db: sqlite_utils.Database, target: str | None = None) -> None:
    """Write the pending audit row (if any) on `db`, inside the caller's open transaction: called by the
    actions an operator is audited for (promote, rollback, a release's start and decisions). `target`: what the
    action found it acts on, for an audit row that did not name it beforehand (a rollback's version)."""
    pending = _audit_row.get()
    if pending and pending[0] is not None:
        write, pending[0] = pending[0], None
        write(db, target)


def timestamp(at: str | None, settings: Settings | None = None) -> str:
    """`at` checked against `TS_FORMAT` ('YYYY-MM-DDTHH:MM:SS', UTC); when None, the service's clock
    (`clock.now`: the simulated clock of a world, else real UTC) — or real UTC without `settings`."""
    if at is None:
        from core.store.clock import now, utc_now
        return now(settings) if settings is not None else utc_now()
    try:
        datetime.strptime(at, TS_FORMAT)
    except (TypeError, ValueError):
        raise InvalidTimestamp(f"timestamp {at!r} is not UTC 'YYYY-MM-DDTHH:MM:SS'") from None
    return at


def _plain(value: Any) -> Any:
    """JSON fallback for NumPy scalars/arrays and paths."""
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def dumps(value: Any) -> str | None:
    """JSON text for a metadata field; NaN survives the round trip (Python's JSON dialect)."""
    if value is None:
        return None
    return json.dumps(value, default=_plain)


def loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def policy_value(db: sqlite_utils.Database, key: str) -> str | None:
    """One field of the policy table (the retraining policy's and the exploration share's), None when unset."""
    row = db.execute("SELECT value FROM policy WHERE key = ?", [key]).fetchone()
    return None if row is None else row[0]


def set_policy_value(db: sqlite_utils.Database, key: str, value: str, *, at: str, actor: str, cause: str,
                     result: str) -> None:
    """Store one policy field and its audit row (`actions`, kind 'policy-change') in one transaction."""
    with db.atomic():
        db.execute("INSERT OR REPLACE INTO policy VALUES (?, ?)", [key, value])
        db.execute("INSERT INTO actions(at, day, kind, actor, cause, result) VALUES (?, NULL, 'policy-change', ?, ?, ?)",
                   [at, actor, cause, result])


def is_number(value: Any) -> bool:
    """True for real numbers (NaN included), False for bools, strings and containers."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def stored_artifact_path(settings: Settings, path: str | Path) -> str:
    """How an artifact directory is recorded: relative to the data folder (`models/run-7`) when inside it, so
    a folder copied (`cp -a A B`), restored or moved serves, erases and checks its own models, never A's."""
    path = Path(path)
    try:
        return path.resolve().relative_to(settings.home.resolve()).as_posix()
    except ValueError:
        return str(path)


def artifact_dir(settings: Settings, stored: str | Path) -> Path:
    """The directory a recorded artifact path names: relative paths (every artifact this platform writes
    inside its data folder) are under `settings.home`; an absolute one (a model kept outside the folder) as is.
    Absolute paths an older version wrote inside its folder were made relative by migration m008."""
    path = Path(stored)
    return path if path.is_absolute() else settings.home / path


def resolve_artifact(settings: Settings, record: dict) -> dict:
    """`record` with its `artifact_path` resolved for this data folder (a string, as callers expect)."""
    if record.get("artifact_path"):
        record["artifact_path"] = str(artifact_dir(settings, record["artifact_path"]))
    return record


def clone_home(source: Settings, dest: Path | str) -> Settings:
    """Copy a whole data folder (e.g. a prepared world for an experiment); returns the copy's settings.
    Artifact paths are relative to the folder, so nothing is rewritten. Stores in PostgreSQL are copied into a
    new database on the same server (`CREATE DATABASE … TEMPLATE`, which needs no other session on the source),
    named in the copy's `.database-url` so every process that opens the copy uses it."""
    import dataclasses
    import hashlib
    import shutil

    from core.settings import load_settings
    dest = Path(dest)
    shutil.copytree(source.home, dest, dirs_exist_ok=True)
    copy = load_settings(dest)
    if source.database_url is not None:
        suffix = hashlib.sha256(str(dest.resolve()).encode()).hexdigest()[:12]
        url = database.clone_database(source.database_url, suffix)
        from core.filemodes import create_private
        from core.settings import DATABASE_URL_FILE
        pinned = create_private(dest / DATABASE_URL_FILE)
        pinned.write_text(url + "\n")
        copy = dataclasses.replace(copy, database_url=url)
    return copy


def row_or_raise(db: sqlite_utils.Database, table: str, key_col: str, key, error: type[Exception], missing: str,
                 noun: str) -> dict:
    """The row of `table` whose `key_col` is `key`, or `error` naming the valid range ("runs are numbered 1..7")."""
    rows = list(db.query(f"SELECT * FROM {table} WHERE {key_col} = ?", [key]))
    if not rows:
        last = db.execute(f"SELECT max({key_col}) FROM {table}").fetchone()[0]
        known = f"{noun} are numbered 1..{last}" if last else f"no {noun[:-1]} has been recorded yet"
        raise error(f"{missing} ({known})")
    return rows[0]
