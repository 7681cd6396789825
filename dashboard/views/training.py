"""Training & Models: retrain with live progress, the model families' dependencies, compare runs, promote/rollback,
seed variability."""
import pandas as pd
import plotly.express as px
import streamlit as st

from core.training import registry
from dashboard import cache, charts, ui

st.title("🧪 Training & Models")
s = cache.settings()

# --- retrain --------------------------------------------------------------------------------
with st.container(border=True):
    st.subheader("Retrain")
    c1, c2, c3 = st.columns(3)
    model = c1.selectbox("Model", ["als", "bpr"], key="model")
    seed = c2.number_input("Seed", min_value=0, max_value=2**31 - 1, value=42, step=1, key="seed")
    margin = c3.number_input("Gate tolerance (nDCG@10 the interval's lower bound may fall below 0)", min_value=0.0,
                             max_value=1.0, value=0.0, step=0.005, format="%.3f", key="margin")
    # A retrain can promote to production: operators only, audited.
    if st.button("Run the retrain pipeline", type="primary", key="retrain") and \
            (who := ui.operator("run a retrain")) is not None:
        bar = st.progress(0.0, text="starting")
        stages = st.empty()
        log: list[str] = []
        with ui.audited(who, "retrain") as entry:
            result = cache.retrain(ui.progress_callback(bar, log), model=model, seed=int(seed), margin=float(margin),
                                   trigger="dashboard", actor=f"operator:{who}")
            entry["target"] = f"v{result['version']} " + ("promoted" if result["promoted"] else "kept as candidate")
        stages.caption(" → ".join(log))
        verdict = st.success if result["promoted"] else st.warning
        verdict(f"Run {result['run_id']} → v{result['version']}: "
                + ("promoted to production" if result["promoted"] else "kept as candidate — the gate refused it")
                + f" (nDCG@10 {result['metrics']['ndcg@10']:.4f} on "
                  f"{ui.plural(result['metrics']['users_evaluated'], 'holdout user')}, data {result['data_version']})")
        for reason in result["gate"]["reasons"]:
            st.caption(f"gate: {reason}")

token = cache.token()

# --- the three model families and what each depends on ----------------------------------------------------------
st.subheader("Model families and their dependencies")
with ui.core_errors():
    deps = cache.model_dependencies(token)
graph, legend = st.columns([1, 1], vertical_alignment="center")
graph.graphviz_chart(charts.dependency_dot(deps), width="stretch")
with legend:
    st.markdown("- **cf → ranker** — the ranker re-ranks the candidates of one CF version: a CF promotion makes it "
                "stale until it is retrained (a CF retrain does).\n"
                "- **cf → churn, ranker → churn** — the churn model's features include how users responded to the "
                "lists they were served: a recommender promoted after it was trained makes it possibly stale.")
    st.caption("Green: current · red dashed, STALE: what it depends on changed since it was trained · grey dotted: "
               "no production version.")
    if deps["ranker"]["stale"]:
        st.warning(f"**ranker v{deps['ranker']['version']}**: {deps['ranker']['reason']}")
    if deps["churn"]["stale"]:
        st.warning(f"**churn v{deps['churn']['version']}** is possibly stale: " + "; ".join(deps["churn"]["reasons"]))

decision = cache.last_gate(token)
if decision is not None:
    with st.container(border=True):
        st.markdown(f"**Last gate decision** — job {decision['job_id']} ({decision['trigger']}), v{decision['version']}: "
                    + ("promoted" if decision["promoted"] else "**refused**, production kept"))
        checks = decision["gate"].get("checks", {})
        quality = checks.get("quality", {})
        if "lo" in quality:
            st.caption(f"Paired bootstrap of the per-user nDCG@10 difference (candidate − production) over "
                       f"{ui.plural(quality['n_users'], 'holdout user')}, {ui.plural(quality['resamples'], 'resample')}: "
                       f"{quality['point']:+.4f}, {quality['level']:.0%} interval [{quality['lo']:+.4f}, "
                       f"{quality['hi']:+.4f}]; reference: {quality.get('reference', 'production')}.")
        st.dataframe(pd.DataFrame([{"check": name, "passed": bool(c.get("passed")), "reason": reason}
                                   for (name, c), reason in zip(checks.items(), decision["gate"].get("reasons", []))]),
                     hide_index=True, key="gate_table", column_config={"reason": st.column_config.TextColumn(width="large")})
