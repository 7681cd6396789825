"""Metrics of click probabilities, pure functions over arrays: log loss, ROC AUC, expected calibration error and
the expected revenue of the selection a predictor drives. The ads model, its baseline and the production model are
all judged with these on the same holdout.
"""
from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score

ECE_BINS = 10
EPS = 1e-15


def log_loss(y, p) -> float:
    """Mean binary cross-entropy −mean(y·ln p + (1−y)·ln(1−p)), p clipped to [1e-15, 1 − 1e-15]; range [0, ∞),
    lower is better. Empty input: NaN."""
    y, p = np.asarray(y, dtype=float), np.clip(np.asarray(p, dtype=float), EPS, 1 - EPS)
    if not len(y):
        return float("nan")
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def calibration_bins(y, p, bins: int = ECE_BINS) -> dict:
    """Equal-width bins over [0, 1] (bin b holds b/bins ≤ p < (b+1)/bins, p = 1 in the last): per bin the row
    count, mean predicted probability and observed click rate (None for empty bins)."""
    y, p = np.asarray(y, dtype=float), np.asarray(p, dtype=float)
    b = np.minimum((p * bins).astype(int), bins - 1)
    n = np.bincount(b, minlength=bins)
    sum_p, sum_y = np.bincount(b, p, minlength=bins), np.bincount(b, y, minlength=bins)
    def mean(s):
        return [None if k == 0 else round(float(v / k), 6) for v, k in zip(s, n)]
    return {"rows": n.tolist(), "predicted": mean(sum_p), "observed": mean(sum_y)}


def expected_calibration_error(y, p, bins: int = ECE_BINS) -> float:
    """ECE = Σ_b (n_b / N) · |mean p in b − click rate in b| over `bins` equal-width bins of [0, 1] (Naeini et
    al. 2015); range [0, 1], 0 = calibrated. Empty input: NaN."""
    y, p = np.asarray(y, dtype=float), np.asarray(p, dtype=float)
    if not len(y):
        return float("nan")
    b = np.minimum((p * bins).astype(int), bins - 1)
    n = np.bincount(b, minlength=bins)
    gap = np.abs(np.bincount(b, p, minlength=bins) - np.bincount(b, y, minlength=bins))   # = n_b · |mean p − rate|
    return float(gap.sum() / n.sum())


def expected_revenue(list_ids, bids, p_click, p_value=None) -> float:
    """Expected revenue of a selection: in each list the candidate with the highest bid × p_click wins (ties: the
    first candidate), and earns bid × p on a click, p = `p_value` of the winner (default its own p_click).

    list_ids, bids, p_click, p_value: arrays of one value per candidate (list, campaign) pair, any order.
    Returns Σ over lists of bid_winner × p_winner, in currency units (≥ 0). The price is the bid, an upper
    bound of what a second-price auction charges. With p_value = p_click this is the revenue the selector
    itself expects; it is only as good as its calibration (pass another model's or the world's probabilities in
    p_value to value one selection with another's beliefs). Shared by core/ads/auction.py's ranking rule."""
    list_ids, bids = np.asarray(list_ids), np.asarray(bids, dtype=float)
    p_click = np.asarray(p_click, dtype=float)
    p_value = p_click if p_value is None else np.asarray(p_value, dtype=float)
    if not len(list_ids):
        return 0.0
    score = bids * p_click
    order = np.lexsort((np.arange(len(score)), -score, list_ids))     # by list, best score first, stable
    first = np.ones(len(order), dtype=bool)
    first[1:] = list_ids[order][1:] != list_ids[order][:-1]
    winners = order[first]
    return float(np.sum(bids[winners] * p_value[winners]))


def scores(y, p) -> dict:
    """log_loss, roc_auc (None with one class only), calibration_error (ECE, 10 bins), the calibration bins,
    mean predicted vs observed click rate, rows and clicks."""
    y, p = np.asarray(y, dtype=int), np.asarray(p, dtype=float)
    both = 0 < y.sum() < len(y)
    return {"log_loss": log_loss(y, p), "roc_auc": float(roc_auc_score(y, p)) if both else None,
            "calibration_error": expected_calibration_error(y, p),
            "click_rate": float(y.mean()) if len(y) else None, "mean_predicted": float(p.mean()) if len(p) else None,
            "rows": int(len(y)), "clicks": int(y.sum()), "calibration": calibration_bins(y, p)}
