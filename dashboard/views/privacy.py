"""Privacy: consent, data held per store, export, erasure, request log, retention, data inventory."""
import json

import pandas as pd
import streamlit as st

from core.privacy import access, consent, erasure, export, retention
from dashboard import cache, ui

st.title("Privacy")
s = cache.settings()
token = cache.token()

user_id = st.number_input("User id", min_value=1, step=1, value=1, key="privacy_user")
# An action's outcome, kept across the rerun that follows it so every section below is read after the write.
if done := st.session_state.pop("privacy_done", None):
    st.success(done)
current = None
if ui.personal_view("privacy record", int(user_id)):     # one user's consent and data held: personal data
    try:
        current = consent.consent(s, int(user_id))
    except Exception as exc:  # noqa: BLE001 - unknown/erased user: say so plainly
        st.warning(str(exc))

if current:
    c1, c2 = st.columns(2)
    with c1.container(border=True):
        st.markdown("**Consent**")
        st.caption(f"tracking: {'on' if current['tracking'] else 'off'} · personalization: "
                   f"{'on' if current['personalization'] else 'off'}")
        with st.form("consent_form"):
            tracking = st.toggle("Behavioural tracking (events are stored)", value=current["tracking"], key="c_tracking")
            personal = st.toggle("Personalization (model lists, used in training)", value=current["personalization"],
                                 key="c_personal")
            if st.form_submit_button("Save consent") and (who := ui.operator("change consent")) is not None:
                with ui.core_errors():
                    res = consent.set_consent(s, int(user_id), tracking=tracking, personalization=personal,
                                              actor=f"operator:{who}")
                cache.clear()
                st.session_state["privacy_done"] = ("Saved. " + " ".join(res.get("effects", []))
                                                    if isinstance(res.get("effects"), list) else "Saved.")
                st.rerun()
        if current.get("history"):
            st.dataframe(ui.times(pd.DataFrame(current["history"])), hide_index=True, key="consent_history")
    with c2.container(border=True):
        st.markdown("**Data held about this user** (rows per store)")
        st.dataframe(pd.DataFrame([{"store": k, "rows": v} for k, v in export.held_counts(s, int(user_id)).items()]),
                     hide_index=True, key="held")
        if st.button("Prepare export (JSON)", key="export") and (who := ui.operator("export a user's data")) is not None:
            with ui.core_errors():
                doc = export.export_user(s, int(user_id), actor=f"operator:{who}")
            st.download_button("Download export", json.dumps(doc, indent=2, default=str), file_name=f"user-{user_id}.json",
                               key="export_download")
            st.dataframe(pd.DataFrame([{"store": k, "rows": v} for k, v in doc["stores"].items()]), hide_index=True,
                         key="export_stores")
        with st.form("forget_form"):
            st.markdown("**Erase this user** (right to be forgotten): every store and model, irreversibly.")
            sure = st.checkbox(f"I confirm the erasure of user {user_id}", key="forget_confirm")
            if st.form_submit_button("Erase"):
                if not sure:
                    st.error("Tick the confirmation box first.")
                elif (who := ui.operator("erase a user")) is not None:
                    with ui.core_errors():
                        summary = erasure.forget_user(s, int(user_id), actor=f"operator:{who}")
                    cache.clear()
                    rows = {store: sum(v for k, v in counts.items() if isinstance(v, int) and not isinstance(v, bool))
                            for store, counts in summary.items() if store in ("ops", "warehouse") and isinstance(counts, dict)}
                    st.session_state["privacy_done"] = (
                        f"Erased. User {user_id} is gone from every store (request #{summary.get('request_id')}, "
                        f"{summary.get('state')}): " + ", ".join(f"{ui.plural(n, 'row')} in {store}" for store, n in rows.items())
                        + f", {ui.plural(summary.get('models', {}).get('bundles', 0), 'model bundle')} rewritten.")
                    st.rerun()

pending = consent.pending_effects(s)
st.subheader("Pending effects on models")
if pending and not ui.personal_view("pending consent effects", banner=False):
    st.caption(f"{ui.plural(len(pending), 'user')} withdrew personalization after the production model was trained.")
elif pending:
    st.warning(f"{ui.plural(len(pending), 'user')} withdrew personalization after the production model was trained: their data "
               "leaves the model at the next retrain (serving already ignores it).")
    st.dataframe(ui.times(pd.DataFrame(pending)), hide_index=True, key="pending")
