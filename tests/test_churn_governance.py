"""Governance and privacy of the churn model (issue 17.4): `explain --churn`, the audit trail's stored scores, the
churn model card, CF-only commands refusing a churn version, and export / erasure (resumable) / key rotation /
retention reaching churn scores and churn training rows."""
import contextlib
import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import private_copy

from core import cli, faults
from core.errors import UnknownUser, ValidationError
from core.governance import diagnose, modelcard
from core.monitoring import release
from core.privacy import access, erasure, export, retention
from core.privacy import keys as key_rotation
from core.pseudonym import pseudonym, pseudonym_key
from core.serving import serving
from core.settings import load_settings
from core.simulation import simulation
from core.store import mlopsdb, opsdb
from core.training import churn, churn_pipeline, gate, pipeline, registry, tracking
from core.warehouse import churn_data, etl
from core.warehouse.churn_data import FEATURE_LABELS, FEATURES

ROOT = Path(__file__).resolve().parents[1]
slow = pytest.mark.slow      # the module world: 56 simulated days, a CF model, a churn model, scores on two days


# ------------------------------------------------------------------ the world
@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """600 users, 300 movies: 30 days, a CF model in production (v1), 26 more days, a churn model in production
    trained on them (its window saw CF v1 in production), and every active user scored at the end of the data
    and 21 days before. Read-only: tests that change it work on `world`."""
    s = load_settings(tmp_path_factory.mktemp("churn-gov"))
    simulation.init_world(s, seed=5, users=600, movies=300, days=30)
    cf = pipeline.retrain(s, with_ranker=False)
    assert cf["promoted"]
    simulation.simulate(s, 26)
    etl.run_etl(s)
    trained = churn_pipeline.train(s)
    if not trained["promoted"]:       # this small world's model need not beat the recency rule: promote by hand
        registry.promote(s, trained["version"], "test", "the governance tests need a churn model in production")
    end = churn_pipeline.current_as_of(s)
    early = end - pd.Timedelta(days=21)
    churn_pipeline.score(s, as_of=early)
    churn_pipeline.score(s)
    s.extra.update(cf=cf["version"], churn=trained["version"], end=end, early=early)
    return s


@pytest.fixture
def world(base, tmp_path):
    s = private_copy(base, tmp_path / "w")
    s.extra.update(base.extra)
    return s


def fmt(ts) -> str:
    return pd.Timestamp(ts).strftime("%Y-%m-%dT%H:%M:%S")


def uid_of(s, key: str) -> int:
    k = pseudonym_key(s)
    with opsdb.session(s) as db:
        return next(u for u in opsdb.user_ids(db) if pseudonym(u, k) == key)


def scored_users(s, n: int = 2) -> list[int]:
    """Users scored on both days with rows in the churn training set, most rows first."""
    stored = churn_pipeline.predictions(s)
    both = stored.groupby("user_key")["as_of"].nunique()
    rows = churn.read_rows(mlopsdb.artifact_dir(s, registry.production(s, family="churn")["artifact_path"]))
    counts = pd.Series(rows["user_key"]).value_counts()
    keys = sorted(set(both[both == 2].index) & set(counts.index), key=lambda k: (-counts[k], k))[:n]
    return [uid_of(s, k) for k in keys]


def run_cli(s, *argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["--home", str(s.home), *argv])
    return code, out.getvalue(), err.getvalue()


def strict_json(text: str):
    """JSON as any client parses it: NaN / Infinity are not JSON."""
    def refuse(constant):
        raise AssertionError(f"{constant} in JSON output")
    return json.loads(text, parse_constant=refuse)


def npz_hits(s, key: str) -> list[str]:
    """Every .npz array under models/ that holds `key` (as an element or inside one), and raw bytes of any file."""
    hits = []
    for f in sorted(s.models_dir.rglob("*")):
        if not f.is_file():
            continue
        raw = f.read_bytes()
        if key.encode() in raw or key.encode("utf-32-le") in raw:
            hits.append(f"{f.name} (bytes)")
        if f.suffix == ".npz":
            with np.load(f, allow_pickle=False) as arrays:
                for name in arrays.files:
                    a = arrays[name]
                    if a.dtype.kind in "US" and np.char.find(a.astype(str), key).max(initial=-1) >= 0:
                        hits.append(f"{f.relative_to(s.home)}:{name}")
    return hits


