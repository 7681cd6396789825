"""Small rendering helpers shared by the pages (errors, first start, formatting)."""
from __future__ import annotations

import re
from contextlib import contextmanager

import pandas as pd
import streamlit as st

from core import RetroError
from core import bootstrap
from core.text import fmt_time, plural  # noqa: F401 - pages write ui.plural(...), ui.fmt_time(...)
from dashboard import cache


def signed_change(value: float, base: float, fmt: str) -> str | None:
    """value − base in `fmt` ('{:+.4f}') for a metric's delta, or None when it rounds to zero: '−0.0000' or
    '+0.0000' would get an arrow and a colour, reading as a loss or a gain."""
    text = fmt.format(value - base)
    return None if float(text.rstrip("%")) == 0 else text


@contextmanager
def core_errors():
    """Show a core error as `st.error` with its message — never a traceback."""
    try:
        yield
    except RetroError as exc:
        st.error(str(exc))
        st.stop()


def _print_token(token: str) -> None:
    """Printed once, to the terminal that started the dashboard (not to the page)."""
    print(bootstrap.token_message(cache.settings(), token), flush=True)


def first_start(slot=None) -> None:
    """An empty data folder is being built (by `make run`'s `python -m core first-start` or another session):
    show that build's progress and nothing else. Nobody building it: build it here, with the same status file.
    `slot`: the placeholder `first_box.placeholder()` drew while the dashboard loaded (replaced here)."""
    from dashboard import first_box
    s = cache.settings()
    if bootstrap.build_running(s):
        if slot is not None:
            slot.empty()
        first_box.build_progress()
        st.stop()
    if not bootstrap.needs_build(s):
        if slot is not None:
            slot.empty()
        bootstrap.ensure_operator(s, announce=_print_token)
        if bootstrap.following(s):
            _follow_ups_banner()
        return
    box = (slot if slot is not None else st.empty()).container(border=True)
    box.subheader("Setting up Retro Movies")
    last = bootstrap.read_status(s)
    if last and last.get("state") == "error":
        box.warning(f"The last first start failed ({last.get('error')}); trying again here.")
    box.write(f"First start in `{s.home}`: building the simulated world and training the first model.")
    bar = box.progress(0.0, text="starting")
    with core_errors():
        # Built in this session (nobody ran `python -m core first-start`): the ranker and churn model are trained
        # before the page goes on, on the same bar — a background thread would rerun every page under the user.
        bootstrap.first_start(s, progress=progress_callback(bar), announce=_print_token)
    cache.clear()
    box.success("Ready.")


FOLLOW_UP_NAMES = {"ranker": "the ranker", "churn": "the churn model"}


@st.fragment(run_every=2.0)
def _follow_ups_banner() -> None:
    """While the first start trains the ranker and the churn model after "ready", say so on every page; when they
    are done, rerun the whole app so every page shows them (the caches are cleared first)."""
    names = bootstrap.following(cache.settings())
    if not names:
        cache.clear()
        st.rerun(scope="app")
    st.info(f"First start: {' and '.join(FOLLOW_UP_NAMES.get(n, n) for n in names)} "
            f"{'is' if len(names) == 1 else 'are'} still training in the background. Recommendations come from the "
            "CF model alone until the ranker is promoted; this page updates when they are done.")


def progress_callback(bar, log=None, prefix: str = "", start: float = 0.0, end: float = 1.0):
    """A core `progress(fraction, message)` drawn on `bar`, mapped into [start, end] of the bar, the message
    after `prefix` (the stage's name when core's message lacks it)."""
    def update(fraction: float, message: str) -> None:
        fraction = start + (end - start) * min(max(float(fraction), 0.0), 1.0)
        message = prefix + str(message)
        bar.progress(min(max(fraction, 0.0), 1.0), text=message)
        if log is not None:
            log.append(message)
    return update


def done(page: str, *messages: tuple[str, str]) -> None:
    """A dashboard action succeeded: clear the caches, keep its messages for the next run and rerun the page,
    so everything the page shows (state, metrics, forms) is read again after the action, not before it.
    `messages` are (kind, text) pairs, kind one of 'success', 'warning', 'info', 'caption'. Call it outside
    `audited(...)`: the rerun is an exception that would be logged as a failure."""
    cache.clear()
    st.session_state.setdefault("flash", {})[page] = list(messages)
    st.rerun()


def show_done(page: str) -> None:
    """The messages `done(page, ...)` kept, shown once at the top of the page after its rerun."""
    for kind, text in st.session_state.get("flash", {}).pop(page, []):
        getattr(st, kind)(text)


def grow_world(days: int, page: str) -> None:
    """Grow the simulated world by `days` days and run the ETL (operators; audited), with a progress bar that
    names the day being simulated, then rerun `page` with what was done (`done`)."""
    who = operator("grow the world")
    if who is None:
        return
    bar = st.progress(0.0, text=f"simulating {plural(days, 'day')}")
    with audited(who, "grow the world", f"{int(days)} days") as entry:
        grown = bootstrap.grow_world(cache.settings(), int(days), progress=progress_callback(bar))
        entry["target"] = f"{int(days)} days, " + ((grown.get("etl") or {}).get("status") or "no ETL")
    done(page, ("success", grown_message(grown)))


