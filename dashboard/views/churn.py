"""Churn: who is about to stop watching and why, how good the churn model is, and churn next to recommendation quality."""
import streamlit as st

from dashboard import cache, charts, ui

st.title("Churn")
ui.show_done("churn")               # the message of the action that just ran; the page below is re-read after it
status = cache.churn_status(cache.token())
has_model = status["version"] is not None
ready = None if has_model else cache.churn_readiness(cache.token())
too_short = ready is not None and not ready["enough_history"]


def score_with_progress(bar, who: str, start: float = 0.0) -> dict:
    """Score every active user (audited), the bar naming the stage and then the number of users scored."""
    bar.progress(start, text="churn scoring: point-in-time features of the active users")
    with ui.audited(who, "churn score") as entry:
        scored = cache.churn_score(progress=ui.progress_callback(bar, start=start))
        entry["target"] = f"v{scored['version']}: {scored['users']} users as of {scored['as_of'][:10]}"
    return scored


# --- operator actions: train (then score at once when promoted), score now ------------------------------------
with st.container(border=True):
    c1, c2, c3 = st.columns([1, 1, 3], vertical_alignment="center")
    train = c1.button("Train churn model", type="secondary" if has_model else "primary", key="churn_train",
                      disabled=too_short, help="The world is too short for the time split yet (see below)." if too_short
                      else "Fit, judge against the recency rule, register; promoted (and scored) when it beats the rule.")
    score = c2.button("Score now", key="churn_score", disabled=not has_model,
                      help="Score every active user with the production churn model as of the warehouse's last day "
                           "and store the scores (what this page, the online check and drift read)." if has_model
                      else "Needs a churn model in production: train one first.")
    c3.caption("Training fits on point-in-time warehouse snapshots, judges the model against the recency rule on "
               "the holdout and promotes it only when it beats the rule. Operators only (sign in under Operator in the sidebar).")
    if train and (who := ui.operator("train the churn model")) is not None:
        bar = st.progress(0.0, text="churn: starting")
        with ui.audited(who, "churn train") as entry:
            result = cache.churn_train(ui.progress_callback(bar, end=0.8), actor=f"operator:{who}")
            entry["target"] = f"v{result['version']} " + ("promoted" if result["promoted"] else "kept as candidate")
        gate = [("caption", f"gate: {reason}") for reason in result["gate"]["reasons"]]
        if result["promoted"]:
            scored = score_with_progress(bar, who, start=0.8)
            ui.done("churn", ("success", f"Churn v{result['version']} (run {result['run_id']}) is in production and "
                                         f"scored {ui.plural(scored['users'], 'active user')} as of "
                                         f"{scored['as_of'][:10]}."), *gate)
        ui.done("churn", ("warning", f"Churn v{result['version']} (run {result['run_id']}) was kept as a candidate: "
                                     "the gate refused it."), *gate)
    if score and (who := ui.operator("score churn risk")) is not None:
        scored = score_with_progress(st.progress(0.0, text="churn scoring: starting"), who)
        ui.done("churn", ("success", f"Scored {ui.plural(scored['users'], 'active user')} as of {scored['as_of'][:10]} "
                                     f"with churn v{scored['version']} (mean risk {scored['mean_risk'] or 0:.1%})."))

token = cache.token()               # the actions above may have changed the stores
status = cache.churn_status(token)


def metrics_vs_rule(metrics: dict, rule: dict) -> None:
    """ROC AUC, PR AUC, Brier and top-decile lift of a version's holdout, each against the recency rule."""
    shown = (("roc_auc", "ROC AUC", "{:.3f}", "{:+.3f}", "normal"), ("pr_auc", "PR AUC", "{:.3f}", "{:+.3f}", "normal"),
             ("brier", "Brier (lower is better)", "{:.4f}", "{:+.4f}", "inverse"),
             ("top_decile_lift", "Top-decile lift", "{:.2f}×", "{:+.2f}", "normal"))
    for col, (key, label, fmt, dfmt, color) in zip(st.columns(4), shown):
        value, base = metrics.get(key), rule.get(key)
        col.metric(label, "—" if value is None else fmt.format(value),
                   None if value is None or base is None else dfmt.format(value - base), delta_color=color,
                   delta_description=None if base is None else f"vs rule {fmt.format(base)}", border=True)


