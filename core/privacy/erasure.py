"""The right to be forgotten: a resumable erasure request that calls each store's own `erase_user` in order.

Owns `erasure_requests`: a request holds counts only once done (while pending,
whom to erase: the raw id until the operational store is erased, then the
pseudonym), the steps done so far and the hashes of the artifacts it is
rewriting. Erasure is resumable after a kill at any point (see `forget_user`).
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from core import faults
from core.errors import UnknownUser
from core.privacy import access, common
from core.pseudonym import pseudonym, pseudonym_key
from core.serving import serving
from core.settings import Settings
from core.store import locks, mlopsdb, opsdb
from core.ads import pipeline as ads_pipeline
from core.training import artifacts, churn_pipeline, registry
from core.warehouse import lake, warehouse

ERASURE_STEPS = ("opsdb", "warehouse", "bundles", "ranker", "churn", "ads", "audit")
# Every step boundary where a kill must leave serving working and the erasure resumable (see `faults`).
FAULT_POINTS = ("erasure:recorded", "erasure:opsdb-erased", "erasure:opsdb", "erasure:warehouse-erased",
                "erasure:warehouse", "erasure:bundle-staged", "erasure:bundle-swapped", "erasure:bundles",
                "erasure:ranker-staged", "erasure:ranker-swapped", "erasure:ranker", "erasure:churn-erased",
                "erasure:churn", "erasure:ads-erased", "erasure:ads", "erasure:audit-redacted", "erasure:audit")
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

    1. `opsdb` (`opsdb.erase_user`, one transaction, secure_delete on): the
       `users` row, whose foreign keys cascade to ratings, rating_history,
       events, served_recommendations, ad_impressions and consent_history (verified: every table
       with a user_id column is left without a row for the user), and
       `rejected_writes` whose JSON payload names the user. The WAL is
       checkpointed so the deleted pages leave the WAL file.
    2. `warehouse` (`warehouse.erase_user`, one DuckDB transaction): every table
       with a `user_key` column (fact_interaction, fact_served, fact_ad_impression, fact_ad_click, quarantine,
       dim_user)
       loses the user's rows; the file swapped in is a rewrite, since DuckDB keeps deleted
       rows' bytes in the file. Daily aggregates (counts, no key) are kept. When a
       Parquet lake exists (the Spark engine, `lake.erase_user`), the same step
       rewrites the fact, fact_served, ad fact and quarantine files that hold the user and
       writes a dim_user snapshot without it (idempotent, like the DuckDB step).
    3. `bundles` (`artifacts.erase_user`): every CF bundle whose mapping holds
       the pseudonym gets the user's factors zeroed, their training-matrix row
       emptied and the key replaced by '' in its mapping.
    4. `ranker` (`artifacts.reset_erased_ranker_rows`): every ranker gets the
       context rows of its CF bundle's erased ('') rows reset.
       Each bundle or ranker is rewritten crash-safely: new files are written
       and flushed aside, their hash is announced (`model_versions.pending_hash`,
       which serving accepts too, and the request's `pending_hashes`), the files
       are renamed over the old ones (the mapping last) and the hash is
       registered in `runs` and `model_versions`. A resumed request registers
       the announced hash of every artifact whose swap completed.
    5. `churn` (`churn_pipeline.erase_user`): the churn scores stored under the
       pseudonym (`churn_predictions`, secure_delete, WAL checkpointed) and the
       user's rows in every churn model's training set (each rewritten whole; the
       model files and their hash are untouched, so it still loads and scores).
       Idempotent: a resumed request finds nothing left.
    6. `ads` (`core.ads.pipeline.erase_user`): the user's rows in every ads model's
       training set (rewritten whole; the model files and their hash are untouched).
       Idempotent. (The ads impressions themselves go with steps 1 and 2.)
    7. `audit` (`access.erase_user`): `operator_audit` rows that targeted the
       pseudonym are redacted to 'erased user (request #n)'; the erasure's own
       audit row names the request, not the pseudonym (which must appear nowhere
       afterwards). Serving caches are cleared.
    Not covered: a retrain running at the same moment may save a bundle built
    before step 2 — the store lock prevents it; a pending request also erases
    bundles saved after it was received.
    The request ends 'completed' with the summary, or 'failed' with the counts
    so far and the error class only (re-raised); a failed request stays pending
    and is retried like a killed one. Raises UnknownUser when nothing is held
    about the id and no request for it is pending.
    """
    uid = common.user_id(user_id)
    actor = common.actor(actor)
    user_key = pseudonym(uid, pseudonym_key(settings))
    resumed = _resume_pending(settings, at)
    if user_key in resumed:
        return resumed[user_key]
    with opsdb.session(settings) as db:
        when = common.when(db, at)
        exists = opsdb.user_exists(db, uid)
        leftovers = bool(opsdb.rejected_for(db, uid)) if not exists else False
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
    if not mlopsdb.exists(settings):
        return []
    return [r["request_id"] for r in _resume_pending(settings, at).values()]


def request_log(settings: Settings) -> pd.DataFrame:
    """`erasure_requests`, newest first (summaries hold counts per store, never ids)."""
    with mlopsdb.session(settings) as db:
        rows = db.execute("SELECT request_id, requested_at, completed_at, state, actor, summary "
                          "FROM erasure_requests ORDER BY request_id DESC").fetchall()
    return pd.DataFrame(rows, columns=["request_id", "requested_at", "completed_at", "state", "actor", "summary"])


