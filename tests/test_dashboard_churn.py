"""Dashboard views of the churn model (issue 17) with AppTest: the Churn page with and without a churn model,
its operator actions, the dependency graph of the three model families on the Training page, the registry and
runs tables with churn versions, and "Why is this user at risk?" on the Explanations page."""
from pathlib import Path

import pandas as pd
import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from conftest import private_copy
from core.governance import churn_insights
from core.privacy import access
from core.pseudonym import pseudonym, pseudonym_key
from core.settings import load_settings
from core.simulation import simulation
from core.store import opsdb
from core.training import churn, churn_pipeline, pipeline, registry, tracking
from dashboard import charts

APP = str(Path(__file__).resolve().parents[1] / "dashboard" / "app.py")
OPERATOR = ("tester", "s3cret-token")
# Long enough for the churn model's time split (56 days of watch data), small enough to build in seconds.
CHURN_WORLD = dict(seed=5, users=600, movies=300, days=56)


pytestmark = pytest.mark.usefixtures("empty_dashboard_caches")


@pytest.fixture(scope="module")
def long_world(tmp_path_factory):
    """56 days, CF (and ranker) trained, no churn model yet. Read-only: tests use `private_copy`."""
    s = load_settings(tmp_path_factory.mktemp("churn-long"))
    simulation.init_world(s, **CHURN_WORLD)
    pipeline.retrain(s)
    return s


@pytest.fixture(scope="module")
def churn_world(long_world, tmp_path_factory):
    """`long_world` plus a churn model in production and stored scores on three days a week apart. The gate keeps
    a churn model of such a small world as a candidate (it rarely beats the recency rule there), so the fixture
    promotes it, as an operator may."""
    s = private_copy(long_world, tmp_path_factory.mktemp("churn-model"))
    trained = churn_pipeline.train(s, promote=False)
    registry.promote(s, trained["version"], "tester", "test fixture: a churn model to look at")
    end = churn_pipeline.current_as_of(s)
    for days_before in (14, 7, 0):
        churn_pipeline.score(s, as_of=end - pd.Timedelta(days=days_before))
    churn_pipeline.train(s, promote=False, seed=3)        # a second churn version, a candidate
    return s


def second_churn_version(s) -> int:
    """The fixture's churn candidate (never scored)."""
    versions = registry.list_versions(s).query("family == 'churn' and stage == 'candidate'")
    return int(versions["version"].iloc[0])


def home_of(world, tmp_path, monkeypatch):
    copy = private_copy(world, tmp_path)
    monkeypatch.setenv("RETRO_HOME", str(tmp_path))
    return copy


def open_page(page: str, operator: bool = False, timeout: int = 90) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=timeout)
    if operator:
        at.session_state["operator"] = OPERATOR
    at.run()
    at.switch_page(page).run()
    assert not at.exception, at.exception
    return at


def texts(elements) -> str:
    return "\n".join(e.value for e in elements)


def frame(at, *columns):
    for df in at.dataframe:
        if set(columns) <= set(df.value.columns):
            return df.value
    raise AssertionError(f"no dataframe with columns {columns}")


def charts_on(at) -> int:
    return len(at.get("plotly_chart"))


# --- the Churn page ----------------------------------------------------------------------------------------------

def test_churn_page_without_enough_history_says_how_many_days_it_needs(cf_world, tmp_path, monkeypatch):
    home_of(cf_world, tmp_path, monkeypatch)          # 10 simulated days: far too short for the time split
    at = open_page("views/churn.py")
    assert not at.error
    warning = texts(at.warning)
    need = churn.MIN_HISTORY_DAYS + 2 * churn.HORIZON_DAYS       # the time split's minimum (56 days)
    assert "No churn model yet" in warning and f"needs {need}" in warning and "holds 10 days" in warning
    assert f"{need - 10} days missing" in warning
    assert at.button(key="churn_grow").label == f"Grow the world by {need - 10} days"   # the one action that fixes it
    assert at.button(key="churn_train").disabled and at.button(key="churn_score").disabled
    assert not at.metric                               # no model: no metrics to show