def training_rows_of(s, key: str) -> int:
    return sum(int((churn.read_rows(d)["user_key"] == key).sum())
               for d in sorted(s.models_dir.glob("churn-run-*")))


# ------------------------------------------------------------------ explain --churn
@slow
def test_explain_churn_from_the_cli_adds_up_names_the_largest_effect_first_and_is_audited(world):
    uid = scored_users(world, 1)[0]
    key = pseudonym(uid, pseudonym_key(world))
    code, out, err = run_cli(world, "explain", "--user", str(uid), "--churn", "--json")
    assert code == 0, err
    e = strict_json(out)
    assert e["active"] and e["version"] == world.extra["churn"] and e["user_key"] == key
    risk = e["risk"]
    contributions = [c["contribution"] for c in e["contributions"]]
    assert abs(e["base_logit"] + sum(contributions) - math.log(risk / (1 - risk))) < 1e-9
    assert [c["feature"] for c in e["contributions"]] and {c["feature"] for c in e["contributions"]} == set(FEATURES)
    assert [abs(c) for c in contributions] == sorted((abs(c) for c in contributions), reverse=True)
    largest = max(e["contributions"], key=lambda c: abs(c["contribution"]))
    assert e["reasons"][0].startswith(FEATURE_LABELS[largest["feature"]] + " = ")
    assert ("raises" if largest["contribution"] > 0 else "lowers") in e["reasons"][0]
    # The same risk as the score stored for this user and day.
    stored = churn_pipeline.predictions(world, user_key=key, as_of=fmt(world.extra["end"]))
    assert abs(stored["risk"].iloc[0] - risk) < 1e-12
    # Markdown: every feature with its contribution, the largest first, and the additivity line.
    code, md, err = run_cli(world, "explain", "--user", str(uid), "--churn")
    assert code == 0, err
    assert f"Churn risk **{risk:.1%}**" in md and f"v{world.extra['churn']}" in md
    rows = [line for line in md.splitlines() if line.startswith("| ") and not line.startswith(("| feature", "| ---"))]
    assert len(rows) == len(FEATURES) and rows[0].startswith(f"| {FEATURE_LABELS[largest['feature']]} |")
    assert f"= logit(risk) {e['logit']:+.4f}" in md
    # Personal data read out: audited like the server's /explain, target the pseudonym, never the id.
    log = access.audit_log(world)
    assert list(log["action"][:2]) == ["explain churn", "explain churn"]
    assert set(log["target"][:2]) == {key} and set(log["outcome"][:2]) == {"ok"}
    assert log["actor"].iloc[0].startswith("cli:")


@slow
def test_explain_churn_of_a_lapsed_user_says_why_there_is_no_score(world):
    active = set(churn_data.snapshots(world, [world.extra["end"]])["user_key"])
    k = pseudonym_key(world)
    with opsdb.session(world) as db:
        lapsed = next(u for u in sorted(opsdb.user_ids(db)) if pseudonym(u, k) not in active)
    code, out, err = run_cli(world, "explain", "--user", str(lapsed), "--churn")
    assert code == 0 and err == ""
    assert "not an active user" in out and "Churn risk" not in out
    code, out, _ = run_cli(world, "explain", "--user", str(lapsed), "--churn", "--json")
    doc = strict_json(out)
    assert code == 0 and doc["active"] is False and "not an active user" in doc["note"]


@slow
def test_explain_churn_for_an_unknown_user_is_one_error_line(world):
    code, out, err = run_cli(world, "explain", "--user", "999999", "--churn")
    assert code == 1 and out == "" and err.splitlines() == [
        "error: unknown user 999999: no such user in the operational database"]
    assert access.audit_log(world)["outcome"].iloc[0] == "failed"


def test_explain_churn_without_a_churn_model_in_production_is_one_error_line(cf_world, tmp_path):
    s = private_copy(cf_world, tmp_path / "no-churn")
    code, out, err = run_cli(s, "explain", "--user", "1", "--churn")
    assert code == 1 and out == ""
    from core.training import churn_pipeline
    assert err.splitlines() == ["error: no churn model in production; " + churn_pipeline.next_step(s)]
    log = access.audit_log(s)
    assert (log["action"].iloc[0], log["outcome"].iloc[0]) == ("explain churn", "failed")


