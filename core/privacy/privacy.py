"""Privacy: consent, data export, the right to be forgotten, retention and key rotation.

Where personal data lives (see `data_inventory`): raw user ids only in the
operational database; pseudonyms (HMAC-SHA256 of the id, key outside the
warehouse) in the warehouse and in model bundles; counts and operator names in
the ML metadata store. Every operation here says what it touched, records an
`operator_audit` row (target: a pseudonym, never a raw id; an erasure names its
request instead and redacts the user's earlier targets) and, for an erasure, an
`erasure_requests` row that holds counts only once done (while pending, whom
to erase: the raw id until the operational store is erased, then the pseudonym).
Erasure is resumable after a kill at any point (see `forget_user`).

Timestamps default to the service clock (`opsdb.clock_now`: the simulated clock
when a world runs), the same timeline as the registry and the serving log.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import shutil
from datetime import date, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from core.privacy import access
from core import faults
from core.store import locks, mlopsdb, opsdb
from core.training import registry
from core.serving import serving
from core.warehouse import warehouse
from core.training.artifacts import bundle_hash
from core.constants import TS_FORMAT
from core.errors import RetroError, UnknownUser, ValidationError
from core.filemodes import private_file
from core.training.models import load_model
from core.pseudonym import KEY_ENV, PSEUDONYM_HEX, pseudonym, pseudonym_key, pseudonymize
from core.secretstore import secrets_file
from core.settings import Settings

ERASED_KEY = ""                      # what replaces an erased user's pseudonym in a bundle's mapping.npz
PSEUDONYM_PATTERN = re.compile(rf"[0-9a-f]{{{PSEUDONYM_HEX}}}")
CF_BUNDLE_GLOB, RANKER_GLOB = "run-*", "ranker-run-*"
WAREHOUSE_USER_TABLES = ("fact_interaction", "quarantine", "dim_user")

EFFECTS = {   # (flag, new value) → what changes, where and when
    ("tracking", False): ["Storage, immediately: new behavioural events of the user are no longer stored "
                          "(ratings still are: they are the user's explicit input)."],
    ("tracking", True): ["Storage, immediately: behavioural events are stored again."],
    ("personalization", False): [
        "Serving, immediately: the user gets the Top 50 (path 'top50:no-consent').",
        "Training, at the next retrain: its ETL marks the user without personalization and the training matrix "
        "excludes their data; until then it is still in the production model (see pending effects)."],
    ("personalization", True): [
        "Serving: personalized again immediately if the production model knows the user, else after the next retrain.",
        "Training, at the next retrain: the user's data is included again."],
}


# ------------------------------------------------------------------ helpers
def _user_id(user_id) -> int:
    if isinstance(user_id, (bool, np.bool_)) or not isinstance(user_id, (int, np.integer)):
        raise ValidationError(f"user id must be an integer, got {user_id!r}")
    return int(user_id)


def _actor(actor) -> str:
    if not isinstance(actor, str) or not actor.strip():
        raise ValidationError("actor must be a non-empty text: the operator (or 'user:self', 'cli:<name>') acting")
    return actor.strip()


def _flag(value, name: str) -> bool:
    if isinstance(value, (bool, np.bool_)) or (isinstance(value, (int, np.integer)) and value in (0, 1)):
        return bool(value)
    raise ValidationError(f"{name} must be True or False, got {value!r}")


def _when(db, at: str | None) -> str:
    """`at` validated, else the service clock."""
    return mlopsdb.timestamp(at) if at is not None else opsdb.clock_now(db)


def _jsonable(value):
    """Plain JSON types for a nested structure of rows (NumPy scalars, datetimes, NaN → None)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return [_jsonable(v) for v in value.tolist()]
    if isinstance(value, (datetime, pd.Timestamp)):
        return value.strftime(TS_FORMAT)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def _rows(cursor) -> list[dict]:
    """A DB-API cursor's rows as dicts (SQLite and DuckDB)."""
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, r)) for r in cursor.fetchall()]


def _payload_user(payload: str) -> int | None:
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
    return int(number) if np.isfinite(number) and number == round(number) else None


def _rejected_for(db, user_id: int) -> list[dict]:
    rows = _rows(db.execute("SELECT reject_id, target, reason, payload, rejected_at FROM rejected_writes "
                            "ORDER BY reject_id"))
    return [r for r in rows if _payload_user(r["payload"]) == user_id]


def _user_id_tables(db) -> list[str]:
    """Every operational table with a `user_id` column (users first)."""
    names = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
    found = [n for n in names if any(c[1] == "user_id" for c in db.execute(f'PRAGMA table_info("{n}")'))]
    return sorted(found, key=lambda n: n != "users")


def _warehouse_user_tables(con) -> list[str]:
    return [r[0] for r in con.execute("SELECT DISTINCT table_name FROM information_schema.columns "
                                      "WHERE column_name = 'user_key' AND table_schema = 'main' ORDER BY 1").fetchall()]


def _bundle_dirs(settings: Settings, pattern: str) -> list[Path]:
    if not settings.models_dir.exists():
        return []
    return sorted(d for d in settings.models_dir.glob(pattern) if d.is_dir())


def _mapping_keys(directory: Path) -> tuple[np.ndarray, np.ndarray] | None:
    path = directory / "mapping.npz"
    if not path.exists():
        return None
    with np.load(path, allow_pickle=False) as m:
        return m["user_keys"].astype(str), m["movie_ids"]


def _registry_entries(settings: Settings, directory: Path) -> dict:
    """{'runs': [run ids], 'versions': [(version, stage)]} whose artifact_path is `directory`."""
    target = directory.resolve()
    out = {"runs": [], "versions": []}
    with mlopsdb.session(settings) as db:
        for run_id, path in db.execute("SELECT run_id, artifact_path FROM runs WHERE artifact_path IS NOT NULL"):
            if mlopsdb.artifact_dir(settings, path).resolve() == target:
                out["runs"].append(int(run_id))
        for version, stage, path in db.execute("SELECT version, stage, artifact_path FROM model_versions "
                                               "WHERE artifact_path IS NOT NULL"):
            if mlopsdb.artifact_dir(settings, path).resolve() == target:
                out["versions"].append((int(version), stage))
    return out


