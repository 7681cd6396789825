"""`make test-fast` selects by marker; a test that needs PostgreSQL must carry `postgresql`, or the fast run (which
installs neither psycopg nor the server) would start it."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _collected(*args: str) -> list[str]:
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *args],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if "::" in line]


@pytest.mark.slow       # two collections in fresh processes (about 5 s)
def test_the_postgresql_runs_and_only_they_carry_the_postgresql_marker():
    modules = ["tests/test_writes.py", "tests/test_postgres.py"]
    marked = _collected("-m", "postgresql", *modules)
    everything = _collected(*modules)
    assert set(marked) <= set(everything)
    unmarked = [t for t in everything if t not in set(marked)]
    # test_writes.py runs on both backends: its PostgreSQL half is marked, its SQLite half is not.
    writes_pg = [t for t in marked if t.startswith("tests/test_writes.py")]
    assert writes_pg and all("postgresql" in t for t in writes_pg)
    assert not [t for t in unmarked if t.startswith("tests/test_writes.py") and "postgresql" in t]
    assert len(writes_pg) == len([t for t in unmarked if t.startswith("tests/test_writes.py") and "sqlite" in t])
    # Tests that take the server through its fixtures (no `backend` parameter) are marked too.
    assert "tests/test_postgres.py::test_the_fixture_starts_a_real_server_on_loopback" in marked
    # What needs no server stays in the fast run.
    assert any(t.startswith("tests/test_postgres.py::test_translate") for t in unmarked)


@pytest.mark.slow       # a collection in a fresh process (about 3 s)
def test_every_test_that_takes_the_spark_session_carries_the_spark_marker():
    """Some Spark tests take the session without the decorator (through the twin world, or directly); the marker
    comes from the fixture, so the fast run never starts a JVM."""
    fast = _collected("-m", "not spark", "tests/test_spark.py")
    assert fast and all("spark_session" not in t for t in fast)
    names = {t.split("::")[1].split("[")[0] for t in fast}
    assert names == {"test_a_missing_piece_is_named_with_its_install_command",
                     "test_the_embedded_default_imports_no_pyspark",
                     "test_etl_with_the_spark_engine_but_no_pyspark_says_so_in_one_line"}
