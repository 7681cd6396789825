"""Exploration with known propensities: a small share of served lists swap some slots for other titles, and
every shown title carries the exact probability that the logging policy shows it.

The policy is ε-greedy per slot, chosen over Plackett–Luce sampling because its marginals are exact in
closed form: under Plackett–Luce the probability of a title *at a position* (or anywhere in the top k) sums
over every ordering of the titles above it, which is not cheap to compute exactly; here it is one line.

A list explores with probability `share` (a seeded coin per user and serving time). In an exploring list
each slot j of the deterministic list D = (d_1..d_k) independently
  - keeps d_j with probability 1 − ε_near − ε_far,
  - is swapped for a title of the NEAR pool (the next candidates by the same scores, N_near titles) with
    probability ε_near,
  - is swapped for a title of the FAR pool (every other unseen catalogue title, N_far of them) with ε_far;
the swapped slots of a pool get distinct titles drawn uniformly without replacement (a pool smaller than k
is not used: its ε is 0 for that list, so the formulas below stay exact). D, the near and the far pool are
disjoint, so a title can only ever appear in one way. The logging policy (both coins together) then shows
  - d_j at position j with probability 1 − share·(ε_near + ε_far) — and nowhere else;
  - a near-pool title at a given position with share·ε_near / N_near, and anywhere in the list with
    share·k·ε_near / N_near (the expected number of near swaps, k·ε_near, spread uniformly over the pool);
  - a far-pool title likewise with ε_far and N_far.
Every unseen title has a positive probability (full support), so inverse-propensity estimates of any other
policy's value are unbiased (`core.training.counterfactual`); near swaps keep the price of exploring low.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

DETERMINISTIC, EXPLORE = "deterministic", "explore"
POLICIES = (DETERMINISTIC, EXPLORE)


@dataclass(frozen=True)
class ExplorationConfig:
    """The logging policy's knobs (see the module docstring); share = 0 turns exploration off."""

    share: float = 0.05
    near: float = 0.2
    far: float = 0.1
    pool: int = 20
    seed: int = 42

    def __post_init__(self):
        for name in ("share", "near", "far"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
                raise ValueError(f"exploration {name} must be a number in [0, 1], got {value!r}")
        if self.near + self.far > 1.0:
            raise ValueError(f"exploration near + far must be at most 1, got {self.near} + {self.far}")
        if not isinstance(self.pool, (int, np.integer)) or self.pool < 0:
            raise ValueError(f"exploration pool must be a non-negative integer, got {self.pool!r}")


@dataclass
class LoggedList:
    """A list as shown, with its logging policy's probabilities (same order as `movie_ids`)."""

    movie_ids: list[int]
    scores: list[float]
    policy: str
    propensities: list[float]         # P(this title at this position) under the logging policy
    slate_propensities: list[float]   # P(this title anywhere in the list) under the logging policy


def list_rng(seed: int, user_id: int, served_at: str | None) -> np.random.Generator:
    """The coin of one user's list at one serving time: reproducible, independent across users and times."""
    digest = hashlib.sha256(f"{int(seed)}|{int(user_id)}|{served_at or ''}".encode()).digest()
    return np.random.default_rng([int.from_bytes(digest[:8], "little"), 0xE4])


def pool_rates(config: ExplorationConfig, k: int, n_near: int, n_far: int) -> tuple[float, float]:
    """(ε_near, ε_far) in force for a list of k titles with pools of these sizes (0 for a pool smaller than k)."""
    return (config.near if n_near >= k > 0 else 0.0), (config.far if n_far >= k > 0 else 0.0)


def explore(base_ids: list[int], base_scores: list[float], near: list[int], far, config: ExplorationConfig,
            rng: np.random.Generator, near_scores: list[float] | None = None) -> LoggedList:
    """The list to show: `base_ids` (the deterministic list, best first), or an exploring variant of it.

    `near`: the next candidates by the same scores (not in base), `near_scores` their scores; `far`: every
    other eligible title (not in base or near; an array or list). A far title shown has score 0.0 (nothing
    scored it; readers of score distributions use deterministic lists only). Returns the shown list with
    both kinds of propensity.
    """
    k = len(base_ids)
    eps_near, eps_far = pool_rates(config, k, len(near), len(far))
    kept = 1.0 - config.share * (eps_near + eps_far)
    ids, scores = list(base_ids), list(base_scores)
    pos = [kept] * k
    slate = [kept] * k
    explores = k > 0 and config.share > 0 and rng.random() < config.share
    if explores and eps_near + eps_far > 0:
        u = rng.random(k)
        near_slots = np.flatnonzero(u < eps_near)
        far_slots = np.flatnonzero((u >= eps_near) & (u < eps_near + eps_far))
        near_scores = [0.0] * len(near) if near_scores is None else near_scores
        for slots, pool, eps, pool_scores in ((near_slots, near, eps_near, near_scores),
                                              (far_slots, far, eps_far, None)):
            if not len(slots):
                continue
            picks = rng.choice(len(pool), size=len(slots), replace=False)
            for slot, pick in zip(slots, picks):
                ids[slot] = int(pool[pick])
                scores[slot] = 0.0 if pool_scores is None else float(pool_scores[pick])
                pos[slot] = config.share * eps / len(pool)
                slate[slot] = config.share * k * eps / len(pool)
    return LoggedList([int(m) for m in ids], [float(s) for s in scores], EXPLORE if explores else DETERMINISTIC,
                      pos, slate)


def marginals(base_ids: list[int], near: list[int], far, config: ExplorationConfig) -> dict[int, float]:
    """{title: P(title anywhere in the list)} under the logging policy, for every title it can show (the
    counterfactual estimators need these for titles that were *not* shown too)."""
    k = len(base_ids)
    eps_near, eps_far = pool_rates(config, k, len(near), len(far))
    out = {int(m): 1.0 - config.share * (eps_near + eps_far) for m in base_ids}
    if eps_near:
        out.update({int(m): config.share * k * eps_near / len(near) for m in near})
    if eps_far:
        out.update({int(m): config.share * k * eps_far / len(far) for m in far})
    return out


# ------------------------------------------------------------------ the share in force (a policy field)
SHARE_KEY = "explore_share"


def config_for(settings, share: float | None = None) -> ExplorationConfig:
    """The logging policy from the settings, with `share` (the policy table's field) when given."""
    return ExplorationConfig(settings.explore_share if share is None else share, settings.explore_near,
                             settings.explore_far, settings.explore_pool, settings.seed)


def share_on(db, settings) -> float:
    """The share of lists that explore: the policy table's `explore_share`, else the setting."""
    from core.store import mlopsdb
    raw = mlopsdb.policy_value(db, SHARE_KEY)
    return settings.explore_share if raw is None else float(raw)


def get_share(settings) -> float:
    from core.store import mlopsdb
    with mlopsdb.session(settings) as db:
        return share_on(db, settings)


def set_share(settings, share, *, actor: str, at: str | None = None) -> float:
    """Change the share of exploring lists at run time (audited like a retraining-policy change)."""
    import json
    from core.errors import ValidationError
    from core.store import clock, mlopsdb
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0.0 <= float(share) <= 0.5:
        raise ValidationError(f"the exploration share must be a number in [0, 0.5], got {share!r}")
    before = get_share(settings)
    at = at or clock.now(settings)
    with mlopsdb.write_session(settings) as db:
        mlopsdb.set_policy_value(db, SHARE_KEY, repr(float(share)), at=at, actor=actor,
                                 cause=f"exploration share {before:g} → {float(share):g}",
                                 result=json.dumps({"explore_share": float(share), "before": before}))
    return float(share)
