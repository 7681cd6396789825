"""The Ads page (issue 25.8) with AppTest: campaigns and pacing, revenue next to hit rate and churn, the ads model
against the campaigns' click rates with its calibration, "Why am I seeing this ad?", and the operator actions
(train, promote, switch ads on/off): each changes what the page shows, is audited, and is refused to whoever may
not do it."""
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from conftest import private_copy
from core.privacy import access
from core.settings import load_settings
from core.store import adslog, opsdb
from core.training import registry

APP = str(Path(__file__).resolve().parents[1] / "dashboard" / "app.py")
PAGE = "views/ads.py"
OPERATOR = ("tester", "s3cret-token")

pytestmark = pytest.mark.usefixtures("empty_dashboard_caches")


@pytest.fixture(scope="module")
def ads_world(tmp_path_factory):
    """A small world with ads (seed 21, 300 users, 200 movies, 10 days), a CF version in production, 6 closed-loop
    days (ads by campaign rate, hit rates monitored), no ads model. Read-only: tests use `private_copy`."""
    from core.simulation import loop, simulation
    from core.training import pipeline
    s = load_settings(tmp_path_factory.mktemp("ads-world"))
    simulation.init_world(s, seed=21, users=300, movies=200, days=10)
    result = pipeline.retrain(s, with_ranker=False)
    if not result["promoted"]:
        registry.promote(s, result["version"], "test", "small world: promoted by hand")
    loop.run(s, 6)
    return s


@pytest.fixture(scope="module")
def model_world(ads_world, tmp_path_factory):
    """`ads_world` plus an ads model in production (promoted by hand: this world's holdout is below the gate's
    minimum) and two days whose ads it chose."""
    from core.ads import pipeline as ads_pipeline
    from core.ads import scoring
    from core.simulation import ads_day, simulation
    from core.warehouse import etl
    s = private_copy(ads_world, tmp_path_factory.mktemp("ads-model"))
    trained = ads_pipeline.train(s, promote=False)
    registry.promote(s, trained["version"], "tester", "test fixture: an ads model to look at")
    score = scoring.scorer(s)
    simulation.simulate(s, 2, ad_policy=ads_day.AdPolicy("model", score, score.model_version))
    etl.run(s)
    return s


def home_of(world, tmp_path, monkeypatch):
    copy = private_copy(world, tmp_path)
    monkeypatch.setenv("RETRO_HOME", str(tmp_path))
    return copy


def open_page(operator=None, timeout: int = 90) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=timeout)
    if operator:
        at.session_state["operator"] = operator
    at.run()
    at.switch_page(PAGE).run()
    assert not at.exception, at.exception
    return at


def texts(elements) -> str:
    return "\n".join(e.value for e in elements)


def frame(at, key):
    return next(df.value for df in at.dataframe if df.key == key) if any(df.key == key for df in at.dataframe) \
        else next(df.value for df in at.dataframe if key in df.value.columns)


def ads_versions(s):
    versions = registry.list_versions(s)
    return versions[versions["family"] == "ads"]


def test_the_page_shows_campaigns_pacing_revenue_the_model_and_why(model_world, tmp_path, monkeypatch):
    s = home_of(model_world, tmp_path, monkeypatch)
    at = open_page()
    assert not at.error
    with opsdb.session(s) as db:
        totals, camps = adslog.totals(db), adslog.campaigns(db)
    assert f"Ads are **on** in this world. Since 2026-01-01: {totals['impressions']:,} ads shown" in texts(at.markdown)

    table = frame(at, "advertiser")
    assert len(table) == len(camps) == 14
    assert set(table["advertiser"]) == set(camps["advertiser"])
    assert np.allclose(table["pacing"], 100 * np.minimum(table["spent_day"] / table["daily_budget"], 1.0))   # %
    assert (table["spent_day"] <= table["daily_budget"] + 1e-9).all()         # budgets hold on the last day

    version = int(ads_versions(s).query("stage == 'production'")["version"].iloc[0])
    captions = texts(at.caption)
    assert f"Ads **v{version}** (production" in captions and "both judged on the same holdout" in captions
    assert [m.label for m in at.metric][:3] == ["Log loss", "ROC AUC", "Calibration error (ECE)"]
    metrics = frame(at, "on the holdout")
    assert list(metrics.columns) == ["on the holdout", "model", "campaigns"]
    assert len(at.get("plotly_chart")) == 2                                      # over time, calibration
    assert "Not drawn: no churn rate yet" in texts(at.info)                      # 18 days: no 14-day outcome

    assert "You saw this ad from" in texts(at.markdown)                          # the typical user's newest ad
    assert "chosen by:" in texts(at.markdown)
    assert frame(at, "impression_id")["impression_id"].is_monotonic_decreasing


