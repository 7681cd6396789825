"""Experiment tracking: run and job lifecycles, JSON round trips, hand-computed comparisons, code version."""
import hashlib
import math
import re
import subprocess

import numpy as np
import pytest

from core.store import mlopsdb
from core.store.database import columns_of
from core.training import tracking
from core.errors import InvalidTimestamp, ValidationError
from core.settings import PROJECT_ROOT, load_settings

T0, T1, T2 = "2026-01-01T00:00:00", "2026-01-01T00:05:00", "2026-01-02T00:00:00"
CODE_VERSION = re.compile(r"^[0-9a-f]{40}(\+dirty)?$")


pytestmark = pytest.mark.both_backends     # the ML metadata store's contracts, on SQLite and on PostgreSQL


@pytest.fixture
def settings(backend_settings):
    return backend_settings


def finished_run(settings, kind="als", metrics=None, at=T0, **kwargs):
    run_id = tracking.start_run(settings, kind, {"factors": 16}, 42, "dv-1", at=at, **kwargs)
    tracking.finish_run(settings, run_id, metrics or {"ndcg@10": 0.2}, {}, {"fit": 1.0}, "m.npz", "h", at=at)
    return run_id


def test_store_is_its_own_file_in_wal_mode_without_personal_columns(settings, backend):
    tracking.start_job(settings, "retrain", "cli", at=T0)
    assert settings.mlops_db in settings.store_paths()
    if backend == "sqlite":
        assert settings.mlops_db == settings.home / "mlops.db" and settings.mlops_db.exists()
    else:      # its own schema of the PostgreSQL database; no file in the data folder
        assert mlopsdb.exists(settings) and not settings.mlops_db.exists()
    with mlopsdb.session(settings) as db:
        if backend == "sqlite":
            assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert {"runs", "model_versions", "registry_events", "jobs"} <= set(db.table_names())
        columns = [c for t in ("runs", "model_versions", "registry_events", "jobs") for c in columns_of(db, t)]
    assert not [c for c in columns if "user" in c.lower()]


def test_run_lifecycle_round_trips_every_json_field(settings):
    params = {"factors": 32, "regularization": 0.01, "nested": {"alpha": [1, 2]}, "np": np.float32(0.5)}
    run_id = tracking.start_run(settings, "als", params, seed=7, data_version="events<=2026-01-01", at=T0)
    running = tracking.get_run(settings, run_id)
    assert (running["status"], running["started_at"], running["finished_at"]) == ("running", T0, None)
    assert running["metrics"] is None and running["seed"] == 7
    assert CODE_VERSION.match(running["code_version"]) or running["code_version"] == "unknown"

    metrics = {"ndcg@10": 0.2140, "recall@10": 0.31, "coverage": 0.42, "nan_metric": float("nan")}
    baselines = {"popularity": {"ndcg@10": 0.11}, "random": {"ndcg@10": 0.01}}
    timings = {"load": 0.5, "fit": np.float64(2.25), "evaluate": 1.0}
    tracking.finish_run(settings, run_id, metrics, baselines, timings, "/models/als-1.npz", "ab" * 32, at=T1)

    run = tracking.get_run(settings, run_id)
    assert run["status"] == "finished" and run["finished_at"] == T1
    assert run["params"] == {"factors": 32, "regularization": 0.01, "nested": {"alpha": [1, 2]}, "np": 0.5}
    assert run["baselines"] == baselines and run["timings"] == {"load": 0.5, "fit": 2.25, "evaluate": 1.0}
    assert run["metrics"]["ndcg@10"] == 0.2140 and math.isnan(run["metrics"]["nan_metric"])
    assert list(run["metrics"]) == list(metrics)  # the caller's order is kept
    assert (run["artifact_path"], run["artifact_hash"], run["error"]) == ("/models/als-1.npz", "ab" * 32, None)


def test_failed_run_keeps_error_and_cannot_be_finished_later(settings):
    run_id = tracking.start_run(settings, "bpr", {}, 1, "dv", at=T0)
    tracking.fail_run(settings, run_id, "ValueError: factors contain NaN", at=T1)
    run = tracking.get_run(settings, run_id)
    assert (run["status"], run["error"], run["finished_at"], run["metrics"]) == (
        "failed", "ValueError: factors contain NaN", T1, None)
    with pytest.raises(tracking.RunNotRunning, match="run 1 is already failed"):
        tracking.finish_run(settings, run_id, {"ndcg@10": 1.0}, {}, {}, None, None, at=T2)
    assert tracking.get_run(settings, run_id)["status"] == "failed"


