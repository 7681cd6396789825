"""Ads: campaigns and their pacing, what ads earn next to the recommender's hit rate and churn, the ads model against
the campaigns' click rates, and "Why am I seeing this ad?" for one user."""
import pandas as pd
import streamlit as st

from dashboard import ads_charts, cache, ui

st.title("Ads")
ui.show_done("ads")                 # the message of the action that just ran; the page below is re-read after it
token = cache.token()
enabled = cache.ads_enabled(token)
model = cache.ads_model(token)
candidate = model["candidates"][0] if model["candidates"] else None

# --- operator actions: train, promote the newest candidate, switch ads on/off --------------------------------------
with st.container(border=True):
    c1, c2, c3, c4 = st.columns([1, 1, 1, 2], vertical_alignment="center")
    train = c1.button("Train ads model", key="ads_train", type="primary" if model["version"] is None else "secondary",
                      help="Point-in-time rows from the warehouse, time split, judged against the campaigns' click "
                           "rates on the holdout; promoted when the gate passes.")
    promote = c2.button(f"Promote v{candidate}" if candidate else "Promote", key="ads_promote",
                        disabled=candidate is None,
                        help="Make the newest ads candidate the production model (the model policy serves it)."
                        if candidate else "No ads candidate to promote.")
    switch = c3.button("Switch ads off" if enabled else "Switch ads on", key="ads_switch",
                       help="The sponsored slot of every list in this world, from the next simulated day.")
    c4.caption("Operators only (sign in under Operator in the sidebar); each action is audited. Training needs "
               "impressions with clicks on at least three days.")
    if train and (who := ui.operator("ads train")) is not None:
        bar = st.progress(0.0, text="ads: starting")
        with ui.audited(who, "ads train") as entry:
            result = cache.ads_train(ui.progress_callback(bar), actor=f"operator:{who}")
            entry["target"] = f"ads v{result['version']} " + ("promoted" if result["promoted"] else "kept as candidate")
        gate = [("caption", f"gate: {reason}") for reason in result["gate"]["reasons"]]
        ui.done("ads", ("success", f"Ads v{result['version']} (run {result['run_id']}) is in production.")
                if result["promoted"] else
                ("warning", f"Ads v{result['version']} (run {result['run_id']}) was kept as a candidate: the gate "
                            "refused it."), *gate)
    if promote and candidate and (who := ui.operator("promote a model version")) is not None:
        from core.training import registry
        with ui.audited(who, "promote", f"ads v{candidate}"):
            registry.promote(cache.settings(), int(candidate), f"operator:{who}", "promoted from the Ads page")
        ui.done("ads", ("success", f"Ads v{candidate} is in production: the model policy serves it from the next "
                                   "simulated day."))
    if switch and (who := ui.operator("switch ads")) is not None:
        from core.simulation import ads_day
        with ui.audited(who, "ads", "off" if enabled else "on") as entry:
            switched = ads_day.switch(cache.settings(), not enabled)
            entry["target"] = ("on" if switched["enabled"] else "off") + (
                f", {switched['campaigns_created']} campaigns created" if switched["campaigns_created"] else "")
        ui.done("ads", ("success", f"Ads are {'on' if switched['enabled'] else 'off'} in this world"
                                   + (f" ({ui.plural(switched['campaigns_created'], 'campaign')} created)"
                                      if switched["campaigns_created"] else "") + "."))

# --- campaigns and pacing -------------------------------------------------------------------------------------------
with ui.core_errors():
    camp = cache.ads_campaigns(token)
totals = camp["totals"]
clicks, shown = totals["clicks"], totals["impressions"]
st.markdown(f"Ads are **{'on' if enabled else 'off'}** in this world. "
            + (f"Since {ui.fmt_time(totals['first_shown_at'])[:10]}: {shown:,} ads shown, {clicks:,} clicked "
               f"({clicks / shown:.2%}), revenue {totals['revenue']:,.2f}." if shown else "No ad has been shown yet."))
st.subheader("Campaigns and pacing")
if not len(camp["campaigns"]):
    st.info("This world has no campaigns: switching ads on creates them.")
