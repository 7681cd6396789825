"""Retro Movies operator dashboard (entry point)."""
import streamlit as st

from core import RetroError, load_settings
from core.bootstrap import ensure_demo_world, needs_demo_world
from core.opsdb import counts, session
from core.top50 import top50

st.set_page_config(page_title="Retro Movies", page_icon="🎬", layout="wide")
settings = load_settings()

if needs_demo_world(settings):
    st.info(f"First start: building the demo world in `{settings.home}` …")
    bar = st.progress(0.0, text="starting")
    ensure_demo_world(settings, progress=lambda f, msg: bar.progress(min(max(f, 0.0), 1.0), text=msg))
    bar.empty()

st.title("🎬 Retro Movies — Top 50")
try:
    with session(settings) as db:
        stats = counts(db)
        m_votes = st.number_input("m — minimum votes to be listed (0 = 90th percentile of vote counts)",
                                  min_value=0, value=0, step=5)
        result = top50(db, m_votes or None)
except RetroError as exc:
    st.error(str(exc))
    st.stop()

cols = st.columns(4)
cols[0].metric("Users", f"{stats['users']:,}")
cols[1].metric("Movies", f"{stats['movies']:,}")
cols[2].metric("Ratings", f"{stats['ratings']:,}")
cols[3].metric("Events", f"{stats['events']:,}")
st.caption(f"WR = v/(v+m)·R + m/(v+m)·C with m = {result.m:g} votes and C = {result.C:.3f}")
st.dataframe(result.table, hide_index=True, width="stretch")