@pytest.mark.slow   # trains a churn model in the test: 13 s
def test_train_button_needs_an_operator_then_trains_and_says_what_the_gate_decided(long_world, tmp_path, monkeypatch):
    s = home_of(long_world, tmp_path, monkeypatch)
    at = open_page("views/churn.py")
    assert "No churn model has been trained on this world yet" in texts(at.info)
    assert not at.button(key="churn_train").disabled and at.button(key="churn_score").disabled
    at.button(key="churn_train").click().run()
    assert any("Sign in under Operator in the sidebar" in e.value for e in at.error)
    assert not (registry.list_versions(s)["family"] == "churn").any()

    access.add_operator(s, *OPERATOR)
    at.session_state["operator"] = OPERATOR
    at.button(key="churn_train").click().run(timeout=120)
    assert not at.exception, at.exception
    churn_versions = registry.list_versions(s).query("family == 'churn'")
    assert len(churn_versions) == 1
    version = int(churn_versions["version"].iloc[0])
    promoted = churn_versions["stage"].iloc[0] == "production"
    said = texts(at.success) if promoted else texts(at.warning)
    assert f"Churn v{version}" in said
    assert any(c.value.startswith("gate: ") and "recency rule" in c.value for c in at.caption)
    log = access.audit_log(s)
    assert ("operator:tester", "churn train", "ok") in set(zip(log["actor"], log["action"], log["outcome"]))
    if not promoted:       # the page then explains the candidate with its numbers against the rule
        assert f"the newest, v{version}" in texts(at.warning)
        assert [m.label for m in at.metric][:2] == ["ROC AUC", "PR AUC"]
        assert all("vs rule" in (m.proto.delta_description or "") for m in at.metric)


def test_churn_page_with_a_model_shows_scores_metrics_and_checks(churn_world, tmp_path, monkeypatch):
    s = home_of(churn_world, tmp_path, monkeypatch)
    at = open_page("views/churn.py")
    assert not at.error and not at.warning              # current, not stale
    status = churn_pipeline.status(s)
    run = tracking.get_run(s, status["run_id"])
    metrics = {m.label: m for m in at.metric}
    assert metrics["ROC AUC"].value == f"{run['metrics']['roc_auc']:.3f}"
    assert metrics["ROC AUC"].delta == f"{run['metrics']['roc_auc'] - run['baselines']['recency']['roc_auc']:+.3f}"
    assert metrics["Brier (lower is better)"].value == f"{run['metrics']['brier']:.4f}"
    assert set(metrics) == {"ROC AUC", "PR AUC", "Brier (lower is better)", "Top-decile lift"}

    # The top at-risk users by user id (not pseudonym): each id's stored risk is the one listed, riskiest first.
    table = frame(at, "user_id", "risk", "why")
    assert len(table) == 20 and table["risk"].is_monotonic_decreasing
    latest = churn_pipeline.scored_days(s)[-1]
    stored = churn_pipeline.predictions(s, as_of=latest).set_index("user_key")["risk"]
    key = pseudonym_key(s)
    assert [stored[pseudonym(int(u), key)] for u in table["user_id"]] == pytest.approx(table["risk"].tolist())
    assert table["risk"].iloc[0] == pytest.approx(stored.max())
    assert table["why"].str.contains("log-odds").all()
    assert table["change"].notna().any()                # scored a week earlier too: the change is known
    reasons = [m.value for m in at.markdown if m.value.startswith("**Why user")]
    assert reasons and f"user {int(table['user_id'].iloc[0])} is at risk" in reasons[0]
    # Risk histogram, calibration, online check, churn and hit rate over time.
    assert charts_on(at) == 4
    assert "whose 14 days are over" in texts(at.caption)     # the scores of 14 days ago have their outcome

    at.number_input(key="churn_top").set_value(5).run()
    assert len(frame(at, "user_id", "risk", "why")) == 5


def test_new_scores_written_elsewhere_show_on_the_next_rerun(churn_world, tmp_path, monkeypatch):
    """The cached reads key on the stores' state: scores stored by the CLI (or the loop) invalidate them."""
    s = home_of(churn_world, tmp_path, monkeypatch)
    at = open_page("views/churn.py")
    latest = churn_pipeline.scored_days(s)[-1][:10]
    assert f"as of {latest}" in texts(at.caption)
    later = churn_pipeline.current_as_of(s) + pd.Timedelta(days=1)
    churn_pipeline.score(s, as_of=later)
    at.run()
    assert f"as of {later.date()}" in texts(at.caption) and f"change = since {latest}" in texts(at.caption)


def test_score_now_stores_scores_as_an_audited_operator_action(churn_world, tmp_path, monkeypatch):
    s = home_of(churn_world, tmp_path, monkeypatch)
    access.add_operator(s, *OPERATOR)
    before = len(churn_pipeline.predictions(s))
    at = open_page("views/churn.py", operator=True)
    at.button(key="churn_score").click().run()
    assert not at.exception and not at.error
    assert any(t.value.startswith("Scored ") for t in at.success)
    assert len(churn_pipeline.predictions(s)) == before          # same day again: replaced, not duplicated
    assert "churn score" in set(access.audit_log(s)["action"])


