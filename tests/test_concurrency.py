"""Readers and writers of one data folder at the same time (issue 11): a reader in another process never
makes a writer fail, never sees half of a write, and a failed write leaves the warehouse as it was."""
import hashlib
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import private_copy
from core.warehouse import etl, warehouse
from core.simulation import simulation
from core.store.locks import StoreBusy

ROOT = Path(__file__).resolve().parents[1]
COUNTS = "SELECT (SELECT count(*) FROM fact_interaction), (SELECT max(version) FROM data_versions)"


@pytest.fixture
def world(small_world, tmp_path):
    return private_copy(small_world, tmp_path / "home")


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def hold_warehouse_open(settings):
    """A second process that opens the warehouse for a read and keeps it open until its stdin closes."""
    code = textwrap.dedent(f"""
        import sys
        from core.warehouse import warehouse
        from core.settings import load_settings
        with warehouse.session(load_settings({str(settings.home)!r})) as con:
            print(con.execute({COUNTS!r}).fetchone(), flush=True)
            sys.stdin.read()
            print(con.execute({COUNTS!r}).fetchone(), flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    first = proc.stdout.readline()
    assert first, proc.stderr.read()
    return proc, first


@pytest.mark.slow   # a million rows / a second process / a world built twice
def test_etl_succeeds_while_another_process_holds_the_warehouse_open(world):
    etl.run_etl(world)
    simulation.simulate(world, 1)
    reader, seen_before = hold_warehouse_open(world)
    try:
        result = etl.run_etl(world)           # before issue 11: DuckDB IOException "Could not set lock on file"
    finally:
        out, err = reader.communicate("", timeout=60)
    assert reader.returncode == 0, err
    assert result.status == "loaded" and result.rows_loaded > 0
    # The open reader kept its snapshot: the same numbers before and after the write, never half of it.
    assert out.strip() == seen_before.strip()
    with warehouse.session(world) as con:     # a new reader sees the new version
        facts, version = con.execute(COUNTS).fetchone()
    assert version == result.data_version and f"({facts}, {version})" != seen_before.strip()


def test_a_reader_connection_is_a_snapshot_within_one_process(world):
    etl.run_etl(world)
    simulation.simulate(world, 1)
    with warehouse.session(world) as old:
        before = old.execute(COUNTS).fetchone()
        result = etl.run_etl(world)
        assert old.execute(COUNTS).fetchone() == before
        with warehouse.session(world) as new:     # not DuckDB's cached instance of the old file
            assert new.execute(COUNTS).fetchone() == (before[0] + result.rows_loaded, result.data_version)


def test_a_failed_write_leaves_the_file_untouched_and_no_leftovers(world):
    etl.run_etl(world)
    before = digest(world.warehouse)
    with pytest.raises(RuntimeError, match="injected"):
        with warehouse.transaction(world) as con:
            con.execute("DELETE FROM fact_interaction")
            raise RuntimeError("injected")
    assert digest(world.warehouse) == before
    assert sorted(p.name for p in world.home.glob("warehouse.duckdb*")) == ["warehouse.duckdb"]


def test_a_write_leaves_no_wal_and_readers_need_no_write_access(world):
    etl.run_etl(world)
    simulation.simulate(world, 1)
    etl.run_etl(world)
    assert not Path(f"{world.warehouse}.wal").exists()
    world.warehouse.chmod(0o444)              # readers open the file read-only
    try:
        assert warehouse.query(world, "SELECT count(*) AS n FROM fact_interaction")["n"][0] > 0
    finally:
        world.warehouse.chmod(0o644)


def test_a_data_folder_whose_path_has_a_quote(small_world, tmp_path):
    world = private_copy(small_world, tmp_path / "o'brien")
    assert etl.run_etl(world).status == "loaded"
    assert warehouse.query(world, "SELECT count(*) AS n FROM data_versions")["n"][0] == 1


def test_reads_that_keep_failing_raise_a_named_error(world, monkeypatch):
    import duckdb
    etl.run_etl(world)

    def locked(path, read_only):
        raise duckdb.IOException('IO Error: Could not set lock on file "warehouse.duckdb"')
    monkeypatch.setattr(warehouse, "_open", locked)
    monkeypatch.setattr(warehouse, "READ_RETRY_SECONDS", 0.1)
    with pytest.raises(StoreBusy, match="cannot be opened for reading"):
        warehouse.query(world, "SELECT 1")


@pytest.mark.slow
@pytest.mark.both_backends
def test_soak_simulate_etl_reads_and_pages_at_once(tmp_path, backend_settings):
    """About 20 s of simulate + ETL + CLI reads (serving included) + dashboard renders, each in its own process,
    with the stores in SQLite and in PostgreSQL (RETRO_DATABASE_URL reaches the child processes): 0 failures,
    and every simulated day has its monitoring record."""
    sys.path.insert(0, str(ROOT))
    from benchmarks.bench_soak import build_world, markdown, run_soak
    home = tmp_path / "home"
    build_world(home)
    result = run_soak(home, seconds=20, grace=25)
    report = markdown(result)
    assert not result["hung"] and not result["crashed"], report
    assert result["failures"] == [], report
    assert all(a["runs"] > 0 for a in result["actors"].values()), report
    assert result["days_simulated"] > 0 and result["days_without_record"] == [], report
