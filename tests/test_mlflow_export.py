"""Runs and models in MLflow (`python -m core mlflow export`), read back with MLflow's own client.

One small world (two retrains, a production ranker) exported into its data folder's default store: every run with
its params, metrics, data and code version, seed, engine, gate decision and model card; every registered version
of each family with its history and the production/candidate aliases; a second export writes nothing; after a
retrain only the new runs and versions are written and the aliases move; the production recommender logged as a
pyfunc model predicts the lists serving shows; an erasure replaces the pyfunc model's copy of the bundle.

MLflow is an optional extra (requirements-mlflow.txt, which `make test` installs): without it these tests are
skipped with the reason — unless CI=true, where a missing mlflow fails.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WORLD = dict(seed=21, users=300, movies=200, days=10, ads=False)


def _mlflow_or_skip():
    try:
        import mlflow  # noqa: F401
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but mlflow is not installed (pip install -r requirements-mlflow.txt)")
        pytest.skip("mlflow is not installed (optional extra: pip install -r requirements-mlflow.txt)")
    import mlflow
    return mlflow


def test_without_mlflow_the_command_says_what_to_install(small_world, tmp_path):
    """No traceback: one `error:` line naming requirements-mlflow.txt; nothing written to the data folder."""
    from core.store.mlopsdb import clone_home
    settings = clone_home(small_world, tmp_path / "home")
    code = ("import sys; sys.modules['mlflow'] = None; from core.cli import main; "
            f"sys.exit(main(['mlflow', 'export', '--home', {str(settings.home)!r}]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 1 and out.stdout == ""
    err = out.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "requirements-mlflow.txt" in err[0]
    assert not (settings.home / "mlflow.db").exists()


def test_the_embedded_default_needs_no_mlflow():
    code = "import sys; import core.cli, core.serving.serving, core.training.pipeline; print('mlflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "False"
    assert "mlflow" not in (ROOT / "requirements.txt").read_text()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A world with a production CF model and its ranker (promoted by hand if the gate kept it a candidate)."""
    _mlflow_or_skip()
    from conftest import promote_ranker_by_hand
    from core.settings import load_settings
    from core.simulation import simulation
    from core.training import pipeline
    settings = load_settings(tmp_path_factory.mktemp("mlflow_world"))
    simulation.init_world(settings, **WORLD)
    pipeline.retrain(settings, trigger="test")
    promote_ranker_by_hand(settings)
    return settings