def test_only_users_still_in_the_operational_database_get_an_id(churn_world):
    key = pseudonym_key(churn_world)
    with opsdb.session(churn_world) as db:
        some = opsdb.user_ids(db)[:3]
    keys = [pseudonym(u, key) for u in some] + ["0" * 20]
    assert churn_insights.user_ids(churn_world, keys) == {pseudonym(u, key): u for u in some}
    assert churn_insights.user_ids(churn_world, []) == {}


def test_a_promoted_model_without_scores_says_score_now(churn_world, tmp_path, monkeypatch):
    s = home_of(churn_world, tmp_path, monkeypatch)
    second = second_churn_version(s)
    registry.promote(s, second, "tester", "newer churn model, not scored yet")
    at = open_page("views/churn.py")
    said = texts(at.info)
    assert f"churn v{second} has not scored anyone yet" in said and "Score now" in said
    assert "are v" in said                                   # ... and whose the newest stored scores are


def test_a_cf_promotion_in_the_same_simulated_second_makes_the_churn_model_stale(churn_world, tmp_path):
    """The simulated clock stands still between simulated days: an operator who retrains the recommender right
    after the churn model was trained promotes it in the same second. Only the event order says it came later."""
    s = private_copy(churn_world, tmp_path)
    churn_version = registry.production(s, family="churn")
    assert not churn_pipeline.status(s)["stale"]
    cf_new = pipeline.retrain(s, with_ranker=False, params={"factors": 8, "iterations": 2}, seed=9)["version"]
    if registry.production(s)["version"] != cf_new:
        registry.promote(s, cf_new, "tester", "a new recommender", force=True)
    promoted = registry.history(s, cf_new).query("to_stage == 'production'").iloc[-1]
    assert promoted["at"] == churn_version["created_at"]          # the same second: the case this is about
    status = churn_pipeline.status(s)
    assert status["stale"] and any(f"cf v{cf_new} went into production" in r for r in status["reasons"])
    # ... while a promotion that came before the churn model in the same second does not count.
    assert registry.promotions_after(s, churn_version["created_at"], "cf", after_event=int(promoted["event_id"])) == []


# --- the dependency graph, the registry and runs tables -----------------------------------------------------------

def graph_of(at) -> str:
    graphs = at.get("graphviz_chart")
    assert len(graphs) == 1
    return graphs[0].proto.spec


def node_line(dot: str, name: str) -> str:
    return next(line for line in dot.splitlines() if line.strip().startswith(f"{name} [label="))


def test_dependency_dot_marks_only_the_stale_families():
    deps = {"cf": {"version": 7, "model_kind": "als"},
            "ranker": {"version": 8, "depends_on": 5, "stale": True, "reason": "re-ranks cf v5"},
            "churn": {"version": 9, "stale": False, "created_at": "2026-03-01T00:00:00",
                      "depends_on": {"served": {"cf": [5], "ranker": [6]}, "production": {"cf": [5, 7], "ranker": []},
                                     "at_training": {"cf": 7, "ranker": 8}}}}
    dot = charts.dependency_dot(deps)
    assert dot.startswith("digraph") and dot.rstrip().endswith("}")
    assert "v7 in production · als" in node_line(dot, "cf") and "STALE" not in node_line(dot, "cf")
    assert "STALE" in node_line(dot, "ranker") and "dashed" in node_line(dot, "ranker")
    assert "v9 in production" in node_line(dot, "churn") and "STALE" not in node_line(dot, "churn")
    assert {"cf -> ranker", "cf -> churn", "ranker -> churn"} <= {l.split(" [")[0].strip() for l in dot.splitlines()}
    assert 'cf -> ranker [label="candidates of v5"]' in dot
    assert "trained while v5, v7 served" in dot and "trained while v6, v8 served" in dot
    none = charts.dependency_dot({"cf": {"version": None}, "ranker": {"version": None, "depends_on": None,
                                                                      "stale": False, "reason": None},
                                  "churn": {"version": None, "stale": False}})
    assert node_line(none, "churn").count("no production version") == 1 and "STALE" not in none


