"""Ranking metrics at k for top-k recommendation lists (Microsoft Recommenders style).

Every function is pure and takes

- ``recommended``: a 2-D int array (n_users × ≥k) or a list of lists of item ids,
  best first. ``-1`` is padding (fewer than k recommendations) and never counts.
  Only the first ``k`` entries of each list are used. Lists are expected to hold
  distinct items; a repeated item counts as a hit only at its first position.
- ``relevant``: a list (same length) of sets of held-out item ids.

Relevance is binary. Users whose relevant set is empty are **skipped** (they
cannot have a hit, and recall/nDCG/MAP are undefined for them); the accuracy
metrics are means over the remaining users, and ``nan`` when no user remains.
Coverage and novelty describe the lists themselves and use every list.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from core.constants import DEFAULT_K

PAD = -1


def _as_matrix(recommended, k: int) -> np.ndarray:
    """n × k int64 matrix of the first k items per list, padded with -1."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if isinstance(recommended, np.ndarray) and recommended.ndim == 2:
        out = np.full((recommended.shape[0], k), PAD, dtype=np.int64)
        width = min(k, recommended.shape[1])
        out[:, :width] = recommended[:, :width]
        out[out < 0] = PAD
        return out
    out = np.full((len(recommended), k), PAD, dtype=np.int64)
    for row, items in enumerate(recommended):
        items = list(items)[:k]
        out[row, : len(items)] = items
    out[out < 0] = PAD  # any negative id is padding
    return out


def _hits(recommended, relevant: Sequence[set], k: int) -> tuple[np.ndarray, np.ndarray]:
    """(hits, n_relevant) for the users with a non-empty relevant set.

    hits: bool (n_evaluated × k), True where the item at that rank is relevant
    (first occurrence only; padding is never a hit). n_relevant: |relevant| per user.
    """
    rec = _as_matrix(recommended, k)
    if len(relevant) != rec.shape[0]:
        raise ValueError(f"recommended has {rec.shape[0]} lists but relevant has {len(relevant)} sets")
    n_rel = np.fromiter((len(r) for r in relevant), dtype=np.int64, count=len(relevant))
    keep = n_rel > 0
    rec, n_rel = rec[keep], n_rel[keep]
    rel_sets = [r for r, kept in zip(relevant, keep) if kept]
    if not rel_sets:
        return np.zeros((0, k), dtype=bool), n_rel
    # Encode (user, item) as one integer so a single np.isin checks every list at once.
    rel_users = np.repeat(np.arange(len(rel_sets)), n_rel)
    rel_items = np.fromiter((i for r in rel_sets for i in r), dtype=np.int64, count=int(n_rel.sum()))
    width = int(max(rec.max(initial=0), rel_items.max(initial=0))) + 2  # +2 makes room for PAD → 0 after shift
    rel_keys = rel_users * width + (rel_items + 1)
    rec_keys = np.arange(rec.shape[0])[:, None] * width + (rec + 1)
    hits = np.isin(rec_keys, rel_keys) & (rec != PAD)
    # A repeated item counts only at its first position.
    flat = rec_keys.ravel()
    _, first = np.unique(flat, return_index=True)
    first_mask = np.zeros(flat.size, dtype=bool)
    first_mask[first] = True
    return hits & first_mask.reshape(rec.shape), n_rel


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if values.size else float("nan")


def _discounts(k: int) -> np.ndarray:
    return 1.0 / np.log2(np.arange(2, k + 2))  # rank i (1-based) → 1 / log2(i + 1)


# Per-user formulas on (hits: n × k bool, n_rel: n ints ≥ 1); shared by the functions and evaluate_lists.
def _precision(hits, n_rel, k):
    return hits.sum(axis=1) / k


def _recall(hits, n_rel, k):
    return hits.sum(axis=1) / n_rel


def _ndcg(hits, n_rel, k):
    disc = _discounts(k)
    return (hits @ disc) / np.cumsum(disc)[np.minimum(n_rel, k) - 1]


def _ap(hits, n_rel, k):
    prec_at_i = np.cumsum(hits, axis=1) / np.arange(1, k + 1)
    return (prec_at_i * hits).sum(axis=1) / np.minimum(n_rel, k)


def _hit(hits, n_rel, k):
    return hits.any(axis=1).astype(float)


def precision_at_k(recommended, relevant: Sequence[set], k: int = DEFAULT_K) -> float:
    """Mean of |top-k ∩ relevant| / k over users with relevant items; range [0, 1].

    The denominator is always k: a list shorter than k (padding) is penalised.
    """
    return _mean(_precision(*_hits(recommended, relevant, k), k))


def recall_at_k(recommended, relevant: Sequence[set], k: int = DEFAULT_K) -> float:
    """Mean of |top-k ∩ relevant| / |relevant| over users with relevant items; range [0, 1].

    The denominator is |relevant| (not min(|relevant|, k)), so a user with more
    than k held-out items cannot reach 1.
    """
    return _mean(_recall(*_hits(recommended, relevant, k), k))


def ndcg_at_k(recommended, relevant: Sequence[set], k: int = DEFAULT_K) -> float:
    """Mean nDCG@k with binary relevance; range [0, 1].

    DCG@k = Σ_{i=1..k} rel_i / log2(i + 1); IDCG@k = Σ_{i=1..min(|relevant|, k)} 1 / log2(i + 1);
    nDCG@k = DCG@k / IDCG@k (Järvelin & Kekäläinen 2002).
    """
    return _mean(_ndcg(*_hits(recommended, relevant, k), k))


