"""Issue 23 (C): the sign-in throttle is atomic across processes, and a flood of guesses under random names adds
a bounded number of audit and throttle rows."""
import multiprocessing as mp
import random
import string
import time

import pytest

from core.privacy import access
from core.settings import load_settings

PARALLEL = 60


pytestmark = pytest.mark.both_backends     # the throttle's transaction, on SQLite and on PostgreSQL


@pytest.fixture
def settings(tmp_path, backend_settings):
    s = load_settings(tmp_path / "home")      # backend_settings: RETRO_DATABASE_URL set for PostgreSQL
    access.add_operator(s, "ops", "the-right-token")
    return s


AT = 1_780_000_000.0   # every try at the same clock reading: on a loaded machine the 60 processes can spread over
#                        more than the 1 s wait after the third failure, and a later try may then rightly be checked


def _guess(home: str, start, i: int) -> str:
    """One process, one wrong token, all released at once: 'checked' when the token was really checked (401),
    'throttled' when refused without a check (429)."""
    s = load_settings(home)
    start.wait()
    try:
        access.sign_in(s, "ops", f"wrong-token-{i}", now=AT)
    except access.SignInThrottled:
        return "throttled"
    except access.PermissionDenied:
        return "checked"
    return "ok"


def test_parallel_wrong_tokens_get_at_most_the_free_checks(settings):
    """60 processes try a wrong token at the same moment: at most FREE_FAILURES + 1 = 3 tokens are checked.

    Fails on the code before the fix (read the count, check the token, then write the count, nothing held in
    between): 60 parallel tries got 30-34 real checks."""
    ctx = mp.get_context("fork")
    start = ctx.Manager().Event()
    with ctx.Pool(PARALLEL) as pool:
        pending = [pool.apply_async(_guess, (str(settings.home), start, i)) for i in range(PARALLEL)]
        start.set()
        results = [p.get(timeout=300) for p in pending]
    assert results.count("checked") <= access.FREE_FAILURES + 1, results
    assert results.count("checked") + results.count("throttled") == PARALLEL
    rows = access.audit_log(settings)
    assert len(rows) == PARALLEL and set(rows["outcome"]) == {"denied"} and set(rows["person"]) == {"ops"}
    assert (rows["target"] == "wrong name or token").sum() == results.count("checked")
    assert access.sign_in(settings, "ops", "the-right-token", now=AT + 61) == "ops"   # the wait over: resets
    assert access.retry_after(settings, "ops", now=AT + 61) == 0


def test_the_right_token_among_parallel_wrong_ones_never_gets_more_checks(settings):
    """Reservation is per try, not per wrong token: 50 parallel tries with one right token still check <= 3."""
    ctx = mp.get_context("fork")
    start = ctx.Manager().Event()
    with ctx.Pool(50) as pool:
        pending = [pool.apply_async(_guess, (str(settings.home), start, i)) for i in range(50)]
        start.set()
        results = [p.get(timeout=300) for p in pending]
    assert results.count("checked") + results.count("ok") <= access.FREE_FAILURES + 1


def _random_name(rng) -> str:
    return "".join(rng.choice(string.ascii_lowercase) for _ in range(12))


def test_a_flood_of_random_names_adds_a_bounded_number_of_rows(settings):
    """500 guesses under random names: one counted audit row per day, action and reason, one throttle row.

    Fails on the code before: one audit row per guess (500) and one signin_failures row per name (500)."""
    rng = random.Random(7)
    t0 = 1_780_000_000.0
    for i in range(500):
        with pytest.raises(access.PermissionDenied):
            access.sign_in(settings, _random_name(rng), "wrong-token", now=t0 + i * 0.01,
                           at="2026-12-07T10:00:00")
    rows = access.audit_log(settings)
    assert len(rows) <= 2                                  # 'wrong name or token' and 'throttled'
    assert set(rows["actor"]) == {access.UNKNOWN_ACTOR} and rows["attempts"].sum() == 500
    assert rows["person"].isna().all()
    from core.store import mlopsdb
    with mlopsdb.session(settings) as db:
        assert db.execute("SELECT count(*) FROM signin_failures").fetchone()[0] == 1
    # a real operator keeps its own counter and its own rows, named
    with pytest.raises(access.PermissionDenied) as info:
        access.sign_in(settings, "ops", "wrong-token", now=t0 + 5)
    assert not isinstance(info.value, access.SignInThrottled)
    assert access.audit_log(settings).iloc[0][["actor", "person", "role"]].tolist() == ["ops", "ops", "admin"]
    # a new day starts a new counted row
    with pytest.raises(access.PermissionDenied):
        access.sign_in(settings, "zzz", "wrong-token", now=t0 + 1e6, at="2026-12-08T00:00:01")
    assert len(access.audit_log(settings)) <= 4