def _set_artifact_hashes(settings: Settings, hashes: dict[Path, str]) -> int:
    """Record new artifact hashes for the runs and model versions of each directory (one transaction).

    A version's `pending_hash` (announced before an erasure's file swap) is cleared: it is now the hash.
    """
    if not hashes:
        return 0
    targets = {d.resolve(): h for d, h in hashes.items()}
    changed = 0
    with mlopsdb.write_session(settings) as db:
        for table, pk in (("runs", "run_id"), ("model_versions", "version")):
            rows = db.execute(f"SELECT {pk}, artifact_path FROM {table} WHERE artifact_path IS NOT NULL").fetchall()
            for ident, path in rows:
                digest = targets.get(mlopsdb.artifact_dir(settings, path).resolve())
                if digest is not None:
                    db.execute(f"UPDATE {table} SET artifact_hash = ? WHERE {pk} = ?", [digest, ident])
                    changed += 1
        for version, path in db.execute("SELECT version, artifact_path FROM model_versions "
                                        "WHERE pending_hash IS NOT NULL").fetchall():
            if mlopsdb.artifact_dir(settings, path).resolve() in targets:
                db.execute("UPDATE model_versions SET pending_hash = NULL WHERE version = ?", [version])
    return changed


def _fsync(path: Path) -> None:
    """Flush a file's (or a directory's entries') bytes to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _replace_files(staging: Path, directory: Path) -> None:
    """Move every file written in `staging` over its namesake in `directory` (each rename is atomic).

    The files are flushed first; `mapping.npz` goes last, so while it still names a user, every
    other file may still be the old one (a killed erasure redoes the bundle from the start).
    """
    files = sorted(staging.iterdir(), key=lambda f: (f.name == "mapping.npz", f.name))
    for f in files:
        private_file(f)   # owner-only, like every file in the data folder
        _fsync(f)
    for f in files:
        os.replace(f, directory / f.name)
    _fsync(directory)
    staging.rmdir()


def _staging(directory: Path) -> Path:
    path = directory / ".privacy-staging"
    if path.exists():
        shutil.rmtree(path)
    path.mkdir()
    return path


# ------------------------------------------------------------------ consent
def set_consent(settings: Settings, user_id: int, *, tracking: bool | None = None,
                personalization: bool | None = None, actor: str, at: str | None = None) -> dict:
    """Change a user's consent flags (one transaction) and append the change to `consent_history`.

    Effects: storage immediately (the write API skips events without tracking
    consent; ratings are always stored), serving immediately (no personalization
    → Top 50, path 'top50:no-consent'), training at the next retrain (its ETL
    syncs the flag and the training matrix excludes the user) — see
    `pending_effects` for users whose data is still in the production model.
    Returns {'user_id', 'tracking', 'personalization', 'changed_at', 'effects'}
    (effects: one sentence per store touched, saying when).
    """
    uid = _user_id(user_id)
    actor = _actor(actor)
    if tracking is None and personalization is None:
        raise ValidationError("set_consent needs tracking=, personalization= or both (True or False)")
    flags = {name: _flag(value, name) for name, value in (("tracking", tracking), ("personalization", personalization))
             if value is not None}
    with opsdb.session(settings) as db:
        when = _when(db, at)
        with db.atomic():
            row = db.execute("SELECT consent_tracking, consent_personalization FROM users WHERE user_id = ?",
                             [uid]).fetchone()
            if row is None:
                raise UnknownUser(f"unknown user {uid}: no such user in the operational database")
            new = {"tracking": flags.get("tracking", bool(row[0])),
                   "personalization": flags.get("personalization", bool(row[1]))}
            db.execute("UPDATE users SET consent_tracking = ?, consent_personalization = ? WHERE user_id = ?",
                       [int(new["tracking"]), int(new["personalization"]), uid])
            db.execute("INSERT INTO consent_history(user_id, changed_at, tracking, personalization, actor) "
                       "VALUES (?, ?, ?, ?, ?)", [uid, when, int(new["tracking"]), int(new["personalization"]), actor])
    access.log_action(settings, actor, "consent", pseudonym(uid, pseudonym_key(settings)), "ok", when)
    effects = [sentence for name, value in flags.items() for sentence in EFFECTS[(name, value)]]
    return {"user_id": uid, **new, "changed_at": when, "effects": effects}


def consent(settings: Settings, user_id: int) -> dict:
    """Current flags and the full change history (oldest first)."""
    uid = _user_id(user_id)
    with opsdb.session(settings) as db:
        row = db.execute("SELECT consent_tracking, consent_personalization FROM users WHERE user_id = ?",
                         [uid]).fetchone()
        if row is None:
            raise UnknownUser(f"unknown user {uid}: no such user in the operational database")
        history = _rows(db.execute("SELECT changed_at, tracking, personalization, actor FROM consent_history "
                                   "WHERE user_id = ? ORDER BY changed_at, change_id", [uid]))
    for h in history:
        h["tracking"], h["personalization"] = bool(h["tracking"]), bool(h["personalization"])
    return {"user_id": uid, "tracking": bool(row[0]), "personalization": bool(row[1]), "history": history}


def pending_effects(settings: Settings) -> list[dict]:
    """Users who withdrew personalization consent but whose data is still in the production model.

    It stays there until the next retrain (serving already ignores it). The
    production bundle decides: its mapping still holds the user's pseudonym. That
    agrees with comparing the withdrawal (`changed_at`, the start of the latest
    run of 'personalization off' in consent_history) with the model's training
    time (registry `created_at`, when the retrain's ETL synced the flags), and
    stays right after a rollback to an older model or a training run without a
    fresh ETL; `withdrawn_after_training` reports that comparison. Raw user ids:
    this is for the operator page. Newest withdrawals first.
    """
    prod = registry.production(settings)
    if prod is None:
        return []
    trained_at = pd.Timestamp(prod["created_at"])
    directory = Path(prod["artifact_path"])
    try:
        trained_until = json.loads((directory / "bundle.json").read_text()).get("trained_until")
    except (OSError, ValueError):
        trained_until = None
    mapping = _mapping_keys(directory)
    in_model = set(mapping[0].tolist()) if mapping is not None else set()
    key = pseudonym_key(settings)
    with opsdb.session(settings) as db:
        withdrawn = [r[0] for r in db.execute("SELECT user_id FROM users WHERE consent_personalization = 0 "
                                              "ORDER BY user_id")]
        history: dict[int, list] = {}
        for uid, changed_at, pers in db.execute(
                "SELECT h.user_id, h.changed_at, h.personalization FROM consent_history h "
                "JOIN users u ON u.user_id = h.user_id WHERE u.consent_personalization = 0 "
                "ORDER BY h.user_id, h.changed_at, h.change_id"):
            history.setdefault(uid, []).append((changed_at, pers))
    out = []
    for uid in withdrawn:
        if pseudonym(uid, key) not in in_model:
            continue
        since = None   # start of the latest run of 'personalization = 0' entries
        for changed_at, pers in history.get(uid, []):
            since = (since or changed_at) if not pers else None
        out.append({"user_id": int(uid), "changed_at": since,
                    "withdrawn_after_training": None if since is None else bool(pd.Timestamp(since) >= trained_at),
                    "model_version": int(prod["version"]), "model_trained_at": prod["created_at"],
                    "trained_until": trained_until,
                    "effect": f"their data is still in model v{prod['version']} until the next retrain"})
    return sorted(out, key=lambda r: r["changed_at"] or "", reverse=True)


# ------------------------------------------------------------------ export
def export_user(settings: Settings, user_id: int, *, actor: str | None = None, at: str | None = None) -> dict:
    """Everything held about one user, as one JSON-serializable document (the right of access).

    Sections: profile, consent_history, ratings, rating_history, events,
    served_recommendations (with titles), explanations (of the latest personalized
    list, when a model is in production), rejected_writes (payloads naming the
    user), warehouse (rows under the user's pseudonym), models (bundles that hold
    a row for the user) and `stores`, a count per 'store.table' (as `held_counts`).
    """
    uid = _user_id(user_id)
    actor = _actor(actor) if actor is not None else access.cli_actor()
    key = pseudonym_key(settings)
    user_key = pseudonym(uid, key)
    with opsdb.session(settings) as db:
        when = _when(db, at)
        profile = _rows(db.execute("SELECT * FROM users WHERE user_id = ?", [uid]))
        if not profile:
            raise UnknownUser(f"unknown user {uid}: no such user in the operational database")
        titles = {m: t for m, t in db.execute("SELECT movie_id, title FROM movies")}
        q = lambda sql: _rows(db.execute(sql, [uid]))  # noqa: E731
        consent_rows = q("SELECT changed_at, tracking, personalization, actor FROM consent_history "
                         "WHERE user_id = ? ORDER BY changed_at, change_id")
        ratings = q("SELECT movie_id, rating, rated_at FROM ratings WHERE user_id = ? ORDER BY rated_at, movie_id")
        history = q("SELECT history_id, movie_id, rating, rated_at FROM rating_history WHERE user_id = ? "
                    "ORDER BY history_id")
        events = q("SELECT event_id, movie_id, kind, value, occurred_at FROM events WHERE user_id = ? ORDER BY seq")
        served = q("SELECT * FROM served_recommendations WHERE user_id = ? ORDER BY served_at DESC, serve_id DESC")
        rejected = _rejected_for(db, uid)
    for row in ratings + history + events:
        row["title"] = titles.get(row["movie_id"])
    for row in served:
        ids, scores = json.loads(row.pop("movie_ids")), json.loads(row.pop("scores"))
        row["items"] = [{"position": i + 1, "movie_id": m, "title": titles.get(m), "score": s}
                        for i, (m, s) in enumerate(zip(ids, scores))]
    for row in rejected:
        try:
            row["payload"] = json.loads(row["payload"])
        except ValueError:
            pass

    document = {
        "user_id": uid, "exported_at": when, "profile": profile[0], "consent_history": consent_rows,
        "ratings": ratings, "rating_history": history, "events": events, "served_recommendations": served,
        "explanations": _explanations(settings, uid, served), "rejected_writes": rejected,
        "warehouse": _warehouse_export(settings, user_key), "models": _models_export(settings, user_key),
    }
    ops_lists = {"users": profile, "consent_history": consent_rows, "ratings": ratings, "rating_history": history,
                 "events": events, "served_recommendations": served, "rejected_writes": rejected}
    document["stores"] = ({f"ops.{t}": len(rows) for t, rows in ops_lists.items()}
                          | {f"warehouse.{t}": document["warehouse"][t]["count"] for t in WAREHOUSE_USER_TABLES}
                          | {"models.bundles": len(document["models"])})
    access.log_action(settings, actor, "export", user_key, "ok", when)
    return _jsonable(document)


def _explanations(settings: Settings, uid: int, served: list[dict]) -> dict:
    from core.governance.explain import explain_many
    if registry.production(settings) is None:
        return {"status": "no model is in production: nothing personalized to explain", "items": []}
    latest = next((r for r in served if r["path"] == "model"), None)
    if latest is None:
        return {"status": "no personalized list was served to this user", "items": []}
    movie_ids = [i["movie_id"] for i in latest["items"]]
    try:
        return {"status": "ok", "serve_id": latest["serve_id"], "items": explain_many(settings, uid, movie_ids)}
    except RetroError as exc:
        return {"status": "error", "serve_id": latest["serve_id"], "error": str(exc), "items": []}


def _warehouse_export(settings: Settings, user_key: str) -> dict:
    note = ("the warehouse holds no raw user id: these rows are keyed by user_key, the user's pseudonym "
            "(HMAC-SHA256 of the id; the key is kept outside the warehouse)")
    out: dict = {"pseudonymized": True, "user_key": user_key, "note": note}
    if not settings.warehouse.exists():
        return out | {t: {"count": 0, "rows": []} for t in WAREHOUSE_USER_TABLES}
    with warehouse.session(settings) as con:
        for table in WAREHOUSE_USER_TABLES:
            rows = _rows(con.execute(f"SELECT * EXCLUDE (user_key) FROM {table} WHERE user_key = ?", [user_key]))
            out[table] = {"count": len(rows), "rows": rows}
    return out


def _models_export(settings: Settings, user_key: str) -> list[dict]:
    out = []
    for directory in _bundle_dirs(settings, CF_BUNDLE_GLOB):
        mapping = _mapping_keys(directory)
        if mapping is None:
            continue
        rows = np.flatnonzero(mapping[0] == user_key)
        if not len(rows):
            continue
        row = int(rows[0])
        ui = sp.load_npz(directory / "user_items.npz").tocsr()
        with np.load(directory / "model.npz", allow_pickle=False) as arrays:
            has_factors = bool(arrays["user_factors"][row].any()) if "user_factors" in arrays.files else False
        entries = _registry_entries(settings, directory)
        out.append({"bundle": directory.name, "row": row, "training_interactions": int(ui[row].nnz),
                    "learned_user_factors": has_factors,
                    "versions": [{"version": v, "stage": s} for v, s in entries["versions"]]})
    return out


def held_counts(settings: Settings, user_id: int) -> dict[str, int]:
    """Rows held about a user per 'store.table' (ops by raw id, warehouse by pseudonym, model bundles).

    A cheap read for the operator page (no audit row, unlike `export_user`);
    the keys are those of the export's `stores`.
    """
    uid = _user_id(user_id)
    user_key = pseudonym(uid, pseudonym_key(settings))
    with opsdb.session(settings) as db:
        counts = {f"ops.{t}": db.execute(f'SELECT count(*) FROM "{t}" WHERE user_id = ?', [uid]).fetchone()[0]
                  for t in _user_id_tables(db)}
        counts["ops.rejected_writes"] = len(_rejected_for(db, uid))
    for table in WAREHOUSE_USER_TABLES:
        counts[f"warehouse.{table}"] = 0
    if settings.warehouse.exists():
        with warehouse.session(settings) as con:
            for table in WAREHOUSE_USER_TABLES:
                counts[f"warehouse.{table}"] = int(con.execute(f"SELECT count(*) FROM {table} WHERE user_key = ?",
                                                               [user_key]).fetchone()[0])
    counts["models.bundles"] = sum(m is not None and bool((m[0] == user_key).any())
                                   for m in map(_mapping_keys, _bundle_dirs(settings, CF_BUNDLE_GLOB)))
    return {k: int(v) for k, v in counts.items()}


# ------------------------------------------------------------------ erasure
ERASURE_STEPS = ("opsdb", "warehouse", "bundles", "ranker", "audit")
# Every step boundary where a kill must leave serving working and the erasure resumable (see `faults`).
FAULT_POINTS = ("erasure:recorded", "erasure:opsdb-erased", "erasure:opsdb", "erasure:warehouse-erased",
                "erasure:warehouse", "erasure:bundle-staged", "erasure:bundle-swapped", "erasure:bundles",
                "erasure:ranker-staged", "erasure:ranker-swapped", "erasure:ranker", "erasure:audit-redacted",
                "erasure:audit")
REQUEST_COLUMNS = ("request_id", "requested_at", "actor", "state", "summary", "pending_user_id", "pending_user_key",
                   "steps_done", "pending_hashes")


@locks.exclusive(locks.ERASURE)
def forget_user(settings: Settings, user_id: int, *, actor: str, at: str | None = None) -> dict:
    """Erase a user everywhere (right to be forgotten); returns a summary of counts per store.

    Resumable: the request is recorded in `erasure_requests` (state 'received')
    before any store is touched, with whom to erase — the raw id until the
    operational store is done, the pseudonym until every store is; both are
    dropped when it completes, leaving counts only. Each step is recorded when
    done and is idempotent, so a request killed at any point is finished by the
    next `forget_user` call (for any user: pending requests go first, and a call
    for the user of a pending request returns that request's result) or by the
    start of any job that takes the store lock (`recovery.recover`).

    1. `opsdb` (one transaction, secure_delete on): the `users` row, whose foreign
       keys cascade to ratings, rating_history, events, served_recommendations and
       consent_history (verified: every table with a user_id column is left
       without a row for the user), and `rejected_writes` whose JSON payload names
       the user. The WAL is checkpointed so the deleted pages leave the WAL file.
    2. `warehouse` (one DuckDB transaction): every table with a `user_key` column
       (fact_interaction, quarantine, dim_user) loses the user's rows; the file
       swapped in is a rewrite (`warehouse.transaction(compact=True)`), since
       DuckDB keeps deleted rows' bytes in the file. Daily aggregates (counts,
       no key) are kept.
    3. `bundles`: every bundle `models/run-*/` whose mapping holds the pseudonym gets
       the user's factors zeroed (`drop_user`), their training-matrix row emptied
       and the key replaced by '' in mapping.npz.
    4. `ranker`: every ranker `ranker-run-*/` gets the context rows of its CF
       bundle's erased ('') rows reset.
       Each bundle or ranker is rewritten crash-safely: new files are written
       and flushed aside, their hash is announced (`model_versions.pending_hash`,
       which serving accepts too, and the request's `pending_hashes`), the files
       are renamed over the old ones (mapping.npz last) and the hash is
       registered in `runs` and `model_versions`. A resumed request registers
       the announced hash of every artifact whose swap completed.
    5. `audit`: `operator_audit` rows that targeted the pseudonym are redacted to
       'erased user (request #n)'; the erasure's own audit row names the request,
       not the pseudonym (which must appear nowhere afterwards). Serving caches
       are cleared.
    Not covered: a retrain running at the same moment may save a bundle built
    before step 2 — the store lock prevents it; a pending request also erases
    bundles saved after it was received.
    The request ends 'completed' with the summary, or 'failed' with the counts
    so far and the error class only (re-raised); a failed request stays pending
    and is retried like a killed one. Raises UnknownUser when nothing is held
    about the id and no request for it is pending.
    """
    uid = _user_id(user_id)
    actor = _actor(actor)
    user_key = pseudonym(uid, pseudonym_key(settings))
    resumed = _resume_pending(settings, at)
    if user_key in resumed:
        return resumed[user_key]
    with opsdb.session(settings) as db:
        when = _when(db, at)
        exists = db.execute("SELECT 1 FROM users WHERE user_id = ?", [uid]).fetchone() is not None
        leftovers = bool(_rejected_for(db, uid)) if not exists else False
    if not exists and not leftovers and not _has_traces(settings, user_key):
        raise UnknownUser(f"unknown user {uid}: nothing is held about this id in any store")
    with mlopsdb.session(settings) as db:
        request_id = int(db.conn.execute(
            "INSERT INTO erasure_requests(requested_at, state, actor, pending_user_id, pending_user_key, steps_done) "
            "VALUES (?, 'received', ?, ?, ?, '[]')", [when, actor, uid, user_key]).lastrowid)
    faults.point("erasure:recorded")
    return _carry_out(settings, _request(settings, request_id), when)


def resume_erasures(settings: Settings, at: str | None = None) -> list[int]:
    """Finish every pending erasure request (killed or failed earlier); returns their ids, oldest first.

    Called at the start of every job that takes the store lock (see `recovery`).
    Raises what a step raises; the request then stays pending.
    """
    if not settings.mlops_db.exists():
        return []
    return [r["request_id"] for r in _resume_pending(settings, at).values()]


def _resume_pending(settings: Settings, at: str | None) -> dict[str, dict]:
    """{pseudonym: result} of the pending requests, finished oldest first."""
    with mlopsdb.session(settings) as db:
        ids = [r[0] for r in db.execute("SELECT request_id FROM erasure_requests WHERE state <> 'completed' "
                                        "AND pending_user_key IS NOT NULL ORDER BY request_id")]
    if not ids:
        return {}
    with opsdb.session(settings) as db:
        when = _when(db, at)
    done = {}
    for request_id in ids:
        request = _request(settings, request_id)
        done[request["pending_user_key"]] = _carry_out(settings, request, when)
    return done


def _request(settings: Settings, request_id: int) -> dict:
    with mlopsdb.session(settings) as db:
        row = db.execute(f"SELECT {', '.join(REQUEST_COLUMNS)} FROM erasure_requests WHERE request_id = ?",
                         [request_id]).fetchone()
    return dict(zip(REQUEST_COLUMNS, row))


def _carry_out(settings: Settings, request: dict, when: str) -> dict:
    """Run the steps of a request not yet done, recording each; complete it (ids dropped) or mark it failed."""
    request_id, user_key = int(request["request_id"]), request["pending_user_key"]
    done = json.loads(request["steps_done"] or "[]")
    summary = {k: v for k, v in json.loads(request["summary"] or "{}").items() if k not in ("error", "stores_done")}
    try:
        _settle_hashes(settings, request_id)
        if "opsdb" not in done:
            uid = request["pending_user_id"]
            summary["ops"] = _erase_ops(settings, int(uid)) if uid is not None else {}
            faults.point("erasure:opsdb-erased")
            done = _record_step(settings, request_id, "opsdb", summary)
        if "warehouse" not in done:
            summary["warehouse"] = _erase_warehouse(settings, user_key)
            faults.point("erasure:warehouse-erased")
            done = _record_step(settings, request_id, "warehouse", summary)
        if "bundles" not in done:
            summary["models"] = _erase_bundles(settings, request_id, user_key)
            done = _record_step(settings, request_id, "bundles", summary)
        if "ranker" not in done:
            models = summary.setdefault("models", {"bundles": 0, "rows_erased": 0, "registry_hashes_updated": 0})
            rankers, hashes = _reset_rankers(settings, request_id)
            models["rankers"] = rankers
            models["registry_hashes_updated"] = models.get("registry_hashes_updated", 0) + hashes
            done = _record_step(settings, request_id, "ranker", summary)
        if "audit" not in done:
            summary["audit"] = {"targets_redacted": _redact_audit(settings, user_key, request_id)}
            faults.point("erasure:audit-redacted")
            done = _record_step(settings, request_id, "audit", summary)
        serving.clear_caches()
    except Exception as exc:
        failure = summary | {"error": type(exc).__name__, "stores_done": sorted(summary)}
        with mlopsdb.session(settings) as db:
            db.execute("UPDATE erasure_requests SET state = 'failed', summary = ? WHERE request_id = ?",
                       [json.dumps(failure, sort_keys=True), request_id])
        access.log_action(settings, request["actor"], "erase", f"erasure request #{request_id}", "failed", when)
        raise
    with mlopsdb.session(settings) as db:
        db.execute("UPDATE erasure_requests SET state = 'completed', completed_at = ?, summary = ?, "
                   "pending_user_id = NULL, pending_user_key = NULL, pending_hashes = NULL WHERE request_id = ?",
                   [when, json.dumps(summary, sort_keys=True), request_id])
    access.log_action(settings, request["actor"], "erase", f"erasure request #{request_id}", "ok", when)
    return {"request_id": request_id, "state": "completed", **summary}


def _record_step(settings: Settings, request_id: int, step: str, summary: dict) -> list[str]:
    """Mark `step` done with the counts so far; the raw id is dropped once the operational store is done."""
    with mlopsdb.write_session(settings) as db:
        done = json.loads(db.execute("SELECT steps_done FROM erasure_requests WHERE request_id = ?",
                                     [request_id]).fetchone()[0] or "[]")
        done = done + [step] if step not in done else done
        db.execute("UPDATE erasure_requests SET steps_done = ?, summary = ? WHERE request_id = ?",
                   [json.dumps(done), json.dumps(summary, sort_keys=True), request_id])
        if step == "opsdb":
            db.execute("UPDATE erasure_requests SET pending_user_id = NULL WHERE request_id = ?", [request_id])
    faults.point(f"erasure:{step}")
    return done


def _announce_hash(settings: Settings, request_id: int, directory: Path, digest: str) -> None:
    """Before a swap: the hash `directory` will have, in the request's journal and its versions' `pending_hash`."""
    target = directory.resolve()
    with mlopsdb.write_session(settings) as db:
        journal = json.loads(db.execute("SELECT pending_hashes FROM erasure_requests WHERE request_id = ?",
                                        [request_id]).fetchone()[0] or "{}")
        journal[str(target)] = digest
        db.execute("UPDATE erasure_requests SET pending_hashes = ? WHERE request_id = ?",
                   [json.dumps(journal, sort_keys=True), request_id])
        for version, path in db.execute("SELECT version, artifact_path FROM model_versions "
                                        "WHERE artifact_path IS NOT NULL").fetchall():
            if mlopsdb.artifact_dir(settings, path).resolve() == target:
                db.execute("UPDATE model_versions SET pending_hash = ? WHERE version = ?", [digest, version])


def _register_hash(settings: Settings, request_id: int, directory: Path, digest: str) -> int:
    """After a swap: the announced hash becomes the registered one (runs, model_versions); the journal drops it."""
    changed = _set_artifact_hashes(settings, {directory: digest})
    with mlopsdb.write_session(settings) as db:
        journal = json.loads(db.execute("SELECT pending_hashes FROM erasure_requests WHERE request_id = ?",
                                        [request_id]).fetchone()[0] or "{}")
        journal.pop(str(directory.resolve()), None)
        db.execute("UPDATE erasure_requests SET pending_hashes = ? WHERE request_id = ?",
                   [json.dumps(journal, sort_keys=True), request_id])
    return changed


def _artifact_hash(directory: Path, staging: Path | None = None) -> str:
    """A bundle's or ranker's hash; with `staging`, as it will be once the staged files replace theirs."""
    from core.training.artifacts import FILES
    from core.training.ranker import RANKER_FILES
    names = RANKER_FILES if (directory / "ranker.json").exists() else FILES
    h = hashlib.sha256()
    for name in names:
        source = staging / name if staging is not None and (staging / name).exists() else directory / name
        h.update(name.encode())
        h.update(source.read_bytes())
    return h.hexdigest()


def _settle_hashes(settings: Settings, request_id: int) -> None:
    """A resumed request: register the announced hash of every artifact whose swap completed.

    Others (killed before or during the swap) lose their pending hash: their step
    is not recorded as done, so it rewrites them again.
    """
    with mlopsdb.session(settings) as db:
        journal = json.loads(db.execute("SELECT pending_hashes FROM erasure_requests WHERE request_id = ?",
                                        [request_id]).fetchone()[0] or "{}")
    for path, digest in journal.items():
        directory = Path(path)
        try:
            actual = _artifact_hash(directory)
        except OSError:
            actual = None
        if actual == digest:
            _register_hash(settings, request_id, directory, digest)
            continue
        with mlopsdb.write_session(settings) as db:
            for version, vpath in db.execute("SELECT version, artifact_path FROM model_versions "
                                             "WHERE pending_hash IS NOT NULL").fetchall():
                if mlopsdb.artifact_dir(settings, vpath).resolve() == directory:
                    db.execute("UPDATE model_versions SET pending_hash = NULL WHERE version = ?", [version])
            journal_now = json.loads(db.execute("SELECT pending_hashes FROM erasure_requests WHERE request_id = ?",
                                                [request_id]).fetchone()[0] or "{}")
            journal_now.pop(path, None)
            db.execute("UPDATE erasure_requests SET pending_hashes = ? WHERE request_id = ?",
                       [json.dumps(journal_now, sort_keys=True), request_id])


def _swap(settings: Settings, request_id: int, directory: Path, staging: Path, kind: str) -> int:
    """Replace `directory`'s files by the staged ones so that a kill at any moment leaves it loadable and
    recoverable: announce the new hash, rename, register the hash. Returns registry rows updated."""
    digest = _artifact_hash(directory, staging)
    _announce_hash(settings, request_id, directory, digest)
    faults.point(f"erasure:{kind}-staged")
    _replace_files(staging, directory)
    faults.point(f"erasure:{kind}-swapped")
    return _register_hash(settings, request_id, directory, digest)


def _erase_bundles(settings: Settings, request_id: int, user_key: str) -> dict:
    bundles = rows_erased = registry_rows = 0
    for directory in _bundle_dirs(settings, CF_BUNDLE_GLOB):
        mapping = _mapping_keys(directory)
        if mapping is None:
            continue
        keys, movie_ids = mapping
        rows = np.flatnonzero(keys == user_key)
        if not len(rows):
            continue
        staging = _staging(directory)
        model = load_model(directory)
        if hasattr(model, "drop_user"):
            for row in rows:
                model.drop_user(int(row))
        model.save(staging)
        ui = sp.load_npz(directory / "user_items.npz").tocsr()
        for row in rows:
            ui.data[ui.indptr[row]:ui.indptr[row + 1]] = 0
        ui.eliminate_zeros()
        sp.save_npz(staging / "user_items.npz", ui)
        keys = keys.copy()
        keys[rows] = ERASED_KEY
        np.savez(staging / "mapping.npz", user_keys=keys.astype(str), movie_ids=movie_ids)
        registry_rows += _swap(settings, request_id, directory, staging, "bundle")
        bundles += 1
        rows_erased += len(rows)
    return {"bundles": bundles, "rows_erased": int(rows_erased), "registry_hashes_updated": registry_rows}


def _reset_rankers(settings: Settings, request_id: int) -> tuple[int, int]:
    """Reset every ranker's context rows that belong to erased ('') rows of its CF bundle and are not reset yet.

    Stateless, so a resumed request finds the rows of a CF bundle rewritten
    before the kill. Returns (rankers rewritten, registry rows updated).
    """
    from core.training.ranker import MAX_DAYS, Context
    with mlopsdb.session(settings) as db:
        cf_paths = {int(v): mlopsdb.artifact_dir(settings, p) for v, p in db.execute(
            "SELECT version, artifact_path FROM model_versions WHERE artifact_path IS NOT NULL")}
    rankers = registry_rows = 0
    for directory in _bundle_dirs(settings, RANKER_GLOB):
        try:
            cf_version = int(json.loads((directory / "ranker.json").read_text())["cf_version"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        mapping = _mapping_keys(cf_paths[cf_version]) if cf_version in cf_paths else None
        if mapping is None:
            continue
        ctx = Context.load(directory / "context.npz")
        rows = np.flatnonzero(mapping[0] == ERASED_KEY)
        rows = rows[rows < len(ctx.activity)]
        if not (ctx.user_genres[rows].any() or ctx.activity[rows].any()
                or (ctx.user_genre_days[rows] != MAX_DAYS).any()):
            continue
        ctx.user_genres[rows] = 0.0
        ctx.user_genre_days[rows] = MAX_DAYS
        ctx.activity[rows] = 0.0
        staging = _staging(directory)
        ctx.save(staging / "context.npz")
        registry_rows += _swap(settings, request_id, directory, staging, "ranker")
        rankers += 1
    return rankers, registry_rows


def _has_traces(settings: Settings, user_key: str) -> bool:
    if settings.warehouse.exists():
        with warehouse.session(settings) as con:
            for table in _warehouse_user_tables(con):
                if con.execute(f"SELECT count(*) FROM {table} WHERE user_key = ?", [user_key]).fetchone()[0]:
                    return True
    return any(m is not None and (m[0] == user_key).any()
               for m in map(_mapping_keys, _bundle_dirs(settings, CF_BUNDLE_GLOB)))


def _erase_ops(settings: Settings, uid: int) -> dict:
    with opsdb.session(settings) as db:
        db.execute("PRAGMA secure_delete = ON")   # freed pages are zeroed, not left readable in the file
        tables = _user_id_tables(db)
        count = lambda t: db.execute(f'SELECT count(*) FROM "{t}" WHERE user_id = ?', [uid]).fetchone()[0]  # noqa: E731
        with db.atomic():
            before = {t: count(t) for t in tables}
            rejected = [r["reject_id"] for r in _rejected_for(db, uid)]
            db.execute("DELETE FROM users WHERE user_id = ?", [uid])   # cascades to every child table
            db.conn.executemany("DELETE FROM rejected_writes WHERE reject_id = ?", [(r,) for r in rejected])
            left = {t: n for t in tables if (n := count(t))}
            if left or any(_payload_user(p) == uid for (p,) in db.execute("SELECT payload FROM rejected_writes")):
                raise RetroError(f"erasure incomplete: rows remain in {sorted(left) or ['rejected_writes']} "
                                 "(a table without ON DELETE CASCADE?); nothing was deleted")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return before | {"rejected_writes": len(rejected)}


def _erase_warehouse(settings: Settings, user_key: str) -> dict:
    if not settings.warehouse.exists():
        return {}
    with warehouse.transaction(settings, compact=True, purpose="erasure") as con:
        counts = {}
        for table in _warehouse_user_tables(con):
            counts[table] = int(con.execute(f"SELECT count(*) FROM {table} WHERE user_key = ?",
                                            [user_key]).fetchone()[0])
            con.execute(f"DELETE FROM {table} WHERE user_key = ?", [user_key])
    counts["file_compacted"] = True
    return counts




def _redact_audit(settings: Settings, user_key: str, request_id: int) -> int:
    with mlopsdb.session(settings) as db:
        db.execute("PRAGMA secure_delete = ON")
        n = db.conn.execute("UPDATE operator_audit SET target = ? WHERE target = ?",
                            [f"erased user (request #{request_id})", user_key]).rowcount
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return int(n)


# ------------------------------------------------------------------ retention
def _days(days) -> int:
    if isinstance(days, (bool, np.bool_)) or not isinstance(days, (int, np.integer)) or days < 1:
        raise ValidationError(f"retention days must be a positive integer, got {days!r}")
    return int(days)


def _cutoff(db, days: int) -> tuple[str, str]:
    clock = opsdb.clock_now(db)
    return clock, (pd.Timestamp(clock) - pd.Timedelta(days=days)).strftime(TS_FORMAT)


def retention_status(settings: Settings, days: int) -> dict:
    """What `retention(days)` would purge: behavioural events before clock − days, in both stores."""
    days = _days(days)
    with opsdb.session(settings) as db:
        clock, cutoff = _cutoff(db, days)
        ops_n, ops_total, ops_oldest = db.execute(
            "SELECT count(*) FILTER (WHERE occurred_at < ?), count(*), min(occurred_at) FROM events",
            [cutoff]).fetchone()
    wh_n = wh_total = 0
    wh_oldest = None
    if settings.warehouse.exists():
        with warehouse.session(settings) as con:
            wh_n, wh_total, wh_oldest = con.execute(
                "SELECT count(*) FILTER (WHERE occurred_at < ?), count(*), min(occurred_at) FROM fact_interaction "
                "WHERE kind <> 'rating'", [pd.Timestamp(cutoff).to_pydatetime()]).fetchone()
    return _jsonable({"days": days, "clock": clock, "cutoff": cutoff,
                      "ops_events_to_purge": int(ops_n), "ops_events": int(ops_total), "oldest_ops_event": ops_oldest,
                      "warehouse_events_to_purge": int(wh_n), "warehouse_events": int(wh_total),
                      "oldest_warehouse_event": wh_oldest})


@locks.exclusive("retention purge")
def retention(settings: Settings, days: int, *, actor: str, at: str | None = None) -> dict:
    """Delete behavioural events older than `days` days before the service clock.

    From the ops `events` table and from the warehouse's `fact_interaction`
    (every kind but 'rating': ratings are the user's explicit input and stay).
    Daily aggregates (counts only, no user key) are kept. Returns the counts.
    """
    days = _days(days)
    actor = _actor(actor)
    with opsdb.session(settings) as db:
        when = _when(db, at)
        clock, cutoff = _cutoff(db, days)
        db.execute("PRAGMA secure_delete = ON")
        with db.atomic():
            ops_n = db.conn.execute("DELETE FROM events WHERE occurred_at < ?", [cutoff]).rowcount
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    wh_n = 0
    if settings.warehouse.exists():
        with warehouse.session(settings) as con:
            wh_n = con.execute("SELECT count(*) FROM fact_interaction WHERE kind <> 'rating' AND occurred_at < ?",
                               [pd.Timestamp(cutoff).to_pydatetime()]).fetchone()[0]
        if wh_n:    # deleted and compacted in one swap
            with warehouse.transaction(settings, compact=True, purpose="retention purge") as con:
                wh_n = con.execute("DELETE FROM fact_interaction WHERE kind <> 'rating' AND occurred_at < ?",
                                   [pd.Timestamp(cutoff).to_pydatetime()]).fetchone()[0]
    access.log_action(settings, actor, "retention", f"events before {cutoff}", "ok", when)
    serving.clear_caches()
    return {"days": days, "clock": clock, "cutoff": cutoff, "ops_events_deleted": int(ops_n),
            "warehouse_events_deleted": int(wh_n)}


# ------------------------------------------------------------------ key rotation
def _unlinked(old_key: str, new_key: bytes) -> str:
    """New pseudonym for a key whose user id is unknown (not in the ops DB): still distinct, never linkable."""
    return hmac.new(new_key, b"unlinked:" + old_key.encode(), hashlib.sha256).hexdigest()[:PSEUDONYM_HEX]


@locks.exclusive("key rotation")
def rotate_key(settings: Settings, *, actor: str, at: str | None = None) -> dict:
    """Replace the pseudonymization key and re-key every store that holds pseudonyms.

    Steps: a new random key (32 bytes, hex) is first parked in secrets.toml as
    `[pseudonymization] next_key` (so an interrupted rotation can be finished by
    hand); old → new pseudonyms are computed for every user id the ops DB knows
    (users, and ids named in rejected-write payloads); the warehouse's `user_key`
    columns are updated through that mapping (registered as a DataFrame in
    DuckDB) in one transaction; every bundle's mapping.npz is rewritten and its
    hash updated in `runs` / `model_versions`; `operator_audit` targets follow;
    finally `key` is replaced and `next_key` dropped (file mode 0600).
    An interrupted rotation is resumed by calling it again: the parked
    `next_key` is reused and keys already under it are left as they are.
    A pseudonym whose id is unknown (no longer in the ops DB) gets
    HMAC(new key, 'unlinked:' + old pseudonym): it changes like every other key
    but can no longer be linked to anyone. Refused when $RETRO_PSEUDONYM_KEY is
    set: the key is then managed outside this folder. Run it while no ETL or
    retrain is running (they would write pseudonyms under the old key).
    """
    actor = _actor(actor)
    from core.pseudonym import STREAMLIT_SECRETS, key_source
    if key_source(settings) == "streamlit":
        raise RetroError(f"the pseudonymization key comes from {STREAMLIT_SECRETS}, so it is managed outside this "
                         "data folder; rotate it there")
    if os.environ.get(KEY_ENV):
        raise RetroError(f"the pseudonymization key comes from ${KEY_ENV}, so it is managed outside this data "
                         f"folder; rotate it there (or unset ${KEY_ENV} to let the platform manage "
                         f"{secrets_file(settings)})")
    old_key = pseudonym_key(settings)     # creates the key file on first use
    data = access.read_secrets(settings)
    section = data.setdefault("pseudonymization", {})
    new_hex = section.get("next_key") or secrets.token_hex(32)   # a parked key: resume an interrupted rotation
    new_key = new_hex.encode()
    section["next_key"] = new_hex
    access.write_secrets(settings, data)

    with opsdb.session(settings) as db:
        when = _when(db, at)
        ids = {r[0] for r in db.execute("SELECT user_id FROM users")}
        ids |= {u for (p,) in db.execute("SELECT payload FROM rejected_writes") if (u := _payload_user(p)) is not None}
    ids = sorted(ids)
    fresh = pseudonymize(ids, new_key) if ids else []
    known = dict(zip(pseudonymize(ids, old_key), fresh)) if ids else {}
    known |= {k: k for k in fresh}         # already under the new key (a resumed rotation): kept

    def new_for(keys) -> dict:
        """old → new for every key that changes (known ids, else an unlinked key; '' and new keys stay)."""
        table = {k: known.get(k) or _unlinked(k, new_key) for k in keys if k and k != ERASED_KEY}
        return {old: new for old, new in table.items() if old != new}

    # Stage the bundles' new mappings first (nothing visible changes yet).
    staged: list[tuple[Path, Path]] = []
    unlinked = set()
    for directory in _bundle_dirs(settings, CF_BUNDLE_GLOB):
        mapping = _mapping_keys(directory)
        if mapping is None:
            continue
        keys, movie_ids = mapping
        table = new_for(set(keys.tolist()))
        unlinked |= {k for k in table if k not in known}
        staging = _staging(directory)
        rekeyed_keys = np.array([table.get(k, k) for k in keys.tolist()]).astype(str)
        np.savez(staging / "mapping.npz", user_keys=rekeyed_keys, movie_ids=movie_ids)
        staged.append((staging, directory))

    rekeyed: dict[str, int] = {}
    compacted = False
    try:
        if settings.warehouse.exists():
            # Re-keyed and rewritten in one swap: the old pseudonyms' bytes leave the file too.
            with warehouse.transaction(settings, compact=True, purpose="key rotation") as con:
                tables = _warehouse_user_tables(con)
                present = set()
                for t in tables:
                    present |= {k for (k,) in con.execute(f"SELECT DISTINCT user_key FROM {t} "
                                                          "WHERE user_key IS NOT NULL").fetchall()}
                table = new_for(present)
                unlinked |= {k for k in table if k not in known}
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
            compacted = True
    except BaseException:
        for staging, _ in staged:
            shutil.rmtree(staging, ignore_errors=True)
        raise

    hashes = {}
    for staging, directory in staged:
        _replace_files(staging, directory)
        hashes[directory] = bundle_hash(directory)
    _set_artifact_hashes(settings, hashes)

    with mlopsdb.session(settings) as db:
        targets = [t for (t,) in db.execute("SELECT DISTINCT target FROM operator_audit WHERE target IS NOT NULL")
                   if PSEUDONYM_PATTERN.fullmatch(t)]
        audit_map = new_for(targets)
        db.execute("PRAGMA secure_delete = ON")
        with db.atomic():
            for old, new in audit_map.items():
                db.execute("UPDATE operator_audit SET target = ? WHERE target = ?", [new, old])
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    data = access.read_secrets(settings)
    section = data.setdefault("pseudonymization", {})
    section["key"] = new_hex
    section.pop("next_key", None)
    access.write_secrets(settings, data)
    serving.clear_caches()
    access.log_action(settings, actor, "rotate-key", None, "ok", when)
    return {"warehouse_rows_rekeyed": rekeyed, "bundles_rekeyed": len(staged), "users_rekeyed": len(ids),
            "unlinked_keys": len(unlinked), "audit_targets_rekeyed": len(audit_map),
            "warehouse_compacted": compacted}


# ------------------------------------------------------------------ logs and inventory
def request_log(settings: Settings) -> pd.DataFrame:
    """`erasure_requests`, newest first (summaries hold counts per store, never ids)."""
    with mlopsdb.session(settings) as db:
        rows = db.execute("SELECT request_id, requested_at, completed_at, state, actor, summary "
                          "FROM erasure_requests ORDER BY request_id DESC").fetchall()
    return pd.DataFrame(rows, columns=["request_id", "requested_at", "completed_at", "state", "actor", "summary"])


def audit_log(settings: Settings) -> pd.DataFrame:
    """`operator_audit`, newest first: who did what, when, to which pseudonym, with what outcome."""
    return access.audit_log(settings)


INVENTORY_FIELDS = ("store", "table", "fields", "identifier", "protection", "on_erasure")


def data_inventory() -> list[dict]:
    """Per store and table: which personal fields exist, how they are protected, what an erasure does."""
    ops, wh, ml = "ops (retro.db)", "warehouse (warehouse.duckdb)", "mlops (mlops.db)"
    raw, pseudo = "raw user id", "HMAC-SHA256 pseudonym (20 hex digits); the key is kept outside the warehouse"
    ops_only, cascade = "operational store only", "deleted (foreign-key cascade from users)"
    rows = [
        (ops, "users", "user_id, created_at, consent flags", raw,
         ops_only + "; consent enforced on write (events) and serve", "deleted"),
        (ops, "ratings", "user_id, movie, rating, time", raw, ops_only, cascade),
        (ops, "rating_history", "user_id, movie, rating, time", raw, ops_only, cascade),
        (ops, "events", "user_id, movie, behaviour, time", raw,
         ops_only + "; not stored without tracking consent; retention purge", cascade),
        (ops, "served_recommendations", "user_id, lists shown (the served log)", raw, ops_only, cascade),
        (ops, "consent_history", "user_id, consent changes, actor", raw, ops_only, cascade),
        (ops, "rejected_writes", "payload JSON with a user_id", raw, ops_only, "rows whose payload names the user deleted"),
        (wh, "dim_user", "user_key, created_at, personalization flag", pseudo, "no raw id in the warehouse", "deleted"),
        (wh, "fact_interaction", "user_key, movie, signal, time", pseudo, "no raw id; retention purge of events",
         "deleted"),
        (wh, "quarantine", "user_key, the refused row", pseudo, "no raw id", "deleted"),
        (wh, "daily_aggregates", "none (counts per day and kind)", "aggregate", "no user key", "kept"),
        ("models/run-*", "mapping.npz, model.npz, user_items.npz", "user_key per row, learned factors, training row",
         pseudo, "bundle hash recorded in the registry", "key blanked, factors and row zeroed, hash updated"),
        ("models/ranker-run-*", "context.npz", "genre profile, recency, activity per bundle row",
         "aligned to the CF bundle's rows", "hash recorded in the registry", "rows reset, hash updated"),
        (ml, "all tables", "none: models, metrics, jobs; erasure requests hold counts only (a pending one: the "
         "id, then the pseudonym, until it completes)", "no personal data",
         "operator_audit targets are pseudonyms, never raw ids", "the user's audit targets redacted"),
        ("secrets.toml", "[pseudonymization] key, [operators] token hashes", "the pseudonym key; PBKDF2 hashes",
         "secret", "git-ignored data folder, file mode 0600 (or the key in $RETRO_PSEUDONYM_KEY)",
         "kept; rotate_key replaces the key"),
        ("world.npz", "latent tastes of the simulated humans", "simulation ground truth, not service data", raw,
         "git-ignored data folder", "not touched (simulation only)"),
    ]
    return [dict(zip(INVENTORY_FIELDS, r)) for r in rows]
