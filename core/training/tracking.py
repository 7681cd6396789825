"""Experiment tracking: every training run and pipeline job, with what it needs to be reproduced.

A run records the model kind, hyper-parameters, seed, data version, code
version (git commit), metrics next to the baselines evaluated on the same
split, seconds per stage and the artifact's sha256. A job is one execution of
the retraining pipeline (it may hold several runs). Everything lives in the
ML metadata store (`mlopsdb`); timestamps are UTC 'YYYY-MM-DDTHH:MM:SS' and
every write takes an explicit `at` because the platform runs a simulated clock.
"""
from __future__ import annotations

import hashlib
import math
import subprocess
from pathlib import Path
from typing import Any

import pandas as pd

from core.store import mlopsdb
from core.errors import RetroError, ValidationError
from core.store.mlopsdb import dumps, is_number, loads, timestamp
from core.settings import PROJECT_ROOT, Settings

UNKNOWN_CODE_VERSION = "unknown"
RUN_JSON_FIELDS = ("params", "metrics", "baselines", "timings")
RUN_COLUMNS = ["run_id", "model_kind", "status", "started_at", "finished_at", "duration_s", "data_version",
               "seed", "code_version", "job_id", "artifact_hash", "error"]
JOB_COLUMNS = ["job_id", "kind", "trigger", "status", "stage", "started_at", "finished_at", "error", "result"]


class UnknownRun(RetroError):
    """A run id that is not in the experiment tracker."""


class UnknownJob(RetroError):
    """A job id that is not in the pipeline job log."""


class RunNotRunning(ValidationError):
    """A run or job that already finished or failed cannot be finished or failed again."""


# --- reproducibility helpers -------------------------------------------------

def code_version(root: str | Path | None = None, timeout: float = 3.0) -> str:
    """Git commit of `root` (default: the project), '+dirty' if tracked files changed, else 'unknown'.

    Returns 40 hex characters, optionally followed by '+dirty'. Never raises:
    no git binary, no repository, no commit yet or a slow git all give 'unknown'.
    """
    cwd = str(Path(root) if root is not None else PROJECT_ROOT)

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                              timeout=timeout, check=True).stdout.strip()

    try:
        commit = git("rev-parse", "--verify", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError, ValueError):
        return UNKNOWN_CODE_VERSION
    if len(commit) != 40 or any(c not in "0123456789abcdef" for c in commit):
        return UNKNOWN_CODE_VERSION
    return commit + ("+dirty" if dirty else "")


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --- runs --------------------------------------------------------------------

def start_run(settings: Settings, model_kind: str, params: dict, seed: int | None, data_version: str | None,
              job_id: int | None = None, at: str | None = None) -> int:
    """Record a run as 'running' (with the current code version) and return its id."""
    if not model_kind or not str(model_kind).strip():
        raise ValidationError("model_kind must be a non-empty name such as 'als' or 'bpr'")
    started = timestamp(at, settings)
    version = code_version()
    with mlopsdb.session(settings) as db:
        if job_id is not None:
            _job_row(db, job_id)
        with db.atomic():
            db["runs"].insert({
                "model_kind": model_kind, "started_at": started, "status": "running",
                "params": dumps(params or {}), "seed": seed, "data_version": data_version,
                "code_version": version, "job_id": job_id,
            })
            return db.execute("SELECT last_insert_rowid()").fetchone()[0]


def finish_run(settings: Settings, run_id: int, metrics: dict, baselines: dict | None, timings: dict | None,
               artifact_path: str | Path | None, artifact_hash: str | None, at: str | None = None) -> None:
    """Mark a running run 'finished' with its metrics, baseline metrics, stage timings and artifact."""
    finished = timestamp(at, settings)
    with mlopsdb.write_session(settings) as db:
        _require_running(db, run_id)
        db["runs"].update(run_id, {
            "status": "finished", "finished_at": finished, "metrics": dumps(metrics or {}),
            "baselines": dumps(baselines or {}), "timings": dumps(timings or {}),
            "artifact_path": None if artifact_path is None else mlopsdb.stored_artifact_path(settings, artifact_path),
            "artifact_hash": artifact_hash,
        })


