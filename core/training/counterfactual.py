"""Off-policy (counterfactual) evaluation of top-k lists from logs with known propensities.

Why: a candidate ranker can be valued on the lists production already served, without an A/B test, because
the logging policy explores (each slot of its list is swapped, with a known probability, for a reserve item)
and logs every shown item's exact marginal probability of being in the slate.

Assumption — independent items (Li et al. 2018, "Offline evaluation of ranking policies with click models";
the item-position family IIPS of Open Bandit Pipeline, Saito et al. 2021): a list's value is the sum of its
items' rewards, and an item's expected reward depends only on (context, item), not on its position nor on the
other items shown. Then  V(target) = E_x sum_a P_target(a in slate | x) E[r | x, a],  and the weight
w_ij = P_target_j / P_log_j of logged item j of list i gives  E[sum_{j in i} w_ij r_ij] = V_i  provided
P_log(a | x) > 0 for every item a the target may show (support; items outside it are silently valued 0).
What breaks it: items competing for attention — a watch of one title makes a watch of its neighbour less
likely (substitutes), the top slot is seen more (position bias), a list pleases by its mix. The per-item sum is
then biased and a slate-level estimator (OBP's SIPS, McInerney et al. 2020) is needed instead.

Input layout. Per logged ITEM (1-D arrays of one length n_items, one row per shown item):
    list_index  int in 0..n_lists-1, the logged list the row belongs to
    reward      float, e.g. 1 if the user watched the item
    logging_p   float in (0, 1], the logging policy's marginal P(item in slate | context)
    target_p    float in [0, 1], the target policy's P(item in slate | context); 0/1 for deterministic targets
    reward_hat  (DR only) the reward model's prediction for the row
Per LIST (length n_lists, DR only): direct_i = sum_a P_target(a in slate | x_i) * reward_hat(x_i, a).
n_lists is explicit: a list without rows counts as a zero-value list (its DR term is direct_i).

Every estimator is a ratio of per-list means, value = mean_i(num_i) / mean_i(den_i) (den_i = 1 but for SNIPS),
so `per_list_terms` feeds the point estimate, the bootstrap over lists and the paired comparison alike.
References: Saito et al. 2021, "Open Bandit Dataset and Pipeline" (OBP); Dudík, Langford & Li 2011, "Doubly
robust policy evaluation and learning"; Swaminathan & Joachims 2015 (self-normalized estimator).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from core.constants import DEFAULT_K, SEED

ESTIMATORS = ("ips", "snips", "dr")
DEFAULT_CLIP = 100.0       # w = 100 ⇔ the target shows an item the logging policy shows 1 time in 100
DEFAULT_LEVEL = 0.90
DEFAULT_N_BOOT = 1000
_CHUNK_ELEMENTS = 1 << 22  # resampled list indices held at once (32 MB of int64), whatever n_lists × n_boot is


@dataclass(frozen=True)
class ListTerms:
    """value = mean(num) / mean(den) over lists; `weights` are the clipped item weights w_ij."""
    num: np.ndarray      # (n_lists,)
    den: np.ndarray      # (n_lists,)
    weights: np.ndarray  # (n_items,)
    n_clipped: int       # item weights that hit the clip


@dataclass(frozen=True)
class Estimate:
    """One estimator's value of one target policy, with a percentile bootstrap interval over lists."""
    name: str
    value: float
    lo: float
    hi: float
    level: float
    ess: float
    n_lists: int
    n_items: int
    clip: float | None
    n_clipped: int
    n_boot: int
    seed: int

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Comparison:
    """Paired difference candidate − baseline: same estimator, same logs, the same resampled lists for both."""
    name: str
    value: float
    lo: float
    hi: float
    level: float
    value_candidate: float
    value_baseline: float
    ess_candidate: float
    ess_baseline: float
    n_lists: int
    n_items: int
    clip: float | None
    n_boot: int
    seed: int

    def to_dict(self) -> dict:
        return asdict(self)


# ------------------------------------------------------------------ validation
def _column(name: str, values, length: int, what: str = "list_index has") -> np.ndarray:
    if values is None:
        raise ValueError(f"{name} is required for this estimator")
    arr = np.asarray(values, dtype=float)
    if arr.ndim != 1 or arr.shape[0] != length:
        raise ValueError(f"{name} must be 1-D with {length} values ({what} {length}), got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} holds NaN or infinite values")
    return arr


