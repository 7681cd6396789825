"""The ads model in the closed loop (issue 25.7): the loop's sponsored slots are chosen by the production ads model,
and the retraining policy retrains it when it is stale against the CF/churn versions it depends on or when the ads
monitoring opens an ads-drift alert — recorded in the actions trail like the recommender's retrains."""
import json

import pytest
from ads_testworld import ads_world
from conftest import private_copy

from core import cli
from core.ads import pipeline as ads_pipeline
from core.monitoring import ads_monitoring, monitoring, policy
from core.simulation import loop
from core.store import mlopsdb, opsdb
from core.training import pipeline as cf_pipeline, registry


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return ads_world(tmp_path_factory.mktemp("ads-world"))


def ads_actions(s) -> list[dict]:
    with mlopsdb.session(s) as db:
        rows = db.execute("SELECT at, day, actor, cause, result FROM actions WHERE kind = 'ads-retrain' "
                          "ORDER BY action_id").fetchall()
    return [{"at": a, "day": d, "actor": who, "cause": c, "result": json.loads(r)} for a, d, who, c, r in rows]


def test_the_loop_chooses_ads_with_the_production_ads_model(world, tmp_path):
    s = private_copy(world, tmp_path / "copy")
    prod = int(registry.production(s, family="ads")["version"])
    entry = loop.run(s, 1)["log"][0]
    assert entry["ad_policy"] == "model" and entry["ads_error"] is None and entry["ads_action"] is None
    with opsdb.session(s) as db:
        rows = db.execute("SELECT policy, model_version, p_click FROM ad_impressions WHERE shown_at >= ?",
                          [entry["date"]]).fetchall()
    targeted = [r for r in rows if r[0] != "untargeted"]
    assert targeted and {r[0] for r in targeted} == {"model"} and {r[1] for r in targeted} == {prod}
    assert all(r[2] is not None for r in targeted)


def test_a_stale_ads_model_is_retrained_by_the_policy_once_per_cooldown(world, tmp_path):
    s = private_copy(world, tmp_path / "copy")
    before = int(registry.production(s, family="ads")["version"])
    cf = cf_pipeline.retrain(s, with_ranker=False)           # a new recommender: the ads features move
    if not cf["promoted"]:
        registry.promote(s, cf["version"], "test", "small world: promoted by hand")
    assert ads_pipeline.status(s)["stale"]
    manual = loop.run(s, 1, policy_mode="manual")
    assert manual["log"][0]["ads_action"] is None and manual["ads_retrains"] == 0 and ads_actions(s) == []

    out = loop.run(s, 2, policy_mode="on-alert")
    first, second = (r["ads_action"] for r in out["log"])
    assert first["cause"].startswith("ads model possibly stale: cf v") and first["error"] is None
    assert second is None                                    # still stale (small world: the gate keeps it), cooldown
    assert out["ads_retrains"] == 1
    assert first["version"] > before and registry.get_version(s, first["version"])["family"] == "ads"
    assert first["promoted"] == (int(registry.production(s, family="ads")["version"]) == first["version"])
    assert first["gate_passed"] == first["promoted"]
    (trail,) = ads_actions(s)
    assert trail["day"] == out["log"][0]["date"] and trail["actor"] == "policy:on-alert"
    assert trail["cause"] == first["cause"] and trail["result"] == first


