"""Training & Models: retrain with live progress, the model families' dependencies, compare runs, promote/rollback,
seed variability."""
import pandas as pd
import plotly.express as px
import streamlit as st

from core.constants import CF_KINDS
from core.monitoring import release
from core.training import registry
from dashboard import cache, charts, ui

ESTIMATOR_LABELS = {"ips": "IPS", "snips": "SNIPS", "dr": "DR", "switch": "SWITCH-DR", "dm": "DM"}


def _est(yardstick: dict) -> str:
    """The estimator that measured a decision's log, as people name it (older decisions used DR)."""
    est = yardstick.get("estimator", "switch")      # a decision without a log names the estimator in use now
    return ESTIMATOR_LABELS.get(est, str(est).upper())

st.title("Training & Models")
s = cache.settings()

# --- retrain --------------------------------------------------------------------------------
ON_PASS = {"canary": "start a canary", "promote": "promote it now"}
with st.container(border=True):
    st.subheader("Retrain")
    c1, c2, c3, c4 = st.columns([1, 1, 1.4, 1])
    model = c1.selectbox("Model", [*CF_KINDS, "best"], key="model",
                         help="best: ALS, EASE and the blend trained on the same split; the one with the best "
                              "holdout nDCG@10 goes to the gate")
    seed = c2.number_input("Seed", min_value=0, max_value=2**31 - 1, value=42, step=1, key="seed")
    margin = c3.number_input("Gate tolerance (nDCG@10 the interval's lower bound may fall below 0)", min_value=0.0,
                             max_value=1.0, value=0.0, step=0.005, format="%.3f", key="margin")
    on_pass = c4.radio("When the gate passes", list(ON_PASS), format_func=ON_PASS.get, index=0, key="on_pass",
                       help="A canary shows the candidate to half the users; the release policy of the closed loop "
                            "promotes it or rolls it back on the online hit rate per arm (Deployment page) — it "
                            "earns production online. Promoting now ends a running release as a recorded decision.")
    release_note = st.empty()          # what a passing candidate will meet; refreshed after a retrain

    def show_release_note() -> None:
        now = cache.deployment(cache.token())
        running, waiting = now["release"], now["pending"]
        if now["production"] is None:
            release_note.caption("Nothing is in production yet: the first model that passes the gate is promoted "
                                 "directly (there is nothing to compare a canary with).")
        elif running is not None:
            release_note.caption(
                f"Release #{running['deployment_id']} ({running['mode']} of v{running['version']}"
                + (f" at {running['share']:.0%}" if running["mode"] == "canary" else "") + ") is running: a "
                "candidate that passes the gate waits for it and starts as a canary when it ends"
                + (f" — v{waiting['version']} is waiting now (queued by {waiting['actor']}; a newer one takes "
                   "its place)" if waiting else "") + ".")
        else:
            release_note.empty()
    show_release_note()
    # A retrain can promote to production or start a release: operators only, audited.
    if st.button("Run the retrain pipeline", type="primary", key="retrain") and \
            (who := ui.operator("run a retrain")) is not None:
        bar = st.progress(0.0, text="starting")
        stages = st.empty()
        log: list[str] = []
        with ui.audited(who, "retrain") as entry:
            result = cache.retrain(ui.progress_callback(bar, log), model=model, seed=int(seed), margin=float(margin),
                                   trigger="dashboard", actor=f"operator:{who}", on_pass=on_pass,
                                   release_with=release.after_gate)
            now = release.fate(s, result["version"])     # re-read from the registry and the releases
            entry["target"] = f"v{result['version']} " + {"refused": "kept as candidate",
                                                          "canary": "in canary release"}.get(now["state"], now["state"])
        stages.caption(" → ".join(log))
        released = result["release"]
        verdict = {"promoted": st.success, "canary": st.success, "waiting": st.info}.get(now["state"], st.warning)
        verdict(f"Run {result['run_id']} → v{result['version']}: now "
                + now["text"].removeprefix(f"v{result['version']} ")
                + f" (nDCG@10 {result['metrics']['ndcg@10']:.4f} on "
                  f"{ui.plural(result['metrics']['users_evaluated'], 'holdout user')}, data {result['data_version']})")
        if released is not None and (released["state"] != "promoted" or result["on_pass"] == "canary"):
            st.caption(f"release: {released['reason']}"
                       + (" — the release policy decides it (Deployment page)." if released["state"] != "promoted"
                          else ""))
        show_release_note()
        if released is not None and released.get("replaced"):
            st.warning(f"release: {released['replaced']['reason']}")
        for reason in result["gate"]["reasons"]:
            st.caption(f"gate: {reason}")
        with ui.core_errors():
            truth = cache.record_truth(result["job_id"])     # None outside a simulated world
        if truth:
            st.caption(f"truth (simulated world, next day): candidate {truth['candidate']:.4f} vs production "
                       f"{truth['production']:.4f} watches/list, Δ {truth['difference']:+.4f} — the gate's "
                       f"decision was {truth['verdict']}.")

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
                "lists they were served: a recommender promoted after it was trained makes it possibly stale.\n"
                "- **cf → ads, churn → ads** — the ads model's features include the user's genre affinities (CF) "
                "and churn risk: a CF or churn version promoted after it was trained makes it possibly stale.")
    st.caption("Green: current · red dashed, STALE: what it depends on changed since it was trained · grey dotted: "
               "no production version.")
    if deps["ranker"]["stale"]:
        st.warning(f"**ranker v{deps['ranker']['version']}**: {deps['ranker']['reason']}")
    if deps["churn"]["stale"]:
        st.warning(f"**churn v{deps['churn']['version']}** is possibly stale: " + "; ".join(deps["churn"]["reasons"]))
    if deps.get("ads", {}).get("stale"):
        st.warning(f"**ads v{deps['ads']['version']}** is possibly stale: " + "; ".join(deps["ads"]["reasons"]))