def fail_run(settings: Settings, run_id: int, error: str, at: str | None = None) -> None:
    """Mark a running run 'failed', keeping the error text."""
    finished = timestamp(at, settings)
    with mlopsdb.write_session(settings) as db:
        _require_running(db, run_id)
        db["runs"].update(run_id, {"status": "failed", "finished_at": finished, "error": str(error)})


def get_run(settings: Settings, run_id: int) -> dict:
    """One run as a dict, JSON fields (params, metrics, baselines, timings) decoded."""
    with mlopsdb.session(settings) as db:
        return mlopsdb.resolve_artifact(settings, _decode_run(_run_row(db, run_id)))


def list_runs(settings: Settings, limit: int = 50) -> pd.DataFrame:
    """Newest runs first, one column per metric (e.g. 'ndcg@10') and per parameter ('param.factors').

    `engine` is the engine that trained the run (`embedded` or `spark`). `duration_s` is the sum of the recorded stage timings (real seconds, unlike
    the simulated-clock timestamps), missing (NaN) until the run finishes.
    """
    with mlopsdb.session(settings) as db:
        rows = list(db.query("SELECT * FROM runs ORDER BY run_id DESC LIMIT ?", [int(limit)]))
    records = []
    for row in rows:
        run = _decode_run(row)
        record = mlopsdb.resolve_artifact(settings, {c: run.get(c) for c in RUN_COLUMNS if c != "duration_s"})
        timings = run.get("timings") or {}
        numeric = [v for v in timings.values() if is_number(v)]
        record["duration_s"] = float(sum(numeric)) if numeric else None
        flatten_metrics(record, run.get("metrics"), RUN_COLUMNS)
        # The engine that trained it (issue 15); runs recorded before there was a choice were embedded.
        record["engine"] = (run.get("params") or {}).get("engine", "embedded")
        for name, value in (run.get("params") or {}).items():
            record[f"param.{name}"] = value if is_number(value) or isinstance(value, (str, bool)) else dumps(value)
        records.append(record)
    frame = pd.DataFrame.from_records(records)
    if frame.empty:
        return pd.DataFrame(columns=RUN_COLUMNS)
    rest = [c for c in frame.columns if c not in RUN_COLUMNS]
    return frame[RUN_COLUMNS + rest]


def compare_runs(settings: Settings, a: int, b: int) -> pd.DataFrame:
    """Numeric metrics of runs `a` and `b` side by side.

    Columns: metric, a, b, delta = b − a, rel_delta = (b − a) / |a| (NaN when a
    is 0 or either side is missing). One row per metric in either run, sorted by name.
    """
    run_a, run_b = get_run(settings, a), get_run(settings, b)
    ma = {k: v for k, v in (run_a.get("metrics") or {}).items() if is_number(v)}
    mb = {k: v for k, v in (run_b.get("metrics") or {}).items() if is_number(v)}
    rows = []
    for name in sorted(set(ma) | set(mb)):
        va, vb = float(ma.get(name, math.nan)), float(mb.get(name, math.nan))
        delta = vb - va
        rel = delta / abs(va) if va != 0.0 and not math.isnan(va) else math.nan
        rows.append({"metric": name, "a": va, "b": vb, "delta": delta, "rel_delta": rel})
    return pd.DataFrame(rows, columns=["metric", "a", "b", "delta", "rel_delta"])


# --- jobs --------------------------------------------------------------------

def start_job(settings: Settings, kind: str, trigger: str, at: str | None = None) -> int:
    """Record a pipeline job (e.g. kind 'retrain', trigger 'manual'/'scheduled'/'drift-alert'/'cli')."""
    for name, value in (("kind", kind), ("trigger", trigger)):
        if not value or not str(value).strip():
            raise ValidationError(f"job {name} must be a non-empty name")
    started = timestamp(at, settings)
    with mlopsdb.session(settings) as db:
        with db.atomic():
            db["jobs"].insert({"kind": kind, "trigger": trigger, "started_at": started, "status": "running"})
            return db.execute("SELECT last_insert_rowid()").fetchone()[0]


def update_job(settings: Settings, job_id: int, stage: str) -> None:
    """Record the stage a running job has reached (shown while it runs, kept if it fails)."""
    with mlopsdb.write_session(settings) as db:
        _require_running(db, job_id, table="jobs")
        db["jobs"].update(job_id, {"stage": stage})


