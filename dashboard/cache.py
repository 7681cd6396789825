"""Every cached read of the dashboard, in one place.

Reads take `token` — `core.insights.state_token()`, a cheap fingerprint of the
stores — so any write (ETL, retrain, promotion, rollback, erasure) gives a new
key and stale numbers are never shown (the parameter is called `state`, not
`_token`: Streamlit does not hash arguments whose names start with an underscore,
so an underscored token would never invalidate anything). `clear()` is called
after writes made from the dashboard itself.
"""
from __future__ import annotations

import streamlit as st

from core.governance import insights
from core.monitoring import monitoring
from core.training import pipeline, registry, tracking
from core.serving import serving
from core.training.evaluation import evaluate_version
from core.settings import load_settings
from core.training.top50 import current_top50


@st.cache_resource
def settings():
    return load_settings()


def token() -> tuple:
    return insights.state_token(settings())


def clear() -> None:
    st.cache_data.clear()
    serving.clear_caches()


@st.cache_data(show_spinner=False, max_entries=4)
def status(state):
    return insights.system_status(settings())


@st.cache_data(show_spinner=False, max_entries=8)
def top50_table(state, m):
    result = current_top50(settings(), m)
    return result.table, result.m, result.C


@st.cache_data(show_spinner=False, max_entries=2)
def users(state):
    return insights.user_directory(settings())


@st.cache_data(show_spinner=False, max_entries=64)
def profile(state, user_id):
    return insights.user_profile(settings(), user_id)


@st.cache_data(show_spinner=False, max_entries=64)
def recommendation(state, user_id, k=10):
    # Not logged: the dashboard looks at lists, it does not show them to the user.
    return serving.recommend(settings(), user_id, k, log=False)


@st.cache_data(show_spinner=False, max_entries=2)
def movies(state):
    return insights.movies_frame(settings())


@st.cache_data(show_spinner=False, max_entries=2)
def popularity(state):
    return insights.movie_popularity(settings())


@st.cache_data(show_spinner=False, max_entries=2)
def runs(state):
    return tracking.list_runs(settings(), 200)


@st.cache_data(show_spinner=False, max_entries=8)
def run(state, run_id):
    return tracking.get_run(settings(), run_id)


@st.cache_data(show_spinner=False, max_entries=8)
def compare(state, a, b):
    return tracking.compare_runs(settings(), a, b)


@st.cache_data(show_spinner=False, max_entries=2)
def versions(state):
    return registry.list_versions(settings()), registry.history(settings())


@st.cache_data(show_spinner=False, max_entries=2)
def last_gate(state):
    return tracking.last_gate_decision(settings())


@st.cache_data(show_spinner=False, max_entries=2)
def jobs(state):
    return tracking.list_jobs(settings(), 50)


@st.cache_data(show_spinner=False, max_entries=2)
def etl_report(state):
    return insights.etl_report(settings())


@st.cache_data(show_spinner=False, max_entries=2)
def determinism(state):
    return insights.top50_is_deterministic(settings())


@st.cache_data(show_spinner=False, max_entries=4)
def seed_variability(state, seeds, model, _progress=None):
    return insights.seed_variability(settings(), seeds=seeds, model=model, progress=_progress)


@st.cache_data(show_spinner=False, max_entries=2)
def drift_history(state):
    return monitoring.history(settings())


@st.cache_data(show_spinner=False, max_entries=2)
def drift_narrative(state):
    return monitoring.narrative(settings())


@st.cache_data(show_spinner=False, max_entries=2)
def evaluation(state):
    return evaluate_version(settings())


@st.cache_data(show_spinner=False, max_entries=16)
def feature_distribution(state, feature, day):
    return monitoring.feature_distributions(settings(), feature, day)


@st.cache_data(show_spinner=False, max_entries=32)
def explanations(state, user_id):
    from core.governance import explain
    return explain.explain_list(settings(), user_id)