# --- the gate's yardstick: which estimate decided, its interval, the holdout beside it, the truth in simulation ---
st.subheader("Gate decisions and their yardstick")
gates = cache.gate_history(token)
if gates.empty:
    st.info("No finished retrain yet — the gate's decisions show here.")
else:
    newest_first = gates.iloc[::-1]
    label_of = {int(r.job_id): f"job {r.job_id} · v{r.version} · {ui.fmt_time(r.at)} · "
                               + ("promoted" if r.promoted else "gate passed" if r.gate_passed else "gate refused")
                for r in newest_first.itertuples()}
    job_id = st.selectbox("Gate decision", list(label_of), format_func=label_of.get, key="gate_job")
    result = cache.job_result(token, job_id)
    gate = result.get("gate") or {}
    checks = gate.get("checks") or {}
    y = checks.get("yardstick") or {}
    truth = result.get("truth")
    by_log = y.get("decided_by") == "counterfactual"
    holdout_q = (checks.get("holdout_quality") if by_log else checks.get("quality")) or {}
    holdout_b = (checks.get("holdout_baselines") if by_log else checks.get("baselines")) or {}
    holdout_of = cache.holdout_of(token, result["version"]) if result.get("version") else {}
    with st.container(border=True):
        fate = release.fate(s, result["version"]) if result.get("version") else None
        st.markdown(f"**Job {job_id}** ({result.get('trigger') or 'retrain'}), v{result.get('version')}: the gate "
                    + ("passed it" if gate.get("promote") else "**refused** it")
                    + ("" if fate is None else "; now: " + fate["text"].removeprefix(f"v{result['version']} ")))
        m1, m2, m3, m4 = st.columns(4)
        m1.metric("Decided by", f"log ({_est(y)})" if by_log else "holdout")
        m2.metric(f"ESS (min {y.get('min_ess', s.gate_min_ess):,})",
                  f"{y['ess']:,.0f}" if y.get("ess") is not None else "no log")
        m3.metric("True Δ watches/list", f"{truth['difference']:+.4f}" if truth else "—")
        m4.metric("Truth says", truth["verdict"] if truth else "—")

        def fmt(v, digits=4, sign=False):
            return "—" if v is None else f"{v:{'+' if sign else ''}.{digits}f}"

        def interval(c):
            return f"[{c['lo']:+.4f}, {c['hi']:+.4f}]" if c.get("lo") is not None else "—"
        evidence = [{"evidence": f"exploration log ({_est(y)})", "Δ candidate − production": fmt(y.get("point"), sign=True)
                     + (" watches/list" if "point" in y else ""),
                     f"{y.get('level', 0.9):.0%} interval": interval(y),
                     "measured on": (f"{y['log']['lists']:,} lists ({y['log']['exploring_lists']:,} exploring), "
                                     f"{cache.day_span(*y['window'])}" if "point" in y else
                                     y.get("reason", "no exploration log")),
                     "decided": by_log},
                    {"evidence": "holdout", "Δ candidate − production": fmt(holdout_q.get("point"), sign=True)
                     + (" nDCG@10" if "point" in holdout_q else ""),
                     f"{y.get('level', 0.9):.0%} interval": interval(holdout_q),
                     "measured on": (f"{ui.plural(holdout_q['n_users'], 'user')}, "
                                     f"{cache.day_span(holdout_of.get('start'), holdout_of.get('end'))}"
                                     if "n_users" in holdout_q else "no production model to compare"),
                     "decided": not by_log}]
        if truth:
            evidence.append({"evidence": "truth (simulated world)",
                             "Δ candidate − production": f"{truth['difference']:+.4f} watches/list",
                             f"{y.get('level', 0.9):.0%} interval": "exact",
                             "measured on": f"the next simulated day, {truth['draws']} draws", "decided": None})
        values = y.get("values") or {}
        t_values = truth or {}
        policies = pd.DataFrame([{"policy": name, f"watches/list (log, {_est(y)})": fmt(values.get(key)),
                                  **({"true watches/list": fmt(t_values.get(key))} if truth else {}),
                                  "nDCG@10 (holdout)": fmt(holdout_b.get(key) if key != "production"
                                                           else holdout_q.get("production"))}
                                 for name, key in (("candidate", "candidate"), ("production", "production"),
                                                   ("popularity", "popularity"), ("Top 50", "top50"))])
        st.dataframe(pd.DataFrame(evidence), hide_index=True, key="yardstick_table",
                     column_config={"measured on": st.column_config.TextColumn(width="large")})
        st.dataframe(policies, hide_index=True, key="policy_values")
        if "point" in y:
            sentence = (f"The gate decided on the {'exploration log' if by_log else 'holdout'}: the log's effective "
                        f"sample size {y['ess']:,.0f} is {'at least' if by_log else 'below'} the minimum "
                        f"{y['min_ess']:,}, so replaying both policies on it "
                        + ("was trusted over" if by_log else "was not trusted over") + " the holdout.")
        else:
            sentence = ("No exploration log covered the holdout days, so the gate decided on the holdout "
                        f"(nDCG@10, paired bootstrap).")
        if truth:
            sentence += (f" In the simulated world the candidate is truly {truth['difference']:+.4f} watches/list "
                         f"vs production: the decision was **{truth['verdict']}**.")
        st.caption(sentence)
        with st.expander("Every check of this decision"):     # text, not a grid: a collapsed grid is never drawn
            st.markdown("\n".join(f"- **{name}** ({'passed' if c.get('passed') else 'failed'}): {reason}"
                                   for (name, c), reason in zip(checks.items(), gate.get("reasons", []))))
    if gates[["holdout_delta", "cf_delta", "truth_delta"]].notna().any().any():
        st.plotly_chart(charts.yardstick_history(gates), key="yardstick_chart")
        st.caption("Per retrain: the holdout's Δ nDCG@10 (top) and the exploration log's Δ watches per list with "
                   "the world's true Δ (bottom) — different units, so two panels. Bars are 90 % intervals; a filled "
                   "circle is the estimate that decided, a hollow one did not; a green diamond is a right decision, "
                   "red a wrong refusal or promotion.")

