"""`ads train|evaluate|status` (issue 25.8): output, --json fields, the audit rows and the role checks."""
import json

import numpy as np
import pandas as pd
import pytest
from ads_testworld import ads_world
from conftest import private_copy

from core import cli
from core.ads import metrics
from core.cli.ads import metric_table, status_lines
from core.privacy import access
from core.settings import load_settings
from core.training import registry
from core.warehouse import warehouse


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return ads_world(tmp_path_factory.mktemp("ads-world"))


def run(capsys, home, *argv):
    code = cli.main(["--home", str(home), *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_metric_table_by_hand():
    model = {"log_loss": 0.21254, "roc_auc": 0.6471, "calibration_error": 0.00421, "expected_revenue": 123.456}
    base = {"log_loss": 0.2142, "roc_auc": None, "calibration_error": 0.0091, "expected_revenue": 100.0}
    assert metric_table(model, base).splitlines() == [
        "                                     model  campaign rate",
        "  log loss (lower is better)        0.2125         0.2142",
        "  ROC AUC                            0.647            n/a",
        "  ECE, 10 bins (lower is better)    0.0042         0.0091",
        "  expected revenue                  123.46         100.00"]


def test_status_lines_by_hand():
    result = {"version": 7, "stale": True, "created_at": "2026-01-17T00:00:00", "data_version": "dv9",
              "depends_on": {"at_training": {"cf": 3, "churn": None}, "used": {"cf": [2, 3], "churn": []}},
              "serving_now": {"cf": 5, "churn": None},
              "reasons": ["cf v5 went into production at 2026-01-18T00:00:00, after ads v7 was trained"]}
    assert status_lines(result).splitlines() == [
        "ads v7 (POSSIBLY STALE), trained 2026-01-17T00:00:00 on data dv9",
        "  depends on: cf v3 in production at training (features from v2, v3); churn none in production at "
        "training (features from none)",
        "  serving now: cf v5, churn none",
        "  - cf v5 went into production at 2026-01-18T00:00:00, after ads v7 was trained"]
    assert status_lines({"version": None, "stale": False, "reasons": ["no ads model in production"]}) == \
        "no ads model in production\n  - no ads model in production"


def test_status_names_the_version_its_dependencies_and_staleness(world, capsys):
    code, out, _ = run(capsys, world.home, "ads", "status", "--json")
    data = json.loads(out)
    prod = registry.production(world, family="ads")
    cf = registry.production(world)["version"]
    assert code == 0 and data["version"] == prod["version"] and data["stale"] is False
    assert data["serving_now"] == {"cf": cf, "churn": None}
    assert data["depends_on"]["at_training"] == {"cf": cf, "churn": None} and data["depends_on"]["used"]["cf"] == [cf]
    assert data["reasons"] == ["the recommender and the churn model have not changed since training"]
    code, out, _ = run(capsys, world.home, "ads", "status")
    assert out.splitlines()[0] == f"ads v{prod['version']} (current), trained {prod['created_at']} on data " \
                                  f"{prod['data_version']}"
    assert out.splitlines()[2] == f"  serving now: cf v{cf}, churn none"


def test_status_without_an_ads_model(tmp_path, capsys):
    from core.simulation import simulation
    s = load_settings(tmp_path / "home")
    simulation.init_world(s, seed=3, users=100, movies=60, days=3)
    code, out, _ = run(capsys, s.home, "ads", "status", "--json")
    assert code == 0 and json.loads(out) == {"version": None, "stale": False, "reasons": ["no ads model in production"],
                                             "serving_now": {"cf": None, "churn": None}}
    code, _, err = run(capsys, s.home, "ads", "evaluate")
    assert code == 1 and err.startswith("error: no ads model in production; train one with `ads train`")


def test_train_registers_runs_the_gate_and_is_audited(world, tmp_path, capsys):
    s = private_copy(world, tmp_path / "copy")
    before = registry.production(s, family="ads")["version"]
    code, out, _ = run(capsys, s.home, "ads", "train", "--seed", "3", "--no-promote", "--json")
    data = json.loads(out)
    assert code == 0 and data["promoted"] is False
    assert {"run_id", "version", "promoted", "gate", "metrics", "baselines", "data_version", "depends_on", "split",
            "artifact_path"} <= set(data)
    for part in (data["metrics"], data["baselines"]["campaign_rate"], data["baselines"]["production"]):
        assert {"log_loss", "roc_auc", "calibration_error", "expected_revenue", "rows", "clicks"} <= set(part)
    assert data["metrics"]["rows"] == data["baselines"]["campaign_rate"]["rows"]      # one holdout for all
    assert data["baselines"]["production"]["version"] == before
    version = registry.get_version(s, data["version"])
    assert (version["family"], version["stage"]) == ("ads", "candidate")
    assert registry.production(s, family="ads")["version"] == before                 # --no-promote
    row = access.audit_log(s, limit=1).iloc[0]
    assert (row["action"], row["target"], row["outcome"]) == ("ads train", f"v{data['version']}", "ok")
    assert row["actor"] == access.cli_actor() and row["role"] == "admin"
    code, out, _ = run(capsys, s.home, "ads", "train", "--seed", "3")
    lines = out.splitlines()
    assert code == 0 and lines[0].startswith(f"ads v{data['version'] + 1} (run ")
    assert lines[1].split() == ["model", "campaign", "rate"]
    assert [line.split("  ")[1].strip() for line in lines[2:6]] == [
        "log loss (lower is better)", "ROC AUC", "ECE, 10 bins (lower is better)", "expected revenue"]
    assert any("vs each campaign's click rate" in line for line in lines[6:])


def test_evaluate_scores_model_and_baseline_on_the_same_holdout(world, tmp_path, capsys):
    s = private_copy(world, tmp_path / "copy")
    code, out, _ = run(capsys, s.home, "ads", "evaluate", "--json")
    data = json.loads(out)
    prod = registry.production(s, family="ads")
    assert code == 0 and data["version"] == prod["version"] and data["stage"] == "production"
    with warehouse.session(s) as con:
        imp = warehouse.ad_impressions(con)
    days = pd.to_datetime(imp["shown_at"]).dt.normalize()
    # The holdout training cuts: the last days of the population (impressions since a CF version served), so
    # `ads evaluate` judges the version on the rows `ads train` would hold out now, not on all impressions.
    from core.ads import data as ads_data, pipeline as ads_pipeline
    parts, _, note = ads_pipeline.split(ads_data.training_rows(s)[0])
    held_days = sorted(pd.to_datetime(parts["holdout"]["shown_at"]).dt.normalize().unique())
    assert note["from"] is not None and note["rows_left_out"] > 0
    last = [d for d in sorted(days.unique()) if d >= held_days[0]]
    hold = imp[days.isin(last)]
    assert set(hold["impression_id"]) == set(parts["holdout"]["impression_id"])
    assert data["holdout"] == [str(last[0].date()), str(last[-1].date())]
    for part in ("model", "baseline"):
        assert data[part]["rows"] == len(hold) and data[part]["clicks"] == int(hold["clicked"].sum())
        assert {"log_loss", "roc_auc", "calibration_error", "expected_revenue"} <= set(data[part])
    # the campaign-rate baseline by hand: clicks ÷ impressions per campaign before the holdout, shrunk by 5
    before = imp[~days.isin(last)]
    overall = before["clicked"].mean()
    per = before.groupby("campaign_id")["clicked"].agg(["sum", "count"])
    rate = (per["sum"] + 5 * overall) / (per["count"] + 5)
    p = hold["campaign_id"].map(rate).fillna(overall).to_numpy(float)
    y = hold["clicked"].to_numpy(float)
    assert data["baseline"]["log_loss"] == pytest.approx(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)), abs=1e-12)
    # the online check: the model's stored p_click against the clicks of the impressions it chose
    chosen = imp[imp["policy"] == "model"]
    assert data["online"]["rows"] == len(chosen) > 0 and data["online"]["clicks"] == int(chosen["clicked"].sum())
    assert data["online"]["calibration_error"] == pytest.approx(
        metrics.expected_calibration_error(chosen["clicked"], chosen["p_click"]), abs=1e-12)
    # trained at 2026-01-17 00:00 on the days before: the population's holdout (the day after) is unseen by it
    assert data["fitted_days"][-1] < data["holdout"][0]
    assert data["overlaps_training"] is False and data["note"] is None
    row = access.audit_log(s, limit=1).iloc[0]
    assert (row["action"], row["target"], row["outcome"]) == ("ads evaluate", f"v{prod['version']}", "ok")
    code, out, _ = run(capsys, s.home, "ads", "evaluate")
    lines = out.splitlines()
    assert lines[0] == (f"ads v{prod['version']} (production) on the holdout {data['holdout'][0]} – "
                        f"{data['holdout'][1]} ({len(hold):,} impressions, {int(hold['clicked'].sum()):,} clicks):")
    assert lines[-1].startswith(f"online check ({len(chosen):,} impressions it chose): log loss ")