def test_explain_takes_either_a_movie_or_churn(settings):
    assert run_cli(settings, "explain", "--user", "1", "--movie", "2", "--churn")[2].splitlines() == [
        "error: --movie does not go with --churn: a churn explanation is about the user (`explain --user ID --churn`), "
        "not about a movie"]
    # Without --churn, --movie stays required, in argparse's words as before.
    for argv, missing in ((["--user", "1"], "--movie"), (["--movie", "1"], "--user"), ([], "--user, --movie"),
                          (["--churn"], "--user")):
        code, out, err = run_cli(settings, "explain", *argv)
        assert code == 1 and out == ""
        assert err.splitlines() == [f"error: the following arguments are required: {missing} "
                                    "(see `python -m core explain --help`)"]


# ------------------------------------------------------------------ audit
@slow
def test_audit_lists_the_users_stored_churn_scores(base):
    uid = scored_users(base, 1)[0]
    key = pseudonym(uid, pseudonym_key(base))
    stored = churn_pipeline.predictions(base, user_key=key)
    code, out, err = run_cli(base, "audit", "--user", str(uid), "--json")
    assert code == 0, err
    doc = strict_json(out)
    assert doc["user_id"] == uid and isinstance(doc["lists"], list)
    scores = doc["churn_scores"]
    assert [s["as_of"] for s in scores] == [fmt(base.extra["end"]), fmt(base.extra["early"])]   # newest first
    assert [s["risk"] for s in scores] == list(stored["risk"])
    assert {(s["model_version"], s["model_kind"], s["stage_now"], s["was_production"]) for s in scores} == {
        (base.extra["churn"], "churn_gb", "production", True)}
    day = fmt(base.extra["early"])[:10]
    code, out, _ = run_cli(base, "audit", "--user", str(uid), "--day", day, "--json")
    assert [s["as_of"][:10] for s in strict_json(out)["churn_scores"]] == [day]
    code, md, _ = run_cli(base, "audit", "--user", str(uid))
    assert code == 0 and "## Stored churn scores" in md
    assert f"| {fmt(base.extra['end'])[:10]} |" in md and f"{scores[0]['risk']:.1%}" in md
    assert f"v{base.extra['churn']} (churn_gb) | production | yes |" in md


# ------------------------------------------------------------------ model history and the model card
@slow
def test_the_churn_model_card_has_its_metrics_against_the_recency_rule_and_its_dependencies(base):
    v = base.extra["churn"]
    entry = registry.get_version(base, v)
    run = tracking.get_run(base, entry["run_id"])
    card = modelcard.model_card(base, v)
    assert card["model"]["family"] == "churn" and card["model"]["depends_on"] == base.extra["cf"]
    for who, recorded in (("model", run["metrics"]), ("recency", run["baselines"]["recency"])):
        for metric in ("roc_auc", "pr_auc", "brier", "top_decile_lift", "base_rate"):
            assert card["metrics"][who][metric] == recorded[metric], (who, metric)
        assert card["calibration"][who] == recorded["calibration"] and len(recorded["calibration"]["predicted"]) >= 5
    assert [f["feature"] for f in card["features"]] == list(FEATURES)
    assert all(f["label"] == FEATURE_LABELS[f["feature"]] for f in card["features"])
    assert card["time_split"]["snapshots"] == run["params"]["snapshots"]
    assert card["training_data"]["data_version"] == entry["data_version"]
    rows = churn.read_rows(mlopsdb.artifact_dir(base, entry["artifact_path"]))
    assert card["training_data"]["rows_kept"]["rows"] == len(rows["user_key"]) == (
        run["metrics"]["training_rows"] + run["metrics"]["rows"])
    # The gate on the same numbers (a hand promotion records none: re-evaluated from the run).
    expected = gate.evaluate_churn_gate(run["metrics"], run["baselines"]["recency"], None, finite=True)
    assert card["gate"]["promote"] == expected.promote and card["gate"]["reasons"] == expected.reasons
    # Dependencies: CF v1 was in production during the training window; nothing changed since.
    deps = card["dependencies"]
    assert deps["production"]["cf"] == [base.extra["cf"]] and deps["status"]["stale"] is False
    assert card["privacy"]["stored_scores"] == len(churn_pipeline.predictions(base)) > 0
    code, md, err = run_cli(base, "model-card", str(v))
    assert code == 0, err
    for text in ("against the recency rule", "| roc_auc |", "| top_decile_lift |", "### Calibration",
                 "## Dependencies on the recommender", f"in production during the window: cf v{base.extra['cf']}",
                 "## Privacy", "## Gate", "days since the last watch"):
        assert text in md, text
    code, out, _ = run_cli(base, "model-card", str(v), "--format", "json")
    assert strict_json(out)["metrics"]["model"]["roc_auc"] == run["metrics"]["roc_auc"]


