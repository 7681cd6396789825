"""Issue 11, part 5: owner-only data folder, throttled and audited operator sign-in."""
import os
import stat

import pytest

from core import access, etl, pipeline, privacy, serving, simulation
from core.settings import load_settings
from tests.conftest import SMALL_WORLD


def _modes(home):
    """{relative path: mode} for the folder itself and everything under it."""
    modes = {".": stat.S_IMODE(os.stat(home).st_mode)}
    for root, dirs, files in os.walk(home):
        for name in dirs + files:
            path = os.path.join(root, name)
            modes[os.path.relpath(path, home)] = stat.S_IMODE(os.lstat(path).st_mode)
    return modes


def _loose(home):
    """Paths whose mode is not 0700 (folders) / 0600 (files)."""
    return {p: oct(m) for p, m in _modes(home).items()
            if m != (0o700 if os.path.isdir(os.path.join(home, p)) else 0o600)}


@pytest.fixture
def permissive_umask():
    """The usual 022 umask, so files come out 0644 unless the platform sets their mode itself."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_a_fresh_trained_data_folder_is_owner_only(tmp_path, permissive_umask):
    """Every file 0600 and every folder 0700 after init + ETL + training + an erasure.

    Fails on the code before the fix: the databases, warehouse.duckdb, world.npz and the
    model bundles were created 0644 (folders 0755) under a 022 umask; only secrets.toml and
    the lock file were 0600.
    """
    home = tmp_path / "not-yet-created" / "home"
    settings = load_settings(home)
    assert stat.S_IMODE(os.stat(home).st_mode) == 0o700
    access.ensure_operator(settings)
    simulation.init_world(settings, **SMALL_WORLD)
    etl.run_etl(settings)
    serving.clear_caches()
    result = pipeline.retrain(settings)
    assert result["ranker"] and "error" not in result["ranker"], result
    assert _loose(home) == {}
    assert {"retro.db", "mlops.db", "warehouse.duckdb", "world.npz", "secrets.toml", "models"} <= set(os.listdir(home))
    # An erasure rewrites model files and compacts the warehouse: they stay owner-only.
    privacy.forget_user(settings, 1, actor="test")
    assert _loose(home) == {}


def test_an_existing_data_folder_is_tightened_on_open(tmp_path, permissive_umask):
    """A data folder made by an older version (0755, a 0644 database) is tightened when opened.

    Fails on the code before the fix, which never changed an existing folder's mode."""
    from core import opsdb
    home = tmp_path / "old"
    home.mkdir(mode=0o755)
    os.chmod(home, 0o755)
    (home / "retro.db").touch()
    os.chmod(home / "retro.db", 0o644)
    settings = load_settings(home)
    opsdb.connect(settings).conn.close()
    assert _loose(home) == {}


def test_a_shared_folder_is_not_tightened(tmp_path):
    """A sticky, world-writable folder (like /tmp) that holds no platform files keeps its mode."""
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "someone-elses.txt").write_text("x")
    os.chmod(shared, 0o1777)
    load_settings(shared)
    assert stat.S_IMODE(os.stat(shared).st_mode) == 0o1777
