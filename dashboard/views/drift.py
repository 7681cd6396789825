"""Drift: run behaviour-shift scenarios in the closed loop and watch monitoring react; the churn model's drift."""
import pandas as pd
import streamlit as st

from core.simulation import loop, simulation
from core.monitoring import policy, release
from core.monitoring.monitoring import FEATURE_LABELS, FEATURES
from dashboard import cache, charts, ui

st.title("Drift & monitoring")
s = cache.settings()


def churn_section() -> None:
    """The churn model's drift: its features and predicted risk in the scores stored on one day vs the holdout the
    production churn version was judged on, and both per scored day."""
    st.subheader("Churn model: feature and risk drift")
    token = cache.token()
    with ui.core_errors():
        report = cache.churn_drift(token)
    if report["version"] is None:
        st.info("No churn model in production: its drift is measured against the holdout it was judged on "
                "(see the Churn page).")
        return
    if not report["history"]:
        st.info(f"Churn v{report['version']} has no stored scores yet: score the active users on the Churn page "
                "(“Score now”).")
        return
    days = [h["as_of"] for h in report["history"]][::-1]
    left, right = st.columns([1, 3], vertical_alignment="bottom")
    day = left.selectbox("Scored day", days, key="churn_drift_day")
    if day != report["as_of"]:
        with ui.core_errors():
            report = cache.churn_drift(token, day)
    right.caption(f"Churn v{report['version']}: reference = the holdout it was judged on "
                  f"({ui.plural(report['reference_rows'], 'row')}); current = the scores stored as of {report['as_of']} "
                  f"({ui.plural(report['current_rows'], 'user')}). PSI: < 0.1 none, 0.1–0.25 moderate, ≥ 0.25 "
                  f"significant; fewer than {s.drift_min_observations} rows in either window is not judged "
                  "(insufficient). A missing value (no list shown, nothing rated) is a bucket of its own.")
    risk = report["risk"]
    judged = [f for f in report["features"] if f["psi"] is not None]
    worst = max(judged, key=lambda f: f["psi"], default=None)
    c1, c2, c3 = st.columns(3)
    c1.metric("Predicted-risk PSI", ui.fmt(risk["psi"], 3), risk["severity"], delta_arrow="off",
              delta_color=charts.SEVERITY_METRIC_COLORS.get(risk["severity"], "gray"), border=True)
    c2.metric("Largest feature PSI", "—" if worst is None else f"{worst['psi']:.3f}",
              None if worst is None else f"{worst['severity']}: {worst['label']}", delta_arrow="off",
              delta_color="gray" if worst is None else charts.SEVERITY_METRIC_COLORS.get(worst["severity"], "gray"),
              border=True)
    drifting = [f for f in judged if f["severity"] != "none"]
    counts = {sev: sum(f["severity"] == sev for f in report["features"]) for sev in ("significant", "moderate", "insufficient")}
    c3.metric("Features drifting", f"{len(drifting)} of {len(report['features'])}",
              ", ".join(f"{n} {sev}" for sev, n in counts.items() if n) or "none", delta_arrow="off",
              delta_color="red" if counts["significant"] else "orange" if drifting else "green", border=True)
    left, right = st.columns(2)
    left.plotly_chart(charts.churn_feature_psi(report["features"]), key="churn_feature_psi")
    right.plotly_chart(charts.churn_risk_shift(risk), key="churn_risk_shift")
    st.plotly_chart(charts.churn_drift_history(report["history"]), key="churn_drift_history")


with st.form("scenario"):
    st.markdown("**Scenario** — simulate days in the closed loop: users see the served lists, the ETL and monitoring "
                "run every day, and the retraining policy acts.")
    c1, c2, c3, c4, c5 = st.columns(5)
    shift = c1.selectbox("Shift", ["none", *simulation.SHIFT_KINDS], key="shift")
    strength = c2.slider("Strength", 0.5, 3.0, 1.0, 0.5, key="strength")
    days = c3.number_input("Days to simulate", 1, 60, 5, key="days")
    duration = c4.number_input("Shift duration (days)", 1, 60, 14, key="duration")
    mode = c5.selectbox("Policy", list(policy.MODES), index=list(policy.MODES).index(policy.get_policy(s)["mode"]),
                        key="policy")
    run = st.form_submit_button("Run scenario", type="primary")