runs = cache.runs(token)
versions, history = cache.versions(token)

# --- runs -----------------------------------------------------------------------------------
st.subheader("Experiment runs")
# The families measure different things (ranking quality vs a churn classifier's): one table and comparison each.
RUN_VIEWS = {
    "Recommender (cf, ranker)": dict(
        families=(registry.CF, registry.RANKER),
        columns=("run_id", "model_kind", "engine", "status", "started_at", "data_version", "seed", "ndcg@10",
                 "precision@10", "recall@10", "hit_rate@10", "coverage", "novelty", "users_evaluated", "duration_s",
                 "code_version"),
        compared=("precision@10", "recall@10", "ndcg@10", "map@10", "hit_rate@10", "coverage")),
    "Churn": dict(
        families=(registry.CHURN,),
        columns=("run_id", "model_kind", "status", "started_at", "data_version", "seed", "roc_auc", "pr_auc", "brier",
                 "top_decile_lift", "base_rate", "rows", "churned", "training_rows", "duration_s", "code_version"),
        compared=("roc_auc", "pr_auc", "brier", "top_decile_lift")),
}
FOUR_DIGITS = {"coverage", "novelty", "roc_auc", "pr_auc", "brier", "top_decile_lift", "base_rate"}
if runs.empty:
    st.info("No runs yet — press “Run the retrain pipeline”.")
else:
    families = runs["model_kind"].map(lambda k: registry.MODEL_FAMILIES.get(k, registry.CF))
    view = st.radio("Runs of", list(RUN_VIEWS), horizontal=True, key="runs_family", label_visibility="collapsed")
    spec = RUN_VIEWS[view]
    shown_runs = runs[families.isin(spec["families"])]
    if shown_runs.empty:
        st.info(f"No {view.lower()} runs yet.")
    else:
        cols = [c for c in spec["columns"] if c in shown_runs]
        st.dataframe(ui.times(shown_runs[cols]), hide_index=True, key="runs_table", placeholder="—",
                     column_config={c: st.column_config.NumberColumn(format="%.4f") for c in cols
                                    if "@" in c or c in FOUR_DIGITS})
    finished = shown_runs[shown_runs["status"] == "finished"]["run_id"].tolist()
    if len(finished) >= 2:
        a, b = st.columns(2)
        run_a = a.selectbox("Compare run", finished, index=1, key="run_a")
        run_b = b.selectbox("with run", finished, index=0, key="run_b")
        diff = cache.compare(token, run_a, run_b)
        st.dataframe(diff, hide_index=True, key="compare_table")
        shown = diff[diff["metric"].isin(spec["compared"])]
        long = shown.melt(id_vars="metric", value_vars=["a", "b"], var_name="run", value_name="value")
        long["run"] = long["run"].map({"a": f"run {run_a}", "b": f"run {run_b}"})
        st.plotly_chart(px.bar(long, x="metric", y="value", color="run", barmode="group",
                               title=f"Run {run_a} vs run {run_b} on their holdouts"), key="compare_chart")
        timings = pd.DataFrame([{"run": f"run {r}", "stage": k, "seconds": v}
                                for r in (run_a, run_b) for k, v in (cache.run(token, r)["timings"] or {}).items()])
        if len(timings):
            st.plotly_chart(px.bar(timings, x="seconds", y="run", color="stage", orientation="h",
                                   title="Stage timings (s)"), key="timings_chart")

# --- registry ---------------------------------------------------------------------------------
st.subheader("Model registry")
if versions.empty:
    st.info("No model versions yet — a retrain registers one.")