def test_training_page_draws_the_families_and_marks_them_stale_after_promotions(churn_world, tmp_path, monkeypatch):
    s = home_of(churn_world, tmp_path, monkeypatch)
    cf_before = registry.production(s)["version"]
    churn_version = registry.production(s, family="churn")["version"]
    at = open_page("views/training.py")
    dot = graph_of(at)
    assert f"v{cf_before} in production" in node_line(dot, "cf")
    assert f"v{churn_version} in production" in node_line(dot, "churn")
    assert "STALE" not in dot and not at.warning

    # A ranker promoted after the churn model was trained: the churn model is possibly stale, the ranker is not.
    ranker = int(registry.list_versions(s).query("family == 'ranker'")["version"].iloc[0])
    if registry.production(s, family="ranker") is None:      # here the ranker did not beat CF alone
        registry.promote(s, ranker, "tester", "a ranker to depend on")
        at.run()
        dot = graph_of(at)
        assert f"v{ranker} in production" in node_line(dot, "ranker") and "STALE" not in node_line(dot, "ranker")
        assert "STALE" in node_line(dot, "churn")
        assert f"ranker v{ranker} went into production" in texts(at.warning)

    # A new CF version in production: the ranker re-ranks the old one's candidates, so it is stale too.
    cf_new = pipeline.retrain(s, with_ranker=False, params={"factors": 8, "iterations": 2}, seed=9)["version"]
    if registry.production(s)["version"] != cf_new:
        registry.promote(s, cf_new, "tester", "a new recommender", force=True)
    at.run()
    dot = graph_of(at)
    assert f"v{cf_new} in production" in node_line(dot, "cf") and "STALE" not in node_line(dot, "cf")
    assert "STALE" in node_line(dot, "ranker") and "STALE" in node_line(dot, "churn")
    assert f'cf -> ranker [label="candidates of v{cf_before}"]' in dot
    warned = texts(at.warning)
    assert f"cf v{cf_new} serves" in warned and f"churn v{churn_version}** is possibly stale" in warned
    assert f"cf v{cf_new} went into production" in warned


def test_runs_and_registry_tables_cope_with_churn(churn_world, tmp_path, monkeypatch):
    s = home_of(churn_world, tmp_path, monkeypatch)
    at = open_page("views/training.py")
    runs = tracking.list_runs(s)
    recommender = frame(at, "run_id", "ndcg@10")
    assert set(recommender["model_kind"]) == {"als", "ranker"} and "roc_auc" not in recommender
    at.radio(key="runs_family").set_value("Churn").run()
    churn_runs = frame(at, "run_id", "roc_auc")
    assert list(churn_runs["run_id"]) == runs.loc[runs["model_kind"] == "churn_gb", "run_id"].tolist()
    assert "ndcg@10" not in churn_runs and churn_runs["brier"].notna().all()
    versions = frame(at, "version", "family", "stage")
    churn_rows = versions[versions["family"] == "churn"]
    assert sorted(churn_rows["stage"]) == ["candidate", "production"]
    assert (churn_rows["roc_auc"] > 0).all() and churn_rows["ndcg@10"].isna().all()
    cf_row = versions[versions["family"] == "cf"].iloc[0]
    assert cf_row["ndcg@10"] > 0 and pd.isna(cf_row["roc_auc"])


def test_rollback_form_rolls_back_the_chosen_family(churn_world, tmp_path, monkeypatch):
    s = home_of(churn_world, tmp_path, monkeypatch)
    access.add_operator(s, *OPERATOR)
    first = registry.production(s, family="churn")["version"]
    second = second_churn_version(s)
    registry.promote(s, second, "tester", "a second churn model")
    cf = registry.production(s)["version"]
    at = open_page("views/training.py", operator=True)
    at.selectbox(key="rollback_family").set_value("churn")
    at.text_input(key="rollback_reason").input("worse calibration")
    at.checkbox(key="rollback_confirm").check()
    at.button(key="FormSubmitter:rollback_form-Roll back").click().run()
    assert not at.exception and not at.error
    assert registry.production(s, family="churn")["version"] == first and registry.production(s)["version"] == cf
    assert any(f"Rolled back churn: v{first}" in m.value for m in at.success)


# --- "Why is this user at risk?" -----------------------------------------------------------------------------------

def test_why_is_this_user_at_risk(churn_world, tmp_path, monkeypatch):
    s = home_of(churn_world, tmp_path, monkeypatch)
    riskiest = churn_insights.latest_scores(s, 1)["top"]["user_id"].iloc[0]
    at = open_page("views/governance.py")
    at.selectbox(key="gov_user").set_value(int(riskiest)).run()
    assert not at.exception
    expected = churn_pipeline.explain_user(s, int(riskiest))
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Churn risk (no watch in the next 14 days)"] == f"{expected['risk']:.0%}"
    assert metrics["Churn model"] == f"v{expected['version']}"
    words = next(m.value for m in at.markdown if m.value.startswith("**In words**"))
    assert all(r in words for r in expected["reasons"])
    shap = [c for c in at.get("plotly_chart") if "SHAP contribution" in c.proto.spec]
    assert len(shap) == 1 and f"v{expected['version']}" in shap[0].proto.spec


