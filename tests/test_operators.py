"""Issue 13.3: who may change production, the policy or personal data, and the audit of every such action;
reading commands never create a data folder."""
import contextlib
import io

import pytest

from core import cli
from core.errors import NoDataFolder
from core.settings import load_settings

# One valid command line per command that needs an existing data folder (all but init and import-movielens).
NEEDS_A_HOME = {
    "simulate": "simulate --days 1", "top50": "top50", "rate": "rate --user 1 --movie 1 --rating 5",
    "stats": "stats", "etl": "etl", "train": "train", "evaluate": "evaluate", "retrain": "retrain",
    "models": "models list", "runs": "runs list", "monitor": "monitor", "alerts": "alerts",
    "policy": "policy show", "explain": "explain --user 1 --movie 1", "audit": "audit --user 1",
    "model-card": "model-card 1", "diagnose": "diagnose", "privacy": "privacy consent --user 1",
    "recommend": "recommend --user 1", "serve": "serve --port 0", "release": "release status",
    "churn": "churn status", "operators": "operators list",
    "clients": "clients list", "ads": "ads campaigns", "mlflow": "mlflow export",
}


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(argv)
    return code, out.getvalue(), err.getvalue()


# ------------------------------------------------------------------ no data folder
def test_every_command_but_the_creating_ones_is_listed():
    assert set(NEEDS_A_HOME) == set(cli.COMMANDS) - set(cli.CREATES_HOME)


@pytest.mark.parametrize("command", sorted(NEEDS_A_HOME))
@pytest.mark.parametrize("json_flag", [[], ["--json"]])
def test_a_command_on_a_missing_home_says_so_and_creates_nothing(tmp_path, command, json_flag):
    missing = tmp_path / "no" / "such"
    code, out, err = run_cli(["--home", str(missing), *NEEDS_A_HOME[command].split(), *json_flag])
    assert code == 1 and out == ""
    assert err.strip().splitlines() == [f"error: no data folder at {missing}; run `python -m core init` or "
                                        "`import-movielens` first"]
    assert not missing.exists() and not missing.parent.exists()


def test_init_still_creates_its_folder(tmp_path):
    home = tmp_path / "new"
    code, _, err = run_cli(["--home", str(home), "init", "--users", "20", "--movies", "20", "--days", "1"])
    assert code == 0, err
    assert (home / "retro.db").exists()


def test_load_settings_can_refuse_to_create(tmp_path):
    with pytest.raises(NoDataFolder, match="no data folder at"):
        load_settings(tmp_path / "x", create=False)
    assert not (tmp_path / "x").exists()
    assert load_settings(tmp_path / "y").home.is_dir()        # the default still creates (dashboard first start)


# ------------------------------------------------------------------ CLI actions are audited as cli:<user>
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from core.training import pipeline
    from core.simulation import simulation
    base = load_settings(tmp_path_factory.mktemp("ops_base"))
    simulation.init_world(base, seed=4, users=150, movies=80, days=6)
    pipeline.retrain(base, trigger="test", with_ranker=False)
    return base


@pytest.fixture
def world(trained, tmp_path):
    from conftest import private_copy
    return private_copy(trained, tmp_path / "w")


def audit_rows(settings):
    from core.privacy import access
    return access.audit_log(settings).iloc[::-1].to_dict("records")    # oldest first


def test_cli_retrain_promote_rollback_and_policy_write_operator_audit_rows(world):
    from core.privacy import access
    from core.training import registry
    home = ["--home", str(world.home)]
    me = access.cli_actor()
    assert run_cli(home + ["retrain", "--json"])[0] == 0
    v2 = int(registry.list_versions(world)["version"].max())
    if registry.production(world)["version"] != v2:
        assert run_cli(home + ["models", "promote", str(v2), "--force", "--reason", "test"])[0] == 0
    code, out, err = run_cli(home + ["models", "rollback", "--json"])
    assert code == 0, err
    assert run_cli(home + ["policy", "set", "scheduled", "--every-days", "3"])[0] == 0
    code, _, err = run_cli(home + ["models", "promote", "999"])
    assert code == 1 and err.startswith("error: ")
    rows = audit_rows(world)
    assert {r["actor"] for r in rows} == {me}
    assert [(r["action"], r["outcome"]) for r in rows if r["action"] != "promote"] == [
        ("retrain", "ok"), ("rollback", "ok"), ("policy", "ok")]
    assert rows[0]["target"].startswith(f"v{v2} ")
    assert [r for r in rows if r["action"] == "rollback"][0]["target"] == f"v{registry.production(world)['version']}"
    assert [r for r in rows if r["action"] == "policy"][0]["target"] == "scheduled every 3 days"
    assert [r["outcome"] for r in rows if r["action"] == "promote"][-1] == "failed"
    assert [r["target"] for r in rows if r["action"] == "promote"][-1] == "v999"


def test_cli_promote_keeps_its_json_contract_and_is_audited(world):
    import json
    from core.privacy import access
    from core.training import pipeline, registry
    before = registry.production(world)["version"]
    # a registered candidate (no gate, so never already in production) with a deliberately weak configuration
    v2 = registry.register(world, pipeline.train(world, seed=3, params={"factors": 2, "iterations": 1}).run_id)
    assert registry.get_version(world, v2)["stage"] == "candidate"
    code, out, err = run_cli(["--home", str(world.home), "models", "promote", str(v2), "--force", "--json"])
    assert code == 0, err
    promoted = json.loads(out)
    assert set(promoted) == {"promoted", "replaced", "forced"}
    assert (promoted["promoted"], promoted["replaced"]) == (v2, before)
    assert registry.production(world)["version"] == v2
    (row,) = audit_rows(world)
    assert (row["actor"], row["action"], row["target"], row["outcome"]) == (access.cli_actor(), "promote",
                                                                            f"v{v2} (forced)", "ok")


