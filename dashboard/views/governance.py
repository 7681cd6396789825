"""Explanations & Governance: why a movie was recommended, why a user is at risk of churning, the audit record,
the model card, diagnosis."""
import json

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from core import RetroError
from core.governance import audit as audit_mod
from core.governance import explain as explain_mod
from core.governance import modelcard
from dashboard import cache, charts, ui

st.title("Explanations & Governance")
token = cache.token()
with ui.core_errors():
    directory = cache.users(token)
    prod = cache.production()
if prod is None:
    st.info("No model in production yet — run a retrain on the Training & Models page.")
    st.stop()

personal = ui.personal_view("explanations and audit trail")   # one user's lists, reasons and risk: personal data
if not personal:
    directory = directory.iloc[0:0]
    tab_card, tab_diag = st.tabs(["Model card", "Diagnose"])
    user_id = None
ids = directory["user_id"].tolist()
if personal:
    typical = int(directory.loc[(directory["watches"] - directory["watches"].median()).abs().idxmin(), "user_id"])
    labels = {int(r.user_id): f"user {r.user_id} — {ui.plural(r.watches, 'watch', 'watches')}" for r in directory.itertuples()}
    user_id = st.selectbox("User (type to search; default: a typical user)", ids, index=ids.index(typical),
                           format_func=labels.get, key="gov_user")
    ui.personal_view("explanations and audit trail", user_id, banner=False)     # audited once per session and user
    tab_why, tab_risk, tab_audit, tab_card, tab_diag = st.tabs(["Why this movie?", "Why is this user at risk?", "Audit trail",
                                                                 "Model card", "Diagnose"])

    with tab_why:
        try:
            exps = cache.explanations(token, user_id)
        except Exception as exc:  # noqa: BLE001 - core errors (cold start, no consent) are shown, not raised
            st.warning(str(exc))
            exps = []
        if exps:
            titles = {e["movie_id"]: f"{i + 1}. {e['title']}" for i, e in enumerate(exps)}
            movie = st.radio("Recommendation", list(titles), format_func=titles.get, key="gov_movie", horizontal=True)
            e = next(x for x in exps if x["movie_id"] == movie)
            st.markdown(f"> {e['text']}")
            left, right = st.columns(2)
            with left:
                st.markdown("**Because you watched** (collaborative-filtering contributions)")
                st.dataframe(pd.DataFrame(e["because_you_watched"])[["title", "contribution"]], hide_index=True,
                             key="because_table")
            with right:
                r = e["ranker"]
                if r:
                    feats = sorted(r["features"], key=lambda f: abs(f["shap"]))
                    fig = go.Figure(go.Waterfall(
                        orientation="h", base=r["base_value"], y=[f"{f['label']} = {f['value']:.2f}" for f in feats],
                        x=[f["shap"] for f in feats], measure=["relative"] * len(feats)))
                    fig.update_layout(title=f"Ranker v{r['version']}: SHAP (log-odds) from base {r['base_value']:.2f} "
                                            f"to {r['output']:.2f} = {r['probability']:.0%}", height=380)
                    st.plotly_chart(fig, key="shap_chart")
                else:
                    st.info("No ranking model serves with this CF version: the list is in collaborative-filtering order.")
            c1, c2 = st.columns(2)
            c1.download_button("Export explanation (Markdown)", explain_mod.explanation_markdown(e),
                               file_name=f"explanation-u{user_id}-m{movie}.md", key="exp_md")
            c2.download_button("Export explanation (JSON)", json.dumps(e, indent=2, default=str),
                               file_name=f"explanation-u{user_id}-m{movie}.json", key="exp_json")

    with tab_risk:
        try:
            risk = cache.churn_explanation(token, user_id)
        except RetroError as exc:     # no churn model in production yet: say so, the other tabs still work
            st.info(ui.sentence(str(exc)))
            risk = None
        if risk is not None and not risk["active"]:
            st.info(ui.sentence(risk["note"]))
        elif risk is not None:
            c1, c2, c3 = st.columns(3)
            c1.metric("Churn risk (no watch in the next 14 days)", f"{risk['risk']:.0%}")
            c2.metric("Churn model", f"v{risk['version']}")
            c3.metric("As of", risk["as_of"][:10])
            left, right = st.columns([3, 2])
            left.plotly_chart(charts.churn_contributions(risk), key="churn_shap_chart")
            with right:
                st.markdown("**In words** (the biggest effects):\n" + "\n".join(f"- {r}" for r in risk["reasons"]))
                st.caption("SHAP values of the gradient-boosted trees, scaled by the Platt calibration, so they add up "
                           "from the base log-odds to this user's calibrated log-odds. Features come from the warehouse "
                           "only, as of the last day of data.")

    with tab_audit:
        day = st.text_input("Day (YYYY-MM-DD, empty = all days)", key="audit_day").strip() or None
        with ui.core_errors():
            records = cache.audit_records(token, user_id, day)
        if not records:
            st.info("Nothing was served to this user in that period.")
        for rec in records[:5]:
            with st.container(border=True):
                st.markdown(f"**{ui.fmt_time(rec['served_at'])}** — {rec['path']}"
                            + (f", model v{rec['model_version']} ({rec['model_kind']}), data {rec['data_version']}, "
                               f"retrain trigger: {rec['trigger']}" if rec["model_version"] else ""))
                if rec.get("promotion"):
                    p = rec["promotion"]
                    st.caption(f"promoted {ui.fmt_time(p['at'])} by {p['actor']}: {p['reason']}")
                st.dataframe(pd.DataFrame(rec["movies"]), hide_index=True)
        if records:
            st.download_button("Export audit (Markdown)", audit_mod.audit_markdown(records), file_name=f"audit-u{user_id}.md",
                               key="audit_md")

with tab_card:
    with ui.core_errors():
        card = cache.model_card(token, int(prod["version"]))
    md = modelcard.model_card_markdown(card)
    st.markdown(md)
    c1, c2 = st.columns(2)
    c1.download_button("Export model card (Markdown)", md, file_name=f"model-card-v{prod['version']}.md", key="card_md")
    c2.download_button("Export model card (JSON)", json.dumps(card, indent=2, default=str),
                       file_name=f"model-card-v{prod['version']}.json", key="card_json")

with tab_diag:
    scope = st.radio("Scope", ["this user", "the system"], horizontal=True, key="diag_scope") if personal \
        else "the system"
    with ui.core_errors():
        result = cache.diagnosis(token, user_id if scope == "this user" else None)
    failed = result["failed_places"]
    (st.warning if failed else st.success)(
        "Failing: " + ", ".join(failed) if failed else "All checks pass: data, features, model and deployment.")
    for c in (c for c in result["checks"] if c.get("level") == "info"):   # facts, not faults (e.g. not served since vN)
        st.info(f"{c['name']}: {c['detail']}")
    st.dataframe(pd.DataFrame(result["checks"]), hide_index=True, key="diag_table")