def test_unknown_run_names_the_id_and_the_known_range(settings):
    with pytest.raises(tracking.UnknownRun, match="no experiment run with id 3 .no run has been recorded yet"):
        tracking.get_run(settings, 3)
    finished_run(settings)
    with pytest.raises(tracking.UnknownRun, match=r"id 9 \(runs are numbered 1..1\)"):
        tracking.get_run(settings, 9)
    with pytest.raises(tracking.UnknownRun):
        tracking.fail_run(settings, 9, "boom")


def test_bad_inputs_are_rejected_before_writing(settings):
    with pytest.raises(InvalidTimestamp, match="2026-01-01 00:00"):
        tracking.start_run(settings, "als", {}, 1, "dv", at="2026-01-01 00:00")
    with pytest.raises(ValidationError, match="model_kind"):
        tracking.start_run(settings, " ", {}, 1, "dv", at=T0)
    with pytest.raises(tracking.UnknownJob, match="no pipeline job with id 5"):
        tracking.start_run(settings, "als", {}, 1, "dv", job_id=5, at=T0)
    assert tracking.list_runs(settings).empty


def test_list_runs_newest_first_with_flat_metric_and_param_columns(settings):
    assert list(tracking.list_runs(settings).columns) == tracking.RUN_COLUMNS
    first = finished_run(settings, "als", {"ndcg@10": 0.2, "coverage": 0.4})
    second = finished_run(settings, "bpr", {"ndcg@10": 0.25, "coverage": 0.3, "breakdown": {"x": 1}})
    running = tracking.start_run(settings, "als", {"factors": 64}, 42, "dv-2", at=T2)
    frame = tracking.list_runs(settings)
    assert frame["run_id"].tolist() == [running, second, first]
    assert frame["ndcg@10"].tolist()[1:] == [0.25, 0.2] and math.isnan(frame["ndcg@10"].iloc[0])
    assert frame["param.factors"].tolist() == [64, 16, 16]
    assert frame["duration_s"].tolist()[1:] == [1.0, 1.0] and math.isnan(frame["duration_s"].iloc[0])
    assert "breakdown" not in frame.columns  # only numeric metrics become columns
    assert tracking.list_runs(settings, limit=1)["run_id"].tolist() == [running]


def test_compare_runs_deltas_are_hand_computed(settings):
    a = finished_run(settings, metrics={"ndcg@10": 0.20, "coverage": 0.40, "recall@10": 0.0, "only_a": 1.0})
    b = finished_run(settings, metrics={"ndcg@10": 0.25, "coverage": 0.30, "recall@10": 0.1, "only_b": 2.0})
    frame = tracking.compare_runs(settings, a, b).set_index("metric")
    assert list(frame.index) == ["coverage", "ndcg@10", "only_a", "only_b", "recall@10"]
    # ndcg: 0.25 - 0.20 = 0.05, relative 0.05 / 0.20 = +25 %
    assert frame.loc["ndcg@10", "delta"] == pytest.approx(0.05)
    assert frame.loc["ndcg@10", "rel_delta"] == pytest.approx(0.25)
    # coverage: 0.30 - 0.40 = -0.10, relative -0.10 / 0.40 = -25 %
    assert frame.loc["coverage", "delta"] == pytest.approx(-0.10)
    assert frame.loc["coverage", "rel_delta"] == pytest.approx(-0.25)
    # a baseline of 0 has no relative change; a metric missing on one side has no delta
    assert frame.loc["recall@10", "delta"] == pytest.approx(0.1) and math.isnan(frame.loc["recall@10", "rel_delta"])
    assert math.isnan(frame.loc["only_a", "b"]) and math.isnan(frame.loc["only_b", "delta"])
    assert frame.loc["only_a", "a"] == 1.0