def test_switching_ads_needs_an_operator_and_the_page_shows_it(ads_world, tmp_path, monkeypatch):
    s = home_of(ads_world, tmp_path, monkeypatch)
    at = open_page()
    assert at.button(key="ads_switch").label == "Switch ads off"
    at.button(key="ads_switch").click().run()
    assert any("Sign in under Operator in the sidebar" in e.value for e in at.error)
    with opsdb.session(s) as db:
        assert adslog.enabled(db)

    access.add_operator(s, *OPERATOR)
    at.session_state["operator"] = OPERATOR
    at.button(key="ads_switch").click().run()
    assert not at.exception and not at.error
    assert "Ads are off in this world." in texts(at.success)
    assert "Ads are **off** in this world." in texts(at.markdown)
    assert at.button(key="ads_switch").label == "Switch ads on"
    with opsdb.session(s) as db:
        assert not adslog.enabled(db)
    log = access.audit_log(s)
    row = log[log["action"] == "ads"].iloc[0]                                    # the newest (a view row may follow)
    assert (row["person"], row["target"], row["outcome"]) == ("tester", "off", "ok")


def test_ads_switched_from_the_command_line_show_on_the_next_rerun(tmp_path, monkeypatch):
    """A world built without ads: the page says so and that it has no campaigns. `ads switch on` from the CLI (in
    real use another process) creates the campaigns and changes the state token the cached reads key on, so the
    next rerun shows them and 'on'; switching off again shows 'off'. The token once ignored the switch: the page
    kept its cached 'no campaigns' until some other write."""
    from core import cli
    from core.governance import insights
    from core.simulation import simulation
    s = load_settings(tmp_path)
    monkeypatch.setenv("RETRO_HOME", str(tmp_path))
    simulation.init_world(s, seed=5, users=150, movies=80, days=6, ads=False)
    from core.training import pipeline
    first = pipeline.retrain(s, with_ranker=False)             # the dashboard's first start wants a model
    if not first["promoted"]:
        registry.promote(s, first["version"], "test", "small world: promoted by hand")
    at = open_page()
    assert "Ads are **off** in this world." in texts(at.markdown)
    assert "This world has no campaigns: switching ads on creates them." in texts(at.info)
    before = insights.state_token(s)
    assert cli.main(["--home", str(s.home), "ads", "switch", "on"]) == 0
    on = insights.state_token(s)
    assert on != before
    at.run()
    assert not at.exception, at.exception
    assert "Ads are **on** in this world." in texts(at.markdown)
    assert "no campaigns" not in texts(at.info) and at.button(key="ads_switch").label == "Switch ads off"
    with opsdb.session(s) as db:
        assert len(frame(at, "advertiser")) == len(adslog.campaigns(db)) > 0
    assert cli.main(["--home", str(s.home), "ads", "switch", "off"]) == 0
    assert insights.state_token(s) not in (before, on)
    at.run()
    assert "Ads are **off** in this world." in texts(at.markdown) and at.button(key="ads_switch").label == \
        "Switch ads on"


def test_train_then_promote_change_what_the_page_shows(ads_world, tmp_path, monkeypatch):
    s = home_of(ads_world, tmp_path, monkeypatch)
    access.add_operator(s, *OPERATOR)
    at = open_page(OPERATOR)
    assert "No ads model has been trained on this world yet" in texts(at.info)
    assert at.button(key="ads_promote").disabled

    at.button(key="ads_train").click().run(timeout=120)
    assert not at.exception and not at.error
    trained = ads_versions(s)
    assert len(trained) == 1
    version, stage = int(trained["version"].iloc[0]), trained["stage"].iloc[0]
    said = texts(at.success) if stage == "production" else texts(at.warning)
    assert f"Ads v{version} (run" in said
    assert any(c.value.startswith("gate: ") for c in at.caption)
    assert f"Ads **v{version}** ({stage}" in texts(at.caption)
    assert "ads train" in set(access.audit_log(s)["action"])
    if stage == "production":
        return
    assert at.button(key="ads_promote").label == f"Promote v{version}"          # this small world: a candidate
    at.button(key="ads_promote").click().run()
    assert not at.exception and not at.error
    assert f"Ads v{version} is in production" in texts(at.success)
    assert f"Ads **v{version}** (production" in texts(at.caption)
    assert at.button(key="ads_promote").disabled
    log = access.audit_log(s)
    row = log[log["action"] == "promote"].iloc[0]
    assert (row["target"], row["outcome"]) == (f"ads v{version}", "ok")