@st.cache_data(show_spinner=False, max_entries=32)
def audit_records(state, user_id, day=None):
    from core.governance import audit
    return audit.audit(settings(), user_id, day, 20)


@st.cache_data(show_spinner=False, max_entries=8)
def model_card(state, version):
    from core.governance import modelcard
    return modelcard.model_card(settings(), version)


@st.cache_data(show_spinner=False, max_entries=8)
def diagnosis(state, user_id):
    from core.governance import diagnose
    return diagnose.diagnose(settings(), user_id)


def production():
    return status(token())["registry"]["production"]


def retrain(progress, **kwargs):
    result = pipeline.retrain(settings(), progress=progress, **kwargs)
    clear()
    return result


@st.cache_data(show_spinner=False, max_entries=2)
def deployment(state):
    from core.monitoring import release
    return release.status(settings())


@st.cache_data(show_spinner=False, max_entries=2)
def arm_history(state):
    return monitoring.arm_history(settings())


@st.cache_data(show_spinner=False, max_entries=2)
def release_decisions(state):
    from core.monitoring import release
    return release.decisions(settings())


def model_server():
    """(status of the model server running on this data folder or None, its metrics summary or None, the error
    reading them or None). Live numbers: never cached."""
    from core.serving import remote
    info = remote.server_status(settings())
    if info is None:
        return None, None, None
    try:
        return info, remote.metrics(info["url"]), None
    except remote.ServerUnavailable as exc:
        return info, None, str(exc)


# --- churn (issue 17) ----------------------------------------------------------------------------------------
@st.cache_data(show_spinner=False, max_entries=2)
def churn_status(state):
    from core.training import churn_pipeline
    return churn_pipeline.status(settings())


@st.cache_data(show_spinner=False, max_entries=2)
def churn_readiness(state):
    from core.governance import churn_insights
    return churn_insights.readiness(settings())


@st.cache_data(show_spinner=False, max_entries=4)
def churn_scores(state, top):
    from core.governance import churn_insights
    return churn_insights.latest_scores(settings(), top)


@st.cache_data(show_spinner=False, max_entries=2)
def churn_calibration(state):
    from core.training import churn_pipeline
    return churn_pipeline.calibration_table(settings())


@st.cache_data(show_spinner=False, max_entries=2)
def churn_online(state):
    from core.training import churn_pipeline
    return churn_pipeline.online_check(settings())


@st.cache_data(show_spinner=False, max_entries=32)
def churn_explanation(state, user_id):
    from core.training import churn_pipeline
    return churn_pipeline.explain_user(settings(), user_id)


@st.cache_data(show_spinner=False, max_entries=2)
def churn_and_quality(state):
    from core.monitoring import churn_monitoring
    return churn_monitoring.churn_and_quality(settings())


@st.cache_data(show_spinner=False, max_entries=8)
def churn_drift(state, as_of=None):
    from core.monitoring import churn_monitoring
    return churn_monitoring.drift(settings(), as_of)


@st.cache_data(show_spinner=False, max_entries=2)
def model_dependencies(state):
    from core.governance import churn_insights
    return churn_insights.dependencies(settings())


def churn_train(progress, **kwargs):
    from core.training import churn_pipeline
    try:
        return churn_pipeline.train(settings(), progress=progress, **kwargs)
    finally:
        clear()


def churn_score(progress=None):
    from core.training import churn_pipeline
    try:
        return churn_pipeline.score(settings(), progress=progress)
    finally:
        clear()


# --- the gate's yardstick (issue 22) ---------------------------------------------------------------------------
@st.cache_data(show_spinner=False, max_entries=2)
def gate_history(state):
    return tracking.gate_history(settings())


@st.cache_data(show_spinner=False, max_entries=16)
def job_result(state, job_id):
    """A retrain job's stored result (gate checks, and in simulation `truth`)."""
    return tracking.get_job(settings(), int(job_id)).get("result") or {}


