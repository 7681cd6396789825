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
    "recommend": "recommend --user 1",
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
    from core import pipeline, simulation
    base = load_settings(tmp_path_factory.mktemp("ops_base"))
    simulation.init_world(base, seed=4, users=150, movies=80, days=6)
    pipeline.retrain(base, trigger="test", with_ranker=False)
    return base


@pytest.fixture
def world(trained, tmp_path):
    from conftest import private_copy
    return private_copy(trained, tmp_path / "w")


def audit_rows(settings):
    from core import access
    return access.audit_log(settings).iloc[::-1].to_dict("records")    # oldest first


def test_cli_retrain_promote_rollback_and_policy_write_operator_audit_rows(world):
    from core import access, registry
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
    from core import access, pipeline
    v2 = pipeline.retrain(world, trigger="test", with_ranker=False)["version"]
    code, out, err = run_cli(["--home", str(world.home), "models", "promote", str(v2), "--force", "--json"])
    if code == 1:                                  # the gate already promoted it: nothing to promote
        pytest.skip(err)
    assert set(json.loads(out)) == {"promoted", "replaced", "forced"}
    (row,) = audit_rows(world)
    assert (row["actor"], row["action"], row["target"], row["outcome"]) == (access.cli_actor(), "promote",
                                                                            f"v{v2} (forced)", "ok")


def test_cli_closed_loop_simulate_is_audited(world):
    from core import access
    code, _, err = run_cli(["--home", str(world.home), "simulate", "--days", "1", "--policy", "manual", "--json"])
    assert code == 0, err
    (row,) = audit_rows(world)
    assert (row["actor"], row["action"], row["outcome"]) == (access.cli_actor(), "simulate", "ok")
    assert row["target"] == "1 days closed loop, 0 retrains"
