"""Reproduced bugs of issue 23 (findings 4–9, 11): each test failed on the code before its fix."""
from __future__ import annotations

import re

import pytest

from core import bounds, errors
from core.settings import load_settings
from core.simulation import simulation
from core.store import opsdb, writes


# ---------------------------------------------------------------- 4: ids leave room for growth
@pytest.mark.parametrize("add", [
    lambda db, i: writes.add_user(db, user_id=i),
    lambda db, i: writes.add_movie(db, "Far Away", 1970, "Drama", movie_id=i),
], ids=["user", "movie"])
def test_a_new_row_cannot_take_an_id_that_leaves_no_room_for_fresh_ones(small_db, add):
    with pytest.raises(errors.ValidationError, match="leaves no room") as caught:
        add(small_db, bounds.MAX_ID)
    assert caught.value.code == "no_room"
    assert add(small_db, bounds.MAX_GIVEN_ID) == bounds.MAX_GIVEN_ID     # the largest a new row may name


def test_the_largest_id_the_write_api_accepts_does_not_wedge_the_simulation(tmp_path):
    s = load_settings(tmp_path / "w")
    simulation.init_world(s, seed=5, users=1500, movies=40, days=1)
    db = opsdb.connect(s)
    try:
        for add in (lambda i: writes.add_user(db, user_id=i),
                    lambda i: writes.add_movie(db, "Far Away", 1970, "Drama", movie_id=i)):
            for given in (bounds.MAX_ID, getattr(bounds, "MAX_GIVEN_ID", bounds.MAX_ID)):
                try:
                    add(given)
                    break
                except errors.ValidationError:
                    continue
    finally:
        db.conn.close()
    summary = simulation.simulate(s, days=2, shift="new-releases", strength=0.1)   # sign-ups and new titles
    assert summary["new_users"] > 0
    db = opsdb.connect(s)
    try:
        for table, col in (("users", "user_id"), ("movies", "movie_id")):
            top = db.execute(f"SELECT max({col}) FROM {table}").fetchone()[0]
            assert bounds.MAX_ID - 2**31 < top <= bounds.MAX_ID
            bounds.check_id(top)
    finally:
        db.conn.close()


# ---------------------------------------------------------------- 8: an action commits with its audit row
from core import faults                                  # noqa: E402
from core.privacy import access                           # noqa: E402
from core.store import mlopsdb                             # noqa: E402
from core.training import registry, tracking              # noqa: E402

T = {d: f"2026-01-{d:02d}T12:00:00" for d in range(1, 21)}


def _version(s, kind="als") -> int:
    run_id = tracking.start_run(s, kind, {"factors": 8, "kind": kind}, 42, "dv-1", at=T[1])
    tracking.finish_run(s, run_id, {"ndcg@10": 0.2, "coverage": 0.3}, {"popularity": {}}, {"fit": 0.1},
                        f"/models/{kind}-{run_id}.npz", f"hash-{run_id}", at=T[1])
    return registry.register(s, run_id, at=T[1])


def _promotions_and_audit_rows(s, action):
    with mlopsdb.session(s) as db:
        moves = db.execute("SELECT count(*) FROM registry_events WHERE to_stage = 'production'").fetchone()[0]
        audited = db.execute("SELECT count(*) FROM operator_audit WHERE action = ? AND outcome = 'ok'",
                             [action]).fetchone()[0]
    return moves, audited


def _promote(s, v):
    with access.audited(s, "cli:ops", "promote", f"v{v}"):
        registry.promote(s, v, "cli:ops", "manual")


def _rollback(s, v):
    with access.audited(s, "cli:ops", "rollback") as entry:
        entry["target"] = f"v{registry.rollback(s, 'cli:ops', 'manual')}"


