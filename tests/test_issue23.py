"""Reproduced bugs of issue 23 (findings 4–9, 11): each test failed on the code before its fix."""
from __future__ import annotations

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