@slow
def test_the_card_says_the_churn_model_is_possibly_stale_after_a_cf_promotion(world):
    candidate = registry.register(world, pipeline.train(world, seed=9, params={"factors": 8}).run_id)
    registry.promote(world, candidate, "test", "a new recommender", force=True)
    status = modelcard.model_card(world, world.extra["churn"])["dependencies"]["status"]
    assert status["stale"] and any(f"cf v{candidate}" in r for r in status["reasons"])
    assert "POSSIBLY STALE" in run_cli(world, "model-card", str(world.extra["churn"]))[1]


@slow
def test_models_list_and_history_show_the_churn_version_as_valid_json(base):
    code, out, err = run_cli(base, "models", "list", "--json")
    assert code == 0, err
    versions = {r["version"]: r for r in strict_json(out)}     # NaN for another family's metrics was not JSON
    churn_row = versions[base.extra["churn"]]
    assert churn_row["family"] == "churn" and churn_row["stage"] == "production" and churn_row["ndcg@10"] is None
    assert versions[base.extra["cf"]]["roc_auc"] is None and churn_row["roc_auc"] > 0
    code, out, _ = run_cli(base, "models", "list")
    line = next(x for x in out.splitlines() if x.split()[:2] == [str(base.extra["churn"]), "churn"])
    assert "production" in line and "nan" not in line.lower()
    history = registry.history(base, base.extra["churn"])
    assert list(history["to_stage"]) == ["candidate", "production"] and set(history["family"]) == {"churn"}


@slow
def test_commands_for_cf_versions_refuse_a_churn_version_with_a_clear_error(world):
    v = str(world.extra["churn"])
    code, out, err = run_cli(world, "evaluate", "--version", v)
    assert code == 1 and out == "" and len(err.splitlines()) == 1
    assert f"v{v} is a churn model" in err and f"churn evaluate --version {v}" in err
    for mode in ("canary", "shadow"):
        code, _, err = run_cli(world, "release", "start", v, "--mode", mode)
        assert code == 1 and err.splitlines() == [f"error: v{v} is a churn model; only collaborative-filtering "
                                                  "versions are released beside production (a ranker follows its "
                                                  "CF model)"]
    runs = len(tracking.list_runs(world, 1000))
    with pytest.raises(ValidationError, match="only collaborative-filtering"):   # refused before training a ranker
        release.start(world, int(v), "canary", actor="test", with_ranker=True)
    assert len(tracking.list_runs(world, 1000)) == runs
    churn_row = registry.get_version(world, int(v))
    with pytest.raises(ValidationError, match="serving needs a collaborative-filtering version"):
        serving.bundle_for(churn_row)
    # Serving and diagnosis keep to the CF family while a churn model is in production.
    result = diagnose.diagnose(world)
    assert result["production_version"] == world.extra["cf"] and "deployment" not in result["failed_places"]
    assert serving.recommend(world, scored_users(world, 1)[0], log=False).model_version == world.extra["cf"]