def _logs(list_index, reward, logging_p, n_lists: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if isinstance(n_lists, bool) or not isinstance(n_lists, (int, np.integer)) or n_lists < 1:
        raise ValueError(f"n_lists must be a positive int (lists without rows count as zero), got {n_lists!r}")
    idx = np.asarray(list_index)
    if idx.ndim != 1 or idx.size == 0:
        raise ValueError(f"list_index must be a non-empty 1-D array (one row per shown item), got shape {idx.shape}")
    if not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"list_index must hold ints, got dtype {idx.dtype}")
    if idx.min() < 0 or idx.max() >= n_lists:
        raise ValueError(f"list_index must lie in 0..{n_lists - 1} (n_lists={n_lists}), got {idx.min()}..{idx.max()}")
    r = _column("reward", reward, idx.size)
    p_log = _column("logging_p", logging_p, idx.size)
    if np.any(p_log <= 0) or np.any(p_log > 1):
        raise ValueError("logging_p must lie in (0, 1]: an item shown with probability 0 cannot be reweighted")
    return idx.astype(np.int64), r, p_log


def _boot_options(level: float, n_boot: int) -> None:
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level!r}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1, got {n_boot!r}")


# ------------------------------------------------------------------ maths
def effective_sample_size(weights: np.ndarray) -> float:
    """Kish's ESS = (Σw)² / Σw² over the logged item weights; 0 when every weight is 0.

    Range 0..(number of nonzero weights), the top reached when they are all equal: how many logged items the
    estimate effectively rests on. A few huge weights drive it toward 1.
    """
    w = np.asarray(weights, dtype=float)
    sq = float(np.sum(w * w))
    return float(np.sum(w)) ** 2 / sq if sq > 0 else 0.0


def per_list_terms(estimator: str, list_index, reward, logging_p, target_p, n_lists: int, *, reward_hat=None,
                   direct=None, target_size: float | np.ndarray = DEFAULT_K,
                   clip: float | None = DEFAULT_CLIP) -> ListTerms:
    """Per-list (num, den) with value = Σ_i num_i / Σ_i den_i, and w_ij = min(target_p / logging_p, clip).

    ips:   num_i = Σ_j w_ij r_ij,                       den_i = 1
    snips: num_i = Σ_j w_ij r_ij,                       den_i = Σ_j w_ij / K_i
    dr:    num_i = direct_i + Σ_j w_ij (r_ij − r̂_ij),  den_i = 1
    K_i (`target_size`, scalar or per list) is the target's expected list size Σ_a P_target(a in slate | x_i),
    so E[den_i] = 1 under support (with clip=None). SNIPS is OBP's SNIIPS (r·w / mean w) generalised to lists of
    any size: with K logged rows per list and K_i = K the two coincide.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; available: {', '.join(ESTIMATORS)}")
    if clip is not None and not clip > 0:
        raise ValueError(f"clip must be positive or None (no clipping), got {clip!r}")
    idx, r, p_log = _logs(list_index, reward, logging_p, n_lists)
    p_tgt = _column("target_p", target_p, idx.size)
    if np.any(p_tgt < 0) or np.any(p_tgt > 1):
        raise ValueError("target_p must lie in [0, 1] (the target's probability of showing the item)")
    raw = p_tgt / p_log
    w = raw if clip is None else np.minimum(raw, clip)
    n_clipped = 0 if clip is None else int(np.sum(raw > clip))
    num = np.bincount(idx, weights=w * r, minlength=n_lists)
    den = np.ones(n_lists)
    if estimator == "snips":
        k = np.asarray(target_size, dtype=float)
        if k.ndim > 1 or k.size not in (1, n_lists) or not np.all(k > 0):
            raise ValueError(f"target_size must be one positive number or {n_lists} (one per list): the target's "
                             f"expected list size, got shape {k.shape}")
        den = np.bincount(idx, weights=w, minlength=n_lists) / k
    elif estimator == "dr":
        r_hat = _column("reward_hat", reward_hat, idx.size)
        d = _column("direct", direct, n_lists, what="n_lists is")
        num = d + np.bincount(idx, weights=w * (r - r_hat), minlength=n_lists)
    return ListTerms(num=num, den=den, weights=w, n_clipped=n_clipped)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, and 0 where den = 0 (SNIPS with no weight anywhere: no evidence, valued 0 as IPS does)."""
    return np.divide(num, den, out=np.zeros_like(num, dtype=float), where=den != 0)


def _value(terms: ListTerms) -> float:
    return float(_ratio(terms.num.sum(keepdims=True), terms.den.sum(keepdims=True))[0])