@pytest.mark.parametrize("act, action", [(_promote, "promote"), (_rollback, "rollback")])
@pytest.mark.parametrize("where", ["audit write", "after the action"])
def test_a_kill_between_the_action_and_its_audit_row_never_leaves_it_unaudited(settings, monkeypatch, act, action,
                                                                                 where):
    v1, v2, v3 = _version(settings), _version(settings, "bpr"), _version(settings)
    registry.promote(settings, v1, "pipeline", "first")
    registry.promote(settings, v2, "pipeline", "second")
    before = _promotions_and_audit_rows(settings, action)
    if where == "audit write":          # killed as the audit row is written
        real = access.log_action

        def dying(*a, **k):
            if a[4] == "ok" if len(a) > 4 else k.get("outcome") == "ok":
                raise faults.SimulatedKill("kill -9")
            return real(*a, **k)
        monkeypatch.setattr(access, "log_action", dying)
    else:                               # killed right after the action's transaction committed
        def hook(name):
            if name == "audit:action-done":
                raise faults.SimulatedKill(name)
        monkeypatch.setattr(faults, "hook", hook)
    killed = False
    try:
        act(settings, v3)
    except faults.SimulatedKill:
        killed = True
    assert killed, "the action was not killed where the test meant to kill it"
    moves, audited = _promotions_and_audit_rows(settings, action)
    # Either the action did not happen, or it happened with its audit row: never one without the other.
    assert moves - before[0] == audited - before[1] in (0, 1)
    if where == "after the action":
        assert moves - before[0] == 1
        with mlopsdb.session(settings) as db:
            target = db.execute("SELECT target FROM operator_audit WHERE action = ? ORDER BY audit_id DESC LIMIT 1",
                                [action]).fetchone()[0]
        assert target in ("v3", "v1")           # the promoted version, or the one the rollback brought back


def test_a_failing_action_that_wrote_its_audit_row_is_recorded_once_as_failed(settings):
    v1 = _version(settings)
    with pytest.raises(RuntimeError):
        with access.audited(settings, "cli:ops", "promote", f"v{v1}"):
            registry.promote(settings, v1, "cli:ops", "manual")
            raise RuntimeError("something after the promotion failed")
    rows = access.audit_log(settings)
    assert rows[rows["action"] == "promote"]["outcome"].tolist() == ["failed"]


# ---------------------------------------------------------------- 9, 11: the world file and concurrent runs
import os                                                   # noqa: E402
import subprocess                                           # noqa: E402
import sys                                                  # noqa: E402
from pathlib import Path                                    # noqa: E402

from core.simulation import world as world_mod              # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SIGNUP_WORLD = dict(seed=5, users=1500, movies=40, days=1)  # ~3 sign-ups a day


def _users_and_world(s):
    db = opsdb.connect(s)
    try:
        users = {int(u) for (u,) in db.execute("SELECT user_id FROM users")}
        movies = {int(m) for (m,) in db.execute("SELECT movie_id FROM movies")}
    finally:
        db.conn.close()
    world = simulation.load_world(s)        # what the next run reads (repairing a step a kill left half-done)
    return users, movies, world


def _assert_in_step(s):
    users, movies, world = _users_and_world(s)
    assert users == {int(u) for u in world.user_ids}, "the database and the world disagree about who exists"
    assert movies == {int(m) for m in world.movie_ids}


KILL_AT_WORLD_SAVE = """
import os, sys
from core.settings import load_settings
from core.simulation import loop, world
calls = []
def save(self, path):
    os._exit(137)                        # kill -9 as the world file is written
world.World.save = save
loop.run(load_settings(sys.argv[1]), int(sys.argv[2]), shift=sys.argv[3] or None, policy_mode="manual")
"""


