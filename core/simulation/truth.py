"""The truth, in simulation: the expected online value of any policy on the world's current state.

Only a simulated world can answer "how good would this list have been?" exactly: it knows every user's taste,
each title's latent quality, and how a session turns impressions into watches. For a policy's lists (one per
user) this replays the NEXT simulated day's session model (`simulation.simulate_day`: the same exposure
logits, the served row's boost, Gumbel-top-k impressions, the same click and watch probabilities — shared
functions, so the truth cannot drift from the simulation) without writing anything and without touching the
world, and returns per served list:
  - watches per list: the expected number of the list's titles the user watches that day;
  - hit rate@k: the probability that at least one of them is watched.
Users are weighted by their chance of a session that day (`activity`); users who left are not served. The
impressions are Monte Carlo over `draws` seeded Gumbel draws shared by every policy (common random numbers,
so two policies' difference is far more precise than either value).
Ads are outside it (a limitation, docs/ads.md): ad fatigue moves the churn hazard at the end of the day — beyond
this one-day horizon — and a watch an ad click leads to comes from the sponsored slot, not from the list judged.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from core.simulation import simulation
from core.store import opsdb
from core.training.top50 import top50

ListsFn = Callable[[np.ndarray], dict]     # user ids → {user id: [movie ids]}


class WorldState:
    """The world's state at the start of the next simulated day, read once and shared by several policies."""

    def __init__(self, settings):
        self.world = simulation.load_world(settings)
        with opsdb.session(settings) as db:
            self.day = int(opsdb.get_meta(db, "sim_day", "0"))
            shifts = simulation.load_shifts(db)
            top = np.array(top50(db).movie_ids, dtype=np.int64)
            present = np.isin(self.world.user_ids, opsdb.user_ids(db))
        w = self.world
        taste_mult, exposure_boost, self.click_boost = simulation.day_effects(w, shifts, self.day)
        self.rows = np.flatnonzero(present & ~w.left)
        self.user_ids = w.user_ids[self.rows]
        self.weights = w.activity[self.rows] / w.activity[self.rows].sum() if len(self.rows) else np.zeros(0)
        self.fit = simulation.taste_fit(w, self.rows, taste_mult) if len(self.rows) else np.zeros((0, len(w.movie_ids)))
        self.base = simulation.base_exposure(w, top, exposure_boost)[None, :] + simulation.EXPOSURE_TASTE * self.fit
        self.base[w.watched[self.rows]] = -np.inf

    def served_mask(self, lists: dict) -> np.ndarray:
        """(A, M) bool: the titles of each user's list (titles outside the catalogue are ignored)."""
        mask = np.zeros(self.base.shape, dtype=bool)
        index = {int(m): j for j, m in enumerate(self.world.movie_ids)}
        for a, u in enumerate(self.user_ids):
            cols = [index[m] for m in lists.get(int(u), []) if m in index]
            mask[a, cols] = True
        return mask


def true_values(state: WorldState, policies: dict[str, dict], *, draws: int = 16, seed: int = 0) -> dict:
    """{name: {"watches_per_list", "hit_rate", "users"}} of each policy's lists ({name: {user: [ids]}}), all on
    the same `draws` Gumbel draws."""
    if draws < 1:
        raise ValueError(f"draws must be ≥ 1, got {draws}")
    masks = {name: state.served_mask(lists) for name, lists in policies.items()}
    w = state.world
    p_watch = simulation.click_probability(state.fit, w.quality[None, :], state.click_boost[None, :]) \
        * simulation.WATCH_AFTER_CLICK
    k = min(simulation.IMPRESSIONS_PER_SESSION, state.base.shape[1])
    totals = {name: np.zeros((2, len(state.rows))) for name in policies}
    for r in range(draws):
        noisy = state.base + np.random.default_rng([seed, state.day, r]).gumbel(size=state.base.shape)
        for name, mask in masks.items():
            logits = noisy + simulation.EXPOSURE_SERVED * mask
            threshold = -np.partition(-logits, k - 1, axis=1)[:, k - 1:k]     # the k-th largest per user
            seen = mask & (logits >= threshold) & np.isfinite(logits)
            p = np.where(seen, p_watch, 0.0)
            totals[name][0] += p.sum(axis=1)
            totals[name][1] += 1.0 - np.prod(1.0 - p, axis=1)
    return {name: {"watches_per_list": float(state.weights @ t[0] / draws),
                   "hit_rate": float(state.weights @ t[1] / draws), "users": int(len(state.rows))}
            for name, t in totals.items()}


def true_value(settings, lists_fn: ListsFn, *, draws: int = 16, seed: int = 0) -> dict:
    """The truth of one policy, given as a function of user ids (reads the world; writes nothing)."""
    state = WorldState(settings)
    return true_values(state, {"policy": lists_fn(state.user_ids)}, draws=draws, seed=seed)["policy"]


# ------------------------------------------------------------------ the truth's verdict on a gate decision
TRUTH_MARGIN = 0.01      # watches per list: a difference smaller than this is "no difference" for the verdict


def model_lists(settings, version: dict, user_ids, k: int = 10, *, with_ranker: bool = True) -> dict:
    """The lists a registered CF version would serve now — with its ranker when one was trained on it, unless
    `with_ranker` is False — seen titles filtered, the Top 50 for users it does not know; nothing logged."""
    from core.serving import serving
    with opsdb.session(settings) as db:
        seen = opsdb.seen_before(db, "9999-12-31T00:00:00")
    return serving.version_lists(settings, version, user_ids, k, seen, with_ranker=with_ranker)


def verdict(settings, result: dict, *, draws: int = 8, margin: float = TRUTH_MARGIN) -> dict | None:
    """The world's truth about a retrain's gate decision: the candidate's and production's expected watches per
    list and hit rate@10 on the next simulated day (both as they would serve, each with the ranker trained on it
    when there is one), their difference, and
    whether the decision was right ('right', 'wrong refusal': the truth finds the candidate better by more than
    `margin`, 'wrong promotion': worse by more). None without a world or without a production reference."""
    from core.training import registry
    if not simulation.has_world(settings):
        return None
    prod_version = ((result.get("baselines") or {}).get("production") or {}).get("version")
    if prod_version is None or result.get("version") is None:
        return None
    state = WorldState(settings)
    cand = registry.get_version(settings, int(result["version"]))
    prod = registry.get_version(settings, int(prod_version))
    values = true_values(state, {"candidate": model_lists(settings, cand, state.user_ids),
                                 "production": model_lists(settings, prod, state.user_ids)}, draws=draws)
    diff = values["candidate"]["watches_per_list"] - values["production"]["watches_per_list"]
    passed = bool((result.get("gate") or {}).get("promote"))
    right = not ((passed and diff < -margin) or (not passed and diff > margin))
    return {"candidate": values["candidate"]["watches_per_list"], "production": values["production"]["watches_per_list"],
            "hit_rate": {n: v["hit_rate"] for n, v in values.items()}, "difference": diff, "margin": margin,
            "gate_passed": passed, "verdict": "right" if right else ("wrong promotion" if passed else "wrong refusal"),
            "day": state.day, "draws": draws}