# ------------------------------------------------------------------ privacy: export
@slow
def test_export_contains_the_users_churn_scores_and_training_rows(world):
    uid = scored_users(world, 1)[0]
    key = pseudonym(uid, pseudonym_key(world))
    code, out, err = run_cli(world, "privacy", "export", "--user", str(uid))
    assert code == 0, err
    doc = strict_json(out)
    stored = churn_pipeline.predictions(world, user_key=key)
    scores = doc["churn"]["churn_predictions"]
    assert [(s["as_of"], s["risk"], s["model_version"]) for s in scores] == list(
        zip(stored["as_of"], stored["risk"], stored["model_version"]))
    assert set(scores[0]) >= set(FEATURES)            # the feature values the model saw
    training = doc["churn"]["churn_training_rows"]
    assert len(training) == training_rows_of(world, key) > 0
    assert {r["part"] for r in training} <= {"train", "holdout"}
    assert doc["stores"]["mlops.churn_predictions"] == 2
    assert doc["stores"]["models.churn_training_rows"] == len(training)
    assert export.held_counts(world, uid) == doc["stores"]
    inventory = {(r["store"], r["table"]) for r in export.data_inventory()}
    assert ("mlops (mlops.db)", "churn_predictions") in inventory
    assert ("models/churn-run-*", churn.TRAINING_ROWS) in inventory


# ------------------------------------------------------------------ privacy: erasure
def churn_state(s) -> dict:
    prod = registry.production(s, family="churn")
    rows = churn.read_rows(mlopsdb.artifact_dir(s, prod["artifact_path"]))
    return {"stored": churn_pipeline.predictions(s), "rows": rows}


def assert_erased_from_churn(s, key: str, before: dict, other_key: str) -> None:
    after = churn_state(s)
    assert (after["stored"]["user_key"] == key).sum() == 0 and npz_hits(s, key) == []
    assert key.encode() not in s.mlops_db.read_bytes()             # secure_delete: no bytes left in free pages
    # Everyone else's scores and rows are kept, unchanged.
    kept = before["stored"][before["stored"]["user_key"] != key].reset_index(drop=True)
    pd.testing.assert_frame_equal(after["stored"].reset_index(drop=True), kept)
    keep = before["rows"]["user_key"] != key
    for name, array in before["rows"].items():
        np.testing.assert_array_equal(after["rows"][name], array[keep])
    assert (after["rows"]["user_key"] == other_key).sum() == (before["rows"]["user_key"] == other_key).sum() > 0
    # The model still loads (hash checked) and scores the others as before.
    uid_other = uid_of(s, other_key)
    again = churn_pipeline.score(s, user_id=uid_other, store=False)
    was = before["stored"][(before["stored"]["user_key"] == other_key)]["risk"].iloc[0]
    assert abs(again["risk"] - was) < 1e-12


@slow
def test_forget_erases_churn_scores_and_training_rows_and_keeps_everyone_elses(world):
    uid, other = scored_users(world, 2)
    key, other_key = (pseudonym(u, pseudonym_key(world)) for u in (uid, other))
    before = churn_state(world)
    held = churn_pipeline.held_counts(world, key)
    assert held["churn_predictions"] == 2 and held["churn_training_rows"] > 0 and npz_hits(world, key)

    summary = erasure.forget_user(world, uid, actor="alice")

    assert summary["churn"] == held
    assert_erased_from_churn(world, key, before, other_key)
    assert set(export.held_counts(world, uid).values()) == {0}
    assert json.loads(erasure.request_log(world)["summary"].iloc[0])["churn"] == held   # counts only
    with pytest.raises(UnknownUser):
        erasure.forget_user(world, uid, actor="alice")


def kill_at(monkeypatch, point: str) -> None:
    fired = []

    def hook(name):
        if name == point and not fired:
            fired.append(name)
            raise faults.SimulatedKill(name)
    monkeypatch.setattr(faults, "hook", hook)


@slow
@pytest.mark.parametrize("point", ["erasure:ranker", "erasure:churn-erased", "erasure:churn"])
def test_an_erasure_killed_at_the_churn_step_is_finished_by_the_next_forget(world, monkeypatch, point):
    uid, other = scored_users(world, 2)
    key, other_key = (pseudonym(u, pseudonym_key(world)) for u in (uid, other))
    before = churn_state(world)
    held = churn_pipeline.held_counts(world, key)
    kill_at(monkeypatch, point)
    with pytest.raises(faults.SimulatedKill):
        erasure.forget_user(world, uid, actor="alice")
    with mlopsdb.session(world) as db:
        steps, state = db.execute("SELECT steps_done, state FROM erasure_requests").fetchone()
    assert state == "received" and ("churn" in json.loads(steps)) == (point == "erasure:churn")
    # Killed before the churn step: the rows are still there, and the request resumes with them.
    assert (churn_pipeline.held_counts(world, key) == held) == (point == "erasure:ranker")
    monkeypatch.undo()

    result = erasure.forget_user(world, uid, actor="alice")

    assert result["state"] == "completed" and "churn" in result
    assert_erased_from_churn(world, key, before, other_key)
    assert sorted(json.loads(erasure.request_log(world)["summary"].iloc[0])) == ["ads", "audit", "churn", "models",
                                                                                  "ops", "warehouse"]


