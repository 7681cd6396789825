"""Issue 11, part 5: owner-only data folder, throttled and audited operator sign-in."""
import os
import stat

import pytest

from core.privacy import access, erasure
from core.warehouse import etl
from core.training import pipeline
from core.serving import serving
from core.simulation import simulation
from core.settings import load_settings
from tests.conftest import SMALL_WORLD


def _modes(home):
    """{relative path: mode} for the folder itself and everything under it."""
    modes = {".": stat.S_IMODE(os.stat(home).st_mode)}
    for root, dirs, files in os.walk(home):
        for name in dirs + files:
            path = os.path.join(root, name)
            modes[os.path.relpath(path, home)] = stat.S_IMODE(os.lstat(path).st_mode)
    return modes


def _loose(home):
    """Paths whose mode is not 0700 (folders) / 0600 (files)."""
    return {p: oct(m) for p, m in _modes(home).items()
            if m != (0o700 if os.path.isdir(os.path.join(home, p)) else 0o600)}


@pytest.fixture
def permissive_umask():
    """The usual 022 umask, so files come out 0644 unless the platform sets their mode itself."""
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.mark.slow   # real processes / a retrain or closed-loop days
def test_a_fresh_trained_data_folder_is_owner_only(tmp_path, permissive_umask):
    """Every file 0600 and every folder 0700 after init + ETL + training + an erasure.

    Fails on the code before the fix: the databases, warehouse.duckdb, world.npz and the
    model bundles were created 0644 (folders 0755) under a 022 umask; only secrets.toml and
    the lock file were 0600.
    """
    home = tmp_path / "not-yet-created" / "home"
    settings = load_settings(home)
    assert stat.S_IMODE(os.stat(home).st_mode) == 0o700
    access.ensure_operator(settings)
    simulation.init_world(settings, **SMALL_WORLD)
    etl.run_etl(settings)
    serving.clear_caches()
    result = pipeline.retrain(settings)
    assert result["ranker"] and "error" not in result["ranker"], result
    assert _loose(home) == {}
    assert {"retro.db", "mlops.db", "warehouse.duckdb", "world.npz", "secrets.toml", "models"} <= set(os.listdir(home))
    # An erasure rewrites model files and compacts the warehouse: they stay owner-only.
    erasure.forget_user(settings, 1, actor="test")
    assert _loose(home) == {}


def test_an_existing_data_folder_is_tightened_on_open(tmp_path, permissive_umask):
    """A data folder made by an older version (0755, a 0644 database) is tightened when opened.

    Fails on the code before the fix, which never changed an existing folder's mode."""
    from core.store import opsdb
    home = tmp_path / "old"
    home.mkdir(mode=0o755)
    os.chmod(home, 0o755)
    (home / "retro.db").touch()
    os.chmod(home / "retro.db", 0o644)
    settings = load_settings(home)
    opsdb.connect(settings).conn.close()
    assert _loose(home) == {}


def test_a_shared_folder_is_not_tightened(tmp_path):
    """A sticky, world-writable folder (like /tmp) that holds no platform files keeps its mode (it is not a data
    folder: nothing is written into it either)."""
    from core.errors import NotADataFolder
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "someone-elses.txt").write_text("x")
    os.chmod(shared, 0o1777)
    with pytest.raises(NotADataFolder):
        load_settings(shared)
    assert stat.S_IMODE(os.stat(shared).st_mode) == 0o1777
    assert [p.name for p in shared.iterdir()] == ["someone-elses.txt"]


# ------------------------------------------------------------------ operator sign-in
T0 = 1_780_000_000.0   # a fixed clock (seconds since the epoch): the throttle is tested without sleeping


@pytest.fixture
def operator(settings):
    access.add_operator(settings, "ops", "the-right-token")
    return settings


def _sign_in_rows(settings):
    log = access.audit_log(settings)
    return log[log["action"] == access.SIGN_IN].iloc[::-1]   # oldest first


def test_delay_doubles_from_the_third_failure_and_is_capped():
    assert [access.throttle_delay(n) for n in range(0, 11)] == [0, 0, 0, 1, 2, 4, 8, 16, 32, 60, 60]
    assert access.throttle_delay(10_000) == 60