def map_at_k(recommended, relevant: Sequence[set], k: int = DEFAULT_K) -> float:
    """Mean average precision at k; range [0, 1].

    AP@k = (1 / min(|relevant|, k)) · Σ_{i=1..k} P@i · rel_i, with P@i the precision
    of the first i items; MAP@k is its mean over users with relevant items.
    """
    return _mean(_ap(*_hits(recommended, relevant, k), k))


def hit_rate_at_k(recommended, relevant: Sequence[set], k: int = DEFAULT_K) -> float:
    """Share of users with at least one relevant item in their top k; range [0, 1]; ≥ precision@k."""
    return _mean(_hit(*_hits(recommended, relevant, k), k))


def catalog_coverage(recommended, n_items: int, k: int = DEFAULT_K) -> float:
    """Distinct items in any top-k list / n_items; range [0, 1] (padding ignored)."""
    if n_items < 1:
        raise ValueError(f"n_items must be at least 1, got {n_items}")
    rec = _as_matrix(recommended, k)
    return len(np.unique(rec[rec != PAD])) / n_items


def novelty(recommended, item_popularity, n_users: int, k: int = DEFAULT_K) -> float:
    """Mean self-information of recommended items: mean of -log2(pop_i / n_users).

    pop_i is the item's interaction count (``item_popularity[i]``), clipped to
    [1, n_users] so an item nobody interacted with counts as seen once and the value
    stays finite; range [0, log2(n_users)]. Higher means less popular (more novel)
    picks (Zhou et al. 2010). Padding is ignored; ``nan`` when no item was recommended.
    """
    if n_users < 1:
        raise ValueError(f"n_users must be at least 1, got {n_users}")
    rec = _as_matrix(recommended, k)
    items = rec[rec != PAD]
    if not items.size:
        return float("nan")
    pop = np.clip(np.asarray(item_popularity, dtype=float)[items], 1, n_users)
    return float(np.mean(-np.log2(pop / n_users)))


def ndcg_per_user(recommended, relevant: Sequence[set], k: int = DEFAULT_K) -> np.ndarray:
    """nDCG@k of each user with a non-empty relevant set, in input order (what a paired comparison resamples)."""
    hits, n_rel = _hits(recommended, relevant, k)
    return _ndcg(hits, n_rel, k) if n_rel.size else np.zeros(0)


def evaluate_lists(recommended, relevant: Sequence[set], n_items: int, item_popularity, n_users: int,
                   k: int = DEFAULT_K) -> dict:
    """Every metric at once: ``precision@k``, ``recall@k``, ``ndcg@k``, ``map@k``, ``hit_rate@k``,
    ``coverage``, ``novelty`` and ``users_evaluated`` (users with a non-empty relevant set)."""
    rec = _as_matrix(recommended, k)
    hits, n_rel = _hits(rec, relevant, k)
    out = {f"{name}@{k}": _mean(fn(hits, n_rel, k))
           for name, fn in (("precision", _precision), ("recall", _recall), ("ndcg", _ndcg),
                            ("map", _ap), ("hit_rate", _hit))}
    out["coverage"] = catalog_coverage(rec, n_items, k)
    out["novelty"] = novelty(rec, item_popularity, n_users, k)
    out["users_evaluated"] = int(n_rel.size)
    return out


# Online quality (core.monitoring): the same per-user formulas over every served list.
def _dense(recommended, relevant: Sequence[set], k: int) -> tuple[np.ndarray, list[set]]:
    """Lists and relevant sets with raw item ids (catalog ids, up to 2**53) renumbered 0..n-1, so the
    (user, item) keys of `_hits` cannot overflow; padding stays padding."""
    rec = _as_matrix(recommended, k)
    rel_items = np.fromiter((i for r in relevant for i in r), dtype=np.int64)
    items = np.unique(np.concatenate([rec[rec != PAD], rel_items]))
    dense = np.where(rec == PAD, PAD, np.searchsorted(items, rec))
    return dense, [set(np.searchsorted(items, np.fromiter(r, dtype=np.int64, count=len(r))).tolist()) for r in relevant]


def _over_all_lists(formula, recommended, relevant: Sequence[set], k: int) -> float:
    """Mean of a per-user formula over every list; a user whose relevant set is empty scores 0 (not skipped)."""
    rec, rel = _dense(recommended, relevant, k)
    values = np.zeros(rec.shape[0])
    has_relevant = np.fromiter((len(r) > 0 for r in rel), dtype=bool, count=len(rel))
    hits, n_rel = _hits(rec, rel, k)
    values[has_relevant] = formula(hits, n_rel, k)
    return _mean(values)


def hit_rate_all_users_at_k(recommended, relevant: Sequence[set], k: int = DEFAULT_K) -> float:
    """Share of ALL lists with at least one relevant item in their top k; range [0, 1]; ``nan`` without lists.

    hit_rate_at_k's formula with another denominator: a user whose relevant set is empty counts as a miss
    instead of being skipped, so this is hit_rate_at_k × (users with a relevant item / all users). Online, the
    relevant set is what a served user watched that day, and a user who watched nothing was still shown the
    list: the question is "how many of the lists we showed led to a watch", asked of everyone served.
    Item ids may be raw catalog ids (renumbered internally).
    """
    return _over_all_lists(_hit, recommended, relevant, k)


def precision_all_users_at_k(recommended, relevant: Sequence[set], k: int = DEFAULT_K) -> float:
    """Mean of |top-k ∩ relevant| / k over ALL lists (an empty relevant set scores 0, not skipped); range [0, 1].

    precision_at_k with the denominator of hit_rate_all_users_at_k (see there).
    """
    return _over_all_lists(_precision, recommended, relevant, k)
