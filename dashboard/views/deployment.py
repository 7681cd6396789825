"""Deployment: what serves now, the model server's traffic, per-arm online quality, releases and their decisions."""
import streamlit as st

from core.monitoring import release
from core.serving import deployments
from dashboard import cache, charts, ui

st.title("Deployment")
ui.show_done("deployment")          # the message of the action that just ran; the page below is re-read after it
s = cache.settings()
token = cache.token()
status = cache.deployment(token)
prod, active, ev = status["production"], status["release"], status["evidence"]

# --- what serves now ---------------------------------------------------------------------------------------------
st.subheader("What serves now")
c1, c2, c3 = st.columns(3)
c1.metric("Production", f"v{prod['version']}" if prod else "—",
          help=None if prod else "nothing in production: everyone gets the Top 50")
if prod:
    c1.caption(f"{prod['model_kind']}, data {prod['data_version']}, since {ui.fmt_time(prod['created_at'])}")
if active is None:
    c2.metric("Release", "none")
    c2.caption("Every user is served production.")
else:
    c2.metric("Release", f"{active['mode']} v{active['version']}"
              + (f" · {active['share']:.0%}" if active["mode"] == "canary" else ""))
    c2.caption(f"#{active['deployment_id']} since {ui.fmt_time(active['started_at'])} by {active['started_by']}"
               + (" — a share of users sees the candidate (stable hash of the user id)" if active["mode"] == "canary"
                  else " — scored and logged beside production, shown to nobody"))
info, server, problem = cache.model_server()
c3.metric("Model server", "running" if info else "not running")
c3.caption(f"{info['url']} (pid {info['pid']}), since {ui.fmt_time(info['started_at'])}" if info
           else "Start one with `python -m core serve`; this page then shows its traffic.")

# --- the server's traffic ----------------------------------------------------------------------------------------
if server is not None:
    st.subheader("Model server, last minute")
    m = st.columns(6)
    m[0].metric("Requests / s", ui.fmt(server.recent_rps, 1))
    for col, (name, value) in zip(m[1:4], (("p50", server.recent_p50_ms), ("p95", server.recent_p95_ms),
                                           ("p99", server.recent_p99_ms))):
        col.metric(f"Latency {name}", "—" if value is None else f"{value:.1f} ms")
    m[4].metric("Errors (5xx)", "—" if server.recent_error_ratio is None else f"{server.recent_error_ratio:.1%}")
    m[5].metric("Client errors (4xx)", "—" if server.recent_client_error_ratio is None
                else f"{server.recent_client_error_ratio:.1%}")
    st.caption(f"Since start: {ui.plural(server.requests, 'request')}; lists by arm "
               f"{', '.join(f'{k} {v:,}' for k, v in server.arms.items()) or '—'}; Top 50 fallbacks "
               f"{', '.join(f'{k} {v:,}' for k, v in server.fallbacks.items()) or 'none'}; "
               f"{ui.plural(server.swaps, 'state swap')} (promotions, rollbacks, releases reach it within 2 s). "
               "From its /metrics; press R to refresh.")
elif problem:
    st.warning(f"The model server did not answer: {problem}")

# --- online quality per arm --------------------------------------------------------------------------------------
st.subheader("Online quality per arm")
history, decided = cache.arm_history(token), cache.release_decisions(token)
if history.empty:
    st.info("No monitored day yet: simulate days in the closed loop (a scenario on the Drift page, operators, or "
            "`python -m core simulate --days N`).")
else:
    st.plotly_chart(charts.arm_quality(history.tail(60 * 3), decided), key="arm_chart")
if active is not None and ev and ev["days"]:
    st.markdown(f"**Evidence so far** ({ui.plural(ev['days'], 'day')}, paired by day): canary − production "
                f"{ev['point']:+.4f}, {ev['level']:.0%} interval [{ev['lo']:+.4f}, {ev['hi']:+.4f}]; the candidate's "
                f"lists reached {ui.plural(ev['users_affected'], 'user')}.")
    rules = active["policy"] or {}
    st.caption(f"Rules: rollback as soon as the interval is below 0; ramp or promote after {rules.get('min_days')} "
               f"days at a share when its lower bound is above −{rules.get('margin')}; rollback after "
               f"{rules.get('max_days')} days without that evidence. Ramp: {rules.get('ramp') or '—'}.")

