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
