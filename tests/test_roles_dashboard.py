"""Issue 23 on the dashboard: every privileged action × every role against the permission table, and personal
data as a permission (closed for anonymous visitors unless the world is a purely simulated demo)."""
from pathlib import Path

import re
import pytest
from streamlit.testing.v1 import AppTest

from conftest import private_copy
from core.errors import RetroError
from core.privacy import access, roles
from test_roles import TOKEN, fast_operator

APP = str(Path(__file__).resolve().parents[1] / "dashboard" / "app.py")
pytestmark = pytest.mark.usefixtures("empty_dashboard_caches")


@pytest.fixture(scope="module")
def worlds(cf_world, tmp_path_factory):
    """'base': the CF world with a candidate version beside production; 'released': the same with a canary running.
    Both have one operator per role."""
    from core.monitoring import release
    from core.training import pipeline, registry
    base = private_copy(cf_world, tmp_path_factory.mktemp("roles_base"))
    registry.register(base, pipeline.train(base, params={"factors": 16}, seed=9).run_id)
    for role in roles.ROLES:
        fast_operator(base, f"op-{role}", role)
    released = private_copy(base, tmp_path_factory.mktemp("roles_released"))
    candidate = int(registry.list_versions(released).query("stage != 'production'")["version"].max())
    release.start(released, candidate, "canary", actor="operator:test", reason="fixture", share=0.5)
    return {"base": base, "released": released}


class Allowed(RetroError):
    """Raised in place of the action once the role check let it through (nothing is done)."""


def _check(at, key):
    at.checkbox(key=key).check()


def _churn_ready(monkeypatch):
    from dashboard import cache
    monkeypatch.setattr(cache, "churn_status", lambda token: {"version": None, "stale": False, "reasons": []})
    monkeypatch.setattr(cache, "churn_readiness", lambda token: {"enough_history": True, "days": 60})


def _churn_model(monkeypatch):
    from dashboard import cache
    monkeypatch.setattr(cache, "churn_status", lambda token: {"version": 1, "stale": False, "reasons": []})


# action -> (page, world, demo views, click key or None for a view, prepare(at) before the click, monkeypatch setup)
CASES = {
    "etl": ("views/data.py", "base", "auto", "run_etl", None, None),
    "grow the world": ("views/overview.py", "base", "auto", "grow_world", None, None),
    "simulate": ("views/drift.py", "base", "auto", "FormSubmitter:scenario-Run scenario", None, None),
    "retention": ("views/privacy.py", "base", "auto", "purge", None, None),
    "retrain": ("views/training.py", "base", "auto", "retrain", None, None),
    "churn train": ("views/churn.py", "base", "auto", "churn_train", None, _churn_ready),
    "churn score": ("views/churn.py", "base", "auto", "churn_score", None, _churn_model),
    "ads train": ("views/ads.py", "base", "auto", "ads_train", None, None),
    "ads": ("views/ads.py", "base", "auto", "ads_switch", None, None),
    "shadow release": ("views/deployment.py", "base", "auto", "FormSubmitter:start_release-Start",
                       lambda at: at.radio(key="release_mode").set_value("shadow"), None),
    "canary start": ("views/deployment.py", "base", "auto", "FormSubmitter:start_release-Start",
                     lambda at: at.radio(key="release_mode").set_value("canary"), None),
    "release decide": ("views/deployment.py", "released", "auto", "FormSubmitter:decide_release-Decide",
                       lambda at: _check(at, "release_confirm"), None),
    "promote": ("views/training.py", "base", "auto", "FormSubmitter:promote_form-Promote",
                lambda at: _check(at, "promote_confirm"), None),
    "rollback": ("views/training.py", "base", "auto", "FormSubmitter:rollback_form-Roll back",
                 lambda at: _check(at, "rollback_confirm"), None),
    "policy": ("views/drift.py", "base", "auto", "FormSubmitter:policy_form-Save policy", None, None),
    "consent": ("views/privacy.py", "base", "auto", "FormSubmitter:consent_form-Save consent", None, None),
    "export": ("views/privacy.py", "base", "auto", "export", None, None),
    "erasure": ("views/privacy.py", "base", "auto", "FormSubmitter:forget_form-Erase",
                lambda at: _check(at, "forget_confirm"), None),
    "personal data": ("views/top50_vs_you.py", "base", "off", None, None, None),
    "audit log": ("views/privacy.py", "base", "off", None, None, None),
}


def test_every_action_on_the_dashboard_is_walked():
    assert set(CASES) == {a.name for a in roles.ACTIONS if a.dashboard}


