"""Crash recovery, run whenever a job takes the data folder's store lock.

Holding the lock (not re-entrantly), this process knows no other lock-protected
job is running anywhere: jobs and runs still 'running' belonged to a process
that was killed, so they are marked 'interrupted'; and erasure requests left
pending by a killed (or failed) `forget` are finished (see
`erasure.forget_user`). ETL runs are marked by the next ETL itself
(`etl.run_etl`). Only jobs started under the lock record `running` rows:
`LOCKED_JOB_KINDS` names them, so a job kind added later outside the lock is
not mistaken for a dead one.
"""
from __future__ import annotations

import logging

from core.store import mlopsdb
from core.training import tracking
from core.settings import Settings

LOCKED_JOB_KINDS = ("retrain",)     # tracking.start_job callers that hold the store lock (pipeline.retrain)
INTERRUPTED = "interrupted: the process ended while it ran (found at the next start of a job)"
log = logging.getLogger(__name__)


def mark_interrupted(settings: Settings) -> dict[str, int]:
    """Mark orphaned 'running' jobs and runs 'interrupted'; returns how many of each. Call under the store lock."""
    if not mlopsdb.exists(settings):
        return {"jobs": 0, "runs": 0}
    return tracking.mark_interrupted(settings, LOCKED_JOB_KINDS, INTERRUPTED)


def recover(settings: Settings, *, erasures: bool = True) -> dict:
    """Everything a killed job left behind: interrupted rows marked, pending erasures finished.

    Never raises for a pending erasure that fails again (the request stays
    pending and records its error; the job that called goes ahead): an
    erasure's failure must not stop ETL or retraining, and the next start or
    `privacy forget` retries it.
    """
    out: dict = {"interrupted": mark_interrupted(settings), "erasures": []}
    if erasures and mlopsdb.exists(settings):
        from core.privacy import erasure
        try:
            out["erasures"] = erasure.resume_erasures(settings)
        except Exception as exc:  # noqa: BLE001 - reported, retried at the next start
            log.warning("a pending erasure request could not be finished (%s); it stays pending and is retried "
                        "at the next job start or `privacy forget`", type(exc).__name__)
            out["erasure_error"] = type(exc).__name__
    return out