@pytest.mark.parametrize("shift", ["", "new-releases"])
def test_a_closed_loop_killed_at_the_world_save_leaves_database_and_world_in_step(tmp_path, shift):
    s = load_settings(tmp_path / "w")
    simulation.init_world(s, **SIGNUP_WORLD)
    before, _, _ = _users_and_world(s)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    killed = subprocess.run([sys.executable, "-c", KILL_AT_WORLD_SAVE, str(s.home), "3", shift], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == 137, killed.stderr
    _assert_in_step(s)
    again = subprocess.run([sys.executable, "-m", "core", "--home", str(s.home), "simulate", "--days", "2",
                            "--policy", "manual"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    _assert_in_step(s)
    assert len(_users_and_world(s)[0]) > len(before)


def test_a_real_kill_after_the_days_commit_is_repaired_by_the_next_run(tmp_path):
    s = load_settings(tmp_path / "w")
    simulation.init_world(s, **SIGNUP_WORLD)
    before, _, _ = _users_and_world(s)
    cmd = [sys.executable, "-m", "core", "--home", str(s.home), "simulate", "--days", "3", "--policy", "manual"]
    killed = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, **{faults.ENV: "simulation:committed"}),
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr
    users, _, world = _users_and_world(s)
    assert len(users) > len(before)                         # the day was committed, sign-ups included ...
    _assert_in_step(s)                                      # ... and the world knows them
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    _assert_in_step(s)


def test_two_simulations_at_once_never_collide_on_new_ids(tmp_path):
    s = load_settings(tmp_path / "w")
    simulation.init_world(s, **SIGNUP_WORLD)
    cmd = [sys.executable, "-m", "core", "--home", str(s.home), "simulate", "--days", "4", "--open-loop"]
    procs = [subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    for code, err in results:
        assert "Traceback" not in err and "already exists" not in err, err
        if code != 0:                    # refused: one line naming the run that holds the world
            lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
            assert code == 1 and len(lines) == 1 and "another simulation is running" in lines[0], err
            assert "simulate, pid" in lines[0]
    assert any(code == 0 for code, _ in results)
    _assert_in_step(s)


def test_a_simulation_is_refused_while_another_holds_the_world(tmp_path):
    s = load_settings(tmp_path / "w")
    simulation.init_world(s, seed=5, users=100, movies=20, days=1)
    import threading
    with simulation.running(s, "a test run"):
        caught = []
        other = threading.Thread(target=lambda: caught.append(_raised(lambda: simulation.simulate(s, 1))))
        other.start()
        other.join()
        assert isinstance(caught[0], simulation.SimulationBusy)
        assert re.search(r"another simulation is running .*\(a test run, pid \d+\)", str(caught[0]))
        with simulation.running(s, "nested"):          # re-entrant in the holding thread
            pass
    simulation.simulate(s, 1)                          # released


def _raised(fn):
    try:
        fn()
    except Exception as exc:  # noqa: BLE001
        return exc
    return None


# ---------------------------------------------------------------- 6: the CLI only writes into a data folder
import contextlib                                           # noqa: E402
import io                                                   # noqa: E402
import stat                                                 # noqa: E402

from core import cli                                        # noqa: E402


def _cli(*argv) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main([str(a) for a in argv])
    return code, err.getvalue()


def _snapshot(folder: Path) -> tuple:
    return stat.S_IMODE(folder.stat().st_mode), sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("argv", [["stats"], ["etl"], ["retrain"], ["top50"], ["init", "--users", "50"],
                                  ["import-movielens", "."], ["privacy", "retention"]])
def test_a_command_on_an_unrelated_folder_writes_nothing_and_says_so(tmp_path, argv):
    folder = tmp_path / "photos"
    folder.mkdir()
    os.chmod(folder, 0o755)
    (folder / "holiday.jpg").write_bytes(b"\xff\xd8")
    before = _snapshot(folder)
    for _ in range(2):                       # and again: the second command must not tighten the folder either
        code, err = _cli("--home", folder, *argv)
        assert code == 1 and err.count("error:") == 1 and "is not a data folder" in err, err
    assert _snapshot(folder) == before


@pytest.mark.parametrize("argv", [["retrain"], ["stats"], ["simulate", "--days", "1"]])
def test_a_reading_command_on_an_empty_folder_is_one_line_and_leaves_it_empty(tmp_path, argv):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, err = _cli("--home", empty, *argv)
    assert code == 1 and err.count("error:") == 1 and "no data folder" in err and "Traceback" not in err, err
    assert list(empty.iterdir()) == []


def test_init_makes_an_empty_or_new_folder_a_marked_data_folder(tmp_path):
    for home in (tmp_path / "new" / "home", tmp_path / "empty"):
        if home.name == "empty":
            home.mkdir()
        code, err = _cli("--home", home, "init", "--users", "50", "--movies", "20", "--days", "1")
        assert code == 0, err
        assert (home / ".retro-home").is_file() and stat.S_IMODE(home.stat().st_mode) == 0o700
        assert _cli("--home", home, "stats")[0] == 0


def test_a_data_folder_of_an_older_version_is_recognised_and_marked(tmp_path, small_world):
    old = tmp_path / "old"
    old.mkdir()
    for name in ("retro.db", "mlops.db", "world.npz"):
        if (small_world.home / name).exists():
            (old / name).write_bytes((small_world.home / name).read_bytes())
    assert not (old / ".retro-home").exists()
    code, err = _cli("--home", old, "stats")
    assert code == 0, err
    assert (old / ".retro-home").is_file()


# ---------------------------------------------------------------- 7: tracebacks left
def _one_error_line(argv, env=None, cwd=ROOT):
    run = subprocess.run([sys.executable, "-m", "core", *map(str, argv)], cwd=cwd, capture_output=True, text=True,
                         timeout=300, env=dict(os.environ, **(env or {})))
    lines = [ln for ln in run.stderr.splitlines() if ln.startswith("error:")]
    assert run.returncode != 0 and "Traceback" not in run.stderr and len(lines) == 1, run.stderr[-2000:]
    return lines[0]


def test_a_serve_url_whose_host_label_is_too_long_is_one_error_line(cf_world):
    line = _one_error_line(["--home", cf_world.home, "simulate", "--days", "1", "--serve-url",
                            f"http://{'a' * 70}.example/"])
    assert "--serve-url" in line and "not a usable URL" in line


def test_a_world_too_large_for_memory_is_refused_with_its_estimate(tmp_path):
    line = _one_error_line(["--home", tmp_path / "big", "init", "--users", 1_000_000, "--movies", 100_000,
                            "--days", 1])
    assert "needs about 931.5 GiB of memory" in line and "choose fewer users or movies" in line


@pytest.mark.parametrize("env", [{"RETRO_SEED": "-1"}, {"RETRO_SEED": str(2**70)},
                                 {"RETRO_GATE_BOOTSTRAP_RESAMPLES": "0"}])
def test_environment_values_out_of_range_are_one_error_line(cf_world, tmp_path, env):
    home = private_copy_home(cf_world, tmp_path / "copy")
    name = next(iter(env))
    assert name in _one_error_line(["--home", home, "retrain"], env=env)


def test_import_of_a_ratings_file_that_links_to_itself_is_one_error_line(tmp_path):
    folder = tmp_path / "ml"
    folder.mkdir()
    (folder / "ratings.csv").symlink_to("ratings.csv")
    (folder / "movies.csv").write_text("movieId,title,genres\n1,Toy Story (1995),Comedy\n")
    assert "ratings.csv" in _one_error_line(["--home", tmp_path / "home", "import-movielens", folder])


def private_copy_home(base, dest):
    from conftest import private_copy
    return private_copy(base, dest).home


# ---------------------------------------------------------------- 5: erasure beside writers and requests
import sqlite3                                              # noqa: E402

from core.errors import UnknownUser                         # noqa: E402
from core.serving import serving                            # noqa: E402


def test_erasure_takes_its_write_lock_before_a_concurrent_writer_can_commit(small_db, settings, monkeypatch):
    """A writer that commits between the erasure's first read and its delete made the erasure fail with
    'database is locked' (a deferred transaction cannot upgrade a stale snapshot)."""
    real = opsdb.rejected_for
    wrote = []

    def a_writer_commits_meanwhile(db, user_id):
        other = sqlite3.connect(str(settings.ops_db), timeout=0.3, isolation_level=None)
        try:
            other.execute("INSERT INTO meta(key, value) VALUES ('concurrent-writer', 1) "
                          "ON CONFLICT(key) DO UPDATE SET value = value + 1")
            wrote.append(True)
        except sqlite3.OperationalError:     # the erasure holds the write lock: the writer waits its turn
            wrote.append(False)
        finally:
            other.close()
        return real(db, user_id)

    monkeypatch.setattr(opsdb, "rejected_for", a_writer_commits_meanwhile)
    counts = opsdb.erase_user(small_db, 1)
    assert counts["users"] == 1 and wrote == [False]
    assert not opsdb.user_exists(small_db, 1)


def _erase_in_flight(s, monkeypatch, victim):
    """Erase `victim` (on its own connection) once serving has computed the lists, before they are logged."""
    real = serving._serve

    def serve_then_erase(*args, **kwargs):
        out = real(*args, **kwargs)
        with opsdb.session(s) as db:
            opsdb.erase_user(db, victim)
        return out
    monkeypatch.setattr(serving, "_serve", serve_then_erase)


def test_a_request_in_flight_for_a_user_being_erased_is_unknown_user_and_the_batch_is_served(cf_world, tmp_path,
                                                                                            monkeypatch):
    from conftest import private_copy
    s = private_copy(cf_world, tmp_path / "copy")
    victim, other = 5, 6
    _erase_in_flight(s, monkeypatch, victim)
    out = serving.recommend_batch(s, [(victim, 10), (other, 10)], state=serving.load_state(s))
    assert isinstance(out[0], UnknownUser)                  # the server answers 404 for it ...
    assert out[1].serve_id is not None and len(out[1].movie_ids) == 10     # ... and serves the rest of the batch
    serving.clear_caches()


def test_the_server_answers_404_for_a_user_erased_while_their_request_ran(cf_world, tmp_path, monkeypatch):
    from fastapi.testclient import TestClient

    from conftest import private_copy
    from core.server.app import create_app
    s = private_copy(cf_world, tmp_path / "copy")
    _erase_in_flight(s, monkeypatch, 7)
    with TestClient(create_app(s, poll_seconds=0.05)) as client:
        answer = client.get("/recommend/7")
    serving.clear_caches()
    assert answer.status_code == 404, answer.text
    assert "unknown user 7" in answer.json()["error"]


def test_a_single_request_and_the_in_process_batch_say_unknown_user_too(cf_world, tmp_path, monkeypatch):
    from conftest import private_copy
    s = private_copy(cf_world, tmp_path / "copy")
    _erase_in_flight(s, monkeypatch, 8)
    with pytest.raises(UnknownUser):
        serving.recommend(s, 8, 10)
    _erase_in_flight(s, monkeypatch, 9)
    lists = serving.recommend_many(s, [9, 10], 10)
    assert set(lists) == {10}
    serving.clear_caches()


KILL_AT_AUDIT_WRITE = """
import os, sys
from core import cli
from core.privacy import access
real = access.log_action
def dying(*a, **k):
    outcome = a[4] if len(a) > 4 else k.get("outcome")
    if outcome == "ok":
        os._exit(137)                    # kill -9 as the audit row is written
    return real(*a, **k)
access.log_action = dying
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.mark.parametrize("kill", ["os._exit at the audit write", "kill -9 after the action's commit"])
@pytest.mark.parametrize("argv, action", [(["models", "promote", "3"], "promote"), (["models", "rollback"], "rollback")])
def test_a_real_kill_of_models_promote_or_rollback_never_leaves_the_action_unaudited(tmp_path, kill, argv, action):
    s = load_settings(tmp_path / "home")
    v1, v2, _ = _version(s), _version(s, "bpr"), _version(s)
    registry.promote(s, v1, "pipeline", "first")
    registry.promote(s, v2, "pipeline", "second")
    before = _promotions_and_audit_rows(s, action)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    if kill.startswith("os._exit"):
        cmd = [sys.executable, "-c", KILL_AT_AUDIT_WRITE, "--home", str(s.home), *argv]
    else:
        cmd = [sys.executable, "-m", "core", "--home", str(s.home), *argv]
        env[faults.ENV] = "audit:action-done"
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode in (137, -9), run.stderr
    moves, audited = _promotions_and_audit_rows(s, action)
    assert moves - before[0] == audited - before[1], "the action stands without its audit row"
    if kill.startswith("kill -9"):
        assert moves - before[0] == 1


@pytest.mark.parametrize("where", ["audit write", "after the action"])
@pytest.mark.parametrize("decision", ["start", "stop", "rollback"])
def test_a_killed_release_start_or_decision_is_never_left_unaudited(settings, monkeypatch, where, decision):
    from core.monitoring import release
    from core.serving import deployments
    prod, candidate = _version(settings), _version(settings)
    registry.promote(settings, prod, "pipeline", "first")
    if decision != "start":
        release.start(settings, candidate, "canary", actor="cli:ops", with_ranker=False)

    def act():
        with access.audited(settings, "cli:ops", f"release {decision}"):
            if decision == "start":
                release.start(settings, candidate, "canary", actor="cli:ops", with_ranker=False)
            else:
                release.decide_now(settings, decision, actor="cli:ops", reason="by hand")

    if where == "audit write":
        real = access.log_action

        def dying(*a, **k):
            if (a[4] if len(a) > 4 else k.get("outcome")) == "ok":
                raise faults.SimulatedKill("kill -9")
            return real(*a, **k)
        monkeypatch.setattr(access, "log_action", dying)
    else:
        monkeypatch.setattr(faults, "hook", lambda name: (_ for _ in ()).throw(faults.SimulatedKill(name))
                            if name == "audit:action-done" else None)
    with pytest.raises(faults.SimulatedKill):
        act()
    active = deployments.active(settings)
    changed = (active is not None) if decision == "start" else (active is None)
    with mlopsdb.session(settings) as db:
        rows = db.execute("SELECT count(*) FROM operator_audit WHERE action = ? AND outcome = 'ok'",
                          [f"release {decision}"]).fetchone()[0]
    assert rows == int(changed), "the release changed without its audit row (or the other way round)"
    assert changed == (where == "after the action")
