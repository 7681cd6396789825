"""Artifact paths relative to the data folder (issue 14).

Found: the registry stored absolute paths, so a folder copied with `cp -a A B` kept serving A's models —
`privacy forget --user U` in B exited 0 while B's production model (still `A/models/run-1`) held U's pseudonym —
and after `mv A elsewhere` B could not serve until a retrain.
"""
import shutil
import sqlite3

from pathlib import Path

import pytest
from conftest import private_copy

from core.store import mlopsdb
from core.privacy import erasure
from core.training import registry
from core.serving import serving
from core.training.artifacts import load_bundle
from core.pseudonym import pseudonym, pseudonym_key
from core.settings import load_settings


@pytest.fixture(scope="module")
def original(cf_world, tmp_path_factory):
    """A private copy (the test moves the folder away and back)."""
    return private_copy(cf_world, tmp_path_factory.mktemp("rel") / "A")


def test_paths_are_stored_relative_and_resolved_in_the_folder(original):
    with sqlite3.connect(original.mlops_db) as con:
        stored = {p for (p,) in con.execute("SELECT artifact_path FROM model_versions UNION "
                                            "SELECT artifact_path FROM runs WHERE artifact_path IS NOT NULL")}
    assert stored and all(p.startswith("models/") for p in stored)
    assert registry.production(original)["artifact_path"] == str(original.home / sorted(stored)[0])


def test_a_copied_folder_serves_and_erases_its_own_models(original, tmp_path):
    copy_home = tmp_path / "B"
    shutil.copytree(original.home, copy_home)              # what `cp -a A B` does
    moved = tmp_path / "A-elsewhere"
    shutil.move(str(original.home), moved)                 # and then `mv A elsewhere`
    try:
        b = load_settings(copy_home)
        serving.clear_caches()
        prod = registry.production(b)
        assert prod["artifact_path"].startswith(str(copy_home))
        user = 5
        assert serving.recommend(b, user, log=False).path == "model"   # B serves without A
        key = pseudonym(user, pseudonym_key(b))
        erasure.forget_user(b, user, actor="test")
        assert key not in set(load_bundle(prod["artifact_path"]).matrix.user_keys)
        a_bundle = load_bundle(moved / prod["artifact_path"][len(str(copy_home)) + 1:])
        assert key in set(a_bundle.matrix.user_keys)           # A was never touched
    finally:
        shutil.move(str(moved), original.home)
        serving.clear_caches()


def test_absolute_paths_of_an_older_version_are_made_relative(original, tmp_path):
    s = load_settings(tmp_path / "here")
    assert mlopsdb.stored_artifact_path(s, s.home / "models" / "run-3") == "models/run-3"
    assert mlopsdb.artifact_dir(s, "models/run-3") == s.home / "models" / "run-3"
    assert mlopsdb.artifact_dir(s, "/mnt/shared/run-3") == Path("/mnt/shared/run-3")      # outside: kept as is
    # A folder written by the old code (absolute paths into A), copied to B: the migration re-anchors them.
    b = tmp_path / "B"
    shutil.copytree(original.home, b)
    with sqlite3.connect(b / "mlops.db") as con:
        con.execute("UPDATE model_versions SET artifact_path = ? || '/' || artifact_path", [str(original.home)])
        con.execute("DELETE FROM _sqlite_migrations WHERE name = 'm008_relative_artifact_paths'")
    copy = load_settings(b)
    serving.clear_caches()
    assert registry.production(copy)["artifact_path"].startswith(str(b / "models"))