else:
    # One table for every family (one lifecycle); each family's own holdout metrics, "—" where they do not apply.
    shown_versions = [c for c in ("version", "family", "model_kind", "stage", "depends_on", "data_version", "created_at",
                                  "ndcg@10", "users_evaluated", "roc_auc", "brier", "run_id")
                      if c in versions]
    st.dataframe(ui.times(versions)[shown_versions], hide_index=True, key="versions_table", placeholder="—",
                 column_config={"depends_on": st.column_config.NumberColumn("depends on", format="v%d",
                                                                            help="the CF version it was trained on"),
                                **{c: st.column_config.NumberColumn(format="%.4f")
                                   for c in ("ndcg@10", "roc_auc", "brier")}})
    st.caption("Lifecycle history (who, when, why):")
    st.dataframe(ui.times(history)[["at", "version", "from_stage", "to_stage", "actor", "reason"]], hide_index=True, key="history_table")
    left, right = st.columns(2)
    with left.form("promote_form"):
        st.markdown("**Promote a version**")
        choices = versions[versions["stage"] != "production"]["version"].tolist()
        family_of = dict(zip(versions["version"], versions["family"]))
        version = st.selectbox("Version", choices, key="promote_version", disabled=not choices,
                               format_func=lambda v: f"v{v} ({family_of.get(v, '?')})")
        reason = st.text_input("Reason (recorded)", key="promote_reason")
        sure = st.checkbox("I confirm this changes what users are served", key="promote_confirm")
        force = st.checkbox("Force: promote even if it does not beat its baselines (recorded as forced)",
                            key="promote_force")
        if st.form_submit_button("Promote", disabled=not choices):
            if not sure:
                st.error("Tick the confirmation box first.")
            elif (who := ui.operator("promote a model version")) is not None:
                with ui.audited(who, "promote", f"v{version}" + (" (forced)" if force else "")):
                    registry.promote(s, int(version), f"operator:{who}", reason or "manual promotion from the dashboard",
                                     force=force)
                cache.clear()
                st.success(f"v{version} is now in production.")
    with right.form("rollback_form"):
        st.markdown("**Roll back production**")
        rb_family = st.selectbox("Family", list(registry.FAMILIES), key="rollback_family")
        reason_rb = st.text_input("Reason (recorded)", key="rollback_reason")
        sure_rb = st.checkbox("I confirm the rollback", key="rollback_confirm")
        if st.form_submit_button("Roll back"):
            if not sure_rb:
                st.error("Tick the confirmation box first.")
            elif (who := ui.operator("roll back production")) is not None:
                with ui.audited(who, "rollback") as entry:
                    restored = registry.rollback(s, f"operator:{who}", reason_rb, family=rb_family)
                    entry["target"] = f"{rb_family} v{restored}"
                cache.clear()
                st.success(f"Rolled back {rb_family}: v{restored} is in production again.")

# --- probabilistic outputs --------------------------------------------------------------------
st.subheader("Probabilistic outputs")
st.caption("Train the same configuration with several seeds: how much do the metrics and the lists move?")
n_seeds = st.slider("Seeds", 2, 5, 3, key="n_seeds")
if st.button("Train with each seed", key="seeds_button"):
    with st.spinner(f"training {n_seeds} models…"), ui.core_errors():
        var = cache.seed_variability(token, tuple(range(1, n_seeds + 1)), model)
    st.dataframe(var["metrics"], hide_index=True, key="seed_metrics")
    st.plotly_chart(px.strip(var["metrics"].melt(id_vars="seed", var_name="metric"), x="metric", y="value",
                             color="seed", title="Holdout metrics per seed"), key="seed_chart")
    st.metric("Mean top-10 overlap between seeds (Jaccard)", f"{var['overlap']['mean_jaccard'].mean():.0%}",
              help=f"over {ui.plural(var['users'], 'evaluation user')}")