def finish_job(settings: Settings, job_id: int, result: dict, at: str | None = None) -> None:
    """Mark a running job 'finished' with its result (JSON object)."""
    finished = timestamp(at, settings)
    with mlopsdb.write_session(settings) as db:
        _require_running(db, job_id, table="jobs")
        db["jobs"].update(job_id, {"status": "finished", "finished_at": finished, "result": dumps(result or {})})


def fail_job(settings: Settings, job_id: int, error: str, at: str | None = None) -> None:
    """Mark a running job 'failed', keeping the error and the last stage reached."""
    finished = timestamp(at, settings)
    with mlopsdb.write_session(settings) as db:
        _require_running(db, job_id, table="jobs")
        db["jobs"].update(job_id, {"status": "failed", "finished_at": finished, "error": str(error)})


def get_job(settings: Settings, job_id: int) -> dict:
    """One job as a dict, `result` decoded."""
    with mlopsdb.session(settings) as db:
        job = _job_row(db, job_id)
    job["result"] = loads(job["result"])
    return job


def list_jobs(settings: Settings, limit: int = 20) -> pd.DataFrame:
    """Newest jobs first; `result` stays JSON text (one column, displayable as is)."""
    with mlopsdb.session(settings) as db:
        rows = list(db.query(f"SELECT {', '.join(JOB_COLUMNS)} FROM jobs ORDER BY job_id DESC LIMIT ?", [int(limit)]))
    return pd.DataFrame(rows, columns=JOB_COLUMNS)


def last_gate_decision(settings: Settings) -> dict | None:
    """The newest finished retrain job's gate decision: {job_id, version, promoted, trigger, at, gate}, or None."""
    with mlopsdb.session(settings) as db:
        row = db.execute("SELECT job_id, finished_at, result FROM jobs WHERE kind = 'retrain' AND status = 'finished' "
                         "ORDER BY job_id DESC LIMIT 1").fetchone()
    if row is None:
        return None
    result = loads(row[2]) or {}
    return {"job_id": row[0], "at": row[1], "version": result.get("version"), "promoted": result.get("promoted"),
            "trigger": result.get("trigger"), "gate": result.get("gate") or {}}


def annotate_job(settings: Settings, job_id: int, key: str, value) -> None:
    """Add one field to a finished job's result (e.g. the simulated world's truth about its gate decision,
    computed by a stage that may know the world): never changes a field already there."""
    with mlopsdb.write_session(settings) as db:
        row = db.execute("SELECT result FROM jobs WHERE job_id = ?", [int(job_id)]).fetchone()
        if row is None:
            raise RetroError(f"no job {job_id}")
        result = loads(row[0]) or {}
        if key in result:
            raise RetroError(f"job {job_id} already has {key!r}")
        result[key] = value
        db["jobs"].update(int(job_id), {"result": dumps(result)})


def gate_history(settings: Settings) -> pd.DataFrame:
    """One row per finished retrain: at, job_id, version, promoted, decided_by, ess, the holdout's Δ nDCG@10
    (point, lo, hi), the counterfactual Δ watches/list (point, lo, hi) and, in simulation, the truth's Δ
    watches/list and verdict: the yardstick over time (Training page)."""
    with mlopsdb.session(settings) as db:
        rows = db.execute("SELECT job_id, finished_at, result FROM jobs WHERE kind = 'retrain' "
                          "AND status = 'finished' ORDER BY job_id").fetchall()
    out = []
    for job_id, at, raw in rows:
        result = loads(raw) or {}
        checks = (result.get("gate") or {}).get("checks") or {}
        y = checks.get("yardstick") or {}
        holdout = checks.get("holdout_quality") or checks.get("quality") or {}
        cf = y if "point" in y else {}
        t = result.get("truth") or {}
        out.append({"at": at, "job_id": job_id, "version": result.get("version"), "promoted": result.get("promoted"),
                    "gate_passed": (result.get("gate") or {}).get("promote"), "decided_by": y.get("decided_by", "holdout"), "ess": y.get("ess"),
                    "holdout_delta": holdout.get("point"), "holdout_lo": holdout.get("lo"),
                    "holdout_hi": holdout.get("hi"), "cf_delta": cf.get("point"), "cf_lo": cf.get("lo"),
                    "cf_hi": cf.get("hi"), "truth_delta": t.get("difference"), "truth_verdict": t.get("verdict")})
    return pd.DataFrame(out, columns=["at", "job_id", "version", "promoted", "gate_passed", "decided_by", "ess", "holdout_delta",
                                      "holdout_lo", "holdout_hi", "cf_delta", "cf_lo", "cf_hi", "truth_delta",
                                      "truth_verdict"])


