"""Retrains earn production online: a candidate that passes the offline gate in the retraining policy starts a
canary release (the release policy then promotes or rolls it back on its online hit rate); a retrain during a
running release waits for it (a pending release, recorded) instead of stopping it; a direct promotion during a
release ends it as a recorded decision."""
import json

import pytest
from conftest import private_copy

from core.monitoring import policy, release
from core.monitoring.monitoring import DayReport
from core.serving import deployments
from core.simulation import simulation
from core.store import clock
from core.training import pipeline, registry, tracking

TASTE_SHIFT = DayReport(day="2026-01-20", classification="taste shift", opened=["data-drift:genre_mix"])


@pytest.fixture(scope="module")
def stale(cf_world, tmp_path_factory):
    """The CF world two days later: production is stale, so a retrain of the same configuration passes the gate
    (not significantly worse than a stale production). A registered candidate with another sound configuration
    (`other`) is ready to be released by hand."""
    s = private_copy(cf_world, tmp_path_factory.mktemp("canary-base"))
    simulation.simulate(s, 2)
    other = registry.register(s, pipeline.train(s, seed=11, params={"factors": 64}).run_id)
    return s, other


@pytest.fixture
def world(stale, tmp_path):
    s, other = stale
    return private_copy(s, tmp_path / "w"), other


def policy_retrain(s):
    return policy.apply(s, TASTE_SHIFT, now=clock.now(s), mode="on-alert")


@pytest.mark.slow   # retrains with rankers (the policy's path)
def test_a_policy_retrain_that_passes_the_gate_starts_a_canary_and_leaves_production(world):
    s, _ = world
    prod = registry.production(s)["version"]
    action = policy_retrain(s)
    assert registry.production(s)["version"] == prod                         # production unchanged
    active = deployments.active(s)
    assert active is not None, "no canary release was started"
    assert action["gate_passed"] and not action["promoted"]
    assert (active["mode"], active["version"], active["production_version"]) == ("canary", action["version"], prod)
    assert active["started_by"] == "policy:on-alert" and active["policy"]["ramp"][0] == active["share"]
    assert action["release"] == {"mode": "canary", "state": "active", "deployment_id": active["deployment_id"],
                                 "share": active["share"], "production_version": prod,
                                 "reason": action["release"]["reason"], "ranker": action["release"]["ranker"]}
    assert registry.get_version(s, action["version"])["stage"] == "candidate"
    job = tracking.get_job(s, action["job_id"])
    assert job["result"]["on_pass"] == "canary" and job["result"]["release"]["deployment_id"] == active["deployment_id"]
    assert job["result"]["promoted"] is False and job["result"]["gate"]["promote"] is True
    # The release policy decides it from here, like any canary: the first review waits for evidence.
    assert release.review(s, now=clock.now(s))["decision"] == "continue"