# --- decisions ---------------------------------------------------------------------------------------------------
st.subheader("Release decisions")
if decided.empty:
    st.info("No release decision yet.")
else:
    shown = decided.sort_values("decision_id", ascending=False)[
        ["at", "deployment_id", "decision", "actor", "days", "point", "lo", "hi", "users_affected", "share", "reason"]]
    # Widths in px that add up to less than the main column at 1400 px (938 px): no sideways scrolling; the
    # grid spreads what is left over the columns, and a long reason shows whole on hover.
    st.dataframe(ui.times(shown), hide_index=True, key="decisions_table",
                 column_config={c: st.column_config.NumberColumn(c, format="%+.4f", width=70) for c in ("point", "lo", "hi")}
                 | {"at": st.column_config.TextColumn("at", width=125),
                    "deployment_id": st.column_config.NumberColumn("#", format="%d", width=45,
                                                                   help="release (deployment) id"),
                    "decision": st.column_config.TextColumn("decision", width=80),
                    "actor": st.column_config.TextColumn("actor", width=130),
                    "days": st.column_config.NumberColumn("days", width=50),
                    "users_affected": st.column_config.NumberColumn("users", width=60,
                                                                    help="users the candidate's lists reached"),
                    "share": st.column_config.NumberColumn("share", format="percent", width=55),
                    "reason": st.column_config.TextColumn("reason", width=160)})

# --- operator actions --------------------------------------------------------------------------------------------
versions, _ = cache.versions(token)
if active is None:
    choices = versions[(versions["family"] == "cf") & (versions["stage"] != "production")]["version"].tolist() \
        if not versions.empty else []
    with st.form("start_release"):
        st.markdown("**Start a release** (operators)")
        a, b, c = st.columns(3)
        version = a.selectbox("Candidate version", choices, key="release_version", disabled=not choices)
        mode = b.radio("Mode", deployments.MODES[::-1], horizontal=True, key="release_mode")
        share = c.slider("Canary share", 0.05, 1.0, deployments.DEFAULT_SHARE, 0.05, key="release_share")
        if not choices:
            st.caption("No candidate version to release: run a retrain on the Training & Models page (operators) "
                       "or `python -m core retrain` — its new version is listed here unless the gate promotes it "
                       "(or starts its canary) at once.")
        if st.form_submit_button("Start", disabled=not choices) and \
                (who := ui.operator(f"start a {mode} release")) is not None:
            bar = st.progress(0.0, text="release: checking the candidate")
            with ui.audited(who, "release start", f"v{version} ({mode})"):
                started = release.start(s, int(version), mode, actor=f"operator:{who}", reason="started from the dashboard",
                                        share=float(share) if mode == "canary" else None,
                                        progress=ui.progress_callback(bar, prefix="release start — "))
            ranker = started.get("ranker") or {}
            ui.done("deployment", ("success", f"Release #{started['deployment_id']}: {mode} of v{version} started"
                                   + (f", re-ranked by its own ranker v{ranker['version']}." if ranker.get("beats_cf")
                                      else ".")
                                   + (" It now shows above under Release; the form below decides it.")))
else:
    with st.form("decide_release"):
        st.markdown(f"**Decide release #{active['deployment_id']}** (operators) — promote makes v{active['version']} "
                    "production; rollback closes its arm and archives it; stop ends it as it is.")
        a, b = st.columns([1, 2])
        decision = a.radio("Decision", ["promote", "rollback", "stop"], horizontal=True, key="release_decision")
        reason = b.text_input("Reason (recorded)", key="release_reason")
        sure = st.checkbox("I confirm this changes what users are served", key="release_confirm")
        if st.form_submit_button("Decide"):
            if not sure:
                st.error("Tick the confirmation box first.")
            elif (who := ui.operator(f"{decision} a release")) is not None:
                with ui.audited(who, f"release {decision}", f"release #{active['deployment_id']}"):
                    done = release.decide_now(s, decision, actor=f"operator:{who}",
                                              reason=reason or f"{decision} from the dashboard")
                ui.done("deployment", ("success", f"Release #{done['deployment_id']}: {done['decision']} recorded"
                                       + (f" — v{active['version']} is production now." if done["decision"] == "promote"
                                          else " — every user is served production again.")))
