"""DR's reward model in `core.training.offpolicy`: what it reads, and that it favours no policy."""
import numpy as np
import pandas as pd
import pytest

from core.constants import GENRE_INDEX, GENRES
from core.pseudonym import pseudonym_key
from core.store import opsdb
from core.training import offpolicy, registry
from core.training.artifacts import load_bundle
from core.training.evaluation import full_matrix
from core.training.models import ALSRecommender


def _genres(**shares) -> np.ndarray:
    v = np.zeros(len(GENRES))
    for g, x in shares.items():
        v[GENRE_INDEX[g]] = x
    return v


def test_the_reward_models_features_read_no_policy_by_default():
    """(n, 4): genre affinity, log1p(watches in the 7 days before), in the Top 50, shrunk mean rating — worked
    out by hand; no model's score (the reference's score made titles production ranks low look bad, whoever
    else ranked them high)."""
    ctx = offpolicy.DayContext(seen={}, genre_share={1: _genres(Drama=0.5, Comedy=0.5)}, popularity={10: 3},
                               top50={10}, movie_genres={10: _genres(Drama=1.0), 11: _genres(Comedy=0.5, Western=0.5)},
                               mean_rating={10: 7.0}, prior_rating=5.5)
    X = offpolicy.features(ctx, np.array([1, 1, 2]), np.array([10, 11, 11]))
    expected = np.array([[0.5, np.log1p(3), 1.0, 7.0],
                         [0.25, 0.0, 0.0, 5.5],
                         [0.0, 0.0, 0.0, 5.5]])     # user 2: no past watches, so no affinity
    np.testing.assert_allclose(X, expected)
    assert offpolicy.REWARD_SCORES == "none"


class _Scorer:
    def __init__(self, score):
        self.score = score

    def pair_scores(self, users, movies):
        return np.column_stack([np.full(len(movies), self.score), np.ones(len(movies))])


def test_each_scoring_model_adds_its_score_and_whether_it_could_score():
    ctx = offpolicy.DayContext(seen={}, genre_share={}, popularity={}, top50=set())
    X = offpolicy.features(ctx, np.array([1]), np.array([5]), [_Scorer(0.7), _Scorer(-1.0)])
    np.testing.assert_allclose(X, [[0.0, 0.0, 0.0, 5.5, 0.7, 1.0, -1.0, 1.0]])
    assert offpolicy.features(ctx, np.array([], dtype=int), np.array([], dtype=int), [_Scorer(1.0)]).shape == (0, 6)


def _log(settings, policy, day: str) -> offpolicy.ExplorationLog:
    """A hand-made exploration log of one day: every user gets 10 titles, each with P(in list) = 0.5; a title
    `policy` would show is watched with probability 0.6, any other with 0.05 (seeded)."""
    rng = np.random.default_rng(3)
    with opsdb.session(settings) as db:
        users = [int(u) for u in opsdb.user_ids(db)]
        movies = [int(m) for m in opsdb.movie_genres(db)]
        seen = opsdb.seen_before(db, f"{day}T00:00:00")
    favoured = policy.lists(users, seen, 10)
    lists, items = [], []
    for i, u in enumerate(users):
        unseen = [m for m in movies if m not in seen.get(u, ())]
        shown = list(dict.fromkeys(favoured[u][:5] + [int(m) for m in rng.choice(unseen, 10, replace=False)]))[:10]
        lists.append({"list_index": i, "user_id": u, "served_at": f"{day}T12:00:00", "policy": "explore",
                      "path": "model", "day": day, "size": len(shown)})
        for m in shown:
            p = 0.6 if m in favoured[u] else 0.05
            items.append({"list_index": i, "movie_id": m, "slate_p": 0.5, "user_id": u, "day": day,
                          "reward": float(rng.random() < p)})
    return offpolicy.ExplorationLog(f"{day}T00:00:00", f"{day}T23:59:59", pd.DataFrame(lists), pd.DataFrame(items))


@pytest.fixture(scope="module")
def two_models(cf_world):
    key = pseudonym_key(cf_world)
    prod = load_bundle(registry.production(cf_world)["artifact_path"])
    full = full_matrix(cf_world)
    other = ALSRecommender(factors=8, iterations=5, random_state=7).fit(full.user_items)
    fallback = offpolicy.RankingPolicy("top50", [])
    return {"a": offpolicy.ModelPolicy("a", prod.model, prod.matrix, key, fallback),
            "b": offpolicy.ModelPolicy("b", other, full, key, fallback)}