else:
    st.caption(f"Spend on {camp['day'] or 'the last simulated day'} against each daily budget (pacing: the share "
               "spent; a campaign that spends faster than the day passes is throttled), and totals over every day.")
    st.dataframe(
        camp["campaigns"].assign(pacing=camp["campaigns"]["pacing"] * 100), hide_index=True, key="ads_campaigns",
        placeholder="—",
        height=min(35 * (len(camp["campaigns"]) + 1) + 3, 600),          # every campaign without scrolling
        column_order=["campaign_id", "advertiser", "creative", "targets", "bid", "daily_budget", "spent_day", "pacing",
                      "impressions", "click_rate", "spend"],
        column_config={   # px widths adding up to less than the main column at 1400 px (938 px): no sideways scroll
            "campaign_id": st.column_config.NumberColumn("id", format="%d", width=35),
            "advertiser": st.column_config.TextColumn("advertiser", width=130),
            "creative": st.column_config.TextColumn("creative", width=140),
            "targets": st.column_config.TextColumn("targets", width=150, help="genres · age bands ('anyone': none)"),
            "bid": st.column_config.NumberColumn("bid", format="%.2f", width=50, help="per click, at most"),
            "daily_budget": st.column_config.NumberColumn("budget", format="%.2f", width=65, help="per day"),
            "spent_day": st.column_config.NumberColumn("spent", format="%.2f", width=60,
                                                       help="on the last simulated day"),
            "pacing": st.column_config.ProgressColumn("pacing", format="%.0f%%", min_value=0.0, max_value=100.0,
                                                      width=80, help="spent ÷ daily budget on the last day"),
            "impressions": st.column_config.NumberColumn("shown", format="%d", width=60, help="all days"),
            "click_rate": st.column_config.NumberColumn("click rate", format="percent", width=65, help="all days"),
            "spend": st.column_config.NumberColumn("revenue", format="%.2f", width=65, help="all days"),
        })

# --- revenue next to hit rate and churn ------------------------------------------------------------------------------
st.subheader("Revenue, hit rate and churn over simulated time")
with ui.core_errors():
    daily = cache.ads_daily(token)
shown_panels = ads_charts.panels(daily)
if shown_panels:
    st.plotly_chart(ads_charts.over_time(daily), key="ads_over_time")
    st.caption("Ads add to the churn hazard (an irrelevant ad more than a relevant one) and leave the organic "
               "behaviour alone: a costly ad policy shows here as more churn days later, not as a lower hit rate. "
               "A day's churn rate needs the 14 days after it.")
missing = [what for name, what in (("revenue", "no ad has reached the warehouse yet"),
                                   ("hit", "no online hit rate yet (days the closed loop served and monitored)"),
                                   ("churn", "no churn rate yet (a day's needs the 14 days after it)"))
           if name not in shown_panels]
if missing:
    st.info("Not drawn: " + "; ".join(missing) + ".")

# --- the model against the baseline ---------------------------------------------------------------------------------
st.subheader("The ads model against the campaigns' click rates")
if model["version"] is None:
    st.info("No ads model has been trained on this world yet: press “Train ads model” (operators). It needs "
            "impressions with clicks on at least three days: train, calibration and holdout days.")
else:
    m, b, status = model["metrics"], model["baseline"], model["status"]
    hold = model["split"].get("holdout") or ["?", "?"]
    st.caption(f"Ads **v{model['version']}** ({model['stage']}, run {model['run_id']}, trained "
               f"{ui.fmt_time(model['created_at'])}); both judged on the same holdout, {hold[0]} to {hold[-1]}: "
               f"{m.get('rows', 0):,} impressions, {m.get('clicks', 0):,} clicked. The baseline is each campaign's "
               "click rate before the holdout.")
    with ui.core_errors():
        policy = cache.ads_retrains(token)
    if model["stage"] == "production" and status["stale"]:
        st.warning("**Possibly stale** — " + "; ".join(status["reasons"]) + ". "
                   + ("Retrain it (“Train ads model”), or let the retraining policy do it (Drift page)."
                      if policy["mode"] == "manual" else
                      f"The retraining policy ({policy['mode']}) retrains it at the end of a closed-loop day."))
    shown = (("log_loss", "Log loss", "{:.4f}", "{:+.4f}", "inverse"), ("roc_auc", "ROC AUC", "{:.3f}", "{:+.3f}", "normal"),
             ("calibration_error", "Calibration error (ECE)", "{:.4f}", "{:+.4f}", "inverse"),
             ("click_rate", "Observed click rate", "{:.2%}", None, "off"))
    for col, (key, label, fmt, dfmt, color) in zip(st.columns(4), shown):
        value, base = m.get(key), b.get(key)
        delta = None if value is None or base is None or dfmt is None else ui.signed_change(value, base, dfmt)
        col.metric(label, "—" if value is None else fmt.format(value), delta, delta_color=color, border=True,
                   delta_description=None if delta is None else f"vs {fmt.format(base)}",
                   help=None if base is None or dfmt is None or delta is not None
                   else f"the same as the campaign rates' {fmt.format(base)} at this precision")
    with ui.core_errors():
        from core.governance import ads_insights
        table = ads_insights.calibration(m, b)
    left, right = st.columns([3, 2])
    if len(table):
        left.plotly_chart(ads_charts.calibration(table), key="ads_calibration")
    else:
        left.info("No calibration bins in this run's holdout.")
    judged = {"model": m, "campaigns": b}
    if isinstance(model["production"], dict) and "log_loss" in model["production"]:
        judged[f"prod. v{model['production']['version']}"] = model["production"]
    right.dataframe(pd.DataFrame({"on the holdout": ["log loss", "ROC AUC", "ECE (10 bins)", "mean predicted"],
                                  **{who: [r.get(k) for k in ("log_loss", "roc_auc", "calibration_error",
                                                              "mean_predicted")] for who, r in judged.items()}}),
                    hide_index=True, key="ads_metrics", placeholder="—",
                    # widths within the right column at 1400 px (~370 px): every column whole, no sideways scroll
                    column_config={"on the holdout": st.column_config.TextColumn(width=110),
                                   **{who: st.column_config.NumberColumn(format="%.4f", width=78) for who in judged}})
    right.caption("Lower log loss and ECE are better; the gate wants both strictly below the campaign rates' "
                  "and, with a model in production, not worse than it.")

    st.markdown("**Retrained by the policy**")
    when = {"manual": "never retrains the ads model (set it on the Drift page)",
            "on-alert": "retrains it in the closed loop on an ads-drift alert, or when it is possibly stale or an "
                        "alert stays open (at most once per cooldown)",
            "scheduled": f"retrains it in the closed loop every {ui.plural(policy['every_days'], 'day')}, on an "
                         "ads-drift alert, or when it is possibly stale"}[policy["mode"]]
    st.caption(f"The retraining policy is **{policy['mode']}**: it {when}; a retrained model goes to production "
               "only when its gate passes.")
    if len(policy["retrains"]):
        st.dataframe(ui.times(policy["retrains"]), hide_index=True, key="ads_retrains", placeholder="—",
                     height=min(35 * (len(policy["retrains"]) + 1) + 3, 248),
                     column_order=["day", "cause", "version", "log_loss", "calibration_error", "outcome"],
                     column_config={"day": st.column_config.TextColumn("day", width=90),
                                    "cause": st.column_config.TextColumn("why", width=450),
                                    "version": st.column_config.NumberColumn("ads", format="v%d", width=50),
                                    "log_loss": st.column_config.NumberColumn("log loss", format="%.4f", width=70),
                                    "calibration_error": st.column_config.NumberColumn("ECE", format="%.4f",
                                                                                       width=60),
                                    "outcome": st.column_config.TextColumn("outcome", width=160)})
    else:
        st.info("The policy has not retrained the ads model yet.")