def _store_state(settings) -> str:
    """A hash of the default store: the database file and every artifact file's path and bytes."""
    h = hashlib.sha256((settings.home / "mlflow.db").read_bytes())
    for path in sorted((settings.home / "mlartifacts").rglob("*")):
        if path.is_file():
            h.update(str(path).encode() + path.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def exported(world):
    """The first export and the second one right after it, and the store's state around the second."""
    from core.governance import mlflow_export
    first = mlflow_export.export(world)
    before = _store_state(world)
    second = mlflow_export.export(world)
    return first, second, before, _store_state(world)


def _client(settings):
    from mlflow import MlflowClient
    from core.governance import mlflow_export
    uri = mlflow_export.default_uri(settings)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _runs_by_retro_id(client) -> dict:
    exp = client.get_experiment_by_name("retro-movies")
    return {int(r.data.tags["retro.run_id"]): r for r in client.search_runs([exp.experiment_id], max_results=1000)
            if "retro.run_id" in r.data.tags}


@pytest.mark.slow
def test_every_run_is_mirrored_with_its_params_metrics_versions_and_gate(world, exported):
    from core.training import registry, tracking
    first, _, _, _ = exported
    runs = tracking.list_runs(world, limit=1000)
    assert first["runs"] == {"created": len(runs), "updated": 0, "unchanged": 0}
    assert first["tracking_uri"] == f"sqlite:///{world.home / 'mlflow.db'}"
    client = _client(world)
    mirrored = _runs_by_retro_id(client)
    assert set(mirrored) == set(int(r) for r in runs["run_id"])
    for run_id, r in mirrored.items():
        ours = tracking.get_run(world, run_id)
        tags, data = r.data.tags, r.data
        assert tags["retro.data_version"] == ours["data_version"] and tags["retro.seed"] == str(ours["seed"])
        assert tags["retro.code_version"] == ours["code_version"] and tags["retro.engine"] == "embedded"
        assert tags["retro.model_kind"] == ours["model_kind"] and r.info.status == "FINISHED"
        for name, value in ours["metrics"].items():
            if isinstance(value, float):
                assert data.metrics[name.replace("@", "_at_")] == pytest.approx(value)
        for name, value in ours["params"].items():
            assert data.params[name] == (value if isinstance(value, str) else json.dumps(value, sort_keys=True))
        for name, value in (ours["baselines"] or {}).get("popularity", {}).items():
            if isinstance(value, float):
                assert data.metrics[f"baseline.popularity.{name.replace('@', '_at_')}"] == pytest.approx(value)
        files = {f.path for f in client.list_artifacts(r.info.run_id)}
        assert {"metrics.json", "gate.json", "model_card.md", "model_card.json", "registry_history.json"} <= files
    cf = registry.production(world)
    cf_run = mirrored[int(cf["run_id"])]
    assert cf_run.data.tags["retro.gate.promote"] == "true" and cf_run.data.tags["retro.version"] == str(cf["version"])
    assert "baselines" in cf_run.data.tags["retro.gate.reasons"]
    gate = json.loads(Path(client.download_artifacts(cf_run.info.run_id, "gate.json")).read_text())
    assert gate["job"]["gate"]["checks"]["baselines"]["passed"] is True
    card = json.loads(Path(client.download_artifacts(cf_run.info.run_id, "model_card.json")).read_text())
    assert card["model"]["version"] == cf["version"] and card["lifecycle"][0]["to_stage"] == "candidate"


@pytest.mark.slow
def test_every_registered_version_with_its_history_and_aliases(world, exported):
    from core.training import registry
    first, _, _, _ = exported
    client = _client(world)
    versions = registry.list_versions(world)
    assert first["versions"]["created"] == len(versions)
    for family, rows in versions.groupby("family"):
        name = f"retro-{family}"
        mirrored = {mv.tags["retro.version"]: mv for mv in client.search_model_versions(f"name='{name}'")}
        assert set(mirrored) == {str(v) for v in rows["version"]}
        for row in rows.to_dict("records"):
            mv = mirrored[str(row["version"])]
            assert mv.tags["retro.stage"] == row["stage"] and mv.source == Path(row["artifact_path"]).as_uri()
            events = registry.history(world, int(row["version"]))
            assert len(mv.tags["retro.history"].splitlines()) == len(events)
            assert mv.run_id == _runs_by_retro_id(client)[int(row["run_id"])].info.run_id
        prod = rows[rows["stage"] == "production"]
        if len(prod):
            by_alias = client.get_model_version_by_alias(name, "production")
            assert by_alias.tags["retro.version"] == str(int(prod["version"].iloc[0]))
    assert client.get_model_version_by_alias("retro-ranker", "production").tags["retro.version"] == \
        str(registry.production(world, family=registry.RANKER)["version"])


@pytest.mark.slow
def test_a_second_export_writes_nothing(world, exported):
    first, second, before, after = exported
    assert second["runs"] == {"created": 0, "updated": 0, "unchanged": first["runs"]["created"]}
    assert second["versions"] == {"created": 0, "updated": 0, "unchanged": first["versions"]["created"]}
    assert second["recommender"]["logged"] is False and second["aliases"] == first["aliases"]
    assert before == after


@pytest.mark.slow
def test_the_pyfunc_recommender_predicts_what_serving_shows(world, exported, monkeypatch):
    mlflow = _mlflow_or_skip()
    import pandas as pd
    from core.governance import mlflow_export
    from core.serving import serving
    from core.training import registry
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_export.default_uri(world))
    model = mlflow.pyfunc.load_model("models:/retro-recommender@production")
    users = list(range(1, WORLD["users"] + 1))
    predicted = model.predict(pd.DataFrame({"user_id": users})).set_index("user_id")
    served = serving.recommend_many(world, users, log=False)
    compared = 0
    for u, rec in served.items():
        if rec.policy != "deterministic":          # the exploring share of lists is a draw, not the model's list
            continue
        assert predicted.loc[u, "path"] == rec.path and list(predicted.loc[u, "movie_ids"]) == rec.movie_ids, u
        compared += 1
    assert compared >= 0.85 * len(users)
    assert (predicted["path"] == "model").sum() > len(users) // 2
    rk = registry.production(world, family=registry.RANKER)
    assert exported[0]["recommender"] == {"cf_version": registry.production(world)["version"],
                                          "ranker_version": rk["version"], "logged": True, "version": 1}
    # k from the input, and the same lists as serving asked for 5
    five = model.predict(pd.DataFrame({"user_id": users[:20], "k": 5})).set_index("user_id")
    for u, rec in serving.recommend_many(world, users[:20], k=5, log=False).items():
        if rec.policy == "deterministic":
            assert list(five.loc[u, "movie_ids"]) == rec.movie_ids