# The closed loop lets the policy retrain and promote: operators only, audited.
if run and (who := ui.operator("run a scenario")) is not None:
    bar = st.progress(0.0, text="starting")
    with ui.audited(who, "simulate", f"{int(days)} days closed loop, policy {mode}") as entry:
        result = loop.run(s, int(days), shift=None if shift == "none" else shift, strength=float(strength),
                          duration=int(duration), policy_mode=mode, progress=ui.progress_callback(bar))
        entry["target"] += f", {result['retrains']} retrains"
    cache.clear()
    bar.progress(1.0, text=f"done: {ui.plural(result['days'], 'day')} simulated")
    # What became of each retrained version, re-read now (a canary a retrain started may have ended since).
    fates = [release.fate(s, v) for v in dict.fromkeys(r["action"]["version"] for r in result["log"] if r["action"])]
    st.success(f"Simulated {ui.plural(result['days'], 'day')}: {ui.plural(result['alerts_opened'], 'alert')} opened, "
               f"{ui.plural(result['retrains'], 'automatic retrain')}"
               + (": " + "; ".join(f["text"] for f in fates) if fates else "") + ".")

with st.expander("Stored retraining policy (used by `simulate` and scheduled runs)"):
    current = policy.get_policy(s)
    with st.form("policy_form"):
        new_mode = st.selectbox("Policy", list(policy.MODES), index=list(policy.MODES).index(current["mode"]), key="policy_mode")
        every = st.number_input("Scheduled: every N days", 1, 60, current["every_days"], key="policy_every")
        if st.form_submit_button("Save policy") and (who := ui.operator("change the retraining policy")) is not None:
            with ui.audited(who, "policy", new_mode + (f" every {int(every)} days" if new_mode == "scheduled" else "")):
                policy.set_policy(s, new_mode, int(every), actor=f"operator:{who}")
            cache.clear()
            st.success(f"Retraining policy is now {new_mode}.")

hist = cache.drift_history(cache.token())
st.info(cache.drift_narrative(cache.token()))
if hist["days"].empty:
    churn_section()           # the churn model's drift needs no closed-loop day
    st.stop()

st.plotly_chart(charts.drift_timeline(hist["days"], hist["scores"], hist["alerts"], hist["actions"]), key="timeline")

st.subheader("Model drift")
st.plotly_chart(charts.model_drift(hist["days"], hist["actions"]), key="model_drift_chart")
st.caption("Served scores are the ranker's log-odds while a ranker serves, the CF model's scores while CF alone "
           "serves (a CF retrain makes the ranker stale until it is retrained): a jump in level at a retrain marker "
           "is a change of scorer; drift is a slow slide between markers.")
if st.button("Evaluate the production model on the newest data", key="evaluate"):
    with ui.core_errors():
        ev = cache.evaluation(cache.token())
    if ev["metrics"] is None:
        st.info(f"v{ev['version']} cannot be scored on newer data yet: {ev['note']}")
    else:
        rows = [{"metric": m, "at training": ev["metrics_at_training"].get(m), "newest holdout": ev["metrics"].get(m),
                 "Top 50 on the newest holdout": ev["baselines"]["top50"].get(m)}
                for m in ("ndcg@10", "precision@10", "recall@10", "hit_rate@10", "coverage")]
        st.caption(f"v{ev['version']} ({ev['model_kind']}), trained on {ev['trained_on']} until "
                   f"{ui.fmt_time(ev['trained_until'])}; scored only on the days after that, {ev['holdout_start'][:10]} – "
                   f"{ev['holdout_end'][:10]} of {ev['data_version']} ({ui.plural(ev['metrics']['users_evaluated'], 'user')}; "
                   f"{ev['metrics_at_training'].get('users_evaluated', '?')} at training). A drop against the "
                   "training-time metrics is model drift.")
        st.dataframe(pd.DataFrame(rows), hide_index=True, key="evaluation_table")