def test_an_ads_drift_alert_retrains_at_once_and_nothing_happens_without_ads_or_in_manual_mode(world, tmp_path):
    s = private_copy(world, tmp_path / "copy")
    now = "2026-02-01T00:00:00"
    assert not ads_pipeline.status(s)["stale"]
    quiet = {"opened": [], "closed": []}
    assert policy.decide_ads(s, quiet, "on-alert", now) is None
    alert = {"opened": ["ads-drift:calibration"], "closed": []}
    assert policy.decide_ads(s, alert, "on-alert", now) == "ads drift alert: ads-drift:calibration"
    assert policy.decide_ads(s, alert, "scheduled", now) == "ads drift alert: ads-drift:calibration"
    assert policy.decide_ads(s, alert, "manual", now) is None
    assert policy.decide_ads(s, None, "on-alert", now) is None      # the world shows no ads
    # scheduled: every_days after the last ads retrain (none yet: now, and the cause says so — it said
    # "7 days since the last ads retrain" when there had been none)
    assert policy.decide_ads(s, quiet, "scheduled", now) == "scheduled: no ads retrain by the policy yet"
    action = policy.apply_ads(s, alert, now=now, day="2026-01-31", mode="on-alert")
    assert action["cause"] == "ads drift alert: ads-drift:calibration" and action["version"] is not None
    # a fresh alert retrains again at once; staleness, open alerts and the schedule wait for the cooldown
    assert policy.decide_ads(s, alert, "on-alert", "2026-02-01T12:00:00") is not None
    assert policy.decide_ads(s, quiet, "scheduled", "2026-02-02T00:00:00") is None


def test_monitor_shows_the_ads_monitoring_and_keeps_its_keys(world, tmp_path, capsys):
    s = private_copy(world, tmp_path / "copy")
    out = loop.run(s, 2)
    assert cli.main(["--home", str(s.home), "monitor", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {"day", "classification", "model_version", "drift", "online", "quality", "open_alerts",
            "churn_model"} < set(data)                                         # every key it had stays
    ads = data["ads"]
    stored = ads_monitoring.history(s).set_index("day")
    last = out["log"][-1]
    assert ads["enabled"] is True and ads["day"] == last["date"]
    assert (ads["impressions"], ads["clicks"], ads["revenue"]) == (last["ads"]["impressions"], last["ads"]["clicks"],
                                                                   pytest.approx(last["ads"]["revenue"]))
    assert ads["click_rate"] == pytest.approx(last["ads"]["click_rate"])
    assert ads["ece"] == pytest.approx(last["ads"]["ece"]) and ads["model_version"] == registry.production(
        s, family="ads")["version"]
    signals = stored.loc[last["date"], "signals"]
    assert [{k: p[k] for k in ("campaign_id", "spend", "daily_budget", "pacing")} for p in ads["pacing"]] == \
        signals["pacing"] and all(p["advertiser"] for p in ads["pacing"])
    days = stored.tail(7)
    assert [d["day"] for d in ads["days"]] == list(days.index)
    for d in ads["days"]:
        pacing = stored.loc[d["day"], "signals"]["pacing"]
        assert d["budget_spent"] == pytest.approx(sum(p["spend"] for p in pacing)
                                                  / sum(p["daily_budget"] for p in pacing), abs=1e-6)
        assert d["budgets_exhausted"] == sum(p["pacing"] >= 1 for p in pacing)
        assert d["impressions"] == stored.loc[d["day"], "impressions"]
    assert ads["model"] == {k: v for k, v in ads_pipeline.status(s).items() if k in ("version", "stale", "reasons")}
    assert ads["open_alerts"] == []
    with mlopsdb.write_session(s) as db:           # an open ads alert is listed with the ads
        monitoring.open_or_update_alert(db, "ads-drift", "calibration", 0.05, 0.02, "warning",
                                        (last["date"], last["date"]), last["date"] + "T23:59:59", "ads",
                                        chance_level=0.03)
    assert cli.main(["--home", str(s.home), "monitor"]) == 0
    text = capsys.readouterr().out
    assert f"ads (on), day {last['date']}: {ads['impressions']:,} impressions" in text
    assert "budget pacing (spend ÷ daily budget): #" in text and "ALERT ads-drift:calibration value 0.0500" in text
    assert f"ads model v{ads['model_version']}: " in text
    assert cli.main(["--home", str(s.home), "monitor", "--json"]) == 0
    (alert,) = json.loads(capsys.readouterr().out)["ads"]["open_alerts"]
    assert (alert["metric"], alert["value"], alert["threshold"]) == ("calibration", 0.05, 0.02)
