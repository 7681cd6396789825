"""The CLI cannot be crashed (issue 11.4): adversarial arguments exit 0, or 1 with one line `error: ...`.

Hypothesis drives every command in-process (`cli.main(argv)`), so an uncaught exception fails the test
with its traceback and a `SystemExit(2)` from argparse is caught as what it is. A few cases also run
as real processes (the exit status and stderr a shell sees, a closed pipe).
"""
import contextlib
import io
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import private_copy
from hypothesis import HealthCheck, given, settings as hyp_settings, strategies as st

from core import cli
from core.training import pipeline
from core.simulation import simulation
from core.settings import load_settings

ROOT = Path(__file__).resolve().parents[1]

NASTY = ["2" + "0" * 19, str(2**63), str(2**63 - 1), str(2**70), str(-2**63 - 1), "-1", "0", "-0", "1e309",
         "nan", "NaN", "inf", "-inf", "1.5", "0x10", "1_000", "", " ", "\x00", "a\x00b", "\u202e", "é", "☃",
         "--", "-", "--json", "../..", "~nonexistentuser/x", "/dev/null", "%s%n", "'; DROP TABLE users; --",
         "9" * 400, "\t", "\n", "2026-13-45", "-001-01-01T00:00:00", "1e13"]
# Values whose valid range is cheap to run: any value at all. The rest (days to simulate, world sizes,
# seeds of a retrain) only get values outside their range, so the test stays fast.
any_value = st.one_of(st.sampled_from(NASTY), st.integers(-2**80, 2**80).map(str),
                      st.floats(allow_nan=True, allow_infinity=True).map(repr),
                      st.text(st.characters(blacklist_categories=("Cs",)), max_size=12))
out_of_range = st.one_of(st.sampled_from([v for v in NASTY if v not in ("0", "-0", "1.5")]),
                         st.integers(2**40, 2**80).map(str), st.integers(-2**80, -1).map(str))

# Every command with a slot `{}` for the adversarial value (and `{o}` for an out-of-range-only slot).
TEMPLATES = [
    "init --users {o}", "init --movies {o}", "init --days {o}", "init --seed {o}",
    "simulate --days {o}", "simulate --days 1 --open-loop --shift {}", "simulate --days 1 --open-loop --shift viral --movie {o}",
    "simulate --days 1 --open-loop --shift trend --genre {}", "simulate --days 1 --open-loop --shift trend --strength {o}",
    "simulate --days 1 --open-loop --shift trend --duration {o}", "simulate --days {o} --policy {}",
    "top50 --m {}", "top50 --limit {}", "rate --user {} --movie 1 --rating 5", "rate --user 1 --movie {} --rating 5",
    "rate --user 1 --movie 1 --rating {}", "rate --user 1 --movie 1 --rating 5 --at {}",
    "import-movielens {}", "stats {}", "etl {}", "train --seed {o}", "train --holdout-days {o}", "train --model {}",
    "evaluate --version {}", "evaluate --holdout-days {}", "retrain --margin {o}", "retrain --seed {o}",
    "models promote {}", "models rollback --reason {}", "models {}", "runs show {}", "runs list --limit {}",
    "runs {}", "monitor {}", "alerts {}", "policy set scheduled --every-days {}", "policy set {}", "policy {}",
    "explain --user {} --movie 1", "explain --user 1 --movie {}", "audit --user {}", "audit --user 1 --day {}",
    "audit --user 1 --limit {}", "model-card {}", "model-card 1 --format {}", "diagnose --user {}",
    "explain --user {} --churn",
    "operators add {} --role analyst", "operators add x1 --role {}", "operators disable {}", "operators enable {}",
    "operators reset-token {}", "operators {}", "operators audit --limit {}", "operators list --role {}",
    "privacy rotate-key {}",
    "privacy consent --user {}", "privacy consent --user 1 --tracking {}", "privacy export --user {}",
    "privacy forget --user {o}", "privacy retention --days {o}", "privacy {}", "recommend --user {}",
    "recommend --user 1 --k {}", "{}", "--home {} stats", "recommend {}", "release {}", "release start {}",
    "release start 1 --share {o}", "release ramp --share {o}", "simulate --days 1 --serve-url {}",
    "clients add {}", "clients revoke {}", "clients {}",
]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = load_settings(tmp_path_factory.mktemp("hostile_base"))
    simulation.init_world(base, seed=4, users=120, movies=60, days=6)
    pipeline.retrain(base, trigger="test", with_ranker=False)
    return private_copy(base, tmp_path_factory.mktemp("hostile") / "w")


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(argv)
        except SystemExit as exc:          # only --help may exit this way, with status 0
            code = exc.code if isinstance(exc.code, int) else 1
            assert code == 0, f"{argv}: SystemExit({exc.code!r}) — argparse's exit 2 leaked"
    return code, out.getvalue(), err.getvalue()


