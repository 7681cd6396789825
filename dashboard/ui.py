"""Small rendering helpers shared by the pages (errors, first start, formatting)."""
from __future__ import annotations

import re
from contextlib import contextmanager

import pandas as pd
import streamlit as st

from core import RetroError
from core.bootstrap import ensure_ready, needs_demo_world, needs_first_model
from core.text import fmt_time, plural  # noqa: F401 - pages write ui.plural(...), ui.fmt_time(...)
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
    from core.access import ensure_operator
    token = ensure_operator(s)
    if token:   # printed once, to the terminal that started the dashboard (not to the page)
        print(f"\n  Retro Movies operator login for {s.home}: name 'admin', token {token}\n"
              f"  (stored hashed in {s.home / 'secrets.toml'}; add operators with core.access.add_operator)\n", flush=True)
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


TIME_COLUMN = re.compile(r"(^at$|_at$|^window_(start|end)$|^(served|trained)_until$)")


def times(df: pd.DataFrame) -> pd.DataFrame:
    """A copy of `df` for display with every time column ('…_at', 'at', 'window_start/end', datetime dtypes) in
    the one page format, 'YYYY-MM-DD HH:MM' (core stores ISO strings with 'T', DuckDB returns timestamps)."""
    out = df.copy()
    for col in out.columns:
        if TIME_COLUMN.search(str(col)) or pd.api.types.is_datetime64_any_dtype(out[col]):
            out[col] = pd.Series([fmt_time(v, missing=None) for v in out[col]], index=out.index, dtype=object)
    return out


def operator_login() -> None:
    """Sidebar login for privileged actions; reading needs none. Core audits and throttles every try."""
    from core.access import PermissionDenied, sign_in
    box = st.sidebar.expander("🔐 Operator", expanded=False)
    current = st.session_state.get("operator")
    if current:
        box.caption(f"Signed in as **{current[0]}**")
        if box.button("Sign out", key="sign_out"):
            del st.session_state["operator"]
            st.rerun()
        return
    with box.form("login"):
        name = st.text_input("Name", value="admin", key="login_name")
        token = st.text_input("Token", type="password", key="login_token")
        if st.form_submit_button("Sign in"):
            try:
                sign_in(cache.settings(), name, token)
            except PermissionDenied as exc:   # wrong name/token, or "too many failed sign-ins …; try again in N s"
                st.error(str(exc))
            else:
                st.session_state["operator"] = (name, token)
                st.rerun()
    box.caption("Privileged actions (promote, roll back, policy, export, erase, key rotation) need a login. "
                "The first start printed the token in the terminal.")


def operator(action: str) -> str | None:
    """The signed-in operator's name, checked and logged by core; shows an error and returns None otherwise."""
    from core.access import PermissionDenied, SignInThrottled, require
    name, token = st.session_state.get("operator", (None, ""))
    try:
        return require(cache.settings(), name or "", token, action)
    except SignInThrottled as exc:
        st.error(str(exc))
        return None
    except PermissionDenied as exc:
        st.error(f"{exc}. Sign in under 🔐 Operator in the sidebar.")
        return None
