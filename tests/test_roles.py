"""Issue 23: roles and one permission table — every action × every role × CLI and server against the table
(the dashboard's part: tests/test_roles_dashboard.py), named accounts, the generated table in docs/privacy.md."""
import contextlib
import io
import re
from pathlib import Path

import pytest

from core import cli
from core.errors import RetroError
from core.privacy import access, roles
from core.secretstore import update_secrets
from core.settings import load_settings

pytestmark = pytest.mark.both_backends     # tests on `settings`/`db` run on SQLite and on PostgreSQL

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "the-right-token"


def run_cli(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(argv)
    return code, out.getvalue(), err.getvalue()


def fast_operator(settings, name: str, role: str, token: str = TOKEN) -> None:
    """An operator with `role` whose hash costs 1,000 PBKDF2 rounds instead of 200,000 (the matrix signs in 100s
    of times; the hash format and check are the real ones)."""
    access.add_operator(settings, name, token, role=role)
    digest = access.hash_token(token, iterations=1000)
    update_secrets(settings, lambda data: data["operators"].__setitem__(name, digest))


@pytest.fixture
def settings(tmp_path, backend_settings):
    return load_settings(tmp_path / "home")    # backend_settings: RETRO_DATABASE_URL set for PostgreSQL


# ------------------------------------------------------------------ the table itself
def test_the_docs_hold_exactly_the_generated_table():
    """The table lives in docs/privacy.md (the README links to it); exactly one copy anywhere in the docs."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    blocks = [(page.name, block) for page in pages for block in
              re.findall(r"<!-- permissions:start -->\n(.*?)<!-- permissions:end -->", page.read_text(), re.S)]
    assert [name for name, _ in blocks] == ["privacy.md"], \
        f"expected one <!-- permissions:start --> … <!-- permissions:end --> block, in docs/privacy.md: {blocks!r:.200}"
    assert blocks[0][1] == roles.permission_table_markdown(), \
        "docs/privacy.md's permission table differs from core/privacy/roles.py: paste `python -m core.privacy.roles`"
    assert "docs/privacy.md#operators-and-roles" in (ROOT / "README.md").read_text()


def test_the_table_has_the_issues_roles_and_admin_may_do_everything():
    assert roles.ROLES == ("analyst", "data-engineer", "data-scientist", "release-manager", "privacy-officer", "admin")
    assert all(roles.ADMIN in may for may in roles.PERMISSIONS.values())
    assert not any(roles.ANALYST in may for may in roles.PERMISSIONS.values())      # aggregates only
    expect = {"data-engineer": {"etl", "retention", "grow the world"},
              "data-scientist": {"train", "evaluate", "retrain", "churn train", "shadow release"},
              "release-manager": {"promote", "rollback", "canary start", "release decide", "policy"},
              "privacy-officer": {"consent", "export", "erasure", "key rotation", "audit log", "personal data"}}
    for role, actions in expect.items():
        assert actions <= {a for a, may in roles.PERMISSIONS.items() if role in may}, role
    assert roles.roles_for("accounts") == ["admin"]
    for phrase in roles.ALIASES:
        roles.action_of(phrase)
    with pytest.raises(roles.UnknownAction):
        roles.action_of("launch the rockets")


# ------------------------------------------------------------------ core: require against the table
def test_require_walks_every_action_and_role_against_the_table(settings):
    for role in roles.ROLES:
        fast_operator(settings, f"op-{role}", role)
    for action in roles.PERMISSIONS:
        for role in roles.ROLES:
            try:
                access.require(settings, f"op-{role}", TOKEN, action)
                allowed = True
            except access.RoleDenied:
                allowed = False
            assert allowed == (role in roles.PERMISSIONS[action]), (action, role)
    denied = access.audit_log(settings).query("outcome == 'denied'")
    assert len(denied) == sum(len(roles.ROLES) - len(may) for may in roles.PERMISSIONS.values())
    assert (denied["person"] == denied["actor"]).all() and denied["role"].notna().all()
    assert set(denied["target"]) == {f"role {r}" for r in roles.ROLES if r != "admin"}


def test_an_old_secrets_file_without_roles_makes_its_operators_admins(settings):
    update_secrets(settings, lambda data: data.setdefault("operators", {}).__setitem__(
        "old", access.hash_token(TOKEN, iterations=1000)))
    assert "operator_roles" not in (settings.home / "secrets.toml").read_text()
    assert access.operator_role(settings, "old") == "admin"
    assert access.require(settings, "old", TOKEN, "erase a user") == "old"
    assert access.operator_accounts(settings) == [{"name": "old", "role": "admin", "disabled": False}]


def test_a_disabled_account_is_refused_with_its_right_token_and_a_reset_token_replaces_it(settings):
    token = access.create_operator(settings, "ann", "analyst")
    assert access.sign_in(settings, "ann", token) == "ann"
    access.set_disabled(settings, "ann")
    with pytest.raises(access.PermissionDenied, match="ann is disabled"):
        access.sign_in(settings, "ann", token)
    access.set_disabled(settings, "ann", False)
    new = access.reset_token(settings, "ann")
    with pytest.raises(access.PermissionDenied):
        access.sign_in(settings, "ann", token)
    assert access.sign_in(settings, "ann", new) == "ann"
    stored = (settings.home / "secrets.toml").read_text()
    assert token not in stored and new not in stored


# ------------------------------------------------------------------ the CLI: every privileged command × role
CLI_CASES = {
    "etl": [["etl"]],
    "grow the world": [["simulate", "--days", "1", "--open-loop"]],
    "simulate": [["simulate", "--days", "1"]],
    "retention": [["privacy", "retention", "--days", "30"]],
    "train": [["train"]],
    "evaluate": [["evaluate"], ["churn", "evaluate"], ["ads", "evaluate"]],
    "retrain": [["retrain"]],
    "churn train": [["churn", "train"]],
    "ads train": [["ads", "train"]],
    "churn score": [["churn", "score"]],
    "shadow release": [["release", "start", "2", "--mode", "shadow"]],
    "canary start": [["release", "start", "2"]],
    "release decide": [["release", "promote"], ["release", "rollback"], ["release", "stop"],
                       ["release", "ramp", "--share", "0.5"]],
    "promote": [["models", "promote", "1"]],
    "rollback": [["models", "rollback"]],
    "policy": [["policy", "set", "manual"], ["policy", "set", "--explore-share", "0.1"]],
    "consent": [["privacy", "consent", "--user", "1", "--tracking", "off"]],
    "export": [["privacy", "export", "--user", "1"]],
    "erasure": [["privacy", "forget", "--user", "1"]],
    "key rotation": [["privacy", "rotate-key"]],
    "audit log": [["operators", "audit"]],
    "personal data": [["explain", "--user", "1", "--movie", "1"], ["explain", "--user", "1", "--churn"],
                      ["explain", "--user", "1", "--ad", "1"],
                      ["audit", "--user", "1"], ["churn", "score", "--user", "1"],
                      ["privacy", "consent", "--user", "1"]],
    "accounts": [["operators", "list"], ["operators", "add", "bob", "--role", "analyst"],
                 ["operators", "disable", "admin"], ["operators", "enable", "admin"],
                 ["operators", "reset-token", "admin"]],
    "client keys": [["clients", "add", "web-front"], ["clients", "revoke", "web-front"]],
    "ads": [["ads", "switch", "on"], ["ads", "switch", "off"]],
    "mlflow export": [["mlflow", "export"]],
}


class Allowed(RetroError):
    """Raised by the test in place of the action once the role check let it through (nothing is done)."""


def test_every_action_with_a_command_is_walked():
    assert set(CLI_CASES) == {a.name for a in roles.ACTIONS if a.cli}


@pytest.mark.parametrize("role", roles.ROLES)
def test_the_cli_checks_every_privileged_command_against_the_table(settings, monkeypatch, role):
    """The command line's role (RETRO_CLI_ROLE) × every privileged command: refused exactly when the table says so,
    before anything is done, with one `error:` line and a 'denied' audit row naming the OS user and the role."""
    decisions = []
    real = access.authorize

    def spy(settings_, person, role_, action, **kw):
        try:
            real(settings_, person, role_, action, **kw)
        except access.RoleDenied:
            decisions.append((roles.action_of(action), False))
            raise
        decisions.append((roles.action_of(action), True))
        raise Allowed(f"allowed: {action}")

    monkeypatch.setattr(access, "authorize", spy)
    monkeypatch.setenv("RETRO_CLI_ROLE", role)
    home = ["--home", str(settings.home)]
    for action, lines in CLI_CASES.items():
        for argv in lines:
            before = len(decisions)
            code, out, err = run_cli(home + argv)
            assert code == 1 and out == "", (argv, err)
            assert decisions[before:] == [(action, role in roles.PERMISSIONS[action])], (argv, role, err)
            if role in roles.PERMISSIONS[action]:
                assert err.startswith("error: allowed:"), err
            else:
                assert re.fullmatch(rf"error: .* needs the role .*; .* is {role}\n", err), err
                row = access.audit_log(settings, 1).iloc[0]
                assert (row["outcome"], row["person"], row["role"], row["actor"]) == (
                    "denied", access.cli_person(), role, access.cli_actor())


def test_a_cli_role_from_secrets_wins_and_a_refused_command_does_nothing(settings, monkeypatch):
    from core.simulation import simulation
    simulation.init_world(settings, seed=3, users=20, movies=20, days=2)
    update_secrets(settings, lambda data: data.setdefault("cli_roles", {}).__setitem__(access.cli_person(), "analyst"))
    monkeypatch.setenv("RETRO_CLI_ROLE", "admin")
    code, out, err = run_cli(["--home", str(settings.home), "etl"])
    assert code == 1 and "etl needs the role data-engineer or admin" in err
    assert not settings.warehouse.exists()                      # refused before any work
    update_secrets(settings, lambda data: data["cli_roles"].__setitem__(access.cli_person(), "data-engineer"))
    code, out, err = run_cli(["--home", str(settings.home), "etl", "--json"])
    assert code == 0, err
    row = access.audit_log(settings, 1).iloc[0]
    assert (row["action"], row["outcome"], row["role"], row["target"]) == ("etl", "ok", "data-engineer", "dv1")


def test_operators_commands_show_a_token_once_and_keep_only_its_hash(settings, monkeypatch):
    import json
    home = ["--home", str(settings.home)]
    code, out, err = run_cli(home + ["operators", "add", "dana", "--role", "data-scientist", "--json"])
    assert code == 0, err
    created = json.loads(out)
    assert set(created) == {"name", "role", "token"} and created["role"] == "data-scientist"
    assert created["token"] not in (settings.home / "secrets.toml").read_text()
    assert access.sign_in(settings, "dana", created["token"]) == "dana"
    assert run_cli(home + ["operators", "add", "dana", "--role", "analyst"])[2].startswith(
        "error: operator dana exists; `operators reset-token dana`")
    assert run_cli(home + ["operators", "add", "eve", "--role", "boss"])[2].startswith("error: unknown role 'boss'")
    code, out, _ = run_cli(home + ["operators", "reset-token", "dana", "--json"])
    new = json.loads(out)["token"]
    assert new != created["token"] and access.sign_in(settings, "dana", new) == "dana"
    assert run_cli(home + ["operators", "disable", "dana"])[0] == 0
    code, out, _ = run_cli(home + ["operators", "list", "--json"])
    assert json.loads(out) == [{"name": "dana", "role": "data-scientist", "disabled": True}]
    assert run_cli(home + ["operators", "reset-token", "nobody"])[2].startswith("error: no operator 'nobody'")
    code, out, _ = run_cli(home + ["operators", "audit", "--json"])
    rows = [r for r in json.loads(out) if r["action"] != access.SIGN_IN]
    assert {"person", "role", "attempts"} <= set(rows[0])
    assert [(r["action"], r["outcome"]) for r in rows[:4]] == [
        ("operators reset-token", "failed"), ("operators list", "ok"), ("operators disable", "ok"),
        ("operators reset-token", "ok")]
    assert access.audit_log(settings, 1).iloc[0]["action"] == "read the audit log"    # reading it is audited too
    monkeypatch.setenv("RETRO_CLI_ROLE", "privacy-officer")
    assert run_cli(home + ["operators", "add", "x", "--role", "admin"])[2].startswith(
        "error: accounts needs the role admin")
    code, out, _ = run_cli(home + ["operators", "roles", "--json"])
    assert json.loads(out)["roles"] == list(roles.ROLES)


# ------------------------------------------------------------------ the server: /explain × role
@pytest.mark.parametrize("role", roles.ROLES)
def test_the_server_explain_needs_a_role_that_may_see_personal_data(cf_world, tmp_path, role):
    from fastapi.testclient import TestClient
    from conftest import private_copy
    from core.server.app import create_app
    from core.serving import serving
    s = private_copy(cf_world, tmp_path / "w")
    fast_operator(s, "op", role)
    with TestClient(create_app(s, poll_seconds=0.05)) as client:
        from test_server import model_user
        uid = model_user(s)
        movie = serving.recommend(s, uid, 1, log=False).movie_ids[0]
        r = client.get(f"/explain/{uid}/{movie}", headers={"Authorization": f"Bearer op:{TOKEN}"})
    serving.clear_caches()
    if role in roles.PERMISSIONS[roles.PERSONAL_DATA]:
        assert r.status_code not in (401, 403), r.text
        row = access.audit_log(s, 1).iloc[0]
        assert (row["person"], row["role"], row["action"]) == ("op", role, "explain")
    else:
        assert r.status_code == 403 and "explain needs the role privacy-officer or admin" in r.json()["error"]
        row = access.audit_log(s, 1).iloc[0]
        assert (row["outcome"], row["person"], row["role"], row["target"]) == ("denied", "op", role, f"role {role}")


def test_personal_views_are_open_only_for_a_purely_simulated_world(settings, tmp_path, monkeypatch):
    from core.simulation import simulation
    from core.store import opsdb
    assert not access.personal_views_open(settings)              # nothing there yet
    simulation.init_world(settings, seed=3, users=20, movies=20, days=1)
    assert access.personal_views_open(settings)
    monkeypatch.setenv("RETRO_DEMO_PERSONAL_VIEWS", "off")
    assert not access.personal_views_open(load_settings(settings.home))
    monkeypatch.setenv("RETRO_DEMO_PERSONAL_VIEWS", "on")
    with opsdb.session(settings) as db:                          # an import recorded: never open
        opsdb.set_meta(db, "source", "movielens:ml-latest-small")
    assert not access.personal_views_open(load_settings(settings.home))


def test_an_operator_with_an_unknown_role_may_do_nothing_and_keeps_its_own_throttle(settings):
    fast_operator(settings, "odd", "admin")
    update_secrets(settings, lambda data: data["operator_roles"].__setitem__("odd", "superuser"))
    assert access.operator_role(settings, "odd") is None
    with pytest.raises(access.RoleDenied, match="odd is without a role"):
        access.require(settings, "odd", TOKEN, "etl")
    for _ in range(3):                              # unknown names' shared counter is not reset by its right token
        with pytest.raises(access.PermissionDenied):
            access.sign_in(settings, "nobody-at-all", "wrong-token", now=1e9)
    assert access.sign_in(settings, "odd", TOKEN, now=1e9) == "odd"
    assert access.retry_after(settings, "someone-else", now=1e9) > 0