def test_twenty_wrong_tokens_are_throttled_and_every_one_is_audited(operator):
    """20 wrong tokens in 2 s: the third failure starts a 1 s delay, the fourth (once it has passed) a 2 s
    one; the other 16 tries are refused without checking the token. All 20 are audited as 'denied' with the
    name tried and never the token.

    Fails on the code before the fix: there was no `sign_in` (the dashboard called `check`, which neither
    audited a failure nor slowed anything down — 20 tries took 2.1 s).
    """
    outcomes = []
    for i in range(20):
        try:
            access.sign_in(operator, "ops", f"wrong-token-{i}", now=T0 + i * 0.1)
            outcomes.append("ok")
        except access.SignInThrottled as exc:
            outcomes.append("throttled")
            assert str(exc).startswith("too many failed sign-ins for ops; try again in ")
        except access.PermissionDenied as exc:
            outcomes.append("wrong")
            assert str(exc) == "wrong operator name or token"
    expected = ["wrong"] * 3 + ["throttled"] * 9 + ["wrong"] + ["throttled"] * 7   # 13th try at T0+1.2 s
    assert outcomes == expected
    rows = _sign_in_rows(operator)
    assert len(rows) == 20 and set(rows["outcome"]) == {"denied"} and set(rows["actor"]) == {"ops"}
    assert list(rows["target"]) == [{"wrong": "wrong name or token", "throttled": "throttled"}[o] for o in expected]
    assert not any("wrong-token" in str(v) for v in access.audit_log(operator).to_numpy().ravel())
    assert access.retry_after(operator, "ops", now=T0 + 1.9) == pytest.approx(1.3)   # 2 s after the 4th failure


def test_the_delay_grows_with_each_failure_once_it_has_passed(operator):
    now = T0
    for n in range(1, 12):
        with pytest.raises(access.PermissionDenied) as info:
            access.sign_in(operator, "ops", "wrong-token", now=now)
        assert not isinstance(info.value, access.SignInThrottled)
        assert access.retry_after(operator, "ops", now=now) == access.throttle_delay(n)
        now += access.throttle_delay(n)
    assert access.retry_after(operator, "ops", now=now - 1) == 1.0   # capped at 60 s: 59 s later, 1 s to go


def test_a_correct_token_is_refused_until_the_delay_has_passed_then_resets(operator):
    """Fails on the code before the fix: the right token was always accepted, however many guesses came before."""
    for i in range(3):
        with pytest.raises(access.PermissionDenied):
            access.sign_in(operator, "ops", "wrong-token", now=T0 + i)      # failures at T0, +1, +2
    assert access.retry_after(operator, "ops", now=T0 + 2) == 1.0          # locked until T0+3
    with pytest.raises(access.SignInThrottled, match=r"try again in 1 s"):
        access.sign_in(operator, "ops", "the-right-token", now=T0 + 2.5)
    with pytest.raises(access.SignInThrottled):                        # require is throttled the same way
        access.require(operator, "ops", "the-right-token", "erase a user", now=T0 + 2.9)
    assert access.sign_in(operator, "ops", "the-right-token", now=T0 + 3) == "ops"
    assert access.retry_after(operator, "ops", now=T0 + 3) == 0
    with pytest.raises(access.PermissionDenied) as info:               # the count started again from zero
        access.sign_in(operator, "ops", "wrong-token", now=T0 + 3)
    assert not isinstance(info.value, access.SignInThrottled)
    assert list(_sign_in_rows(operator)["outcome"])[-2:] == ["ok", "denied"]


def test_throttle_is_per_name_and_holds_across_processes(operator):
    """The counts live in mlops.db: a fresh Settings (another process, another dashboard session) sees them;
    other names are not locked, and unknown names are throttled the same way (no hint which names exist)."""
    for i in range(3):
        for name in ("ops", "nobody"):
            with pytest.raises(access.PermissionDenied):
                access.sign_in(operator, name, "wrong-token", now=T0)
    other = load_settings(operator.home)
    for name in ("ops", "nobody"):
        with pytest.raises(access.SignInThrottled, match=f"for {name};"):
            access.sign_in(other, name, "wrong-token", now=T0)
    access.add_operator(other, "ops2", "another-right-token")
    assert access.sign_in(other, "ops2", "another-right-token", now=T0) == "ops2"


def test_not_signed_in_is_audited_but_not_counted_as_a_guess(operator):
    for _ in range(5):
        with pytest.raises(access.PermissionDenied, match="promote needs an operator login"):
            access.require(operator, "", "", "promote", now=T0)
    assert access.retry_after(operator, "anonymous", now=T0) == 0
    assert len(access.audit_log(operator)) == 5
