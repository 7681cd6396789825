"""Evaluation in one place: the time-based holdout every comparison uses, scoring a model or a deployed bundle
on it (per user too, for the gate's paired bootstrap), the baselines, the gate's reference and staleness, and
scoring a registered version on the days after its training window only (no leakage).

`pipeline` trains and deploys; `gate` decides; this module measures — for the pipeline, the model card, the
Drift page and the CLI alike.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd

from core.warehouse import dataset, lake_dataset, warehouse
from core.training import metrics, registry
from core.store import servinglog
from core.training.artifacts import Bundle, load_bundle
from core.constants import DEFAULT_K
from core.errors import RetroError
from core.training.models import MODELS, PopularityRecommender, WeightedRatingRecommender
from core.settings import Settings
from core.training.top50 import rank_movies

HOLDOUT_DAYS = 3


def data_version_label(version: int | None) -> str | None:
    return None if version is None else f"dv{int(version)}"


def current_data_version(settings: Settings) -> str:
    with warehouse.session(settings) as con:
        v = warehouse.latest_version(con)
    if v is None:
        raise RetroError("the warehouse has no data version yet; run the ETL first (python -m core etl)")
    return data_version_label(v["version"])



def holdout_split(settings: Settings, holdout_days: int = HOLDOUT_DAYS,
                  weights: dataset.ConfidenceWeights = dataset.ConfidenceWeights(), start_after=None) -> dataset.Split:
    """The time-based split every comparison uses, without the titles the model itself served
    (`start_after`: only days after a model's training window, see `dataset.time_split`), read by the
    settings' engine (`lake_dataset.time_split` with Spark)."""
    split = lake_dataset.time_split if settings.engine == "spark" else dataset.time_split
    return split(settings, holdout_days, weights,
                 served_pairs=lambda a, b: servinglog.served_pairs(settings, a, b), start_after=start_after)


def full_matrix(settings: Settings, weights: dataset.ConfidenceWeights = dataset.ConfidenceWeights(),
                movie_ids: np.ndarray | None = None) -> dataset.Matrix:
    """All positive interactions (the data a deployed model is refit on), read by the settings' engine."""
    read = lake_dataset.full_matrix if settings.engine == "spark" else dataset.full_matrix
    return read(settings, weights, movie_ids)


def top50_columns(settings: Settings, split: dataset.Split) -> np.ndarray:
    """The Top 50 as the warehouse saw it at the split's cutoff, as item columns."""
    with warehouse.session(settings) as con:
        stats = dataset.rating_stats_before(con, split.cutoff)
    if stats.empty:
        return np.array([], dtype=np.int64)
    ranked, _, _ = rank_movies(stats)
    col = split.train.item_index
    return np.array([col[int(m)] for m in ranked["movie_id"] if int(m) in col], dtype=np.int64)


def score_lists(ids: np.ndarray, split: dataset.Split, users: np.ndarray, k: int, per_user: bool = False):
    relevant = [split.holdout[u] for u in users]
    popularity = np.asarray((split.train.user_items > 0).sum(axis=0)).ravel()
    scores = metrics.evaluate_lists(ids, relevant, split.train.user_items.shape[1], popularity,
                                    split.train.user_items.shape[0], k)
    return (scores, metrics.ndcg_per_user(ids, relevant, k)) if per_user else scores


def evaluate_model(model, split: dataset.Split, k: int = DEFAULT_K, *, per_user: bool = False):
    """Holdout metrics of a fitted model; with `per_user`, also each holdout user's nDCG@k (sorted user order)."""
    users = np.array(sorted(split.holdout), dtype=np.int64)
    if not len(users):
        raise RetroError("the holdout window has no users with new interactions; simulate more days or shorten it")
    ids, _ = model.recommend(users, split.train.user_items, k)
    return score_lists(ids, split, users, k, per_user)


def holdout_lists(bundle: Bundle, split: dataset.Split, users: np.ndarray, k: int = DEFAULT_K) -> tuple[np.ndarray, np.ndarray]:
    """(lists, known): the bundle's top-k for split rows `users` as split columns (-1 padded), skipping
    titles seen in the split's training window; `known` marks users the bundle has a row for."""
    lists = np.full((len(users), k), -1, dtype=np.int64)
    rows = np.array([bundle.user_row.get(split.train.user_keys[u], -1) for u in users], dtype=np.int64)
    known = rows >= 0
    if not known.any():
        return lists, known
    to_split = pd.Index(split.train.movie_ids).get_indexer(bundle.matrix.movie_ids)
    seen = split.train.user_items
    extra = int(np.diff(seen.indptr)[users[known]].max(initial=0))
    n = min(k + extra, bundle.matrix.user_items.shape[1])
    ids, _ = bundle.model.recommend(rows[known], bundle.matrix.user_items, n, filter_seen=False)
    for out_i, u, row_ids in zip(np.flatnonzero(known), users[known], ids):
        seen_cols = set(seen.indices[seen.indptr[u]:seen.indptr[u + 1]])
        cols = [c for c in to_split[row_ids[row_ids >= 0]] if c >= 0 and c not in seen_cols][:k]
        lists[out_i, :len(cols)] = cols
    return lists, known



def evaluate_bundle(bundle: Bundle, split: dataset.Split, fallback: np.ndarray, k: int = DEFAULT_K, *,
                    per_user: bool = False):
    """A deployed bundle scored on the current holdout.

    Its users and items are mapped onto the split; users it does not know get
    `fallback` (as serving would). Seen items are those of the current training
    window. `overlaps_holdout` says whether the bundle was trained on data from
    the holdout window (then its scores are optimistic and not a fair comparison).
    """
    users = np.array(sorted(split.holdout), dtype=np.int64)
    lists, known = holdout_lists(bundle, split, users, k)
    seen = split.train.user_items
    for i in np.flatnonzero(~known):
        u = users[i]
        seen_cols = set(seen.indices[seen.indptr[u]:seen.indptr[u + 1]])
        cols = [c for c in fallback if c not in seen_cols][:k]
        lists[i, :len(cols)] = cols
    trained_until = pd.Timestamp(bundle.meta.get("trained_until", "1900-01-01"))
    scores, each = score_lists(lists, split, users, k, per_user=True)
    scores |= {"unknown_users": int((~known).sum()), "overlaps_holdout": bool(trained_until >= split.cutoff),
               "trained_until": str(trained_until)}
    return (scores, each) if per_user else scores


def refit_production_config(prod: dict, candidate_kind: str, candidate_params: dict, candidate_scores: dict,
                             candidate_per_user: np.ndarray, split: dataset.Split) -> tuple[dict, np.ndarray]:
    """Production's configuration fitted on the current training window (a fair reference when the
    deployed production model has already seen the holdout window), with its per-user nDCG."""
    cls = MODELS[prod["model_kind"]]
    keys = cls().params().keys()
    params = {k: v for k, v in (prod.get("params") or {}).items() if k in keys}
    if prod["model_kind"] == candidate_kind and params == {k: candidate_params.get(k) for k in keys}:
        return dict(candidate_scores) | {"version": int(prod["version"]), "same_configuration": True}, candidate_per_user
    scores, each = evaluate_model(cls(**params).fit(split.train.user_items), split, per_user=True)
    return scores | {"version": int(prod["version"])}, each


def production_staleness(settings: Settings, production_scores: dict, split: dataset.Split, bundle: Bundle | None) -> dict:
    """Is production stale? Its training data ends more than `gate_staleness_days` whole days before the newest
    data, it cannot be read, or it still holds users who withdrew personalization consent (a retrain that
    drops them must not wait for evidence of better quality)."""
    if "trained_until" not in production_scores or bundle is None:
        return {"stale": True, "days_behind": None, "staleness_days": settings.gate_staleness_days,
                "withdrawn_consent": 0, "reason": "production could not be evaluated"}
    # Whole calendar days, so a retrain a day later is "1 day behind" whatever the hour of the last event.
    behind = (pd.Timestamp(split.end).normalize() - pd.Timestamp(production_scores["trained_until"]).normalize()).days
    with warehouse.session(settings) as con:
        withdrawn = dataset.withdrawn_user_keys(con)
    holding = len(withdrawn & set(bundle.matrix.user_keys.tolist()))
    return {"stale": bool(behind > settings.gate_staleness_days or holding), "days_behind": int(behind),
            "staleness_days": settings.gate_staleness_days, "withdrawn_consent": holding,
            "trained_until": production_scores["trained_until"], "newest_data": str(split.end)}


def same_as(prod: dict, data_version: str, run_params: dict) -> str | None:
    """'same data version … and parameters as production vN' when the candidate would change nothing."""
    if prod.get("data_version") == data_version and prod.get("params") == json.loads(json.dumps(run_params, default=str)):
        return f"same data version {data_version} and parameters as production v{prod['version']}"
    return None


def gate_reference(baselines: dict) -> dict | None:
    """What a candidate must beat on the same holdout: the deployed production model, or — when that
    model was trained on the holdout window itself — production's configuration refit on the current
    training window (comparing scores from different holdouts would be noise)."""
    evaluated = baselines.get("production")
    if not evaluated:
        return None
    if "error" in evaluated or evaluated.get("overlaps_holdout"):
        return baselines.get("production_config", {}) | {"reference": "production configuration refit on this window"}
    return evaluated | {"reference": "deployed production model on the same holdout"}



def evaluate_version(settings: Settings, version: int | None = None, holdout_days: int = HOLDOUT_DAYS) -> dict:
    """Score a registered version (default: production) and the baselines on the current holdout."""
    entry = registry.get_version(settings, version) if version is not None else registry.production(settings)
    if entry is None:
        raise RetroError("no model in production yet; run a retrain first (python -m core retrain)")
    registry.require_cf(entry, "`evaluate` scores top-10 lists and")
    bundle = load_bundle(entry["artifact_path"])
    trained_until = bundle.meta.get("trained_until")
    result = {"version": int(entry["version"]), "model_kind": entry["model_kind"],
              "data_version": current_data_version(settings), "trained_on": entry["data_version"],
              "trained_until": trained_until, "holdout_start": None, "holdout_end": None, "metrics": None,
              "baselines": None, "metrics_at_training": entry["metrics"], "note": None}
    if trained_until is None:
        result["note"] = "the bundle does not record the end of its training window, so no leak-free holdout exists"
        return result
    try:   # only days after the training window: a model scored on data it was trained on looks better than it is
        split = holdout_split(settings, holdout_days, start_after=trained_until)
    except dataset.NoDataAfterTraining as exc:
        result["note"] = str(exc)
        return result
    top_cols = top50_columns(settings, split)
    result |= {"holdout_start": str(split.cutoff), "holdout_end": str(split.end),
               "metrics": evaluate_bundle(bundle, split, top_cols),
               "baselines": {"popularity": evaluate_model(PopularityRecommender().fit(split.train.user_items), split),
                             "top50": evaluate_model(WeightedRatingRecommender(top_cols).fit(split.train.user_items),
                                                     split)}}
    return result