def grown_message(grown: dict) -> str:
    """What growing the world did, in one sentence (the ETL part from `bootstrap.grow_world`'s "etl")."""
    etl = grown.get("etl") or {}
    loaded = (f" The ETL loaded {plural(etl['rows_loaded'], 'row')} into the warehouse (data version "
              f"dv{etl['data_version']})." if etl.get("status") == "loaded" else
              f" ETL: {etl['status']}." if etl else "")
    return (f"Simulated {grown['days']} more days: {grown['events']:,} events, {grown['ratings']:,} ratings, "
            f"{grown['new_users']:,} new users.{loaded} Retrain on the Training & Models page for the recommender "
            "to use them.")


def sentence(text: str) -> str:
    """A core message ('no churn model in production; …') as a sentence: capital first letter, final full stop."""
    text = str(text).strip()
    return text[:1].upper() + text[1:] + ("" if text.endswith((".", "!", "?")) else ".")


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
    from core.privacy.access import PermissionDenied, sign_in
    box = st.sidebar.expander("Operator", expanded=False)
    current = st.session_state.get("operator")
    if current:
        from core.privacy.access import operator_role
        box.caption(f"Signed in as **{current[0]}** ({operator_role(cache.settings(), current[0]) or 'no role'})")
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
    box.caption("Privileged actions (ETL, retrain, scenario, promote, roll back, releases, policy, consent, export, "
                "erase, purge) and one user's data need a login with a role that may (README: *Operators and "
                "roles*). The first start printed the admin token in the terminal; `python -m core operators add NAME "
                "--role ROLE` creates more (`python -m core operators roles` lists the roles).")


def operator(action: str) -> str | None:
    """The signed-in operator's name, checked and logged by core; shows an error and returns None otherwise."""
    from core.privacy.access import PermissionDenied, SignInThrottled, require
    name, token = st.session_state.get("operator", (None, ""))
    try:
        return require(cache.settings(), name or "", token, action)
    except SignInThrottled as exc:
        st.error(str(exc))
        return None
    except PermissionDenied as exc:
        st.error(f"{exc}. Sign in under Operator in the sidebar.")
        return None


@contextmanager
def audited(who: str, action: str, target: str | None = None):
    """Run a privileged action of operator `who`: core logs 'ok', or 'failed' when it raises; a core error
    then shows as `st.error`. Yields a dict whose "target" the block may set once known."""
    from core.privacy.access import audited as core_audited
    with core_errors(), core_audited(cache.settings(), f"operator:{who}", action, target) as entry:
        yield entry


def personal_view(what: str, user_id: int | None = None, *, banner: bool = True, permission: str | None = None) -> bool:
    """May this visitor see one user's data (`what`, e.g. "For You list")? Shows why not when they may not.

    Open to everyone in a purely simulated demo world (a banner says so; `access.personal_views_open`), else it
    needs a signed-in operator whose role has the permission 'personal data'. Each view is audited once per
    session, user and kind ('view <what>', target the user's pseudonym), a refusal once as 'denied'."""
    from core.privacy import access
    from core.privacy import roles
    permission = permission or roles.PERSONAL_DATA
    s = cache.settings()
    name, token = st.session_state.get("operator", (None, ""))
    seen = st.session_state.setdefault("personal_views_audited", {})
    key = (name, what, None if user_id is None else int(user_id))
    if access.personal_views_open(s):
        if banner:
            demo_banner()
        if key not in seen:
            seen[key] = True
            access.log_action(s, f"operator:{name}" if name else "anonymous", f"view {what}",
                              _user_key(user_id) if user_id is not None else None, "ok")
        return True
    if not name:
        st.info(f"Restricted — {what[:1].upper() + what[1:]}: shown to a signed-in {' or '.join(roles.roles_for(permission))} "
                "only (Operator in the sidebar); everyone sees the aggregates.")
        return False
    if key in seen:
        if not seen[key]:
            st.warning(f"{permission} needs the role {' or '.join(roles.roles_for(permission))}; {name} may not "
                       "see it.")
        return seen[key]
    try:
        access.require(s, name, token, permission)
    except access.PermissionDenied as exc:
        if isinstance(exc, access.RoleDenied):      # remembered (and audited) once; a throttle or a stale token: ask again
            seen[key] = False
        st.warning(str(exc))
        return False
    seen[key] = True
    access.log_action(s, f"operator:{name}", f"view {what}", _user_key(user_id) if user_id is not None else None,
                      "ok")
    return True


def _user_key(user_id: int) -> str:
    """The pseudonym an audit row names instead of the user id."""
    from core.pseudonym import pseudonym, pseudonym_key
    return pseudonym(int(user_id), pseudonym_key(cache.settings()))


def demo_banner() -> None:
    """The banner of a demo world whose personal views are open to everyone."""
    st.info("Demo world: personal views are open to everyone — the people here are simulated. Imported data "
               "never is; `RETRO_DEMO_PERSONAL_VIEWS=off` closes them here too.")
