"""Retro Movies operator dashboard: page config, first-start set-up, navigation."""
import os
import sys
from pathlib import Path

os.umask(0o077)   # entry point: anything a library writes into the data folder is owner-only too (core sets modes itself)

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

from dashboard import first_box  # noqa: E402  (light: draws a first start's progress before the heavy imports)

st.set_page_config(page_title="Retro Movies — MLOps", layout="wide")
first_box.show_running_build()
slot = first_box.placeholder()
first_box.wait_for_warm_up()      # its imports first: two threads importing the same modules can deadlock

from dashboard import cache, ui  # noqa: E402

ui.first_start(slot)

VIEWS = ROOT / "dashboard" / "views"
pages = {
    "Operate": [
        st.Page(VIEWS / "overview.py", title="Overview", default=True),
        st.Page(VIEWS / "top50_vs_you.py", title="Top 50 vs For You"),
        st.Page(VIEWS / "data.py", title="Data"),
    ],
    "Models": [
        st.Page(VIEWS / "training.py", title="Training & Models"),
        st.Page(VIEWS / "drift.py", title="Drift"),
        st.Page(VIEWS / "churn.py", title="Churn"),
        st.Page(VIEWS / "ads.py", title="Ads"),
        st.Page(VIEWS / "deployment.py", title="Deployment"),
    ],
    "Governance": [
        st.Page(VIEWS / "governance.py", title="Explanations & Governance"),
        st.Page(VIEWS / "privacy.py", title="Privacy"),
    ],
}
ui.operator_login()
st.sidebar.caption(f"Data folder: `{cache.settings().home}`")
with ui.core_errors():    # a core error a page does not handle itself (e.g. StoreBusy) shows as a message
    st.navigation(pages).run()
