"""The skip policy (tests/skip_policy.py): under CI=true a skip passes only for a documented optional part."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

import skip_policy

TESTS = Path(__file__).resolve().parent
SAMPLE = '''
import pytest

def test_movielens():
    pytest.skip("MovieLens data not found at /nowhere/ml-latest-small")

@pytest.mark.skipif(True, reason="MovieLens data not found at /nowhere")
def test_movielens_marked():
    pass

def test_world_not_as_expected():
    pytest.skip("the world has no ranker")

def test_runs():
    assert True
'''


def test_documented_reasons():
    assert skip_policy.documented("MovieLens data not found at ../shared/datasets/ml-latest-small")
    assert skip_policy.documented("Skipped: MovieLens data not found at /x")
    assert not skip_policy.documented("this platform registers no ranker next to the CF model")
    assert not skip_policy.documented("Spark engine not installed: no java")     # CI installs Java and pyspark


def run_sample(tmp_path, ci: bool) -> str:
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    env = {k: v for k, v in os.environ.items() if k != "CI"} | {"PYTHONPATH": str(TESTS)}
    if ci:
        env["CI"] = "true"
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "skip_policy", "-p", "no:cacheprovider",
                          "test_sample.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    return out.stdout


@pytest.mark.parametrize("ci, summary", [(True, "1 failed, 1 passed, 2 skipped"), (False, "1 passed, 3 skipped")])
def test_in_ci_an_undocumented_skip_fails(tmp_path, ci, summary):
    out = run_sample(tmp_path, ci)
    assert summary in out, out
    if ci:
        assert "test_world_not_as_expected" in out and "not a documented optional part" in out