def _replicates(terms: list[ListTerms], n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, len(terms)) values on lists resampled with replacement; every column sees the SAME resamples.

    Chunks of resamples keep at most _CHUNK_ELEMENTS indices in memory; the draws are one stream, so the
    result does not depend on the chunk size.
    """
    n = terms[0].num.size
    rng = np.random.default_rng(seed)
    out = np.empty((n_boot, len(terms)))
    step = max(1, _CHUNK_ELEMENTS // n)
    for start in range(0, n_boot, step):
        rows = min(step, n_boot - start)
        idx = rng.integers(0, n, size=(rows, n))
        for col, t in enumerate(terms):
            out[start:start + rows, col] = _ratio(t.num[idx].sum(axis=1), t.den[idx].sum(axis=1))
    return out


def _bounds(reps: np.ndarray, level: float) -> tuple[float, float]:
    lo, hi = np.quantile(reps, [(1 - level) / 2, (1 + level) / 2])  # percentile bootstrap
    return float(lo), float(hi)


def _estimate(name: str, terms: ListTerms, clip: float | None, level: float, n_boot: int, seed: int) -> Estimate:
    _boot_options(level, n_boot)
    lo, hi = _bounds(_replicates([terms], n_boot, seed)[:, 0], level)
    return Estimate(name=name, value=_value(terms), lo=lo, hi=hi, level=level,
                    ess=effective_sample_size(terms.weights), n_lists=terms.num.size, n_items=terms.weights.size,
                    clip=clip, n_clipped=terms.n_clipped, n_boot=n_boot, seed=seed)


# ------------------------------------------------------------------ estimators
def ips(list_index, reward, logging_p, target_p, n_lists: int, *, clip: float | None = DEFAULT_CLIP,
        level: float = DEFAULT_LEVEL, n_boot: int = DEFAULT_N_BOOT, seed: int = SEED) -> Estimate:
    """Clipped IPS: (1/n_lists) Σ_i Σ_j min(target_p/logging_p, clip) r_ij. Unbiased under support, clip=None."""
    terms = per_list_terms("ips", list_index, reward, logging_p, target_p, n_lists, clip=clip)
    return _estimate("ips", terms, clip, level, n_boot, seed)


def snips(list_index, reward, logging_p, target_p, n_lists: int, *, target_size: float | np.ndarray = DEFAULT_K,
          clip: float | None = DEFAULT_CLIP, level: float = DEFAULT_LEVEL, n_boot: int = DEFAULT_N_BOOT,
          seed: int = SEED) -> Estimate:
    """Self-normalized IPS: Σ_i Σ_j w_ij r_ij / Σ_i (Σ_j w_ij / K_i). Biased O(1/n) but consistent; steadier."""
    terms = per_list_terms("snips", list_index, reward, logging_p, target_p, n_lists, target_size=target_size,
                           clip=clip)
    return _estimate("snips", terms, clip, level, n_boot, seed)


def doubly_robust(list_index, reward, logging_p, target_p, n_lists: int, *, reward_hat, direct,
                  clip: float | None = DEFAULT_CLIP, level: float = DEFAULT_LEVEL, n_boot: int = DEFAULT_N_BOOT,
                  seed: int = SEED) -> Estimate:
    """DR (Dudík et al. 2011): (1/n_lists) Σ_i [direct_i + Σ_j w_ij (r_ij − r̂_ij)].

    Unbiased if either the weights (support, clip=None) or the reward model are right; the model's error only
    has to be corrected, so its variance is lower than IPS's when r̂ is close to r.
    """
    terms = per_list_terms("dr", list_index, reward, logging_p, target_p, n_lists, reward_hat=reward_hat,
                           direct=direct, clip=clip)
    return _estimate("dr", terms, clip, level, n_boot, seed)


def compare(estimator: str, list_index, reward, logging_p, target_p_candidate, target_p_baseline, n_lists: int, *,
            reward_hat=None, direct_candidate=None, direct_baseline=None,
            target_size: float | np.ndarray = DEFAULT_K, clip: float | None = DEFAULT_CLIP,
            level: float = DEFAULT_LEVEL, n_boot: int = DEFAULT_N_BOOT, seed: int = SEED) -> Comparison:
    """Candidate − baseline on the same logged rows; both are re-valued on the SAME resampled lists, so what
    the two share (the users, the rewards) cancels and the interval is that of the difference itself."""
    def terms(target_p, direct) -> ListTerms:
        return per_list_terms(estimator, list_index, reward, logging_p, target_p, n_lists, reward_hat=reward_hat,
                              direct=direct, target_size=target_size, clip=clip)

    if estimator == "dr" and (direct_candidate is None or direct_baseline is None):
        raise ValueError("dr needs direct_candidate and direct_baseline: each policy's direct-method value per list")
    cand, base = terms(target_p_candidate, direct_candidate), terms(target_p_baseline, direct_baseline)
    _boot_options(level, n_boot)
    reps = _replicates([cand, base], n_boot, seed)
    lo, hi = _bounds(reps[:, 0] - reps[:, 1], level)
    v_cand, v_base = _value(cand), _value(base)
    return Comparison(name=estimator, value=v_cand - v_base, lo=lo, hi=hi, level=level, value_candidate=v_cand,
                      value_baseline=v_base, ess_candidate=effective_sample_size(cand.weights),
                      ess_baseline=effective_sample_size(base.weights), n_lists=cand.num.size,
                      n_items=cand.weights.size, clip=clip, n_boot=n_boot, seed=seed)


def widen_for_bias(estimate: dict, unbiased_value: float) -> dict:
    """A biased estimate's interval, widened on the side of an unbiased estimate of the same quantity by the gap
    between the two: the bootstrap sees only noise, and a SWITCH-DR (or DM) is off by its reward model's error
    on the titles it does not correct. The gap estimates that bias (noisily, so the allowance is conservative);
    the point stays where it was. Adds `bias_allowance` (the gap, ≥ 0) to a copy of `estimate`."""
    gap = float(unbiased_value) - float(estimate["value"])
    if not np.isfinite(gap):
        raise ValueError(f"unbiased_value must be finite, got {unbiased_value!r}")
    out = dict(estimate)
    if gap < 0:
        out["lo"] = float(estimate["lo"]) + gap
    else:
        out["hi"] = float(estimate["hi"]) + gap
    out["bias_allowance"] = abs(gap)
    return out


# ------------------------------------------------------------------ reward model for DR
@dataclass(frozen=True)
class ConstantModel:
    """Predicts one probability everywhere: all a model can learn from labels that never vary."""
    p: float

    def predict(self, X) -> np.ndarray:
        return np.full(len(X), self.p)


@dataclass(frozen=True)
class RewardModel:
    """Standardized logistic regression; predict(X) = P(reward = 1 | X) in [0, 1]."""
    pipeline: Pipeline

    def predict(self, X) -> np.ndarray:
        return self.pipeline.predict_proba(np.asarray(X, dtype=float))[:, 1]


REWARD_MODELS = ("logistic", "boosting")


def fit_reward_model(X, y, seed: int = SEED, kind: str = "logistic") -> RewardModel | ConstantModel:
    """Small seeded model of r̂(context, item) for DR. X: (n, d) features, y: (n,) 0/1 rewards.

    DR stays unbiased whatever the model's error (the weights correct it), but its variance and a SWITCH-DR's
    bias shrink as the model improves: `kind` 'logistic' (standardized logistic regression) or 'boosting'
    (scikit-learn's HistGradientBoostingClassifier, shallow, seeded: curved effects such as a score that
    matters only above some level). Labels that are all equal (nobody watched) give a ConstantModel.
    """
    X = np.asarray(X, dtype=float)
    y = np.asarray(y, dtype=float)
    if X.ndim != 2 or y.ndim != 1 or X.shape[0] != y.shape[0] or y.size == 0:
        raise ValueError(f"X must be (n, d) and y (n,) with n > 0, got shapes {X.shape} and {y.shape}")
    if not np.all((y == 0) | (y == 1)):
        raise ValueError("y must hold 0/1 rewards (the model predicts P(reward = 1))")
    if np.all(y == y[0]):
        return ConstantModel(p=float(y.mean()))
    if kind not in REWARD_MODELS:
        raise ValueError(f"unknown reward model {kind!r}; choose one of: {', '.join(REWARD_MODELS)}")
    if kind == "boosting":
        from sklearn.ensemble import HistGradientBoostingClassifier
        model = HistGradientBoostingClassifier(max_depth=3, max_iter=150, learning_rate=0.08, min_samples_leaf=40,
                                               random_state=seed)
    else:
        model = make_pipeline(StandardScaler(), LogisticRegression(random_state=seed, max_iter=1000))
    return RewardModel(pipeline=model.fit(X, y))