def test_why_at_risk_for_a_lapsed_user_and_without_a_churn_model(churn_world, cf_world, tmp_path, monkeypatch):
    s = home_of(churn_world, tmp_path / "a", monkeypatch)
    scored = set(churn_pipeline.predictions(s, as_of=churn_pipeline.scored_days(s)[-1])["user_key"])
    key = pseudonym_key(s)
    with opsdb.session(s) as db:
        lapsed = next(u for u in opsdb.user_ids(db) if pseudonym(u, key) not in scored)
    at = open_page("views/governance.py")
    at.selectbox(key="gov_user").set_value(lapsed).run()
    assert any(f"User {lapsed} has not watched anything" in i.value for i in at.info)

    st.cache_data.clear()
    st.cache_resource.clear()                               # the settings (data folder) are a cached resource
    home_of(cf_world, tmp_path / "b", monkeypatch)
    at = open_page("views/governance.py")
    assert any("No churn model in production" in i.value for i in at.info)
    assert not at.error


# --- the Drift page's churn section ----------------------------------------------------------------------------------

def test_drift_page_shows_the_churn_models_drift_per_scored_day(churn_world, tmp_path, monkeypatch):
    from core.monitoring import churn_monitoring
    s = home_of(churn_world, tmp_path, monkeypatch)
    report = churn_monitoring.drift(s)
    at = open_page("views/drift.py")
    assert not at.error
    metrics = {m.label: m for m in at.metric}
    risk = report["risk"]
    assert metrics["Predicted-risk PSI"].value == ("—" if risk["psi"] is None else f"{risk['psi']:.3f}")
    assert metrics["Predicted-risk PSI"].delta == risk["severity"]
    drifting = [f for f in report["features"] if f["psi"] is not None and f["severity"] != "none"]
    assert metrics["Features drifting"].value == f"{len(drifting)} of {len(report['features'])}"
    specs = [c.proto.spec for c in at.get("plotly_chart")]
    assert sum("Churn features: PSI" in c for c in specs) == 1
    assert sum("Predicted risk, reference vs current" in c for c in specs) == 1
    assert sum("Churn drift per scored day" in c for c in specs) == 1
    assert f"the scores stored as of {report['as_of']}" in texts(at.caption)
    days = [h["as_of"] for h in report["history"]]
    assert len(days) == 3 and at.selectbox(key="churn_drift_day").options == days[::-1]

    at.selectbox(key="churn_drift_day").set_value(days[0]).run()       # an older scored day
    assert not at.exception
    older = churn_monitoring.drift(s, days[0])
    assert f"the scores stored as of {days[0]}" in texts(at.caption)
    assert {m.label: m.value for m in at.metric}["Predicted-risk PSI"] == (
        "—" if older["risk"]["psi"] is None else f"{older['risk']['psi']:.3f}")


def test_drift_page_without_a_churn_model_says_so(cf_world, tmp_path, monkeypatch):
    home_of(cf_world, tmp_path, monkeypatch)
    at = open_page("views/drift.py")
    assert not at.error
    assert any(i.value.startswith("No churn model in production") for i in at.info)


def test_the_at_risk_list_is_personal_data_when_views_are_closed(churn_world, tmp_path, monkeypatch):
    """Issue 23: users by id with their reasons and the CSV export need a privacy officer; anonymous visitors see
    the risk histogram (an aggregate). Demo views are open for this simulated world, so they are closed here."""
    from core.privacy import access
    s = home_of(churn_world, tmp_path, monkeypatch)
    monkeypatch.setenv("RETRO_DEMO_PERSONAL_VIEWS", "off")
    at = open_page("views/churn.py")
    assert not at.exception
    assert not any({"user_id", "risk"} <= set(df.value.columns) for df in at.dataframe)
    assert not [b for b in at.get("download_button")] and at.get("plotly_chart")
    assert any("At-risk list: shown to a signed-in privacy-officer or admin" in i.value for i in at.info)
    access.add_operator(s, "priya", "s3cret-token", role="privacy-officer")
    at.session_state["operator"] = ("priya", "s3cret-token")
    at.run()
    assert len(frame(at, "user_id", "risk", "why")) == 20
    row = access.audit_log(s, 1).iloc[0]
    assert (row["action"], row["person"], row["role"]) == ("view at-risk list", "priya", "privacy-officer")
