"""Crash recovery, run whenever a job takes the data folder's store lock.

Holding the lock (not re-entrantly), this process knows no other lock-protected
job is running anywhere: jobs and runs still 'running' belonged to a process
that was killed, so they are marked 'interrupted'. ETL runs are marked by the
next ETL itself (`etl.run_etl`). Only jobs started under the lock record
`running` rows: `LOCKED_JOB_KINDS` names them, so a job kind added later
outside the lock is not mistaken for a dead one.
"""
from __future__ import annotations

from . import mlopsdb
from .settings import Settings

LOCKED_JOB_KINDS = ("retrain",)     # tracking.start_job callers that hold the store lock (pipeline.retrain)
INTERRUPTED = "interrupted: the process ended while it ran (found at the next start of a job)"


def mark_interrupted(settings: Settings) -> dict[str, int]:
    """Mark orphaned 'running' jobs and runs 'interrupted'; returns how many of each. Call under the store lock."""
    if not settings.mlops_db.exists():
        return {"jobs": 0, "runs": 0}
    kinds = ", ".join("?" * len(LOCKED_JOB_KINDS))
    with mlopsdb.write_session(settings) as db:
        jobs = db.conn.execute(f"UPDATE jobs SET status = 'interrupted', error = ? WHERE status = 'running' "
                               f"AND kind IN ({kinds})", [INTERRUPTED, *LOCKED_JOB_KINDS]).rowcount
        runs = db.conn.execute("UPDATE runs SET status = 'interrupted', error = ? WHERE status = 'running'",
                               [INTERRUPTED]).rowcount
    return {"jobs": int(jobs), "runs": int(runs)}


def recover(settings: Settings) -> dict:
    """Everything a killed job left behind: interrupted rows marked."""
    return {"interrupted": mark_interrupted(settings)}
