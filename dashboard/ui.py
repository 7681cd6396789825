"""Small rendering helpers shared by the pages (errors, first start, formatting)."""
from __future__ import annotations

from contextlib import contextmanager

import streamlit as st

from core import RetroError
from core.bootstrap import ensure_ready, needs_demo_world, needs_first_model
from dashboard import cache


@contextmanager
def core_errors():
    """Show a core error as `st.error` with its message — never a traceback."""
    try:
        yield
    except RetroError as exc:
        st.error(str(exc))
        st.stop()


def first_start() -> None:
    s = cache.settings()
    if needs_demo_world(s) or needs_first_model(s):
        box = st.container(border=True)
        box.subheader("🎬 Setting up Retro Movies")
        box.write(f"First start in `{s.home}`: building the simulated world and training the first model.")
        bar = box.progress(0.0, text="starting")
        with core_errors():
            ensure_ready(s, progress=lambda f, msg: bar.progress(min(max(float(f), 0.0), 1.0), text=msg))
        cache.clear()
        box.success("Ready.")


def progress_callback(bar, log=None):
    def update(fraction: float, message: str) -> None:
        bar.progress(min(max(float(fraction), 0.0), 1.0), text=message)
        if log is not None:
            log.append(message)
    return update


def fmt(value, digits=4):
    return "—" if value is None else (f"{value:.{digits}f}" if isinstance(value, float) else str(value))