# --- exploration: the share of lists that explore feeds the counterfactual yardstick, at a price ----------------
st.subheader("Exploration")
share = cache.exploration_share(token)
price = cache.exploration_price(token)
left, right = st.columns([1, 2])
shown_share = left.empty()          # filled after the form, so a saved change shows at once
with left.form("exploration_form"):
    new_share = st.number_input("New share (0–50 %)", min_value=0.0, max_value=0.5, value=float(share), step=0.01,
                                format="%.2f", key="explore_share")
    if st.form_submit_button("Save share") and (who := ui.operator("change the retraining policy")) is not None:
        from core.serving import exploration
        with ui.audited(who, "exploration share", f"{share:g} → {new_share:g}"):
            exploration.set_share(s, float(new_share), actor=f"operator:{who}")
        cache.clear()
        share = float(new_share)
        st.success(f"Exploration share is now {new_share:.0%}.")
shown_share.metric("Share of served lists that explore", f"{share:.0%}")
with right:
    st.caption("Exploring lists swap some slots for other titles with known probabilities; that log lets the gate "
               "replay candidate and production offline (counterfactual: SWITCH-DR, a doubly robust estimator). A larger share gives a "
               "larger effective sample size, at the price of slightly worse lists for the users who get them.")
    if price and price.get("difference") is not None:
        p1, p2, p3 = st.columns(3)
        p1.metric("Hit rate, deterministic", f"{price['deterministic']['hit_rate']:.1%}")
        p2.metric("Hit rate, exploring", f"{price['explore']['hit_rate']:.1%}")
        p3.metric("Price of exploring", f"{price['difference'] * 100:+.1f} pts")
        st.caption(f"Online hit rate@10 over every monitored day: {price['explore']['lists']:,} exploring vs "
                   f"{price['deterministic']['lists']:,} deterministic lists (a list's coin is independent of its "
                   "user, so the groups compare like with like).")
    else:
        st.caption("The price of exploring (online hit rate@10 of exploring vs deterministic lists) shows once the "
                   "monitor has seen days with both kinds of list.")