def _check(argv, code, err):
    assert code in (0, 1), f"{argv}: exit {code}\n{err}"
    if code == 1:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), f"{argv}: stderr is not one error line:\n{err}"
    assert "Traceback" not in err


@pytest.mark.slow
@hyp_settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                       HealthCheck.too_slow])
@given(template=st.sampled_from(TEMPLATES), value=any_value, bad=out_of_range)
def test_any_argument_exits_0_or_1_with_one_error_line(world, tmp_path, monkeypatch, template, value, bad):
    monkeypatch.chdir(tmp_path)                           # odd relative paths land in a scratch folder
    argv = ["--home", str(world.home)] + template.replace("{o}", "\0SLOT_O\0").split()
    argv = [value if a == "{}" else bad if a == "\0SLOT_O\0" else a for a in argv]
    if template.startswith("--home"):                      # a relative folder: never the real / or ~
        argv = argv[2:]
        argv[1] = "./" + argv[1]
    code, _, err = _run(argv)
    _check(argv, code, err)


@pytest.mark.parametrize("argv, message", [
    (["recommend", "--user", str(2**63)], "out of range"),
    (["train", "--seed", str(2**70)], "seed must be in 0..4294967295"),
    (["train", "--seed", "-1"], "seed must be in 0..4294967295"),
    (["privacy", "retention", "--days", str(2**70)], "--days must be in 1..36500"),
    (["evaluate", "--holdout-days", "100000"], "--holdout-days must be in 1..365"),
    (["train", "--holdout-days", "300", "--json"], "leaves no training data"),
    (["retrain", "--margin", "-1"], "--margin must be in [0, 1]"),
    (["retrain", "--margin", "nan"], "finite number"),
    (["simulate", "--days", "1", "--open-loop", "--shift", "viral", "--movie", "-1"], "out of range"),
    (["simulate", "--days", "1", "--open-loop", "--shift", "viral", "--movie", "99999"], "unknown movie 99999"),
    (["policy", "set", "scheduled", "--every-days", str(2**70)], "--every-days must be in 1..365"),
    (["rate", "--user", "1", "--movie", "1", "--rating", "5", "--at", "-1"], "not a timestamp"),
    (["nosuch"], "invalid choice"),
    (["recommend", "--user", "abc"], "is not an integer"),
])
def test_each_reported_crash_is_a_one_line_error(world, argv, message):
    """The cases issue 11 found (tracebacks, argparse's exit 2, or silently accepted)."""
    code, _, err = _run(["--home", str(world.home)] + argv)
    assert code == 1 and err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1


def test_a_home_that_cannot_be_resolved_is_an_error():
    code, _, err = _run(["--home", "~nonexistentuser/x", "stats"])
    assert code == 1 and err.startswith("error: --home")


def test_real_process_exit_status_and_closed_pipe(world):
    proc = subprocess.run([sys.executable, "-m", "core", "--home", str(world.home), "recommend", "--user", str(2**63)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
    # `runs list --json | head -1`: the reader leaves early; no BrokenPipeError traceback.
    shell = f"{sys.executable} -m core --home {world.home} top50 --json | head -c 10"
    proc = subprocess.run(["bash", "-c", shell], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr
