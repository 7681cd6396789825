"""Exploration with known propensities (issue 22.1): the logging policy's probabilities are exact (closed form
checked against Monte Carlo), every served list carries them, in-process and over HTTP, on every arm, and the
share is a policy field that the next request obeys."""
import json

import numpy as np
import pytest
from conftest import private_copy

from core.errors import ValidationError
from core.serving import exploration, serving
from core.serving.exploration import ExplorationConfig
from core.store import opsdb, servinglog

BASE, NEAR, FAR = [1, 2, 3, 4], [10, 11, 12, 13, 14, 15], list(range(100, 120))


def test_closed_form_marginals_match_monte_carlo():
    """P(title in list) and P(title at position) from the formulas vs 40,000 seeded draws of the policy."""
    config = ExplorationConfig(share=0.3, near=0.25, far=0.15, pool=6)
    rng = np.random.default_rng(5)
    n = 40_000
    in_list, at_pos = {}, {}
    for _ in range(n):
        shown = exploration.explore(BASE, [1.0] * 4, NEAR, FAR, config, rng)
        for j, m in enumerate(shown.movie_ids):
            in_list[m] = in_list.get(m, 0) + 1
            at_pos[(m, j)] = at_pos.get((m, j), 0) + 1
    exact = exploration.marginals(BASE, NEAR, FAR, config)
    # By hand: kept = 1 - 0.3 * 0.4 = 0.88; near = 0.3 * 4 * 0.25 / 6 = 0.05; far = 0.3 * 4 * 0.15 / 20 = 0.009.
    assert exact[1] == pytest.approx(0.88) and exact[10] == pytest.approx(0.05) and exact[100] == pytest.approx(0.009)
    for m, p in exact.items():
        se = np.sqrt(p * (1 - p) / n)
        assert abs(in_list.get(m, 0) / n - p) < 4.5 * se + 1e-9, m
    # At a position: a near title sits at slot 2 with 0.3 * 0.25 / 6 = 0.0125; a base title only at its own slot.
    assert at_pos.get((10, 2), 0) / n == pytest.approx(0.0125, abs=4.5 * np.sqrt(0.0125 / n))
    assert at_pos.get((1, 1), 0) == 0 and at_pos[(1, 0)] / n == pytest.approx(0.88, abs=0.01)


def test_logged_propensities_are_the_formulas():
    config = ExplorationConfig(share=1.0, near=0.5, far=0.5, pool=6)
    shown = exploration.explore(BASE, [4.0, 3.0, 2.0, 1.0], NEAR, FAR, config, np.random.default_rng(1))
    assert shown.policy == "explore"
    for m, p_pos, p_slate in zip(shown.movie_ids, shown.propensities, shown.slate_propensities):
        if m in NEAR:
            assert (p_pos, p_slate) == pytest.approx((0.5 / 6, 4 * 0.5 / 6))
        elif m in FAR:
            assert (p_pos, p_slate) == pytest.approx((0.5 / 20, 4 * 0.5 / 20))
        else:
            assert (p_pos, p_slate) == pytest.approx((0.0, 0.0))   # share 1, every slot swaps: never kept
    assert len(set(shown.movie_ids)) == 4                            # swapped titles are distinct


def test_a_pool_smaller_than_the_list_is_not_used_and_propensities_stay_exact():
    config = ExplorationConfig(share=1.0, near=0.3, far=0.2, pool=2)
    shown = exploration.explore(BASE, [1.0] * 4, [10, 11], FAR, config, np.random.default_rng(3))
    assert not set(shown.movie_ids) & {10, 11}
    assert exploration.marginals(BASE, [10, 11], FAR, config)[1] == pytest.approx(0.8)


def test_share_zero_is_deterministic_with_propensity_one():
    shown = exploration.explore(BASE, [1.0] * 4, NEAR, FAR, ExplorationConfig(share=0.0), np.random.default_rng(0))
    assert shown.policy == "deterministic" and shown.movie_ids == BASE and shown.propensities == [1.0] * 4


@pytest.mark.parametrize("bad", [dict(share=1.5), dict(near=-0.1), dict(near=0.7, far=0.6), dict(pool=-1)])
def test_bad_config_is_refused(bad):
    with pytest.raises(ValueError):
        ExplorationConfig(**bad)


def test_the_coin_is_reproducible_per_user_and_time():
    a = exploration.list_rng(42, 7, "2026-01-01T00:00:00").random(3)
    assert np.array_equal(a, exploration.list_rng(42, 7, "2026-01-01T00:00:00").random(3))
    assert not np.array_equal(a, exploration.list_rng(42, 8, "2026-01-01T00:00:00").random(3))
    assert not np.array_equal(a, exploration.list_rng(42, 7, "2026-01-02T00:00:00").random(3))


@pytest.fixture
def world(cf_world, tmp_path):
    serving.clear_caches()
    yield private_copy(cf_world, tmp_path)
    serving.clear_caches()


def _logged(settings, at):
    with opsdb.session(settings) as db:
        frame = servinglog.logged_between(db, at, at + "~")
    return frame