@pytest.mark.slow
def test_after_a_retrain_only_the_new_is_written_and_aliases_move(world, exported, tmp_path):
    """On a copy exported into a store of its own: a day later a retrain adds runs and versions; the next export
    creates those, updates the versions whose stage changed, leaves the rest and moves the aliases."""
    from conftest import private_copy
    from core.governance import mlflow_export
    from core.simulation import simulation
    from core.training import pipeline, registry, tracking
    settings = private_copy(world, tmp_path / "later")
    uri = f"sqlite:///{tmp_path / 'later.db'}"
    mlflow_export.export(settings, uri)
    before_runs = set(int(r) for r in tracking.list_runs(settings, limit=1000)["run_id"])
    before_versions = registry.list_versions(settings).set_index("version")["stage"].to_dict()
    simulation.simulate(settings, 1)
    pipeline.retrain(settings, trigger="test")
    versions = registry.list_versions(settings).set_index("version")["stage"].to_dict()
    new_runs = set(int(r) for r in tracking.list_runs(settings, limit=1000)["run_id"]) - before_runs
    changed = {v for v in before_versions if versions[v] != before_versions[v]}
    result = mlflow_export.export(settings, uri)
    assert new_runs and result["runs"]["created"] == len(new_runs)
    assert result["versions"]["created"] == len(set(versions) - set(before_versions))
    assert result["versions"]["updated"] == len(changed)
    assert result["runs"]["updated"] == len(changed)        # their history changed: tags and card re-logged
    assert result["runs"]["unchanged"] == len(before_runs) - len(changed)
    client = _client_at(uri)
    prod = registry.production(settings)
    assert client.get_model_version_by_alias("retro-cf", "production").tags["retro.version"] == str(prod["version"])
    assert result["recommender"]["logged"] is (prod["version"] not in before_versions)
    again = mlflow_export.export(settings, uri)
    assert again["runs"]["created"] == again["runs"]["updated"] == again["versions"]["updated"] == 0


@pytest.mark.slow
def test_an_erasure_replaces_the_pyfunc_models_copy_of_the_bundle(world, exported, tmp_path, capsys):
    """The pyfunc model holds a copy of production's bundle (pseudonymized): after `privacy forget` the next
    export logs a new copy without the user and removes the old one from the local artifact store."""
    from conftest import private_copy
    from core.cli import main
    from core.governance import mlflow_export
    from core.privacy import erasure
    from core.pseudonym import pseudonym, pseudonym_key
    from core.training.artifacts import load_bundle
    settings = private_copy(world, tmp_path / "erase")
    uri = f"sqlite:///{tmp_path / 'erase.db'}"
    capsys.readouterr()
    assert main(["--home", str(settings.home), "mlflow", "export", "--tracking-uri", uri, "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    client = _client_at(uri)
    old = client.get_model_version(mlflow_export.RECOMMENDER, str(first["recommender"]["version"]))
    old_dir = Path(client.get_run(old.run_id).info.artifact_uri.removeprefix("file://"))
    bundle_copy = next(old_dir.rglob("bundle.json")).parent
    held = set(load_bundle(bundle_copy).matrix.user_keys.tolist())
    uid = next(u for u in range(1, WORLD["users"] + 1) if pseudonym(u, pseudonym_key(settings)) in held)
    key = pseudonym(uid, pseudonym_key(settings))
    erasure.forget_user(settings, uid, actor="test")
    second = mlflow_export.export(settings, uri)
    assert second["recommender"]["logged"] is True and second["recommender"]["version"] == 2
    assert not old_dir.exists()
    new = client.get_model_version_by_alias(mlflow_export.RECOMMENDER, "production")
    new_dir = Path(client.get_run(new.run_id).info.artifact_uri.removeprefix("file://"))
    assert key not in set(load_bundle(next(new_dir.rglob("bundle.json")).parent).matrix.user_keys.tolist())


def _client_at(uri):
    from mlflow import MlflowClient
    return MlflowClient(tracking_uri=uri, registry_uri=uri)
