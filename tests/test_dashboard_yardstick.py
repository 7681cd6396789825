"""The gate's yardstick on the dashboard (issue 22): which estimate decided, its interval and ESS, each
policy's estimated watches per list, the holdout and the simulated truth beside it; the exploration share and
its form; the Overview's production metric labelled with its holdout. AppTest on a small world that explores."""
import dataclasses
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from conftest import private_copy
from core.privacy import access
from core.serving import exploration
from core.simulation import loop
from core.training import pipeline, registry, tracking

APP = str(Path(__file__).resolve().parents[1] / "dashboard" / "app.py")


pytestmark = pytest.mark.usefixtures("empty_dashboard_caches")


@pytest.fixture(scope="module")
def explored_world(cf_world, tmp_path_factory):
    """cf_world after 3 days serving half its lists exploring, then a retrain decided on the exploration log
    (gate_min_ess=1) with the world's truth recorded on its job."""
    s = private_copy(cf_world, tmp_path_factory.mktemp("explored"))
    exploration.set_share(s, 0.5, actor="test")
    loop.run(s, 3, policy_mode="manual")
    result = pipeline.retrain(dataclasses.replace(s, gate_min_ess=1), with_ranker=False)
    loop.record_truth(s, result["job_id"])
    return s


@pytest.fixture
def home(explored_world, tmp_path, monkeypatch):
    copy = private_copy(explored_world, tmp_path)
    monkeypatch.setenv("RETRO_HOME", str(tmp_path))
    return copy


def training_page(timeout=60):
    at = AppTest.from_file(APP, default_timeout=timeout).run()
    at.switch_page("views/training.py").run()
    assert not at.exception, at.exception
    return at


def table(at, key_column):
    for df in at.dataframe:
        if key_column in df.value.columns:
            return df.value
    raise AssertionError(f"no dataframe with column {key_column!r}")


@pytest.mark.slow
def test_training_page_shows_which_estimate_decided_with_the_holdout_and_the_truth(home):
    job = tracking.get_job(home, int(tracking.gate_history(home)["job_id"].iloc[-1]))["result"]
    y, truth = job["gate"]["checks"]["yardstick"], job["truth"]
    holdout = job["gate"]["checks"]["holdout_quality"]
    at = training_page()
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Decided by"] == "log (SWITCH-DR)"
    assert metrics["ESS (min 1)"] == f"{y['ess']:,.0f}"
    assert metrics["True Δ watches/list"] == f"{truth['difference']:+.4f}"
    assert metrics["Truth says"] == truth["verdict"]
    evidence = table(at, "evidence").set_index("evidence")
    log = evidence.loc["exploration log (SWITCH-DR)"]
    assert log["Δ candidate − production"] == f"{y['point']:+.4f} watches/list"
    assert log["90% interval"] == f"[{y['lo']:+.4f}, {y['hi']:+.4f}]"
    assert f"{y['log']['lists']:,} lists" in log["measured on"] and bool(log["decided"])
    assert evidence.loc["holdout", "Δ candidate − production"] == f"{holdout['point']:+.4f} nDCG@10"
    assert not bool(evidence.loc["holdout", "decided"])
    assert evidence.loc["truth (simulated world)", "Δ candidate − production"].startswith(f"{truth['difference']:+.4f}")
    policies = table(at, "policy").set_index("policy")
    for name, key in (("candidate", "candidate"), ("production", "production"), ("popularity", "popularity"),
                      ("Top 50", "top50")):
        assert policies.loc[name, "watches/list (log, SWITCH-DR)"] == f"{y['values'][key]:.4f}"
    assert policies.loc["candidate", "true watches/list"] == f"{truth['candidate']:.4f}"
    assert policies.loc["popularity", "nDCG@10 (holdout)"] == \
        f"{job['gate']['checks']['holdout_baselines']['popularity']:.4f}"
    assert any("decided on the exploration log" in c.value and truth["verdict"] in c.value for c in at.caption)
    assert at.get("plotly_chart"), "the yardstick chart over time"
    assert any("two panels" in c.value for c in at.caption)


@pytest.mark.slow
def test_an_older_decision_without_a_log_says_the_holdout_decided(home):
    at = training_page()
    first = int(tracking.gate_history(home)["job_id"].iloc[0])
    at.selectbox(key="gate_job").set_value(first).run()
    assert not at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Decided by"] == "holdout" and metrics["Truth says"] == "—"
    assert table(at, "evidence").set_index("evidence").loc["holdout", "decided"]


@pytest.mark.slow
def test_exploration_share_form_needs_an_operator_and_changes_the_share(home):
    access.add_operator(home, "tester", "s3cret-token")
    at = training_page()
    assert any(m.label == "Share of served lists that explore" and m.value == "50%" for m in at.metric)
    at.number_input(key="explore_share").set_value(0.1)
    at.button[[b.label for b in at.button].index("Save share")].click().run()
    assert at.error and exploration.get_share(home) == 0.5            # not signed in: refused, unchanged
    at.session_state["operator"] = ("tester", "s3cret-token")
    at.number_input(key="explore_share").set_value(0.1)
    at.button[[b.label for b in at.button].index("Save share")].click().run()
    assert not at.exception and exploration.get_share(home) == pytest.approx(0.1)
    assert any("10%" in s.value for s in at.success)
    assert any(m.label == "Share of served lists that explore" and m.value == "10%" for m in at.metric)


@pytest.mark.slow
def test_price_of_exploring_shows_when_the_monitor_measured_it(home):
    at = training_page()
    from core.monitoring import monitoring
    price = getattr(monitoring, "exploration_price", lambda s: None)(home)
    labels = {m.label: m.value for m in at.metric}
    if price is None or price.get("difference") is None:
        pytest.skip("the monitor has no hit rate per logging policy yet")
    assert labels["Hit rate, exploring"] == f"{price['explore']['hit_rate']:.1%}"
    assert labels["Price of exploring"] == f"{price['difference'] * 100:+.1f} pts"


@pytest.mark.slow
def test_overview_labels_the_production_metric_with_its_holdout(home):
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception
    prod = registry.production(home)
    captions = " ".join(c.value for c in at.caption)
    assert f"nDCG@10 {prod['metrics']['ndcg@10']:.4f} on v{prod['version']}'s holdout (Jan 11–13, " \
           f"{prod['metrics']['users_evaluated']} users)" in captions