def test_a_role_that_may_not_train_or_switch_is_refused(ads_world, tmp_path, monkeypatch):
    s = home_of(ads_world, tmp_path, monkeypatch)
    access.add_operator(s, "ana", "s3cret-token", role="analyst")
    at = open_page(("ana", "s3cret-token"))
    at.button(key="ads_train").click().run()
    assert "needs the role" in texts(at.error)
    assert not len(ads_versions(s))
    at.button(key="ads_switch").click().run()
    assert "needs the role" in texts(at.error)
    with opsdb.session(s) as db:
        assert adslog.enabled(db)
    denied = access.audit_log(s).query("outcome == 'denied'")
    assert {"ads train", "switch ads"} <= set(denied["action"])            # the words the page uses (roles.ALIASES)


def test_why_am_i_seeing_this_ad_is_personal_data_when_views_are_closed(model_world, tmp_path, monkeypatch):
    s = home_of(model_world, tmp_path, monkeypatch)
    monkeypatch.setenv("RETRO_DEMO_PERSONAL_VIEWS", "off")
    at = open_page()
    assert any("Why am I seeing this ad: shown to a signed-in privacy-officer or admin" in i.value for i in at.info)
    assert not any("impression_id" in df.value.columns for df in at.dataframe)
    assert len(frame(at, "advertiser")) == 14                                    # the aggregates stay
    access.add_operator(s, "priya", "s3cret-token", role="privacy-officer")
    at.session_state["operator"] = ("priya", "s3cret-token")
    at.run()
    assert "You saw this ad from" in texts(at.markdown)
    row = access.audit_log(s, 1).iloc[0]
    assert (row["action"], row["person"]) == ("view why am I seeing this ad", "priya")


def test_the_policys_ads_retrains_show_and_a_replaced_version_is_not_offered(model_world, tmp_path, monkeypatch):
    """The closed loop's retraining policy retrains the ads model: the page says what the policy does and lists
    each retrain (why, version, outcome). After a newer version replaced the first, "Promote" does not offer the
    archived one (going back is a rollback), nor any candidate older than production."""
    from core.monitoring import policy
    from core.store import clock
    s = home_of(model_world, tmp_path, monkeypatch)
    first = int(ads_versions(s).query("stage == 'production'")["version"].iloc[0])
    policy.set_policy(s, "scheduled", 3, actor="tester")
    action = policy.apply_ads(s, {"opened": []}, now=clock.now(s), day="2026-01-17", mode="scheduled")
    assert action["cause"].startswith("scheduled") and action["version"] > first
    if not action["promoted"]:
        registry.promote(s, action["version"], "tester", "test: a newer ads model replaces the first")
    assert ads_versions(s).set_index("version")["stage"].to_dict() == {first: "archived",
                                                                       action["version"]: "production"}
    at = open_page()
    said = texts(at.caption)
    assert "The retraining policy is **scheduled**: it retrains it in the closed loop every 3 days" in said
    shown = frame(at, "cause")
    assert shown["cause"].tolist() == [action["cause"]] and shown["version"].tolist() == [action["version"]]
    assert shown["outcome"].iloc[0] in ("promoted (gate passed)", "kept as candidate (gate refused)")
    assert at.button(key="ads_promote").disabled and at.button(key="ads_promote").label == "Promote"


def test_a_change_that_rounds_to_zero_reads_plus_zero():
    """The Ads page's metric deltas: a tiny negative change showed as '−0.0000' with a red arrow, read as a loss;
    now no delta at all (the 'vs' beside it still gives the baseline)."""
    import ui
    assert ui.signed_change(0.12340, 0.12341, "{:+.4f}") is None
    assert ui.signed_change(0.0512, 0.05121, "{:+.2%}") is None
    assert ui.signed_change(0.1240, 0.1234, "{:+.4f}") == "+0.0006"
    assert ui.signed_change(0.1234, 0.1240, "{:+.4f}") == "-0.0006"