def _resume_pending(settings: Settings, at: str | None) -> dict[str, dict]:
    """{pseudonym: result} of the pending requests, finished oldest first."""
    with mlopsdb.session(settings) as db:
        ids = [r[0] for r in db.execute("SELECT request_id FROM erasure_requests WHERE state <> 'completed' "
                                        "AND pending_user_key IS NOT NULL ORDER BY request_id")]
    if not ids:
        return {}
    with opsdb.session(settings) as db:
        when = common.when(db, at)
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
            summary["warehouse"] = warehouse.erase_user(settings, user_key)
            if lake.exists(settings):      # the Spark engine's warehouse: partitions holding the user rewritten
                summary["lake"] = lake.erase_user(settings, user_key)
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
        if "churn" not in done:
            summary["churn"] = churn_pipeline.erase_user(settings, user_key)
            faults.point("erasure:churn-erased")
            done = _record_step(settings, request_id, "churn", summary)
        if "ads" not in done:
            summary["ads"] = {"training_rows_erased": ads_pipeline.erase_user(settings, user_key)}
            faults.point("erasure:ads-erased")
            done = _record_step(settings, request_id, "ads", summary)
        if "audit" not in done:
            redacted = access.erase_user(settings, user_key, f"erased user (request #{request_id})")
            summary["audit"] = {"targets_redacted": redacted}
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


def _erase_ops(settings: Settings, uid: int) -> dict:
    with opsdb.session(settings) as db:
        return opsdb.erase_user(db, uid)


def _has_traces(settings: Settings, user_key: str) -> bool:
    """Anything left under the pseudonym (an id no longer in the operational store)?"""
    return (warehouse.holds_user(settings, user_key) or (lake.exists(settings) and lake.holds_user(settings, user_key))
            or artifacts.bundles_holding(settings, user_key) > 0
            or any(churn_pipeline.held_counts(settings, user_key).values()))


def _erase_bundles(settings: Settings, request_id: int, user_key: str) -> dict:
    return artifacts.erase_user(settings, user_key,
                                lambda directory, staging: _swap(settings, request_id, directory, staging, "bundle"))


def _reset_rankers(settings: Settings, request_id: int) -> tuple[int, int]:
    """(rankers rewritten, registry rows updated): the context rows of erased CF rows, reset."""
    return artifacts.reset_erased_ranker_rows(
        settings, registry.artifact_dirs(settings),
        lambda directory, staging: _swap(settings, request_id, directory, staging, "ranker"))


# ------------------------------------------------------------------ crash-safe artifact swaps
def _set_artifact_hashes(settings: Settings, hashes: dict[Path, str]) -> int:
    """Register new artifact hashes (runs and model versions, one transaction); their pending hash is cleared."""
    return registry.set_artifact_hashes(settings, hashes)


def _journal(db, request_id: int) -> dict:
    return json.loads(db.execute("SELECT pending_hashes FROM erasure_requests WHERE request_id = ?",
                                 [request_id]).fetchone()[0] or "{}")


def _set_journal(db, request_id: int, journal: dict) -> None:
    db.execute("UPDATE erasure_requests SET pending_hashes = ? WHERE request_id = ?",
               [json.dumps(journal, sort_keys=True), request_id])


def _announce_hash(settings: Settings, request_id: int, directory: Path, digest: str) -> None:
    """Before a swap: the hash `directory` will have, in the request's journal and its versions' `pending_hash`."""
    with mlopsdb.write_session(settings) as db:
        journal = _journal(db, request_id)
        journal[str(directory.resolve())] = digest
        _set_journal(db, request_id, journal)
        registry.announce_pending_hash(db, settings, directory, digest)


def _register_hash(settings: Settings, request_id: int, directory: Path, digest: str) -> int:
    """After a swap: the announced hash becomes the registered one (runs, model_versions); the journal drops it."""
    changed = _set_artifact_hashes(settings, {directory: digest})
    with mlopsdb.write_session(settings) as db:
        journal = _journal(db, request_id)
        journal.pop(str(directory.resolve()), None)
        _set_journal(db, request_id, journal)
    return changed


def _settle_hashes(settings: Settings, request_id: int) -> None:
    """A resumed request: register the announced hash of every artifact whose swap completed.

    Others (killed before or during the swap) lose their pending hash: their step
    is not recorded as done, so it rewrites them again.
    """
    with mlopsdb.session(settings) as db:
        journal = _journal(db, request_id)
    for path, digest in journal.items():
        directory = Path(path)
        try:
            actual = artifacts.staged_hash(directory)
        except OSError:
            actual = None
        if actual == digest:
            _register_hash(settings, request_id, directory, digest)
            continue
        with mlopsdb.write_session(settings) as db:
            registry.clear_pending_hash(db, settings, directory)
            journal_now = _journal(db, request_id)
            journal_now.pop(path, None)
            _set_journal(db, request_id, journal_now)


def _swap(settings: Settings, request_id: int, directory: Path, staging: Path, kind: str) -> int:
    """Replace `directory`'s files by the staged ones so that a kill at any moment leaves it loadable and
    recoverable: announce the new hash, rename, register the hash. Returns registry rows updated."""
    digest = artifacts.staged_hash(directory, staging)
    _announce_hash(settings, request_id, directory, digest)
    faults.point(f"erasure:{kind}-staged")
    artifacts.replace_staged(staging, directory)
    faults.point(f"erasure:{kind}-swapped")
    return _register_hash(settings, request_id, directory, digest)