def test_jobs_lifecycle(settings):
    job = tracking.start_job(settings, "retrain", "drift-alert", at=T0)
    tracking.update_job(settings, job, "train")
    run_id = finished_run(settings, job_id=job)
    assert tracking.get_run(settings, run_id)["job_id"] == job
    tracking.finish_job(settings, job, {"promoted": True, "version": 1}, at=T1)
    done = tracking.get_job(settings, job)
    assert (done["status"], done["stage"], done["finished_at"], done["result"]) == (
        "finished", "train", T1, {"promoted": True, "version": 1})
    with pytest.raises(tracking.RunNotRunning, match="job 1 is already finished"):
        tracking.update_job(settings, job, "evaluate")

    broken = tracking.start_job(settings, "retrain", "scheduled", at=T1)
    tracking.update_job(settings, broken, "evaluate")
    tracking.fail_job(settings, broken, "MemoryError", at=T2)
    failed = tracking.get_job(settings, broken)
    assert (failed["status"], failed["stage"], failed["error"], failed["result"]) == (
        "failed", "evaluate", "MemoryError", None)

    frame = tracking.list_jobs(settings)
    assert frame["job_id"].tolist() == [broken, job] and frame["status"].tolist() == ["failed", "finished"]
    assert tracking.list_jobs(settings, limit=1)["job_id"].tolist() == [broken]
    with pytest.raises(tracking.UnknownJob, match="no pipeline job with id 99"):
        tracking.finish_job(settings, 99, {})
    with pytest.raises(ValidationError, match="trigger"):
        tracking.start_job(settings, "retrain", "")


def test_default_timestamp_is_real_utc_now(settings):
    job = tracking.start_job(settings, "retrain", "manual")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", tracking.get_job(settings, job)["started_at"])


def test_file_sha256_matches_known_digest(tmp_path):
    path = tmp_path / "artifact.bin"
    path.write_bytes(b"abc")
    assert tracking.file_sha256(path) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    big = tmp_path / "big.bin"
    big.write_bytes(b"x" * (3 << 20) + b"tail")  # spans several read chunks
    assert tracking.file_sha256(big) == hashlib.sha256(b"x" * (3 << 20) + b"tail").hexdigest()


def test_code_version_of_the_project_is_its_head_commit():
    version = tracking.code_version()
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True)
    if head.returncode != 0:
        assert version == "unknown"
    else:
        assert CODE_VERSION.match(version) and version.split("+")[0] == head.stdout.strip()


def _git(repo, *args):
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.org", *args], cwd=repo,
                   check=True, capture_output=True)


def test_code_version_marks_changed_tracked_files_dirty(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    assert tracking.code_version(repo) == "unknown"  # a repository without a commit
    (repo / "a.py").write_text("x = 1\n")
    _git(repo, "add", "a.py")
    _git(repo, "commit", "-q", "-m", "first")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
    assert tracking.code_version(repo) == head
    (repo / "untracked.txt").write_text("notes")
    assert tracking.code_version(repo) == head  # untracked files do not change the code
    (repo / "a.py").write_text("x = 2\n")
    assert tracking.code_version(repo) == head + "+dirty"


def test_code_version_is_unknown_outside_a_repository_or_without_git(tmp_path, monkeypatch):
    outside = tmp_path / "plain"
    outside.mkdir()
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    assert tracking.code_version(outside) == "unknown"
    assert tracking.code_version(tmp_path / "missing") == "unknown"
    monkeypatch.setenv("PATH", str(outside))  # no git binary on the path
    assert tracking.code_version() == "unknown"


def test_threads_opening_a_fresh_store_together_migrate_it_once(settings, backend):
    import threading

    errors = []

    def open_and_close():
        try:
            with mlopsdb.session(settings) as db:
                db.execute("SELECT count(*) FROM runs").fetchone()
        except Exception as exc:  # pragma: no cover - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=open_and_close) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with mlopsdb.session(settings) as db:
        table = "_sqlite_migrations" if backend == "sqlite" else "_retro_migrations"
        applied = db.execute(f"SELECT name FROM {table} WHERE migration_set = 'retro_mlops' "
                             f"ORDER BY {'rowid' if backend == 'sqlite' else 'applied_at, name'}").fetchall()
    names = [m.name for m in mlopsdb.migrations._migrations]
    assert applied == [(n,) for n in names] and names[0] == "m001_tables"   # each applied exactly once