def missing_days() -> None:
    """How many days the warehouse lacks for the churn model's time split, and the one action that adds them:
    the ETL when the world already holds them, else growing the world by exactly that many days (which runs
    the ETL)."""
    from core.simulation import simulation
    missing, unloaded = ready["missing"], ready["unloaded"]
    st.warning(f"No churn model yet: the warehouse holds {ui.plural(ready['days'], 'day')} of watch data and a "
               f"churn model needs {ready['needed']} ({churn_split()}) — {ui.plural(missing, 'day')} missing.")
    if unloaded >= missing:
        st.markdown(f"The world already holds {ui.plural(unloaded, 'day')} the warehouse has not loaded: run the ETL "
                    "and train.")
        if st.button(f"Run the ETL ({ui.plural(unloaded, 'day')})", key="churn_etl", type="primary") and \
                (who := ui.operator("run the ETL")) is not None:
            from core.warehouse import etl
            with st.spinner("ETL: extracting, validating, loading…"), ui.audited(who, "etl") as entry:
                result = etl.run(cache.settings())
                entry["target"] = f"dv{result.data_version}" if result.status == "loaded" else result.status
            ui.done("churn", ("success", f"ETL run {result.run_id}: {result.status}, "
                                         f"{ui.plural(result.rows_loaded, 'row')} loaded. Train the churn model now."))
    elif simulation.has_world(cache.settings()):
        grow = missing - unloaded
        st.markdown(f"Grow the world by {ui.plural(grow, 'day')} (the ETL loads them"
                    + (f", with the {ui.plural(unloaded, 'day')} not loaded yet" if unloaded else "")
                    + "), then train. Operators; the Overview page's *Grow the world* does the same for any number "
                      f"of days, the CLI `python -m core simulate --days {grow} --open-loop` then `python -m core etl`.")
        if st.button(f"Grow the world by {ui.plural(grow, 'day')}", key="churn_grow", type="primary"):
            ui.grow_world(grow, page="churn")
    else:
        st.caption("Imported data has no world to grow: import more days of history, run the ETL, then train.")


def churn_split() -> str:
    from core.training import churn
    return (f"{churn.MIN_HISTORY_DAYS} days of features, then {churn.HORIZON_DAYS} days of outcome for training "
            f"and {churn.HORIZON_DAYS} for the holdout")


if status["version"] is None:
    ready = cache.churn_readiness(token)
    candidate = ready["candidate"]
    if not ready["enough_history"]:
        missing_days()
    elif candidate is not None:
        st.warning(f"No churn model in production: the newest, v{candidate['version']} (run {candidate['run_id']}, "
                   f"{ui.fmt_time(candidate['created_at'])}), is a {candidate['stage']} — the gate wants it to beat "
                   "the recency rule on the holdout. Train again when the world has more days, or promote it on the "
                   "Training & Models page if you accept it.")
        metrics_vs_rule(candidate["metrics"], candidate["recency"])
    else:
        st.info(f"No churn model has been trained on this world yet. The warehouse holds "
                f"{ui.plural(ready['days'], 'day')} of watch data, enough for the time split: press “Train churn model”.")