def test_served_lists_carry_policy_and_propensities(world):
    """Every list served in-process is logged with its policy and one propensity per title; deterministic lists
    are exactly the production list; about `share` of the lists explore; the share is a policy field."""
    users = opsdb.user_ids(opsdb.connect(world))
    exploration.set_share(world, 0.3, actor="test", at="2026-03-01T00:00:00")
    at = "2026-03-01T00:00:00"
    recs = serving.recommend_many(world, users, 10, at=at)
    frame = _logged(world, at)
    assert len(frame) == len(users)
    explore = frame[frame["policy"] == "explore"]
    assert 0.2 * len(users) < len(explore) < 0.4 * len(users)
    for row in frame.itertuples():
        props = json.loads(row.slate_propensities)
        assert len(props) == len(json.loads(row.movie_ids)) and all(0 < p <= 1 for p in props)
    # Deterministic lists: what serving gives without exploration; kept titles have 1 - share·(near+far).
    exploration.set_share(world, 0.0, actor="test", at="2026-03-01T00:00:00")
    plain = serving.recommend_many(world, users, 10, log=False, at=at)
    det = [u for u in users if recs[u].policy == "deterministic"]
    assert det and all(recs[u].movie_ids == plain[u].movie_ids for u in det)
    # A model list has both pools (20 next candidates, the unseen catalogue): kept = 1 - 0.3 · (0.2 + 0.1) = 0.91.
    # A Top 50 fallback may have fewer than 10 further Top 50 titles: no near swaps, kept = 1 - 0.3 · 0.1 = 0.97.
    kept = {"model": 1 - 0.3 * (world.explore_near + world.explore_far)}
    assert any(recs[u].path == "model" for u in det)
    for u in det:
        expected = kept.get(recs[u].path)
        assert all(p == pytest.approx(expected) if expected else p in (pytest.approx(0.91), pytest.approx(0.97))
                   for p in recs[u].slate_propensities)
    assert all(p == 1.0 for r in plain.values() for p in r.slate_propensities)
    # Exploring lists differ from the deterministic one in some slots, never repeat a title or show a seen one.
    changed = [u for u in users if recs[u].policy == "explore" and recs[u].movie_ids != plain[u].movie_ids]
    assert changed
    with opsdb.session(world) as db:
        seen = {}
        for u, m in opsdb.seen_pairs(db, users):
            seen.setdefault(u, set()).add(m)
    for u in changed:
        assert len(set(recs[u].movie_ids)) == len(recs[u].movie_ids)
        assert not set(recs[u].movie_ids) & seen.get(u, set())


def test_the_share_is_validated(world):
    with pytest.raises(ValidationError):
        exploration.set_share(world, 0.9, actor="test")
    with pytest.raises(ValidationError):
        exploration.set_share(world, "x", actor="test")
    assert exploration.get_share(world) == world.explore_share


@pytest.mark.slow
def test_the_price_of_exploring_is_measured_online(world):
    """Closed-loop days with half the lists exploring: each monitored day splits its lists by policy (the two
    groups add up to every list served), and the running price is their list-weighted hit rates."""
    from core.monitoring import monitoring
    from core.simulation import loop
    exploration.set_share(world, 0.5, actor="test")
    loop.run(world, 2, policy_mode="manual")
    with opsdb.session(world) as db:
        served = db.execute("SELECT count(*), sum(policy = 'explore') FROM served_recommendations "
                            "WHERE served_at >= '2026-01-11'").fetchone()
    price = monitoring.exploration_price(world)
    assert price["deterministic"]["lists"] + price["explore"]["lists"] == served[0]
    assert price["explore"]["lists"] == served[1] and 0.3 * served[0] < served[1] < 0.7 * served[0]
    assert price["difference"] == pytest.approx(price["explore"]["hit_rate"] - price["deterministic"]["hit_rate"])


def test_the_cli_shows_and_sets_the_share(world, capsys):
    """`policy show` reports the share; `policy set --explore-share` changes it (JSON adds the field only);
    out-of-range values are refused with a one-line error and change nothing."""
    from core.cli import main
    assert main(["policy", "show", "--home", str(world.home), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["explore_share"] == world.explore_share and shown["mode"] == "manual"
    assert main(["policy", "set", "--explore-share", "0.12", "--home", str(world.home), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["explore_share"] == 0.12
    assert exploration.get_share(world) == 0.12
    assert main(["policy", "set", "--explore-share", "0.7", "--home", str(world.home)]) != 0
    assert "--explore-share must be in [0, 0.5]" in capsys.readouterr().err
    assert exploration.get_share(world) == 0.12


def test_lists_served_over_http_carry_the_same_policy_and_propensities(world):
    """Over HTTP (the FastAPI app with its lifespan) every answer names its policy and propensities, exactly as
    logged, and as in-process serving decides for the same user at the same time."""
    from fastapi.testclient import TestClient
    from core.server.app import create_app
    exploration.set_share(world, 0.5, actor="test")
    users = opsdb.user_ids(opsdb.connect(world))[:60]
    with TestClient(create_app(world, poll_seconds=0.05)) as client:
        answers = [client.get(f"/recommend/{u}").json() for u in users]
    policies = {a["policy"] for a in answers}
    assert policies == {"deterministic", "explore"}
    with opsdb.session(world) as db:
        logged = {r["serve_id"]: r for r in servinglog.logged_lists(db, limit=1000)}
    for a in answers:
        row = logged[a["serve_id"]]
        assert row["policy"] == a["policy"] and json.loads(row["slate_propensities"]) == a["slate_propensities"]
        assert len(a["propensities"]) == len(a["movie_ids"])
        same = serving.recommend(world, a["user_id"], 10, log=False, at=a["served_at"])
        assert (same.policy, same.movie_ids) == (a["policy"], a["movie_ids"])