def test_usage_mistakes_and_a_role_that_may_not(world, tmp_path, capsys, monkeypatch):
    s = private_copy(world, tmp_path / "copy")
    assert run(capsys, s.home, "ads", "status", "--seed", "3")[1:] == (
        "", "error: --seed and --no-promote belong to `ads train`\n")
    assert run(capsys, s.home, "ads", "train", "--version", "2")[1:] == (
        "", "error: --version belongs to `ads evaluate`\n")
    cf = registry.production(s)["version"]
    code, _, err = run(capsys, s.home, "ads", "evaluate", "--version", str(cf))
    assert code == 1 and err == f"error: v{cf} is a cf model, not an ads model\n"
    monkeypatch.setenv("RETRO_CLI_ROLE", "analyst")
    code, out, err = run(capsys, s.home, "ads", "train")
    assert code == 1 and out == "" and err == (f"error: ads train needs the role data-scientist or admin; "
                                               f"{access.cli_person()} (the command line's role, RETRO_CLI_ROLE) is "
                                               "analyst\n")
    row = access.audit_log(s, limit=1).iloc[0]
    assert (row["action"], row["outcome"], row["role"]) == ("ads train", "denied", "analyst")
    assert run(capsys, s.home, "ads", "status")[0] == 0          # reading the status needs no role