@pytest.mark.slow
def test_a_retrain_during_a_running_canary_waits_for_it_and_starts_when_it_ends(world):
    s, other = world
    prod = registry.production(s)["version"]
    running = release.start(s, other, "canary", actor="tester", share=0.3, with_ranker=False)
    first = policy_retrain(s)
    assert registry.production(s)["version"] == prod
    # The running canary is not stopped by the next review (its production did not change).
    assert release.review(s, now=clock.now(s))["decision"] == "continue"
    assert deployments.active(s)["deployment_id"] == running["deployment_id"]          # still running
    assert first["gate_passed"] and not first["promoted"]
    pending = first["release"]
    assert (pending["state"], pending["deployment_id"], pending["supersedes"]) == ("pending", None, None)
    assert pending["waits_for"] == {"deployment_id": running["deployment_id"], "version": other, "mode": "canary"}
    assert release.pending(s)["version"] == first["version"]
    acts = policy.actions(s)
    queued = acts[acts["kind"] == "release-queued"].iloc[-1]
    assert queued["cause"] == (f"v{first['version']} waits for release #{running['deployment_id']} (canary of "
                               f"v{other}) to end") and queued["job_id"] == first["job_id"]

    # A second retrain meanwhile: its candidate takes the place of the first one in the queue (recorded).
    simulation.simulate(s, 1)
    second = pipeline.retrain(s, on_pass="canary", release_with=release.after_gate, with_ranker=False,
                              trigger="drift-alert", actor="policy:on-alert")
    assert second["gate"]["promote"] and second["release"]["supersedes"] == first["version"]
    assert release.pending(s)["version"] == second["version"]
    dequeued = policy.actions(s).query("kind == 'release-dequeued'").iloc[-1]
    assert dequeued["cause"] == f"pending release of v{first['version']} superseded by v{second['version']}"

    # The running release ends (here an operator rolls it back): the waiting candidate starts as a canary.
    ended = release.decide_now(s, "rollback", actor="tester", reason="enough", at=clock.now(s))
    assert ended["pending"]["outcome"] == "started" and ended["pending"]["version"] == second["version"]
    active = deployments.active(s)
    assert (active["version"], active["mode"], active["deployment_id"]) == (
        second["version"], "canary", ended["pending"]["deployment_id"])
    assert active["started_by"] == "policy:on-alert" and release.pending(s) is None
    started = policy.actions(s).query("kind == 'release-dequeued'").iloc[-1]
    assert started["cause"] == (f"pending v{second['version']} started as canary release #{active['deployment_id']} "
                                f"after release #{running['deployment_id']} ended (rolled-back)")
    assert release.status(s)["pending"] is None


def test_the_first_model_is_promoted_directly_there_is_nothing_to_canary_against(small_world, tmp_path):
    s = private_copy(small_world, tmp_path)
    result = pipeline.retrain(s, on_pass="canary", release_with=release.after_gate, with_ranker=False)
    assert result["promoted"] and registry.production(s)["version"] == result["version"]
    assert result["release"]["mode"] == "direct" and result["release"]["state"] == "promoted"
    assert "nothing in production yet" in result["release"]["reason"] and deployments.active(s) is None


def test_a_direct_promotion_during_a_canary_ends_it_as_a_recorded_decision(world):
    s, other = world
    prod = registry.production(s)["version"]
    running = release.start(s, other, "canary", actor="tester", share=0.3, with_ranker=False)
    waiting = pipeline.retrain(s, on_pass="canary", release_with=release.after_gate, with_ranker=False)["version"]
    assert release.pending(s)["version"] == waiting
    result = pipeline.retrain(s, on_pass="promote", release_with=release.after_gate, with_ranker=False, trigger="cli",
                              actor="cli:tester")
    assert result["promoted"] and registry.production(s)["version"] == result["version"]
    replaced = result["release"]["replaced"]
    assert replaced["deployment_id"] == running["deployment_id"] and replaced["decision"] == "stop"
    assert replaced["reason"].startswith(f"release #{running['deployment_id']} replaced by v{result['version']} "
                                         f"because a cli retrain promoted it directly (on_pass=promote)")
    assert f"v{prod}" in replaced["reason"] and deployments.active(s) is None
    decision = release.decisions(s, running["deployment_id"]).iloc[-1]
    assert (decision["decision"], decision["actor"], decision["reason"]) == ("stop", "cli:tester", replaced["reason"])
    assert deployments.get(s, running["deployment_id"])["state"] == "stopped"
    assert registry.get_version(s, other)["stage"] == "candidate"          # stopped, not rolled back
    # The candidate that waited is older than the new production: dropped, with the reason, not started.
    assert replaced["pending"] == {"version": waiting, "outcome": "dropped", "deployment_id": None,
                                   "reason": f"pending v{waiting} dropped after release #{running['deployment_id']} "
                                             f"ended (stopped): production v{result['version']} is newer"}
    assert release.pending(s) is None and deployments.active(s) is None