def test_the_reward_model_favours_neither_policy_whichever_is_the_reference(cf_world, two_models):
    """The reward model is fitted on the log, where what policy `a` shows is watched far more: with the
    reference's score as a feature (the old reward model), naming `a` or `b` the reference gave each policy a
    different direct-method value — titles the reference ranks low looked bad, whoever else ranked them high.
    Without policy features the values are the same whichever policy is the reference, and the paired
    direct-method difference just changes sign."""
    with opsdb.session(cf_world) as db:
        day = opsdb.get_meta(db, "clock")[:10]
    log = _log(cf_world, two_models["a"], day)
    by_a = offpolicy.evaluate(cf_world, log, two_models, "a", n_boot=50)
    by_b = offpolicy.evaluate(cf_world, log, two_models, "b", n_boot=50)
    for name in ("a", "b"):
        assert by_a["policies"][name]["dm"]["value"] == pytest.approx(by_b["policies"][name]["dm"]["value"], abs=1e-12)
    assert by_a["comparisons"]["b"]["dm"]["value"] == pytest.approx(-by_b["comparisons"]["a"]["dm"]["value"], abs=1e-12)
    # ... and with the reference's score (still selectable), the reference changes the values
    old_a = offpolicy.evaluate(cf_world, log, two_models, "a", n_boot=50, reward_scores="reference")
    old_b = offpolicy.evaluate(cf_world, log, two_models, "b", n_boot=50, reward_scores="reference")
    assert old_a["policies"]["b"]["dm"]["value"] != pytest.approx(old_b["policies"]["b"]["dm"]["value"], abs=1e-3)


def test_an_unknown_choice_of_scores_names_the_known_ones(cf_world, two_models):
    with opsdb.session(cf_world) as db:
        day = opsdb.get_meta(db, "clock")[:10]
    with pytest.raises(ValueError, match="reference, all, none"):
        offpolicy.evaluate(cf_world, _log(cf_world, two_models["a"], day), two_models, "a", reward_scores="mine")


def test_switch_dr_corrects_only_what_the_logging_policy_showed_itself_and_the_gate_counts_the_explored():
    """At the default 5 % share: a title production shows itself has weight ~1.05 (kept by SWITCH-DR), a
    near-pool title ~200 and a far one ~11,000 (both valued by the reward model since SWITCH is 100; at 1000 the
    near pool was corrected and bench_yardstick's τ fell to 0.60 in 2 of 6 sets). The gate's ESS still counts
    the near pool (EXPLORED), so a log without exploration leaves the decision to the holdout as before."""
    from pathlib import Path

    from core.serving import exploration
    from core.settings import Settings
    config = exploration.config_for(Settings(home=Path(".")))
    shown, near, far = list(range(10)), list(range(10, 30)), list(range(30, 600))
    p = exploration.marginals(shown, near, far, config)
    own, near_w, far_w = 1 / p[0], 1 / p[10], 1 / p[30]
    assert own == pytest.approx(1 / (1 - 0.05 * 0.3))                  # 1.0152
    assert near_w == pytest.approx(20 / (0.05 * 10 * 0.2))              # 200
    assert own < offpolicy.SWITCH < near_w < offpolicy.EXPLORED < far_w  # far: 570 / (0.05·10·0.1) = 11,400


def test_the_gates_ess_is_the_explored_ess_of_the_candidate_and_the_reference():
    est = {"value": 1.0, "lo": 0.9, "hi": 1.1, "ess": 10.0}
    cmp = {"value": 0.1, "lo": -0.2, "hi": 0.3, "level": 0.9, "ess_candidate": 9000.0, "ess_baseline": 8000.0}
    result = {"log": {"lists": 10}, "policies": {n: {e: est for e in ("ips", "snips", "dr", "switch", "dm")}
                                                 for n in ("candidate", "production")},
              "comparisons": {"candidate": {"switch": cmp}},
              "explored_ess": {"candidate": 120.0, "production": 340.0}}
    y = offpolicy.yardstick_of(result, ["candidate", "production"], window=[], baselines=())
    assert y["ess"] == 120.0                                             # not the switched weights' 8,000
    del result["explored_ess"]                                           # a result from before: switched ESS
    assert offpolicy.yardstick_of(result, ["candidate", "production"], window=[], baselines=())["ess"] == 8000.0