runs = cache.runs(token)
versions, history = cache.versions(token)

# --- runs -----------------------------------------------------------------------------------
st.subheader("Experiment runs")
# The families measure different things (ranking quality vs a churn classifier's): one table and comparison each.
RUN_VIEWS = {
    "Recommender (cf, ranker)": dict(
        families=(registry.CF, registry.RANKER),
        columns=("run_id", "model_kind", "status", "started_at", "data_version", "seed", "ndcg@10",
                 "precision@10", "recall@10", "hit_rate@10", "coverage", "novelty", "users_evaluated", "duration_s"),
        compared=("precision@10", "recall@10", "ndcg@10", "map@10", "hit_rate@10", "coverage")),
    "Churn": dict(
        families=(registry.CHURN,),
        columns=("run_id", "model_kind", "status", "started_at", "data_version", "seed", "roc_auc", "pr_auc", "brier",
                 "top_decile_lift", "base_rate", "rows", "churned", "training_rows", "duration_s"),
        compared=("roc_auc", "pr_auc", "brier", "top_decile_lift")),
}
# Short headers (the full name on hover), so every column fits the 1400 px window without scrolling sideways.
RUN_HEADERS = {"run_id": ("run", None), "model_kind": ("kind", None), "started_at": ("started", "simulated clock"),
               "data_version": ("data", "data version trained on"), "ndcg@10": ("nDCG@10", None),
               "precision@10": ("P@10", "precision@10"), "recall@10": ("R@10", "recall@10"),
               "hit_rate@10": ("HR@10", "hit rate@10"), "users_evaluated": ("users", "holdout users evaluated"),
               "duration_s": ("secs", "wall-clock seconds the run's stages took"),
               "top_decile_lift": ("lift@10%", "top-decile lift"), "training_rows": ("train rows", None)}
FOUR_DIGITS = {"coverage", "novelty", "roc_auc", "pr_auc", "brier", "top_decile_lift", "base_rate"}


def run_column(c: str):
    label, helptext = RUN_HEADERS.get(c, (c, None))
    if "@" in c or c in FOUR_DIGITS:
        return st.column_config.NumberColumn(label, help=helptext or c, format="%.4f")
    if c == "duration_s":
        return st.column_config.NumberColumn(label, help=helptext, format="%.1f")
    return st.column_config.Column(label, help=helptext)