st.subheader("Alerts")
alerts = hist["alerts"]
if alerts.empty:
    st.success("No alert so far.")
else:
    shown = ["alert_id", "kind", "metric", "test", "severity", "value", "threshold", "chance_level", "window_start",
             "closed_at", "classification"]
    st.dataframe(ui.times(alerts)[[c for c in shown if c in alerts]], hide_index=True, key="alerts_table",
                 placeholder="—",    # short headers: the eleven columns fit the 1400 px window
                 column_config={"alert_id": st.column_config.NumberColumn("#", width="small"),
                                "value": st.column_config.NumberColumn(format="%.4f"),
                                "threshold": st.column_config.NumberColumn(format="%.4f"),
                                "chance_level": st.column_config.NumberColumn("chance", format="%.4f",
                                                                              help="chance level (see below)"),
                                "window_start": st.column_config.TextColumn("day"),
                                "closed_at": st.column_config.TextColumn("closed"),
                                "classification": st.column_config.TextColumn("read as")})
    st.caption("An alert needs a change that is both material (value ≥ threshold) and beyond chance (value above "
               "chance_level: the 99th percentile the statistic reaches with no change at that day's window sizes).")

st.subheader("Reference vs current, per feature")
named = [m for m in alerts["metric"] if m in FEATURES] if len(alerts) else []
features = list(FEATURES)
c1, c2 = st.columns(2)
feature = c1.selectbox("Feature", features, index=features.index(named[-1]) if named else 0,
                       format_func=FEATURE_LABELS.get, key="feature")
day_options = list(hist["days"]["day"])[::-1]
alert_days = [str(d)[:10] for d in alerts["window_start"]] if len(alerts) else []
day = c2.selectbox("Day", day_options, key="day",
                   index=day_options.index(alert_days[-1]) if alert_days and alert_days[-1] in day_options else 0)
scores = hist["scores"]
judged = scores[(scores["day"] == day) & (scores["feature"] == feature)] if len(scores) else scores
if len(judged) and "insufficient" in judged and bool(judged["insufficient"].iloc[0]):
    st.warning(f"Not enough data on {day} to judge the {FEATURE_LABELS[feature]}: "
               f"{ui.plural(int(judged['n_current'].iloc[0]), 'observation')} (at least {s.drift_min_observations} are needed, "
               "and 5 per bucket on average). No alert is opened or confirmed on such a day.")
with ui.core_errors():
    dist = cache.feature_distribution(cache.token(), feature, day)
if dist.empty:
    st.info("No reference yet: a production model defines the reference window.")
else:
    st.plotly_chart(charts.feature_comparison(dist, feature), key="feature_chart")
if len(judged) and "null_q99" in judged:
    parts = []
    for r in judged.itertuples():
        if r.score is None or pd.isna(r.score):
            continue
        chance = "" if r.null_q99 is None or pd.isna(r.null_q99) else f", chance level {r.null_q99:.4f}"
        verdict = ("material and beyond chance" if r.score >= r.threshold and bool(r.beyond_chance) else
                   "material but within chance" if r.score >= r.threshold else "below its threshold")
        parts.append(f"{r.test} {r.score:.4f} (threshold {r.threshold:g}{chance}: {verdict})")
    if parts:
        st.caption(f"{day}: " + "; ".join(parts) + ".")

if len(hist["actions"]):
    st.subheader("Automatic and policy actions")
    st.dataframe(ui.times(hist["actions"])[["at", "day", "kind", "actor", "cause", "job_id"]], hide_index=True, key="actions_table")

churn_section()
