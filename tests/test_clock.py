"""One clock (issue 14): registry, tracking, operator audit and serving stamp the same service time.

Found: promote/rollback without `at=` stamped real UTC time while serving stamped the simulated clock, so
after a rollback `audit` said "serving log and registry disagree" and named the wrong production version.
"""
import pytest
from conftest import private_copy

from core.privacy import access
from core.governance import audit
from core.store import clock, mlopsdb, opsdb
from core.training import pipeline, registry, tracking
from core.serving import serving
from core.settings import load_settings

UNDERFIT_OK = {"factors": 16, "iterations": 5}


@pytest.fixture(scope="module")
def trained(cf_world):
    return cf_world


def test_the_service_clock_is_the_simulated_one_and_everything_uses_it(trained, tmp_path):
    s = private_copy(trained, tmp_path / "w")
    with opsdb.session(s) as db:
        sim = clock.now(db=db)
    assert clock.now(s) == sim == "2026-01-11T00:00:00"
    assert clock.now(load_settings(tmp_path / "empty")).startswith("20")       # no world: real UTC
    run = tracking.start_run(s, "als", {}, 1, "dv1")
    assert tracking.get_run(s, run)["started_at"] == sim
    row = access.log_action(s, "cli:test", "promote", "v1", "ok")
    with mlopsdb.session(s) as db:
        assert db.execute("SELECT at FROM operator_audit WHERE rowid = ?", [row]).fetchone()[0] == sim


def test_promote_serve_rollback_serve_audit_agrees(trained, tmp_path):
    s = private_copy(trained, tmp_path / "w")
    v1 = registry.production(s)["version"]
    user = 3
    trained2 = pipeline.train(s, params=UNDERFIT_OK, seed=9)
    v2 = registry.register(s, trained2.run_id)
    registry.promote(s, v2, "cli:alice", "try v2", force=True)     # no at=: the service clock
    serving.clear_caches()
    first = serving.recommend(s, user)
    registry.rollback(s, "cli:alice", "back to v1")
    serving.clear_caches()
    second = serving.recommend(s, user)
    assert (first.model_version, second.model_version) == (v2, v1)
    events = registry.history(s)
    newest = events.sort_values("event_id").tail(4)          # v2 promoted, v1 archived, rollback (2 events)
    assert set(newest["at"]) == {clock.now(s)}
    records = {r["serve_id"]: r for r in audit.audit(s, user)}
    for rec in (first, second):
        r = records[rec.serve_id]
        assert r["was_production"] is True, r["notes"]
        assert r["production_at_served"] == rec.model_version
        assert not any("disagree" in n for n in r["notes"])


def test_no_module_reads_the_time_of_day_but_the_clock():
    """`clock.now` is the only answer to "what time is it for this service?". Reading the wall clock elsewhere is
    allowed only where real time is the point: the first-start progress file (a person watching a build) and
    the sign-in throttle (wall-clock seconds against token guessing)."""
    import ast
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    allowed = {"core/store/clock.py", "core/bootstrap.py", "core/privacy/access.py"}
    readers = set()
    for path in (root / "core").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in {"now", "utcnow", "time", "today"}
                    and isinstance(node.func.value, ast.Name) and node.func.value.id in {"datetime", "time", "date"}):
                readers.add(path.relative_to(root).as_posix())
    assert readers - allowed == set()
    assert "core/store/clock.py" in readers
