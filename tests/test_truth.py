"""The truth in simulation (issue 22.3): the expected online value of a policy, computed without writing,
agrees with what the simulated day then does; it is reproducible, writes nothing, and orders obvious cases."""
import hashlib

import numpy as np
import pytest
from conftest import private_copy

from core.simulation import simulation, truth
from core.store import opsdb


@pytest.fixture
def world(small_world, tmp_path):
    return private_copy(small_world, tmp_path)


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _best_lists(state, k=10):
    """Each user's k unseen titles with the highest watch probability: an oracle policy."""
    w = state.world
    score = np.where(w.watched[state.rows], -np.inf, state.fit + 0.4 * w.quality[None, :])
    top = np.argsort(-score, axis=1)[:, :k]
    return {int(u): [int(w.movie_ids[j]) for j in row] for u, row in zip(state.user_ids, top)}


def _worst_lists(state, k=10):
    w = state.world
    score = np.where(w.watched[state.rows], np.inf, state.fit + 0.4 * w.quality[None, :])
    top = np.argsort(score, axis=1)[:, :k]
    return {int(u): [int(w.movie_ids[j]) for j in row] for u, row in zip(state.user_ids, top)}


def test_truth_writes_nothing_and_is_reproducible(world):
    before = (_digest(world.ops_db), _digest(world.world_file))
    state = truth.WorldState(world)
    a = truth.true_values(state, {"best": _best_lists(state)}, draws=4, seed=3)
    b = truth.true_values(truth.WorldState(world), {"best": _best_lists(state)}, draws=4, seed=3)
    assert a == b
    assert (_digest(world.ops_db), _digest(world.world_file)) == before


def test_truth_orders_an_oracle_above_its_opposite_and_empty_lists_are_worth_nothing(world):
    state = truth.WorldState(world)
    values = truth.true_values(state, {"best": _best_lists(state), "worst": _worst_lists(state), "none": {}},
                               draws=4)
    assert values["best"]["watches_per_list"] > 3 * values["worst"]["watches_per_list"] > 0
    assert values["none"] == {"watches_per_list": 0.0, "hit_rate": 0.0, "users": values["best"]["users"]}
    for v in values.values():
        assert 0 <= v["hit_rate"] <= v["watches_per_list"] + 1e-12     # P(at least one) ≤ E[count]


@pytest.mark.slow
def test_truth_agrees_with_the_simulated_day(world):
    """Serve the oracle's lists for one simulated day: the realised watches per served list (active users)
    match the truth's expectation within sampling error (4 standard errors of the day's mean)."""
    state = truth.WorldState(world)
    lists = _best_lists(state)
    expected = truth.true_values(state, {"best": lists}, draws=32)["best"]
    realised = []
    for day_offset in range(3):          # three days of the same policy, each against its own truth
        state = truth.WorldState(world)
        lists = _best_lists(state)
        exp = truth.true_values(state, {"best": lists}, draws=32)["best"]
        world_obj = simulation.load_world(world)
        db = opsdb.connect(world)
        try:
            shifts = simulation.load_shifts(db)
            day = int(opsdb.get_meta(db, "sim_day", "0"))
            served = {}

            def serve(user_ids, k):
                served.update({int(u): lists[int(u)] for u in user_ids if int(u) in lists})
                return {int(u): lists.get(int(u), []) for u in user_ids}
            simulation.simulate_day(db, world_obj, day, shifts, serve)
            world_obj.save(world.world_file)
            start = simulation.day_start(day)
            watched = opsdb.watches_between(db, start.strftime("%Y-%m-%dT%H:%M:%S"),
                                            (start + simulation.DAY).strftime("%Y-%m-%dT%H:%M:%S"))
        finally:
            db.conn.close()
        got = {}
        for u, m in watched:
            if u in served and m in served[u]:
                got[u] = got.get(u, 0) + 1
        per_list = np.array([got.get(u, 0) for u in served], dtype=float)
        se = per_list.std(ddof=1) / np.sqrt(len(per_list))
        realised.append((per_list.mean(), exp["watches_per_list"], se, len(per_list)))
    for mean, exp, se, n in realised:
        assert abs(mean - exp) < 4 * se, (mean, exp, se, n)
    assert expected["watches_per_list"] > 0


@pytest.mark.slow
def test_a_version_is_valued_with_or_without_its_ranker(cf_world, tmp_path):
    """`model_lists` serves a version as serving would (its ranker when one was trained on it) or in CF order;
    both are valued by the truth, and CF order equals what serving shows without a ranker."""
    from core.serving import serving
    from core.training import pipeline, registry
    world = private_copy(cf_world, tmp_path)
    prod = registry.production(world)
    ranked = pipeline.train_ranker(world, cf_version=int(prod["version"]))
    if not ranked["promoted"]:       # serve it whatever its holdout said: this test is about valuing what serves
        registry.promote(world, ranked["version"], "test", "the ranker serves for this test")
    assert registry.production(world, family="ranker")["depends_on"] == int(prod["version"])
    state = truth.WorldState(world)
    users = state.user_ids
    with_rk = truth.model_lists(world, prod, users)
    cf_only = truth.model_lists(world, prod, users, with_ranker=False)
    assert set(with_rk) == set(cf_only) == {int(u) for u in users}
    assert sum(with_rk[u] != cf_only[u] for u in with_rk) > 0            # the ranker re-orders some lists
    plain = serving.recommend_many(world, [int(u) for u in users[:30]], 10, log=False, at="2099-01-01T00:00:00",
                                   state=serving.ServingState(prod, serving.bundle_for(prod), key=None))
    assert all(plain[int(u)].movie_ids == cf_only[int(u)] or plain[int(u)].policy == "explore" for u in users[:30])
    values = truth.true_values(state, {"ranked": with_rk, "cf": cf_only}, draws=4)
    assert all(0 < v["watches_per_list"] < 10 for v in values.values())
    serving.clear_caches()
