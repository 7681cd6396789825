"""The first-start progress box, drawn before the dashboard imports anything heavy.

`make run` starts `python -m core first-start` and the dashboard together; on a busy 2-core machine importing
the pages' dependencies (pandas, scipy, plotly, the training code) took about 10 s, during which the first
visitor saw a blank page. This module needs only the standard library, Streamlit and `core.settings`, reads
the build's status file (RETRO_HOME/.first-start.json, written by `core.bootstrap`) and draws its progress at
once. The file format and the liveness rule are `core.bootstrap`'s (`read_status`, `build_running`).
"""
from __future__ import annotations

import importlib
import json
import os
import threading

import streamlit as st

STATUS_FILE = ".first-start.json"     # core.bootstrap.STATUS_FILE (a test keeps the two equal)
# What the pages import once the build is done (about 2 s on a busy 2-core machine): imported while the build
# runs instead, so the Overview follows "done" by its own drawing time only.
WARM_UP_MODULES = ("dashboard.cache", "dashboard.ui", "dashboard.charts", "core.simulation.simulation")
_warm_up_lock = threading.Lock()
_warm_up: threading.Thread | None = None


def _import_pages_modules() -> None:
    for name in WARM_UP_MODULES:
        try:
            importlib.import_module(name)
        except Exception:    # noqa: BLE001 - the page's own import raises it again, where the visitor sees it
            return


def wait_for_warm_up(timeout: float = 120.0) -> None:
    """Let a running warm-up finish before this script imports the heavy modules itself: two threads importing the
    same modules at once can deadlock on Python's per-module import locks, and one of them then gets an ImportError."""
    with _warm_up_lock:
        thread = _warm_up
    if thread is not None:
        thread.join(timeout)


def warm_up() -> threading.Thread:
    """Import the pages' heavy modules in a background thread of this server process (once): the build uses one
    core, and the dashboard would otherwise import them only after the build is done, on the visitor's time."""
    global _warm_up
    with _warm_up_lock:
        if _warm_up is None:
            _warm_up = threading.Thread(target=_import_pages_modules, name="dashboard-warm-up", daemon=True)
            _warm_up.start()
        return _warm_up


def home():
    from core.settings import load_settings      # light: no pandas
    return load_settings().home


def running_build(folder) -> dict | None:
    """The status of a first start building `folder` right now (state running, its process alive), else None."""
    try:
        status = json.loads((folder / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return None
    pid = status.get("pid") if isinstance(status, dict) else None
    if status.get("state") != "running" or not isinstance(pid, int) or pid <= 0:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return status


def looks_empty() -> bool:
    """No operational database yet: the first start has not built anything here (cheap; `core.bootstrap.
    needs_build` decides for real once the dashboard has loaded)."""
    from core.settings import load_settings
    s = load_settings()
    if s.database_url is not None:          # PostgreSQL (docs/postgres.md): ask core; loads more modules
        from core import bootstrap
        return not bootstrap.ops_store_exists(s) and not s.world_file.exists()
    return not s.ops_db.exists() and not s.world_file.exists()


def show_running_build() -> None:
    """A build is running: its progress box, redrawn twice a second, and nothing else on the page."""
    folder = home()
    if running_build(folder) is not None:
        warm_up()
        build_progress()
        st.stop()


def placeholder():
    """An empty folder nobody builds yet: a box that says the set-up starts, shown while the dashboard loads;
    returns the slot the real first-start box replaces (None for a folder with data)."""
    folder = home()
    if not looks_empty():
        return None
    warm_up()
    slot = st.empty()
    with slot.container(border=True):
        st.subheader("Setting up Retro Movies")
        st.write(f"First start in `{folder}`: loading the dashboard, then building the simulated world and "
                 "training the first model.")
        st.progress(0.0, text="starting")
    return slot


@st.fragment(run_every=0.5)
def build_progress() -> None:
    """The running first start's status file, redrawn twice a second (the Overview follows "done" within half a
    second; a redraw reads one small file); the whole app reruns once it is done."""
    folder = home()
    status = running_build(folder)
    if status is None:
        st.cache_data.clear()
        st.rerun()
    with st.container(border=True):
        st.subheader("Setting up Retro Movies")
        world = status.get("world") or {}
        st.write(f"First start in `{folder}`: building the simulated world ({world.get('users', 0):,} users, "
                 f"{world.get('movies', 0):,} movies, {world.get('days', 0)} days) and training the first model.")
        fraction = min(max(float(status.get("fraction", 0.0)), 0.0), 1.0)
        st.progress(fraction, text=f"{fraction:.0%} · {status.get('message', '')}")
        st.caption(f"Started {status.get('started_at', '?')} by process {status.get('pid')} (the terminal that ran "
                   "`make run` shows the same progress and the operator token). This page opens by itself when "
                   "the build is done.")
