"""The Spark engine on a real standalone cluster: a master and two workers (1 core, 1g each) started by the fixture
from the pyspark distribution's own launcher on 127.0.0.1 (tests/spark_cluster.py), and tests/test_spark.py run
again, in another process, with RETRO_SPARK_MASTER pointing at it — the same equivalence tests (row-for-row
tables, data-version hashes, ALS within 10 % of `implicit`, erasure and re-keying of the lake) with executors
that share nothing with the driver but the lake folder (one machine: a local path is a shared one).

Marked `spark` and `slow`: `make test` runs it, `make test-fast` does not. Without pyspark or Java it is skipped
with the reason, unless CI=true (then it fails, like tests/test_spark.py).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.warehouse import spark as engine

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.spark, pytest.mark.slow]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    try:
        engine.check_available()
    except engine.EngineUnavailable as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but the Spark engine is not installed: {exc}")
        pytest.skip(f"Spark engine not installed: {exc}")
    from spark_cluster import standalone_cluster
    with standalone_cluster(tmp_path_factory.mktemp("spark-cluster"), workers=2, cores=1, memory="1g") as c:
        yield c


def test_the_cluster_has_a_master_and_two_workers_of_one_core(cluster):
    status = cluster.status()
    alive = [w for w in status["workers"] if w["state"] == "ALIVE"]
    assert len(alive) == 2 and all(w["cores"] == 1 and w["memory"] == 1024 for w in alive)
    assert cluster.url.startswith("spark://127.0.0.1:")


def test_the_spark_engines_tests_pass_against_the_cluster(cluster, tmp_path):
    """tests/test_spark.py in a fresh process (one SparkContext per process), its session on the cluster."""
    env = dict(os.environ, RETRO_SPARK_MASTER=cluster.url, RETRO_SPARK_DRIVER_MEMORY="1g",
               RETRO_SPARK_SHUFFLE_PARTITIONS="4")
    env.pop("RETRO_ENGINE", None)
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "pytest", "tests/test_spark.py", "-q", "-p", "no:cacheprovider",
                          "-rfE", f"--basetemp={tmp_path / 'run'}"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    took = time.monotonic() - started
    failed = [line for line in out.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))]
    (tmp_path / "test_spark-on-cluster.log").write_text(out.stdout + out.stderr)   # the whole run, for a failure
    tail = "\n".join(failed) + "\n" + out.stdout[-6000:] + out.stderr[-2000:]
    assert out.returncode == 0, tail
    passed = int(re.search(r"(\d+) passed", out.stdout).group(1))
    assert passed >= 12 and "skipped" not in out.stdout.splitlines()[-1], tail
    status = cluster.status()
    apps = status["completedapps"] + status["activeapps"]
    assert any(a["name"] == "retro-movies" for a in apps), "the tests' session did not run on the cluster"
    print(f"tests/test_spark.py on {cluster.url}: {passed} passed in {took:.0f} s")
