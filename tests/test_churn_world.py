"""Churn in the world responds to the recommender (issue 17.1): the same world continued with the production
recommender in the closed loop keeps more of its users than with the Top 50 only."""
from __future__ import annotations

import pytest

from core.settings import load_settings
from core.simulation import loop, simulation
from core.store.mlopsdb import clone_home
from core.training import pipeline, registry

pytestmark = pytest.mark.slow     # a 1,500-user world of 56 days, a retrain and twice 20 continued days (~1.5 min)

USERS, DAYS, CONTINUED = 1500, 56, 20


def test_top50_only_loses_more_users_than_the_production_recommender(tmp_path):
    base = load_settings(tmp_path / "base")
    simulation.init_world(base, seed=17, users=USERS, movies=600, days=DAYS)
    pipeline.retrain(base, with_ranker=False)
    assert registry.production(base) is not None
    at_fork = simulation.load_world(base).left.mean()

    recommended = clone_home(base, tmp_path / "recommended")
    top50_only = clone_home(base, tmp_path / "top50")
    loop.run(recommended, CONTINUED, policy_mode="manual")          # the production model's lists every day
    simulation.simulate(top50_only, CONTINUED)                       # no served list: the Top 50 row only

    left_recommended = simulation.load_world(recommended).left.mean()
    left_top50 = simulation.load_world(top50_only).left.mean()
    print(f"\nshare of users who have left after {CONTINUED} more days: production recommender "
          f"{left_recommended:.1%}, Top 50 only {left_top50:.1%} (at the fork {at_fork:.1%}: "
          f"+{left_recommended - at_fork:.1%} vs +{left_top50 - at_fork:.1%})")
    assert left_top50 > left_recommended
    assert left_top50 - at_fork > 1.5 * (left_recommended - at_fork)   # clearly more leave, not by a hair
