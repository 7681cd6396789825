"""Counterfactual evaluation of recommendation policies on the exploration log.

The holdout (`evaluation.holdout_split`) leaves out the titles production served, so what stays relevant is
mostly what the Top 50 and genre rows caused: production's own serving shapes it. Here the yardstick is the
serving log itself: every shown title carries its exact probability under the logging policy
(`core.serving.exploration`), so the value of ANY policy — a candidate, production, the Top 50, popularity —
on the same users and days is estimated without bias (`core.training.counterfactual`, independent-item
assumption: a title's reward is whether the user watched it the day it was shown, whatever else the list held).

A policy here is "what list would it have shown this user at that time": the titles the user had watched or
rated before the day are filtered out, as serving filters them. The value is watches per list (expected
watched titles of the list that day). DR's reward model (shallow gradient boosting, `REWARD_MODEL`) reads
features known for every (user, title, day): the user's genre affinity for the title, the title's watches in the 7 days before, whether it
was in the day's Top 50, its shrunk mean rating — and no policy's own score (`REWARD_SCORES`): with the reference's
(production's) score as a feature, titles production ranks low looked bad whoever else ranked them high, and the
direct-method difference fresh retrain − production fell short of the truth by 0.020–0.053 watches/list in all 6
sets of bench_yardstick (without it: by 0.001–0.006).
SWITCH-DR (the gate's estimator) drops DR's correction where a title's weight exceeds `SWITCH` (100): the
explored titles, each shown a handful of times (near pool, weight ~200 at a 5 % share) or once in thousands of
lists (far pool, ~11,000), are valued by the reward model — biased where it is wrong, but not hanging on a few
lucky watches; the titles the logging policy showed itself keep DR's correction (benchmarks/bench_yardstick.py
measures every estimator against the simulated world's truth).
Its bootstrap interval sees only noise, so it is widened towards DR's unbiased value by the gap between the two
(`counterfactual.widen_for_bias`): the point is SWITCH-DR's, the interval also allows for its bias.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp

from core.constants import DEFAULT_K, GENRE_INDEX, GENRES
from core.pseudonym import pseudonymize
from core.store import opsdb, servinglog
from core.training import counterfactual

ESTIMATORS = ("ips", "snips", "dr")     # the unbiased three (IPS with `clip`); `evaluate` adds "switch" and "dm"
BEST = "switch"           # what the gate and the dashboard lead with: SWITCH-DR (benchmarks/bench_yardstick.py)
LABELS = {"ips": "IPS", "snips": "SNIPS", "dr": "DR", "switch": "SWITCH-DR", "dm": "DM"}
POPULARITY_DAYS = 7
# SWITCH-DR's weight threshold: below a near-pool title's weight (200 at a 5 % share), above a title the logging
# policy showed itself (~1.05). At 5 % exploration a near-pool title is explored a handful of times per policy, and
# fresh retrains differ from production by 0.01–0.03 watches/list: bench_yardstick (default world with ads, 6 sets)
# ordered the 5 policies with τ min 0.60 at 1000 (near-pool titles corrected) and 0.80 (median 1.00) at 100, truth
# inside the interval for 12/12 candidate differences at both (the interval is widened towards DR's value).
SWITCH = 100.0
# The gate's "is the log big enough?" counts the titles the log shows the policy through — the logging policy's
# own and its near-pool exploration (weights up to EXPLORED) — whatever SWITCH-DR then does with them.
EXPLORED = 1000.0
# DR's reward model: shallow gradient boosting. In bench_yardstick (default world, 6 scenario sets) it orders the
# five policies as the truth does with Kendall τ ≥ 0.8 in every set; the logistic regression reached 0.6 in one.
REWARD_MODEL = "boosting"
RATING_PRIOR_VOTES = 5    # a title's mean rating is shrunk towards the catalogue's as if it had 5 more votes


# ------------------------------------------------------------------ policies
@dataclass
class RankingPolicy:
    """One ranking for everyone (the Top 50, popularity): each user gets its first k unseen titles."""

    name: str
    ranking: list[int]

    def lists(self, user_ids, seen: dict, k: int) -> dict[int, list[int]]:
        return {int(u): [m for m in self.ranking if m not in seen.get(int(u), ())][:k] for u in user_ids}


@dataclass
class ModelPolicy:
    """A fitted CF model (`core.training.models`) over its training matrix; users it does not know get the
    fallback ranking, as serving gives them the Top 50."""

    name: str
    model: object
    matrix: object            # dataset.Matrix the model was fitted on
    key: bytes                # the pseudonymization key of the matrix's user keys
    fallback: RankingPolicy

    def at_day(self, day: str) -> None:
        if hasattr(self.fallback, "at_day"):
            self.fallback.at_day(day)

    def pair_scores(self, user_ids: np.ndarray, movie_ids: np.ndarray) -> np.ndarray:
        """(n, 2): the model's score of each (user, title) pair and 1 where it can score it (0, 0 where the user
        or the title is unknown to it, or the model has no factors)."""
        out = np.zeros((len(user_ids), 2))
        users_f, items_f = getattr(self.model, "user_factors_", None), getattr(self.model, "item_factors_", None)
        if users_f is None or items_f is None or not len(user_ids):
            return out
        uniq = np.unique(np.asarray(user_ids, dtype=np.int64))
        keys = pseudonymize(pd.Series(uniq, dtype="int64"), self.key)
        index = self.matrix.user_index
        row_of = dict(zip(uniq.tolist(), (index.get(k, -1) for k in keys)))
        col_of = {int(m): c for c, m in enumerate(self.matrix.movie_ids)}
        rows = np.array([row_of[int(u)] for u in user_ids])
        cols = np.array([col_of.get(int(m), -1) for m in movie_ids])
        ok = (rows >= 0) & (cols >= 0)
        out[ok, 0] = np.einsum("ij,ij->i", np.asarray(users_f)[rows[ok]], np.asarray(items_f)[cols[ok]])
        out[ok, 1] = 1.0
        return out

    def lists(self, user_ids, seen: dict, k: int) -> dict[int, list[int]]:
        user_ids = [int(u) for u in user_ids]
        index = self.matrix.user_index
        keys = pseudonymize(pd.Series(user_ids, dtype="int64"), self.key)
        rows = {u: index.get(kk) for u, kk in zip(user_ids, keys)}
        known = [u for u in user_ids if rows[u] is not None]
        out = self.fallback.lists([u for u in user_ids if rows[u] is None], seen, k)
        if known:
            cols = {int(m): c for c, m in enumerate(self.matrix.movie_ids)}
            r, c = [], []
            for u in known:
                for m in seen.get(u, ()):
                    if m in cols:
                        r.append(rows[u]); c.append(cols[m])  # noqa: E702
            shape = self.matrix.user_items.shape
            seen_csr = sp.csr_matrix((np.ones(len(r), dtype=np.float32), (r, c)), shape=shape)
            # As serving does: the titles of the model's own matrix are filtered too (a click without a watch is
            # in it, and serving never shows it again).
            seen_csr = (seen_csr + (self.matrix.user_items > 0).astype(np.float32)).tocsr()
            ids, _ = self.model.recommend(np.array([rows[u] for u in known]), seen_csr, k)
            for u, row in zip(known, ids):
                out[u] = [int(self.matrix.movie_ids[i]) for i in row if i >= 0]
        return out


# ------------------------------------------------------------------ the log
@dataclass
class ExplorationLog:
    """Logged lists with propensities in a window, joined with what their users watched that day.

    lists: list_index, user_id, served_at, day (the UTC day start, text), policy, path, size;
    items: list_index, user_id, day, movie_id, slate_p (P(title in list) under the logging policy), reward (0/1)."""

    start: str
    end: str
    lists: pd.DataFrame
    items: pd.DataFrame

    @property
    def n_lists(self) -> int:
        return len(self.lists)

    def summary(self) -> dict:
        explore = int((self.lists["policy"] == "explore").sum()) if len(self.lists) else 0
        return {"start": self.start, "end": self.end, "lists": self.n_lists, "exploring_lists": explore,
                "items": len(self.items), "rewards": int(self.items["reward"].sum()) if len(self.items) else 0}


def load_log(settings, start: str, end: str) -> ExplorationLog:
    """The lists shown in [start, end) that carry propensities (older lists are skipped), with rewards."""
    with opsdb.session(settings) as db:
        frame = servinglog.logged_between(db, start, end)
        frame = frame[frame["slate_propensities"].notna()].reset_index(drop=True)
        days = sorted({str(t)[:10] for t in frame["served_at"]})
        watched = []
        for day in days:
            nxt = (pd.Timestamp(day) + pd.Timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%S")
            watched += [(u, m, day) for u, m in opsdb.watches_between(db, f"{day}T00:00:00", nxt)]
    lists = frame[["user_id", "served_at", "policy", "path"]].copy()
    lists.insert(0, "list_index", np.arange(len(lists)))
    lists["day"] = lists["served_at"].str.slice(0, 10)
    movies = frame["movie_ids"].map(json.loads)
    props = frame["slate_propensities"].map(json.loads)
    lists["size"] = movies.map(len).to_numpy()
    items = pd.DataFrame({"list_index": np.repeat(lists["list_index"].to_numpy(), lists["size"]),
                          "movie_id": np.fromiter((m for ms in movies for m in ms), dtype=np.int64),
                          "slate_p": np.fromiter((p for ps in props for p in ps), dtype=float)})
    items["user_id"] = lists["user_id"].to_numpy()[items["list_index"]]
    items["day"] = lists["day"].to_numpy()[items["list_index"]]
    hits = pd.DataFrame(watched, columns=["user_id", "movie_id", "day"]).drop_duplicates()
    hits["reward"] = 1.0
    items = items.merge(hits, on=["user_id", "movie_id", "day"], how="left")
    items["reward"] = items["reward"].fillna(0.0)
    return ExplorationLog(start, end, lists, items)


# ------------------------------------------------------------------ features (for DR's reward model)
@dataclass
class DayContext:
    """What every policy and the reward model need to know about one logged day."""

    seen: dict                    # user → titles watched or rated before the day
    genre_share: dict             # user → (G,) share of their past watches per genre
    popularity: dict              # title → watches in the POPULARITY_DAYS before the day
    top50: set
    movie_genres: dict = field(default_factory=dict)   # title → (G,) 0/1
    mean_rating: dict = field(default_factory=dict)    # title → shrunk mean rating
    prior_rating: float = 5.5


def day_context(settings, day: str, top50: list[int], movie_genres: dict) -> DayContext:
    at = f"{day}T00:00:00"
    since = (pd.Timestamp(day) - pd.Timedelta(days=POPULARITY_DAYS)).strftime("%Y-%m-%dT%H:%M:%S")
    with opsdb.session(settings) as db:
        seen = opsdb.seen_before(db, at)
        recent = opsdb.watches_between(db, since, at)
    zero = np.zeros(len(GENRES))
    shares = {}
    for u, titles in seen.items():
        total = sum((movie_genres.get(m, zero) for m in titles), zero.copy())
        shares[u] = total / total.sum() if total.sum() else total
    popularity = pd.Series([m for _, m in recent], dtype="int64").value_counts().to_dict() if recent else {}
    with opsdb.session(settings) as db:
        votes = opsdb.movie_votes(db)
    prior = float(votes["rating_sum"].sum() / max(votes["votes"].sum(), 1)) if len(votes) else 5.5
    shrunk = (votes["rating_sum"] + RATING_PRIOR_VOTES * prior) / (votes["votes"] + RATING_PRIOR_VOTES)
    return DayContext(seen, shares, popularity, set(top50), movie_genres,
                      dict(zip(votes["movie_id"].astype(int), shrunk.astype(float))), prior)


def genre_vectors(settings) -> dict[int, np.ndarray]:
    with opsdb.session(settings) as db:
        genres = opsdb.movie_genres(db)
    out = {}
    for m, text in genres.items():
        v = np.zeros(len(GENRES))
        for g in (text or "").split("|"):
            if g in GENRE_INDEX:
                v[GENRE_INDEX[g]] = 1.0
        out[int(m)] = v / max(v.sum(), 1.0)
    return out


N_ITEM_FEATURES = 4       # the policy-free columns; each scoring model adds 2 (its score, whether it could score)
REWARD_SCORES = "none"        # whose model scores the reward model reads: "none", the "reference" policy's, "all" models'


def features(ctx: DayContext, users: np.ndarray, movies: np.ndarray, scorer=None) -> np.ndarray:
    """(n, 4 + 2·S): genre affinity, log1p(recent watches), in the day's Top 50, mean rating (shrunk towards the
    catalogue's), then for each of the S scoring models (`scorer`: one model policy, a sequence of them, or
    None) its score and whether it could score the pair — for (user, title) pairs."""
    scorers = [] if scorer is None else list(scorer) if isinstance(scorer, (list, tuple)) else [scorer]
    zero = np.zeros(len(GENRES))
    if not len(movies):
        return np.zeros((0, N_ITEM_FEATURES + 2 * len(scorers)))
    affinity = np.array([float(ctx.genre_share.get(int(u), zero) @ ctx.movie_genres.get(int(m), zero))
                         for u, m in zip(users, movies)])
    popularity = np.log1p(np.array([ctx.popularity.get(int(m), 0) for m in movies], dtype=float))
    top = np.array([int(m) in ctx.top50 for m in movies], dtype=float)
    rating = np.array([ctx.mean_rating.get(int(m), ctx.prior_rating) for m in movies], dtype=float)
    return np.column_stack([affinity, popularity, top, rating] + [s.pair_scores(users, movies) for s in scorers])


# ------------------------------------------------------------------ evaluation
def evaluate(settings, log: ExplorationLog, policies: dict, reference: str | None = None, *,
             top50_by_day: dict | None = None, k: int = DEFAULT_K, seed: int = 42, n_boot: int = 1000,
             clip: float | None = None, switch: float = SWITCH, reward_model: str = REWARD_MODEL,
             reward_scores: str = REWARD_SCORES) -> dict:
    """Each policy's value (watches per list) by IPS, SNIPS and DR on the same logged lists, and every policy
    against `reference` (paired). `top50_by_day`: {day: Top 50 ids} for the reward model's feature and the
    fallback (default: none). Returns {"log": summary, "policies": {name: {estimator: Estimate dict}},
    "comparisons": {name: {estimator: Comparison dict}}} (comparisons only with a reference)."""
    names = list(policies)
    if reward_scores == "reference":
        scorer = [policies[reference]] if isinstance(policies.get(reference), ModelPolicy) else []
    elif reward_scores == "all":
        scorer = [p for p in policies.values() if isinstance(p, ModelPolicy)]
    elif reward_scores == "none":
        scorer = []
    else:
        raise ValueError(f"unknown reward_scores {reward_scores!r}; choose one of: reference, all, none")
    n = log.n_lists
    if n == 0:
        raise ValueError("no logged lists with propensities in the window: nothing to evaluate on")
    items = log.items
    genres = genre_vectors(settings)
    target = {name: np.zeros(len(items)) for name in names}
    direct = {name: np.zeros(n) for name in names}
    reward_hat_X = np.zeros((len(items), N_ITEM_FEATURES + 2 * len(scorer)))
    direct_X: dict[str, list] = {name: [] for name in names}
    for day, day_lists in log.lists.groupby("day"):
        for policy in policies.values():       # a policy that changes by day (a daily ranking) hears of it
            if hasattr(policy, "at_day"):
                policy.at_day(day)
        ctx = day_context(settings, day, (top50_by_day or {}).get(day, []), genres)
        users = day_lists["user_id"].to_numpy()
        at = items["day"].to_numpy() == day
        reward_hat_X[at] = features(ctx, items.loc[at, "user_id"].to_numpy(), items.loc[at, "movie_id"].to_numpy(),
                                    scorer)
        for name in names:
            shown = policies[name].lists(users, ctx.seen, k)
            members = {(int(u), int(m)) for u, ms in shown.items() for m in ms}
            target[name][at] = [(int(u), int(m)) in members for u, m in
                                zip(items.loc[at, "user_id"], items.loc[at, "movie_id"])]
            idx = day_lists["list_index"].to_numpy()
            pairs = [(i, u, m) for i, u in zip(idx, users) for m in shown.get(int(u), [])]
            if pairs:
                li, pu, pm = (np.array(x) for x in zip(*pairs))
                direct_X[name].append((li, features(ctx, pu, pm, scorer)))
    model = counterfactual.fit_reward_model(reward_hat_X, items["reward"].to_numpy(), seed, kind=reward_model)
    reward_hat = model.predict(reward_hat_X)
    for name in names:
        for li, X in direct_X[name]:
            np.add.at(direct[name], li, model.predict(X))
    args = (items["list_index"].to_numpy(), items["reward"].to_numpy(), items["slate_p"].to_numpy())
    opts = dict(clip=clip, seed=seed, n_boot=n_boot)
    out = {"log": log.summary(), "policies": {}, "comparisons": {}, "clip": clip}
    zeros = np.zeros(len(items))
    logging_p = items["slate_p"].to_numpy()

    def switched(target_p: np.ndarray, threshold: float = switch) -> np.ndarray:
        """SWITCH-DR (Wang, Agarwal & Dudík 2017): no correction where the weight exceeds `threshold`, so a title
        the log shows once in thousands of lists is valued by the reward model, not by one lucky watch."""
        return np.where(target_p / logging_p > threshold, 0.0, target_p)

    # Kish ESS of each policy's logged titles with weights up to EXPLORED: how much the log shows of it.
    out["explored_ess"] = {name: counterfactual.effective_sample_size(switched(target[name], EXPLORED) / logging_p)
                           for name in names}

    for name in names:
        out["policies"][name] = {
            "ips": counterfactual.ips(*args, target[name], n, **opts).to_dict(),
            "snips": counterfactual.snips(*args, target[name], n, target_size=k, **opts).to_dict(),
            "dr": counterfactual.doubly_robust(*args, target[name], n, reward_hat=reward_hat, direct=direct[name],
                                               **opts).to_dict(),
            "switch": counterfactual.doubly_robust(*args, switched(target[name]), n, reward_hat=reward_hat,
                                                   direct=direct[name], **opts).to_dict(),
            # The reward model alone (DR without its correction): biased where the model is wrong, never noisy.
            "dm": counterfactual.doubly_robust(*args, zeros, n, reward_hat=reward_hat, direct=direct[name],
                                               **opts).to_dict()}
        # SWITCH-DR's interval also allows for its bias: widened towards DR's unbiased value by the gap.
        out["policies"][name]["switch"] = counterfactual.widen_for_bias(out["policies"][name]["switch"],
                                                                        out["policies"][name]["dr"]["value"])
    if reference is not None:
        for name in names:
            if name == reference:
                continue
            out["comparisons"][name] = {
                est: counterfactual.compare(est, *args, target[name], target[reference], n, reward_hat=reward_hat,
                                            direct_candidate=direct[name], direct_baseline=direct[reference],
                                            target_size=k, **opts).to_dict()
                for est in ESTIMATORS}
            out["comparisons"][name]["switch"] = counterfactual.widen_for_bias(counterfactual.compare(
                "dr", *args, switched(target[name]), switched(target[reference]), n, reward_hat=reward_hat,
                direct_candidate=direct[name], direct_baseline=direct[reference], target_size=k, **opts).to_dict(),
                out["comparisons"][name]["dr"]["value"])
            out["comparisons"][name]["dm"] = counterfactual.compare(
                "dr", *args, zeros, zeros, n, reward_hat=reward_hat, direct_candidate=direct[name],
                direct_baseline=direct[reference], target_size=k, **opts).to_dict()
    return out


# ------------------------------------------------------------------ the gate's yardstick
def yardstick(settings, log: ExplorationLog, policies: dict, *, reference: str = "production",
              candidate: str = "candidate", baselines: tuple = ("popularity", "top50"), seed: int = 42,
              n_boot: int = 1000, top50_by_day: dict | None = None) -> dict:
    """What the gate reads: the best estimator's (`BEST`) candidate − reference interval, each policy's value,
    and the effective sample size that says whether the log is big enough to trust them.

    ESS is the smaller of the candidate's and the reference's Kish ESS over the logged titles' weights up to
    `EXPLORED` (counterfactual.effective_sample_size; evaluate's `explored_ess`): the titles the logging policy
    showed and its near-pool exploration, the part of the log that shows a policy's own choices — with no
    exploration, a candidate that differs from production has a small ESS however many lists the log holds."""
    result = evaluate(settings, log, policies, reference, seed=seed, n_boot=n_boot, top50_by_day=top50_by_day)
    return yardstick_of(result, list(policies), window=[log.start, log.end], reference=reference,
                        candidate=candidate, baselines=baselines)


def yardstick_of(result: dict, policies: list, *, window: list, reference: str = "production",
                 candidate: str = "candidate", baselines: tuple = ("popularity", "top50")) -> dict:
    """The gate's input from an `evaluate` result (what `yardstick` returns; the benchmark asks it too)."""
    cmp = result["comparisons"][candidate][BEST]
    explored = result.get("explored_ess")
    ess = float(min(explored[candidate], explored[reference]) if explored
                else min(cmp["ess_candidate"], cmp["ess_baseline"]))
    return {"estimator": BEST, "window": window, "log": result["log"], "ess": ess,
            "point": cmp["value"], "lo": cmp["lo"], "hi": cmp["hi"], "level": cmp["level"],
            "values": {name: result["policies"][name][BEST]["value"] for name in policies},
            "intervals": {name: [result["policies"][name][BEST]["lo"], result["policies"][name][BEST]["hi"]]
                          for name in policies},
            "baselines": [b for b in baselines if b in policies], "reference": reference, "candidate": candidate,
            "all_estimators": {name: {est: {k: v[k] for k in ("value", "lo", "hi", "ess")}
                                      for est, v in result["policies"][name].items()} for name in policies}}