@st.cache_data(show_spinner=False, max_entries=2)
def exploration_share(state):
    from core.serving import exploration
    return exploration.get_share(settings())


@st.cache_data(show_spinner=False, max_entries=2)
def exploration_price(state):
    """Online hit rate@10 of exploring vs deterministic lists over the monitored days, or None while core has no
    such summary."""
    price = getattr(monitoring, "exploration_price", None)
    return None if price is None else price(settings())


@st.cache_data(show_spinner=False, max_entries=8)
def holdout_of(state, version):
    """What a version's holdout metrics were measured on: {version, start, end, days, users} — the holdout is the
    last `holdout_days` days of its training data (dataset.holdout_cutoff of the bundle's trained_until); start
    and end are None when the bundle is unreadable."""
    import pandas as pd
    from core.training import artifacts
    from core.warehouse.dataset import holdout_cutoff
    row = registry.get_version(settings(), int(version))
    days = int((row.get("params") or {}).get("holdout_days") or 0)
    until = artifacts.trained_until(row["artifact_path"]) if row.get("artifact_path") else None
    start = end = None
    if until and days:
        end = pd.Timestamp(until)
        start = holdout_cutoff(end, days)
    return {"version": int(version), "start": start, "end": end, "days": days,
            "users": (row.get("metrics") or {}).get("users_evaluated")}


def record_truth(job_id):
    """In a simulated world, the truth about a retrain's gate decision (stored on its job); None elsewhere."""
    from core.simulation import loop, simulation
    if not simulation.has_world(settings()):
        return None
    try:
        return loop.record_truth(settings(), job_id)
    finally:
        clear()


def day_span(start, end) -> str:
    """'Jan 11–13' ('Jan 30–Feb 02') for a window of whole days (an end at midnight is exclusive), '—' when unknown."""
    import pandas as pd
    if start is None or end is None:
        return "—"
    a, b = pd.Timestamp(start), pd.Timestamp(end)
    if b == b.normalize() and b > a:
        b -= pd.Timedelta(seconds=1)
    if a.date() == b.date():
        return f"{a:%b %d}"
    return f"{a:%b %d}–{b:%d}" if (a.year, a.month) == (b.year, b.month) else f"{a:%b %d}–{b:%b %d}"


# --- ads (issue 25) --------------------------------------------------------------------------------------------
@st.cache_data(show_spinner=False, max_entries=2)
def ads_campaigns(state):
    from core.governance import ads_insights
    return ads_insights.campaigns(settings())


@st.cache_data(show_spinner=False, max_entries=2)
def ads_daily(state):
    from core.governance import ads_insights
    return ads_insights.daily(settings())


@st.cache_data(show_spinner=False, max_entries=2)
def ads_model(state):
    from core.governance import ads_insights
    return ads_insights.model(settings())


@st.cache_data(show_spinner=False, max_entries=2)
def ads_retrains(state):
    from core.governance import ads_insights
    return ads_insights.retrains(settings())


@st.cache_data(show_spinner=False, max_entries=32)
def ads_of_user(state, user_id):
    from core.governance import ads_insights
    return ads_insights.user_ads(settings(), user_id)


@st.cache_data(show_spinner=False, max_entries=32)
def ad_explanation(state, user_id, impression_id):
    from core.governance import ads_explain
    return ads_explain.explain_ad(settings(), user_id, impression_id)


@st.cache_data(show_spinner=False, max_entries=4)
def ads_enabled(state) -> bool:
    """Whether the world shows ads; keyed on the token like every read (its ads mark changes with `ads switch`)."""
    from core.governance import ads_insights
    return ads_insights.enabled(settings())


def ads_train(progress, **kwargs):
    from core.ads import pipeline as ads_pipeline
    try:
        return ads_pipeline.train(settings(), progress=progress, **kwargs)
    finally:
        clear()
