"""Crash safety: jobs killed mid-run end 'interrupted', not 'running' forever."""
import duckdb

from core import etl, locks, recovery, tracking
from test_privacy import base, world  # noqa: F401


# ------------------------------------------------------------------ interrupted jobs
def test_jobs_and_runs_left_running_are_marked_interrupted_at_the_next_start(world):
    job = tracking.start_job(world, "retrain", "cli")
    run = tracking.start_run(world, "als", {}, 1, None, job_id=job)
    other = tracking.start_job(world, "report", "cli")          # not a lock-protected kind: left alone
    with locks.store_lock(world, "ETL"):
        with locks.store_lock(world, "train"):                 # re-entrant: no second recovery
            pass
    assert tracking.get_job(world, job)["status"] == "interrupted"
    assert tracking.get_run(world, run)["status"] == "interrupted"
    assert tracking.get_job(world, other)["status"] == "running"
    assert "interrupted" in tracking.get_job(world, job)["error"]
    assert recovery.mark_interrupted(world) == {"jobs": 0, "runs": 0}


def test_a_job_running_in_this_process_is_not_marked(world):
    with locks.store_lock(world, "retrain"):
        job = tracking.start_job(world, "retrain", "cli")
        with locks.store_lock(world, "ETL"):
            pass
        assert tracking.get_job(world, job)["status"] == "running"
        tracking.finish_job(world, job, {})


def test_an_etl_run_left_running_is_marked_interrupted_at_the_next_etl(world):
    con = duckdb.connect(str(world.warehouse))
    try:
        killed = con.execute("SELECT max(run_id) + 1 FROM etl_runs").fetchone()[0]
        con.execute("INSERT INTO etl_runs(run_id, started_at, status) VALUES (?, now(), 'running')", [killed])
    finally:
        con.close()
    etl.run_etl(world)
    con = duckdb.connect(str(world.warehouse), read_only=True)
    try:
        statuses = dict(con.execute("SELECT run_id, status FROM etl_runs").fetchall())
    finally:
        con.close()
    assert statuses[killed] == "interrupted" and statuses[killed + 1] in ("loaded", "no-new-data")
    assert "running" not in statuses.values()