else:
    st.success("No pending consent effects: the production model honours every current consent.")

st.subheader("Erasure requests")       # the full width: a half-width table cut the actor to "operator:ac"
log = erasure.request_log(s)
if len(log):
    st.dataframe(ui.times(log), hide_index=True, key="requests",
                 column_config={"request_id": st.column_config.NumberColumn("request", width=70),
                                "requested_at": st.column_config.TextColumn("requested (service clock)", width=175),
                                "completed_at": st.column_config.TextColumn("completed (service clock)", width=175),
                                "state": st.column_config.TextColumn(width=85),
                                "actor": st.column_config.TextColumn(width=170),
                                "summary": st.column_config.TextColumn(width=235)})
else:
    st.caption("No request yet.")
with st.container():
    st.subheader("Retention")
    days = st.number_input("Keep behavioural events for (days)", 1, 3650, 365, key="retention_days")
    status = retention.retention_status(s, int(days))
    st.caption(f"Service clock {ui.fmt_time(status['clock'])}; events before {ui.fmt_time(status['cutoff'])} are purged.")
    a, b = st.columns(2)
    a.metric("Events to purge, operational DB", f"{status['ops_events_to_purge']:,} of {status['ops_events']:,}",
             help=f"oldest event: {ui.fmt_time(status['oldest_ops_event'])}")
    b.metric("Events to purge, warehouse", f"{status['warehouse_events_to_purge']:,} of {status['warehouse_events']:,}",
             help=f"oldest event: {ui.fmt_time(status['oldest_warehouse_event'])}; ratings are kept; served titles "
                  f"purged with them: {status['warehouse_served_to_purge']:,} of {status['warehouse_served']:,}")
    if st.button("Purge now", key="purge") and (who := ui.operator("purge old events")) is not None:
        with ui.core_errors():
            res = retention.retention(s, int(days), actor=f"operator:{who}")
        cache.clear()
        st.session_state["privacy_done"] = (f"Purged events before {ui.fmt_time(res['cutoff'])}: "
                                            + ", ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in res.items()
                                                        if isinstance(v, int) and k != "days") + ".")
        st.rerun()

st.subheader("Data inventory")
st.dataframe(pd.DataFrame(export.data_inventory()), hide_index=True, key="inventory",   # fits 1400 px; hover: full text
             column_config={"store": st.column_config.TextColumn(width=100),
                            "table": st.column_config.TextColumn(width=105),
                            "fields": st.column_config.TextColumn(width=200),
                            "identifier": st.column_config.TextColumn(width=95),
                            "protection": st.column_config.TextColumn(width=220),
                            "on_erasure": st.column_config.TextColumn("on erasure", width=200)})
st.subheader("Operator audit log")
if not ui.personal_view("operator audit log", banner=False, permission="read the audit log"):
    audit = None
elif len(audit := access.audit_log(s)):        # read after the view is audited: the table shows its own row
    st.caption("The 50 newest privileged actions and sign-ins, newest first by when they were recorded (real "
               "UTC clock). “Service time” is the time the service stamped: a simulated world's clock, or the real "
               "clock before a world existed — the clock column says which (— : written before clocks were recorded).")
    shown = audit.head(50)[["audit_id", "recorded_at", "at", "clock", "actor", "action", "target", "outcome", "role",
                            "attempts"]]
    st.dataframe(ui.times(shown), hide_index=True, key="audit_log", placeholder="—",    # widths: fits 1400 px
                 column_config={"audit_id": st.column_config.NumberColumn("#", width=40),
                                "recorded_at": st.column_config.TextColumn("recorded (real UTC)", width=135),
                                "at": st.column_config.TextColumn("service time", width=135),
                                "clock": st.column_config.TextColumn("clock", width=75,
                                                                     help="the service time's clock: simulated (the "
                                                                          "world's) or real (UTC)"),
                                "actor": st.column_config.TextColumn(width=130),
                                "action": st.column_config.TextColumn(width=110),
                                "target": st.column_config.TextColumn(width=100),
                                "outcome": st.column_config.TextColumn(width=65),
                                "role": st.column_config.TextColumn(width=75),
                                "attempts": st.column_config.NumberColumn("tries", width=45,
                                                                          help="attempts one row counts")})
elif audit is not None:
    st.caption("No privileged action yet.")