def test_a_canary_the_registry_refuses_to_promote_is_rolled_back_with_the_reason(world, monkeypatch):
    s, other = world
    prod = registry.production(s)["version"]
    running = release.start(s, other, "canary", actor="tester", share=0.5, with_ranker=False)
    monkeypatch.setattr(release, "decide", lambda ev, policy, share: ("promote", "not worse (test)", share))

    def refuse(*args, **kwargs):
        raise registry.BelowBaselines("v9 does not beat its baselines (test)")
    monkeypatch.setattr(registry, "promote", refuse)
    decision = release.review(s, now=clock.now(s))                    # the closed loop goes on
    assert decision["decision"] == "rollback"
    assert "the registry refused the promotion: v9 does not" in decision["reason"]
    assert deployments.get(s, running["deployment_id"])["state"] == "rolled-back"
    assert registry.production(s)["version"] == prod and registry.get_version(s, other)["stage"] == "archived"


def test_on_pass_is_checked_before_anything_runs(world):
    from core.errors import ValidationError
    s, _ = world
    jobs = len(tracking.list_jobs(s))
    with pytest.raises(ValidationError, match="choose one of: canary, promote"):
        pipeline.retrain(s, on_pass="later")
    with pytest.raises(ValidationError, match="pass release_with=core.monitoring.release.after_gate"):
        pipeline.retrain(s, on_pass="canary")             # training knows nothing of releases: it is handed them
    assert len(tracking.list_jobs(s)) == jobs


@pytest.mark.slow
def test_the_cli_retrain_on_pass_option(world, capsys):
    from core import cli
    s, _ = world
    home = ["--home", str(s.home)]
    assert cli.main([*home, "retrain", "--on-pass", "canary", "--json"]) == 0
    out = capsys.readouterr().out
    result = json.loads(out[out.index("{"):])
    assert result["on_pass"] == "canary" and not result["promoted"] and result["gate"]["promote"]
    assert result["release"]["state"] == "active" and deployments.active(s)["version"] == result["version"]
    assert cli.main([*home, "retrain", "--on-pass", "canary"]) == 0                   # waits for the running canary
    assert "waits for release #" in capsys.readouterr().out
    assert cli.main([*home, "retrain", "--on-pass", "sometimes"]) == 1
    assert "--on-pass" in capsys.readouterr().err


# ------------------------------------------------------------------ the Training page's retrain form
APP = str(__import__("pathlib").Path(__file__).resolve().parents[1] / "dashboard" / "app.py")


@pytest.fixture
def dash(world, monkeypatch):
    import streamlit as st
    from core.privacy import access
    from core.serving import serving
    st.cache_data.clear()
    st.cache_resource.clear()
    serving.clear_caches()
    monkeypatch.setenv("RETRO_HOME", str(world[0].home))
    access.add_operator(world[0], "tester", "s3cret-token")
    return world


def training_page():
    from streamlit.testing.v1 import AppTest
    at = AppTest.from_file(APP, default_timeout=120).run()
    at.session_state["operator"] = ("tester", "s3cret-token")
    return at.switch_page("views/training.py").run()


@pytest.mark.slow
def test_the_training_page_retrains_into_a_canary_by_default_and_says_when_one_waits(dash):
    s, other = dash
    prod = registry.production(s)["version"]
    at = training_page()
    assert at.radio(key="on_pass").value == "canary"
    at.button(key="retrain").click().run()
    assert not at.exception and not at.error
    active = deployments.active(s)
    assert registry.production(s)["version"] == prod and active["started_by"] == "operator:tester"
    assert any(m.value.startswith("Run ") and f"now in canary release #{active['deployment_id']}" in m.value
               for m in at.success)
    assert tracking.list_jobs(s).iloc[0]["trigger"] == "dashboard"
    # Now a release runs: the form says a passing candidate waits for it, and a second retrain does.
    simulation.simulate(s, 1)
    at = training_page()
    assert any(f"Release #{active['deployment_id']} (canary of v{active['version']}" in c.value
               and "waits for it" in c.value for c in at.caption)
    at.button(key="retrain").click().run()
    assert not at.exception
    assert any(f"waits for release #{active['deployment_id']}" in m.value for m in at.info)
    assert deployments.active(s)["deployment_id"] == active["deployment_id"]
    waiting = release.pending(s)["version"]
    assert any(f"v{waiting} is waiting now" in c.value for c in training_page().caption)