# --- why am I seeing this ad? ---------------------------------------------------------------------------------------
st.subheader("Why am I seeing this ad?")
if ui.personal_view("why am I seeing this ad"):          # one user's ads and reasons: personal data
    with ui.core_errors():
        directory = cache.users(token)
    ids = directory["user_id"].tolist()
    if not ids:
        st.info("No users yet.")
        st.stop()
    typical = int(directory.loc[(directory["watches"] - directory["watches"].median()).abs().idxmin(), "user_id"])
    labels = {int(r.user_id): f"user {r.user_id} — {ui.plural(r.watches, 'watch', 'watches')}"
              for r in directory.itertuples()}
    user_id = st.selectbox("User (type to search; default: a typical user)", ids, index=ids.index(typical),
                           format_func=labels.get, key="ads_user")
    ui.personal_view("why am I seeing this ad", user_id, banner=False)    # audited once per session and user
    with ui.core_errors():
        ads = cache.ads_of_user(token, int(user_id))
    if not len(ads):
        st.info(f"User {user_id} has not been shown an ad.")
    else:
        picked = st.dataframe(
            ui.times(ads), hide_index=True, key="ads_user_table", on_select="rerun", selection_mode="single-row",
            height=min(35 * (len(ads) + 1) + 3, 248), placeholder="—",
            column_order=["impression_id", "shown_at", "advertiser", "creative", "policy", "p_click", "clicked"],
            column_config={"impression_id": st.column_config.NumberColumn("impression", format="%d", width=80),
                           "shown_at": st.column_config.TextColumn("shown at", width=130),
                           "advertiser": st.column_config.TextColumn(width=160),
                           "creative": st.column_config.TextColumn(width=190),
                           "policy": st.column_config.TextColumn("chosen by", width=110),
                           "p_click": st.column_config.NumberColumn("P(click)", format="%.3f", width=75,
                                                                    help="as logged at selection"),
                           "clicked": st.column_config.CheckboxColumn(width=60)})
        rows = picked.selection.rows if picked is not None and hasattr(picked, "selection") else []
        impression = int(ads["impression_id"].iloc[rows[0] if rows else 0])
        with ui.core_errors():
            e = cache.ad_explanation(token, int(user_id), impression)
        st.markdown(f"**Impression {impression}** ("
                    + ("the selected row" if rows else "the newest; select a row to see another") + f"):\n\n> {e['answer']}")
        facts = [f"chosen by: {e['why']}"] + [f"criterion met: {c}" for c in e["criteria_met"]] + \
                [f"reason: {r}" for r in e["reasons"]]
        st.markdown("\n".join(f"- {f}" for f in facts))