def comparison_table(diff: pd.DataFrame) -> pd.DataFrame:
    """Runs A and B side by side as text: every value at the same precision (4 decimals; counts as integers),
    '—' where a run lacks the metric, Δ = B − A and Δ % = (B − A) / |A|."""
    # A count (users, pairs, items): every value of the row a whole number above 1 in both runs.
    counts = {r.metric for r in diff.itertuples()
              if all(pd.notna(x) and float(x).is_integer() for x in (r.a, r.b)) and max(abs(r.a), abs(r.b)) > 1}

    def num(v, metric, sign=False):
        if v is None or pd.isna(v):
            return "—"
        return f"{v:{'+' if sign else ''},.{0 if metric in counts else 4}f}"
    return pd.DataFrame({"metric": diff["metric"],
                         "run A": [num(v, m) for v, m in zip(diff["a"], diff["metric"])],
                         "run B": [num(v, m) for v, m in zip(diff["b"], diff["metric"])],
                         "Δ (B − A)": [num(v, m, sign=True) for v, m in zip(diff["delta"], diff["metric"])],
                         "Δ % of A": ["—" if pd.isna(v) else f"{v:+.1%}" for v in diff["rel_delta"]]})


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
                     column_config={c: run_column(c) for c in cols})
    finished_runs = shown_runs[shown_runs["status"] == "finished"]
    # Like with like: both runs of one model kind (an ALS run against a ranker run compares different things).
    kinds = [k for k in dict.fromkeys(finished_runs["model_kind"]) if (finished_runs["model_kind"] == k).sum() >= 2]
    if kinds:
        k1, a, b = st.columns([1, 1, 1])
        kind = k1.selectbox("Compare runs of", kinds, key="compare_kind")
        finished = finished_runs[finished_runs["model_kind"] == kind]["run_id"].tolist()
        run_a = a.selectbox("Run A", finished, index=1, key="run_a")
        run_b = b.selectbox("with run B", finished, index=0, key="run_b")
        diff = cache.compare(token, run_a, run_b)
        st.dataframe(comparison_table(diff), hide_index=True, key="compare_table",
                     column_config={"Δ (B − A)": st.column_config.TextColumn(help="run B's value minus run A's"),
                                    "Δ % of A": st.column_config.TextColumn(
                                        help="(B − A) / |A|: the change relative to run A; — when A is 0 or "
                                             "either run lacks the metric")})
        st.caption("Δ (B − A) = run B's value minus run A's; Δ % of A = that difference relative to run A's value "
                   "(— when A is 0 or either run lacks the metric). Every value at 4 decimals; counts as integers.")
        shown = diff[diff["metric"].isin(spec["compared"])]
        long = shown.melt(id_vars="metric", value_vars=["a", "b"], var_name="run", value_name="value")
        long["run"] = long["run"].map({"a": f"run {run_a} (A)", "b": f"run {run_b} (B)"})
        fig = px.bar(long, x="metric", y="value", color="run", barmode="group", text_auto=".4f",
                     title=f"Run {run_a} vs run {run_b} ({kind}) on their holdouts")
        fig.update_yaxes(tickformat=".3f")
        st.plotly_chart(fig, key="compare_chart")
        timings = pd.DataFrame([{"run": f"run {r}", "stage": k, "seconds": v}
                                for r in (run_a, run_b) for k, v in (cache.run(token, r)["timings"] or {}).items()])
        if len(timings):
            st.plotly_chart(px.bar(timings, x="seconds", y="run", color="stage", orientation="h",
                                   title="Stage timings (s)"), key="timings_chart")
    elif len(finished_runs) >= 2:
        st.caption("Runs compare with runs of the same model kind: no kind has two finished runs yet.")

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
    st.dataframe(ui.times(history)[["at", "version", "from_stage", "to_stage", "actor", "reason"]], hide_index=True,
                 key="history_table", placeholder="—",
                 column_config={"at": st.column_config.TextColumn("at (service clock)"),
                                "from_stage": st.column_config.TextColumn("from", help="— : newly registered")})
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
