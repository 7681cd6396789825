"""The CLI: every command documented in --help, JSON contracts, one-line errors."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from core import cli

ROOT = Path(__file__).resolve().parents[1]


def run(*args, home):
    proc = subprocess.run([sys.executable, "-m", "core", "--home", str(home), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture(scope="module")
def world_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("cli-world")
    code, out, err = run("init", "--users", "150", "--movies", "80", "--days", "4", "--seed", "3", "--json", home=home)
    assert code == 0, err
    summary = json.loads(out)
    assert summary["stats"]["movies"] == 80 and summary["stats"]["users"] >= 150
    return home


def test_every_command_has_help_and_is_in_readme(capsys):
    """Every command has --help, a row in the README's command table and a row of detail in docs/cli.md."""
    readme = (ROOT / "README.md").read_text()
    reference = (ROOT / "docs" / "cli.md").read_text()
    for name in cli.COMMANDS:          # in-process (a subprocess per command cost 2 s each): same parser, same exit
        with pytest.raises(SystemExit) as done:
            cli.main([name, "--help"])
        out = capsys.readouterr().out
        assert done.value.code == 0 and "usage:" in out and name in out
        assert f"`{name}" in readme or f"core {name}" in readme, f"command {name} is not documented in README.md"
        assert re.search(rf"^\| `{re.escape(name)}[ `]", reference, re.M), \
            f"command {name} has no row in docs/cli.md's command table"
    # ... and once as the real process a user starts
    proc = subprocess.run([sys.executable, "-m", "core", "init", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0 and "usage:" in proc.stdout


def test_stats_json_contract(world_home):
    code, out, _ = run("stats", "--json", home=world_home)
    data = json.loads(out)
    assert code == 0
    assert set(data) >= {"users", "movies", "ratings", "rating_history", "events", "events_by_kind",
                         "rejected_writes", "first_activity_at", "last_activity_at", "clock", "sim_day"}
    assert data["sim_day"] == 4 and data["clock"] == "2026-01-05T00:00:00"
    assert sum(data["events_by_kind"].values()) == data["events"]


def test_top50_json_matches_core(world_home):
    code, out, _ = run("top50", "--json", "--limit", "5", home=world_home)
    data = json.loads(out)
    assert code == 0 and set(data) == {"m", "C", "movies"}
    assert [r["rank"] for r in data["movies"]] == list(range(1, len(data["movies"]) + 1))
    assert set(data["movies"][0]) == {"rank", "movie_id", "title", "year", "genres", "votes", "mean_rating", "weighted_rating"}
    wrs = [r["weighted_rating"] for r in data["movies"]]
    assert wrs == sorted(wrs, reverse=True)
    assert all(r["votes"] >= data["m"] for r in data["movies"])


@pytest.mark.slow   # real processes / a retrain or closed-loop days
def test_rate_round_trip_and_errors(world_home):
    code, out, _ = run("rate", "--user", "1", "--movie", "2", "--rating", "9", "--json", home=world_home)
    assert code == 0 and json.loads(out)["rating"] == 9
    for args, message in [(("--rating", "11"), "outside 1..10"), (("--rating", "7.5"), "not an integer"),
                          (("--rating", "5", "--at", "2999-01-01T00:00:00"), "after the service clock")]:
        code, out, err = run("rate", "--user", "1", "--movie", "2", *args, home=world_home)
        assert code == 1 and out == ""
        assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1
    code, _, err = run("rate", "--user", "99999", "--movie", "2", "--rating", "5", home=world_home)
    assert code == 1 and "unknown user 99999" in err and "Traceback" not in err


@pytest.mark.slow   # real processes / a retrain or closed-loop days
def test_user_mistakes_are_one_line(tmp_path):
    code, _, err = run("simulate", "--days", "2", home=tmp_path)      # an empty folder is no data folder yet
    assert code == 1 and "run `python -m core init`" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []
    code, _, err = run("import-movielens", str(tmp_path), home=tmp_path)
    assert code == 1 and "not a MovieLens folder" in err
    code, _, err = run("init", "--users", "150", "--movies", "80", "--days", "1", home=tmp_path)
    assert code == 0
    code, _, err = run("init", "--users", "150", "--movies", "80", "--days", "1", home=tmp_path)
    assert code == 1 and "--force" in err


@pytest.mark.slow   # real processes / a retrain or closed-loop days
def test_simulate_with_shift_json(tmp_path):
    assert run("init", "--users", "120", "--movies", "60", "--days", "2", home=tmp_path)[0] == 0
    code, out, err = run("simulate", "--days", "2", "--shift", "trend", "--genre", "Western", "--json", home=tmp_path)
    assert code == 0, err
    data = json.loads(out)
    assert data["shift"]["kind"] == "trend" and data["shift"]["params"]["genre"] == "Western"
    assert data["first_day"] == 2 and data["last_day"] == 3
    code, _, err = run("simulate", "--days", "1", "--shift", "trend", "--genre", "Cowboy", home=tmp_path)
    assert code == 1 and "unknown genre 'Cowboy'" in err