@slow
def test_a_real_sigkill_of_forget_after_the_churn_rows_went_resumes(world):
    uid, other = scored_users(world, 2)
    key, other_key = (pseudonym(u, pseudonym_key(world)) for u in (uid, other))
    before = churn_state(world)
    forget = [sys.executable, "-m", "core", "--home", str(world.home), "privacy", "forget", "--user", str(uid)]
    killed = subprocess.run(forget, cwd=ROOT, env=dict(os.environ, **{faults.ENV: "erasure:churn-erased"}),
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr
    with mlopsdb.session(world) as db:
        assert json.loads(db.execute("SELECT steps_done FROM erasure_requests").fetchone()[0]) == [
            "opsdb", "warehouse", "bundles", "ranker"]
    again = subprocess.run(forget, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert_erased_from_churn(world, key, before, other_key)


# ------------------------------------------------------------------ privacy: key rotation and retention
@slow
def test_key_rotation_keeps_each_users_scores_and_rows_under_the_new_pseudonym(world):
    users = scored_users(world, 2)
    old = {u: pseudonym(u, pseudonym_key(world)) for u in users}
    before = churn_state(world)
    mine = {u: before["stored"][before["stored"]["user_key"] == k][["as_of", "risk", "model_version"]]
            .reset_index(drop=True) for u, k in old.items()}
    rows = {u: int((before["rows"]["user_key"] == k).sum()) for u, k in old.items()}

    result = key_rotation.rotate_key(world, actor="alice")

    assert result["churn_predictions_rekeyed"] == len(before["stored"])
    assert result["churn_training_rows_rekeyed"] == len(before["rows"]["user_key"])
    after = churn_state(world)
    for u in users:
        new = pseudonym(u, pseudonym_key(world))
        assert new != old[u]
        pd.testing.assert_frame_equal(
            after["stored"][after["stored"]["user_key"] == new][["as_of", "risk", "model_version"]]
            .reset_index(drop=True), mine[u])
        assert int((after["rows"]["user_key"] == new).sum()) == rows[u]
        assert npz_hits(world, old[u]) == [] and old[u].encode() not in world.mlops_db.read_bytes()
    np.testing.assert_array_equal(after["rows"]["X"], before["rows"]["X"])
    assert len(set(after["stored"]["user_key"]) & set(before["stored"]["user_key"])) == 0
    # The audit trail follows the user to the new pseudonym.
    code, out, _ = run_cli(world, "audit", "--user", str(users[0]), "--json")
    assert [s["risk"] for s in strict_json(out)["churn_scores"]] == list(mine[users[0]]["risk"])


@slow
def test_retention_purges_old_churn_scores_only(world):
    stored = churn_pipeline.predictions(world)
    end, early = fmt(world.extra["end"]), fmt(world.extra["early"])
    assert set(stored["as_of"]) == {end, early}
    days = (pd.Timestamp(opsdb_clock(world)) - world.extra["early"]).days - 1     # cutoff just after `early`
    status = retention.retention_status(world, days)
    assert early < status["cutoff"] <= end
    assert status["churn_scores_to_purge"] == int((stored["as_of"] == early).sum()) > 0
    assert status["churn_scores"] == len(stored) and status["oldest_churn_score"] == early

    result = retention.retention(world, days, actor="alice")

    assert result["churn_scores_deleted"] == status["churn_scores_to_purge"]
    after = churn_pipeline.predictions(world)
    assert set(after["prediction_id"]) == set(stored.loc[stored["as_of"] == end, "prediction_id"])
    assert retention.retention_status(world, days)["churn_scores_to_purge"] == 0
    with pytest.raises(ValidationError):
        churn_pipeline.purge_predictions(world, "last week")


def opsdb_clock(s) -> str:
    with opsdb.session(s) as db:
        return opsdb.get_meta(db, "clock")
