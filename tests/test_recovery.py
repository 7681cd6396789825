"""Crash safety: an erasure killed at any step boundary leaves serving working and is finished by the next
`forget` or job start; jobs killed mid-run end 'interrupted', not 'running' forever."""
import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from core.warehouse import etl
from core import faults
from core.store import locks, mlopsdb
from core.privacy import erasure, recovery
from core.training import registry, tracking
from core.serving import serving
from core.errors import UnknownUser
from test_privacy import active_user, assert_registry_hashes_match, base, everywhere, key_of, leave_traces  # noqa: F401
from test_privacy import world  # noqa: F401

pytestmark = pytest.mark.slow   # a kill at every erasure step boundary, each on a trained world copy

ROOT = Path(__file__).resolve().parents[1]


class Killed(BaseException):
    """Stands for a kill -9 in-process: no `except Exception` handler runs."""


def kill_at(monkeypatch, point: str) -> None:
    """Stop the process's next pass through the step boundary `point` (once)."""
    fired = []

    def hook(name):
        if name == point and not fired:
            fired.append(name)
            raise faults.SimulatedKill(name)
    monkeypatch.setattr(faults, "hook", hook)


def pending(s) -> dict:
    with mlopsdb.session(s) as db:
        row = db.execute("SELECT request_id, state, pending_user_id, pending_user_key, steps_done FROM "
                         "erasure_requests ORDER BY request_id DESC LIMIT 1").fetchone()
    return dict(zip(("request_id", "state", "user_id", "user_key", "steps"), row))


def assert_serving_works(s, uid: int) -> None:
    """A fresh process's view (caches emptied): the user gets the production model, re-ranked by the ranker."""
    serving.clear_caches()
    rec = serving.recommend(s, uid, log=False)
    assert rec.path == "model" and len(rec.movie_ids) == 10
    assert rec.ranker_version == registry.production(s, family="ranker")["version"]


def assert_clean(s, uid: int, user_key: str) -> None:
    assert everywhere(s, uid, user_key) == []
    assert_registry_hashes_match(s)
    with mlopsdb.session(s) as db:
        assert db.execute("SELECT count(*) FROM model_versions WHERE pending_hash IS NOT NULL").fetchone()[0] == 0
        assert db.execute("SELECT count(*) FROM erasure_requests WHERE state <> 'completed'").fetchone()[0] == 0
    assert not list(s.models_dir.rglob(".privacy-staging"))


def test_every_fault_point_is_a_boundary_a_normal_erasure_passes(world, monkeypatch):
    seen = []
    monkeypatch.setattr(faults, "hook", seen.append)
    erasure.forget_user(world, active_user(world), actor="alice")
    assert set(seen) == set(erasure.FAULT_POINTS) and len(seen) == len(erasure.FAULT_POINTS)


@pytest.mark.parametrize("point", erasure.FAULT_POINTS)
def test_an_erasure_killed_at_any_step_boundary_is_finished_by_forget(world, monkeypatch, point):
    uid, other = active_user(world), active_user(world, 1)
    user_key = key_of(world, uid)
    leave_traces(world, uid)
    kill_at(monkeypatch, point)
    with pytest.raises(faults.SimulatedKill):
        erasure.forget_user(world, uid, actor="alice")

    request = pending(world)
    assert request["state"] == "received" and request["user_key"] == user_key
    assert (request["user_id"] is None) == ("opsdb" in json.loads(request["steps"]))   # raw id only until ops is done
    assert_serving_works(world, other)

    result = erasure.forget_user(world, uid, actor="alice")   # "nothing is held" is not the answer while pending
    assert result["request_id"] == request["request_id"] and result["state"] == "completed"
    assert_clean(world, uid, user_key)
    assert_serving_works(world, other)
    with pytest.raises(UnknownUser):
        erasure.forget_user(world, uid, actor="alice")      # now it is


def test_a_kill_between_the_ranker_swap_and_its_hash_update_leaves_serving_working(world, monkeypatch):
    """The issue's probe, written against the functions today's code already has: the hash registration
    after the ranker's file swap never happens."""
    uid, other = active_user(world), active_user(world, 1)
    user_key = key_of(world, uid)
    register = erasure._set_artifact_hashes

    def killed_before_ranker_hash(settings, hashes):
        if any(Path(d).name.startswith("ranker-") for d in hashes):
            raise Killed()
        return register(settings, hashes)
    monkeypatch.setattr(erasure, "_set_artifact_hashes", killed_before_ranker_hash)
    with pytest.raises(Killed):
        erasure.forget_user(world, uid, actor="alice")
    monkeypatch.undo()

    assert_serving_works(world, other)
    erasure.forget_user(world, uid, actor="alice")   # re-running repairs
    assert_clean(world, uid, user_key)


@pytest.mark.parametrize("next_job", ["etl", "forget another user", "lock"])
def test_a_pending_erasure_is_finished_at_the_next_job_start(world, monkeypatch, next_job):
    uid, other = active_user(world), active_user(world, 1)
    user_key = key_of(world, uid)
    kill_at(monkeypatch, "erasure:ranker-swapped")
    with pytest.raises(faults.SimulatedKill):
        erasure.forget_user(world, uid, actor="alice")
    if next_job == "etl":
        etl.run_etl(world)
    elif next_job == "lock":
        with locks.store_lock(world, "retention purge"):
            pass
    else:
        assert erasure.forget_user(world, other, actor="bob")["request_id"] == pending(world)["request_id"]
    assert_clean(world, uid, user_key)
    log = erasure.request_log(world)
    assert (log["state"] == "completed").all() and json.loads(log["summary"].iloc[-1])["models"]["bundles"] == 1


def test_a_failing_pending_erasure_does_not_stop_other_jobs(world, monkeypatch):
    uid = active_user(world)
    kill_at(monkeypatch, "erasure:warehouse")
    with pytest.raises(faults.SimulatedKill):
        erasure.forget_user(world, uid, actor="alice")

    def broken(settings, request_id, key):
        raise OSError("disk full")
    monkeypatch.setattr(erasure, "_erase_bundles", broken)
    with locks.store_lock(world, "retrain"):        # the job goes ahead; the request records the error
        pass
    assert pending(world)["state"] == "failed" and pending(world)["user_key"] == key_of(world, uid)
    monkeypatch.undo()
    etl.run_etl(world)
    assert_clean(world, uid, key_of(world, uid))


def test_a_real_sigkill_of_the_cli_between_the_ranker_swap_and_its_hash_update(world):
    uid, other = active_user(world), active_user(world, 1)
    user_key = key_of(world, uid)
    forget = [sys.executable, "-m", "core", "--home", str(world.home), "privacy", "forget", "--user", str(uid)]
    env = dict(os.environ, **{faults.ENV: "erasure:ranker-swapped"})
    killed = subprocess.run(forget, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr
    assert pending(world)["steps"] == json.dumps(["opsdb", "warehouse", "bundles"])
    assert_serving_works(world, other)

    again = subprocess.run(forget, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert_clean(world, uid, user_key)
    assert_serving_works(world, other)


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