# --- internals ---------------------------------------------------------------

def _run_row(db, run_id: int) -> dict:
    return mlopsdb.row_or_raise(db, "runs", "run_id", run_id, UnknownRun, f"no experiment run with id {run_id}", "runs")


def _job_row(db, job_id: int) -> dict:
    return mlopsdb.row_or_raise(db, "jobs", "job_id", job_id, UnknownJob, f"no pipeline job with id {job_id}", "jobs")


def _require_running(db, key: int, table: str = "runs") -> None:
    row = _run_row(db, key) if table == "runs" else _job_row(db, key)
    if row["status"] != "running":
        noun = "run" if table == "runs" else "job"
        raise RunNotRunning(f"{noun} {key} is already {row['status']}; only a running {noun} can be updated")


def decode_json_fields(row: dict, fields: tuple[str, ...]) -> dict[str, Any]:
    """A copy of `row` with the named JSON text fields decoded (shared with the registry)."""
    out = dict(row)
    for name in fields:
        out[name] = loads(out.get(name))
    return out


def _decode_run(row: dict) -> dict:
    return decode_json_fields(row, RUN_JSON_FIELDS)


def flatten_metrics(record: dict, metrics: dict | None, reserved: list[str]) -> None:
    """Add each numeric metric of `metrics` to `record` as its own column (prefixed 'metric.' on a name clash)."""
    for name, value in (metrics or {}).items():
        if is_number(value):
            record[name if name not in reserved else f"metric.{name}"] = value


# --- reads and writes for the registry, the retraining policy and crash recovery ---------------------------

def run_row(db, run_id: int) -> dict | None:
    """The stored row of a run (JSON fields still text), or None; on the caller's connection, so a
    registration reads the run inside its own write transaction."""
    rows = list(db.query("SELECT * FROM runs WHERE run_id = ?", [run_id]))
    return rows[0] if rows else None


def last_finished_job_start(settings: Settings, kind: str) -> str | None:
    """When the newest finished job of `kind` started ('YYYY-MM-DDTHH:MM:SS'), or None."""
    with mlopsdb.session(settings) as db:
        row = db.execute("SELECT max(started_at) FROM jobs WHERE kind = ? AND status = 'finished'", [kind]).fetchone()
    return row[0] if row and row[0] else None


def mark_interrupted(settings: Settings, job_kinds: tuple[str, ...], error: str) -> dict[str, int]:
    """Mark every 'running' job of `job_kinds` and every 'running' run 'interrupted' with `error`, in one
    transaction; returns how many of each. Only safe when no such job can be alive (the store lock is held)."""
    kinds = ", ".join("?" * len(job_kinds))
    with mlopsdb.write_session(settings) as db:
        jobs = db.conn.execute(f"UPDATE jobs SET status = 'interrupted', error = ? WHERE status = 'running' "
                               f"AND kind IN ({kinds})", [error, *job_kinds]).rowcount
        runs = db.conn.execute("UPDATE runs SET status = 'interrupted', error = ? WHERE status = 'running'",
                               [error]).rowcount
    return {"jobs": int(jobs), "runs": int(runs)}

# --- artifact hashes rewritten in place (an erasure or a key rotation, core/privacy) -----------------------------
def set_artifact_hashes(db, settings: Settings, targets: dict[Path, str]) -> int:
    """Record a new hash for every run whose artifact directory (resolved) is a key of `targets`, on the
    caller's connection (so it joins the caller's transaction); returns the runs updated."""
    changed = 0
    rows = db.execute("SELECT run_id, artifact_path FROM runs WHERE artifact_path IS NOT NULL").fetchall()
    for ident, path in rows:
        digest = targets.get(mlopsdb.artifact_dir(settings, path).resolve())
        if digest is not None:
            db.execute("UPDATE runs SET artifact_hash = ? WHERE run_id = ?", [digest, ident])
            changed += 1
    return changed