else:
    # --- the production model and how it compares with the recency rule ----------------------------------------
    run = cache.run(token, status["run_id"])
    metrics, rule = run.get("metrics") or {}, (run.get("baselines") or {}).get("recency") or {}
    st.caption(f"Production churn model **v{status['version']}** (run {status['run_id']}, data {status['data_version']}, "
               f"trained {ui.fmt_time(status['created_at'])}; training window until {ui.fmt_time(status['window_end'])}). "
               "Label: an active user has no watch in the next 14 days.")
    if status["stale"]:
        st.warning("**Possibly stale** — the recommender changed since this churn model was trained: "
                   + "; ".join(status["reasons"]) + ". Retrain it (“Train churn model”).")
    metrics_vs_rule(metrics, rule)
    st.caption(f"On the holdout snapshot: {ui.plural(metrics.get('rows', 0), 'active user')}, "
               f"{metrics.get('churned', 0):,} churned ({(metrics.get('base_rate') or 0):.1%}). Higher is better "
               "except Brier. The recency rule is the rule a team has before any model: the longer since the last "
               "watch, the likelier the user is gone.")

    # --- who is at risk -----------------------------------------------------------------------------------------
    head, pick = st.columns([4, 1], vertical_alignment="bottom")
    head.subheader("Who is at risk")
    top = pick.number_input("Users listed", min_value=5, max_value=200, value=20, step=5, key="churn_top")
    with ui.core_errors():
        scores = cache.churn_scores(token, int(top))
    if scores["note"]:
        st.info(f"No scores to show: {scores['note']}.")
    elif not ui.personal_view("at-risk list"):       # users by id with their reasons: personal data
        st.plotly_chart(charts.risk_histogram(scores["risk"]), key="risk_histogram")
    else:
        st.caption(f"Stored scores of v{scores['version']} as of {scores['as_of'][:10]} "
                   f"({ui.plural(len(scores['risk']), 'active user')}, scored {ui.fmt_time(scores['scored_at'])})"
                   + (f"; change = since {scores['previous_as_of'][:10]}" if scores["previous_as_of"] else "")
                   + (f"; {ui.plural(scores['unknown_users'], 'scored user')} no longer in the operational database "
                      "(erased) not listed" if scores["unknown_users"] else "") + ".")
        table = scores["top"].assign(change=lambda d: d["change"] * 100,
                                     why=lambda d: d["reasons"].map(" · ".join)).drop(columns="reasons")
        picked = st.dataframe(
            table, hide_index=True, key="at_risk_table", on_select="rerun", selection_mode="single-row", height=300,
            placeholder="—",
            column_order=["user_id", "risk", "change", "days_since_last_watch", "watches_7d", "watches_28d",
                          "active_days_28d", "why"],
            column_config={
                # px widths adding up to less than the main column at 1400 px (938 px): no sideways scrolling;
                # the grid spreads what is left, and the whole "why" is the markdown below the table.
                "user_id": st.column_config.NumberColumn("user", format="%d", width=60),
                "risk": st.column_config.ProgressColumn("risk", format="percent", min_value=0.0, max_value=1.0,
                                                        width=90),
                "change": st.column_config.NumberColumn("Δ risk (pp)", format="%+.1f", width=85,
                                                        help="percentage points since the previous scored day"),
                "days_since_last_watch": st.column_config.NumberColumn("days idle", format="%.1f", width=70,
                                                                       help="days since the last watch"),
                "watches_7d": st.column_config.NumberColumn("watches 7 d", format="%d", width=85),
                "watches_28d": st.column_config.NumberColumn("watches 28 d", format="%d", width=90),
                "active_days_28d": st.column_config.NumberColumn("active days", format="%d", width=80,
                                                                 help="days with activity in the last 28 days"),
                "why": st.column_config.TextColumn("why (top SHAP reasons)", width=320),
            })
        rows = picked.selection.rows if picked is not None and hasattr(picked, "selection") else []
        chosen = scores["top"].iloc[rows[0] if rows else 0]
        left, right = st.columns([3, 2])
        with left:
            st.markdown(f"**Why user {int(chosen['user_id'])} is at risk ({chosen['risk']:.0%})** — "
                        + ("the selected row" if rows else "the riskiest; select a row to see another") + ":\n"
                        + "\n".join(f"- {r}" for r in chosen["reasons"]))
            st.caption("Contributions are SHAP values on the calibrated log-odds of the risk; the Explanations & "
                       "Governance page shows every feature of one user (“Why is this user at risk?”).")
            st.download_button("Export the at-risk list (CSV)", table.to_csv(index=False),
                               file_name=f"churn-at-risk-v{scores['version']}-{scores['as_of'][:10]}.csv",
                               key="at_risk_csv")
        right.plotly_chart(charts.risk_histogram(scores["risk"]), key="risk_histogram")

    # --- is the model right? ------------------------------------------------------------------------------------
    st.subheader("Is the model right?")
    left, right = st.columns(2)
    left.plotly_chart(charts.churn_calibration(cache.churn_calibration(token)), key="churn_calibration")
    with ui.core_errors():
        online = cache.churn_online(token)
    if online.get("rows"):
        right.plotly_chart(charts.churn_online(online["days"]), key="churn_online")
        right.caption(f"{ui.plural(online['rows'], 'stored score')} from {online['window'][0]} to {online['window'][1]} "
                      f"whose 14 days are over: ROC AUC {ui.fmt(online.get('roc_auc'), 3)}, Brier "
                      f"{ui.fmt(online.get('brier'), 4)}; predicted {online['mean_predicted']:.1%} vs observed "
                      f"{online['base_rate']:.1%}.")
    else:   # no empty chart: an axis without data reads like a broken chart
        right.markdown("**Online check: stored scores vs who churned**")
        right.info("Nothing to check yet: " + (online.get("note") or "no stored scores in the window") + ". The "
                   "closed loop (`python -m core simulate --days N`) and **Score now** store scores; each is checked 14 days "
                   "later.")

# --- churn in the world next to the recommender's online quality ----------------------------------------------
st.subheader("Churn and recommendation quality over time")
with ui.core_errors():
    quality = cache.churn_and_quality(token)
churn_panel, hit_panel = charts.churn_quality_panels(quality)
if churn_panel or hit_panel:
    st.plotly_chart(charts.churn_and_quality(quality), key="churn_quality_chart")
    st.caption("A worse recommender in production should show here as more churn some days later: the churn rate "
               "of a day needs the 14 days after it, so the newest two weeks have none yet; hit rates exist for the "
               "days the closed loop served and monitored.")
if not churn_panel:
    st.info("No churn rate yet: a day's churn rate needs 14 days of data after it.")
if not hit_panel:
    st.info("No online hit rate yet: it comes from days the closed loop served and monitored — run a scenario on "
            "the Drift page (operators) or `python -m core simulate --days N`; growing the world simulates "
            "behaviour only.")