def test_cli_closed_loop_simulate_is_audited(world):
    from core.privacy import access
    code, _, err = run_cli(["--home", str(world.home), "simulate", "--days", "1", "--policy", "manual", "--json"])
    assert code == 0, err
    (row,) = audit_rows(world)
    assert (row["actor"], row["action"], row["outcome"]) == (access.cli_actor(), "simulate", "ok")
    assert row["target"] == "1 days closed loop, 0 retrains"


# ------------------------------------------------------------------ the dashboard guards what changes production
APP = str(__import__("pathlib").Path(__file__).resolve().parents[1] / "dashboard" / "app.py")
OPERATOR = ("tester", "s3cret-token")


@pytest.fixture
def dash(world, monkeypatch):
    """The trained world copy, pointed to by RETRO_HOME, with Streamlit's and core's caches emptied."""
    import streamlit as st
    from core.privacy import access
    from core.serving import serving
    st.cache_data.clear()
    st.cache_resource.clear()
    serving.clear_caches()
    monkeypatch.setenv("RETRO_HOME", str(world.home))
    access.add_operator(world, *OPERATOR)
    return world


def page(path, signed_in: bool, timeout=120):
    from streamlit.testing.v1 import AppTest
    at = AppTest.from_file(APP, default_timeout=timeout).run()
    if signed_in:
        at.session_state["operator"] = OPERATOR
    return at.switch_page(path).run()


def outcomes(settings):
    return [(r["actor"], r["action"], r["target"], r["outcome"]) for r in audit_rows(settings)]


def test_an_anonymous_retrain_is_refused_and_audited(dash):
    from core.training import registry, tracking
    runs, prod = len(tracking.list_runs(dash)), registry.production(dash)["version"]
    at = page("views/training.py", signed_in=False)
    at.button(key="retrain").click().run()
    assert not at.exception
    assert any("run a retrain needs an operator login" in e.value for e in at.error)
    assert len(tracking.list_runs(dash)) == runs and registry.production(dash)["version"] == prod
    assert outcomes(dash) == [("anonymous", "run a retrain", "no login", "denied")]


def test_a_signed_in_retrain_is_audited_with_the_operators_name(dash):
    from core.training import registry, tracking
    at = page("views/training.py", signed_in=True)
    at.button(key="retrain").click().run()
    assert not at.exception and not at.error
    version = int(registry.list_versions(dash)["version"].max())
    ((actor, action, target, outcome),) = outcomes(dash)
    assert (actor, action, outcome) == ("operator:tester", "retrain", "ok") and target.startswith(f"v{version} ")
    assert tracking.list_jobs(dash).iloc[0]["trigger"] == "dashboard"
    assert "operator:dashboard" not in set(registry.history(dash)["actor"])


def test_the_drift_scenario_needs_an_operator_and_is_audited(dash):
    from core.monitoring import monitoring
    at = page("views/drift.py", signed_in=False)
    at.number_input(key="days").set_value(1)
    at.selectbox(key="policy").set_value("on-alert")
    at.button(key="FormSubmitter:scenario-Run scenario").click().run()
    assert any("run a scenario needs an operator login" in e.value for e in at.error)
    assert monitoring.history(dash)["days"].empty
    at.session_state["operator"] = OPERATOR
    at.button(key="FormSubmitter:scenario-Run scenario").click().run()
    assert not at.exception and any("Simulated 1 day:" in s.value for s in at.success)
    assert len(monitoring.history(dash)["days"]) == 1
    denied, done = outcomes(dash)
    assert denied == ("anonymous", "run a scenario", "no login", "denied")
    retrains = sum(1 for a in monitoring.history(dash)["actions"].to_dict("records") if a["kind"] == "retrain")
    assert done == ("operator:tester", "simulate", f"1 days closed loop, policy on-alert, {retrains} retrains", "ok")


def test_a_policy_change_on_the_dashboard_needs_an_operator_and_is_audited(dash):
    from core.monitoring import policy
    before = policy.get_policy(dash)["mode"]
    at = page("views/drift.py", signed_in=False)
    at.selectbox(key="policy_mode").set_value("scheduled")
    at.number_input(key="policy_every").set_value(4)
    at.button(key="FormSubmitter:policy_form-Save policy").click().run()
    assert policy.get_policy(dash)["mode"] == before
    at.session_state["operator"] = OPERATOR
    at.button(key="FormSubmitter:policy_form-Save policy").click().run()
    assert not at.exception and policy.get_policy(dash)["mode"] == "scheduled"
    assert outcomes(dash) == [("anonymous", "change the retraining policy", "no login", "denied"),
                              ("operator:tester", "policy", "scheduled every 4 days", "ok")]


def test_audited_logs_ok_or_failed_and_reraises(world):
    from core.privacy import access
    from core.errors import ValidationError
    with access.audited(world, "operator:x", "rollback") as entry:
        entry["target"] = "v1"
    with pytest.raises(ValidationError, match="boom"):
        with access.audited(world, "cli:y", "promote", "v9"):
            raise ValidationError("boom")
    assert outcomes(world) == [("operator:x", "rollback", "v1", "ok"), ("cli:y", "promote", "v9", "failed")]