@pytest.mark.parametrize("action", sorted(CASES))
def test_the_dashboard_checks_the_role_of_every_action_against_the_table(worlds, monkeypatch, action):
    """Each role signs in and tries the action: the role check lets it through exactly when the table says so
    (then the test stops it: nothing is done); a refusal is an error on the page and a 'denied' row with the
    operator's name and role."""
    page, world, views, key, prepare, setup = CASES[action]
    s = worlds[world]
    monkeypatch.setenv("RETRO_HOME", str(s.home))
    monkeypatch.setenv("RETRO_DEMO_PERSONAL_VIEWS", views)
    if setup:
        setup(monkeypatch)
    decisions = []
    real = access.authorize

    def spy(settings_, person, role_, action_, **kw):
        try:
            real(settings_, person, role_, action_, **kw)
        except access.RoleDenied:
            decisions.append((roles.action_of(action_), False))
            raise
        decisions.append((roles.action_of(action_), True))
        if roles.action_of(action_) == action:      # another check on the way (a view above the button) goes on
            raise Allowed(f"allowed: {action_}")

    monkeypatch.setattr(access, "authorize", spy)
    at = AppTest.from_file(APP, default_timeout=120).run()
    at.switch_page(page).run()
    for role in roles.ROLES:
        before = len(decisions)
        at.session_state["operator"] = (f"op-{role}", TOKEN)
        if prepare:
            prepare(at)
        (at.button(key=key).click() if key else at).run()
        got = [d for d in decisions[before:] if d[0] == action]
        assert got == [(action, role in roles.PERMISSIONS[action])], (role, got, [e.value for e in at.error])
        if role not in roles.PERMISSIONS[action]:
            log = access.audit_log(s)
            row = log[log["outcome"] == "denied"].iloc[0]      # the page goes on: a view row may follow
            assert (row["action"], row["person"], row["role"], row["target"]) == (
                row["action"], f"op-{role}", role, f"role {role}") and roles.action_of(row["action"]) == action
            assert any("needs the role" in m.value for m in [*at.error, *at.warning]), role


# ------------------------------------------------------------------ personal data: closed unless a demo world
def page(path, operator=None):
    at = AppTest.from_file(APP, default_timeout=120).run()
    if operator:
        at.session_state["operator"] = operator
    return at.switch_page(path).run()


def texts(at) -> str:
    return " ".join(str(e.value) for kind in ("markdown", "info", "warning", "caption", "error")
                    for e in getattr(at, kind))


@pytest.fixture
def closed(worlds, tmp_path, monkeypatch):
    """A copy of the base world with personal views closed (as for imported data)."""
    s = private_copy(worlds["base"], tmp_path / "closed")
    monkeypatch.setenv("RETRO_HOME", str(s.home))
    monkeypatch.setenv("RETRO_DEMO_PERSONAL_VIEWS", "off")
    return s


def test_anonymous_visitors_see_aggregates_only_and_a_sign_in_prompt(closed):
    before = len(access.audit_log(closed))
    at = page("views/top50_vs_you.py")
    assert not at.exception
    assert [df.value.columns.tolist()[:2] for df in at.dataframe] == [["rank", "title"]]      # the Top 50 only
    assert not at.selectbox and "privacy-officer" in texts(at) and "Demo world" not in texts(at)
    at = page("views/governance.py")
    assert not at.exception and not at.selectbox                           # no user picker, no per-user tabs
    assert [t.label for t in at.tabs] == ["Model card", "Diagnose"]
    at = page("views/privacy.py")
    assert not at.exception
    assert "Data held about this user" not in texts(at) and "audit_log" not in {d.key for d in at.dataframe if d.key}
    assert len(access.audit_log(closed)) == before                    # nothing seen, nothing to audit


def test_a_privacy_officer_sees_one_users_data_and_each_view_is_audited(closed):
    at = page("views/top50_vs_you.py", ("op-privacy-officer", TOKEN))
    assert not at.exception
    user = at.selectbox(key="user").value
    assert any({"rank", "title", "score"} <= set(df.value.columns) for df in at.dataframe)   # the For You list
    at.run()                                                               # a rerun is not a second view
    views = access.audit_log(closed).query("action == 'view For You list'")
    from core.pseudonym import pseudonym, pseudonym_key
    assert views[["actor", "person", "role", "outcome"]].values.tolist() == [
        ["operator:op-privacy-officer", "op-privacy-officer", "privacy-officer", "ok"]] * 2
    assert views["target"].isna().sum() == 1
    assert set(views["target"].dropna()) == {pseudonym(user, pseudonym_key(closed))}
    # Pseudonyms only: the id is no number of its own in any target (a pseudonym's hex digits may hold "78" by
    # chance; a "1 days closed loop" is a count, not an id).
    numbers = re.findall(r"\b(\d+)\b(?! days)", " ".join(str(t) for t in access.audit_log(closed)["target"]))
    assert str(user) not in numbers


def test_an_analyst_is_refused_one_users_data_and_the_refusal_is_audited(closed):
    at = page("views/governance.py", ("op-analyst", TOKEN))
    assert not at.exception and not at.selectbox
    assert "personal data needs the role privacy-officer or admin" in texts(at)
    row = access.audit_log(closed, 1).iloc[0]
    assert (row["action"], row["outcome"], row["person"], row["role"]) == ("personal data", "denied", "op-analyst",
                                                                          "analyst")


def test_the_demo_world_opens_personal_views_with_a_banner(worlds, monkeypatch):
    monkeypatch.setenv("RETRO_HOME", str(worlds["base"].home))
    monkeypatch.delenv("RETRO_DEMO_PERSONAL_VIEWS", raising=False)
    at = page("views/top50_vs_you.py")
    assert not at.exception and at.selectbox(key="user")
    assert any("Demo world: personal views are open to everyone" in i.value for i in at.info)
