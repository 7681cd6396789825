"""Overview: the live system as the lecture draws it, each box with its real status."""
import streamlit as st

from core.simulation import simulation
from dashboard import cache, ui

st.title("Retro Movies — the live system")
ui.show_done("overview")            # the message of the action that just ran; the boxes below are re-read after it
with ui.core_errors():
    s = cache.status(cache.token())
ops, wh, reg, srv = s["ops"], s["warehouse"], s["registry"], s["serving"]
prod = reg["production"]
last_job = s["training"]["last_job"]



def production_metric(prod: dict) -> str:
    """The production nDCG@10 with what it was measured on: each version is scored on its own holdout (the last
    days of its training data), so two versions' numbers differ by holdout, not only by quality."""
    held = cache.holdout_of(cache.token(), prod["version"])
    return (f"nDCG@10 {prod['metrics']['ndcg@10']:.4f} on v{prod['version']}'s holdout "
            f"({cache.day_span(held['start'], held['end'])}, {ui.plural(held['users'] or 0, 'user')})")


boxes = [
    ("Operational DB", "SQLite, WAL", [f"{ui.plural(ops['users'], 'user')} · {ui.plural(ops['movies'], 'movie')}",
                                       f"{ui.plural(ops['ratings'], 'rating')} · {ui.plural(ops['events'], 'event')}",
                                       f"clock {ui.fmt_time(ops['clock']) if ops['clock'] else 'real time'}"]),
    ("ETL", "incremental, validated", [f"last run {ui.fmt_time(wh['last_etl'])}", f"status {wh['last_etl_status'] or 'never run'}",
                                       f"{ui.plural(wh['quarantined'], 'row')} quarantined"]),
    ("Warehouse", "DuckDB star schema", [ui.plural(wh['facts'], 'interaction'), ui.plural(wh['served_lists'], 'served list'),
                                         f"data version {wh['data_version'] or '—'}"]),
    ("Training", "ALS / BPR + baselines", [ui.plural(s['training']['runs'], 'run'),
                                           f"last retrain: {last_job['status'] if last_job else '—'}"
                                           + (f" ({last_job['trigger']})" if last_job else "")]),
    ("Registry", "gate → production", [ui.plural(reg['versions'], 'version'),
                                       f"production v{prod['version']} ({prod['model_kind']})" if prod else "no model in production yet",
                                       production_metric(prod) if prod else "run a retrain"]),
    ("Serving", "model or Top 50 fallback", [f"{ui.plural(srv['lists_served'], 'list')} served",
                                             ", ".join(f"{k} {v:,}" for k, v in srv["paths"].items()) or "nothing served yet"]),
    ("Monitoring", "drift & alerts", [f"{ui.plural(s['monitoring']['open_alerts'], 'open alert')}"]),
]
cols = st.columns(len(boxes))
for col, (name, kind, lines) in zip(cols, boxes):
    with col.container(border=True):
        st.markdown(f"**{name}**  \n<small>{kind}</small>", unsafe_allow_html=True)
        for line in lines:
            st.caption(line)
st.caption("Data flows left to right: operational DB → ETL → warehouse → training → registry → serving → monitoring "
           "(which feeds retraining). Each version's nDCG@10 is measured on its own holdout (the last days of its "
           "training data): a newer version's lower number on a different holdout is not a collapse — the gate "
           "compares candidate and production on the same evidence (Training & Models page).")

if simulation.has_world(cache.settings()):     # an imported MovieLens folder has no world to grow
    with st.expander("Grow the world", expanded=False):
        st.caption("The first start builds a small world so the dashboard is ready quickly. Simulate "
                   "more days here (new users sign up on the way); the ETL then loads them into the warehouse "
                   "(Data and Churn pages), and the next retrain uses them. Operators only.")
        days = st.number_input("Days to simulate", min_value=1, max_value=365, value=30, key="grow_days")
        if st.button("Grow the world", key="grow_world"):
            ui.grow_world(int(days), page="overview")

st.subheader("Traditional software vs. ML system — on this system's own numbers")
left, right = st.columns(2)
with left.container(border=True):
    st.markdown("**Top 50 (traditional, deterministic)**")
    det = cache.determinism(cache.token())
    st.metric("Same data, computed twice", "identical list" if det["identical"] else "DIFFERENT", border=False)
    st.caption(f"{ui.plural(det['length'], 'title')}; a rule (the weighted rating) fully specifies the output, "
               "so a test can assert exact values.")
with right.container(border=True):
    st.markdown("**Personalized model (ML, probabilistic)**")
    if prod is None:
        st.info("No model in production yet — run a retrain on the Training & Models page.")
    elif st.button("Retrain with two seeds and compare", key="two_seeds"):
        bar = st.progress(0.0, text="starting")
        with ui.core_errors():
            var = cache.seed_variability(cache.token(), (1, 2), prod["model_kind"], ui.progress_callback(bar))
        bar.empty()
        jac = var["overlap"]["mean_jaccard"].iloc[0]
        st.metric("Top-10 overlap between seeds 1 and 2", f"{jac:.0%}")
        st.caption(f"Same data, same configuration, {ui.plural(var['users'], 'user')}: the lists overlap only partly; "
                   f"nDCG@10 {var['metrics']['ndcg@10'].min():.4f}–{var['metrics']['ndcg@10'].max():.4f}. "
                   "Quality is a distribution, tested statistically, not by exact values.")
    else:
        st.caption("Training the same configuration twice with different seeds shows how much an ML system's output varies.")
