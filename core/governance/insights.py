"""Read models for the dashboard: system status, user profiles, list comparisons, seed variability.

Pure reads over the stores (plus one training experiment in `seed_variability`);
pages call these and only render.
"""
from __future__ import annotations

import json
from itertools import combinations

import numpy as np
import pandas as pd

from core.warehouse import dataset, etl, warehouse
from core.store import adslog, mlopsdb, opsdb, servinglog
from core.training import registry, tracking
from core.training.models import MODELS
from core.settings import Settings
from core.training.top50 import top50


def system_status(settings: Settings) -> dict:
    """Each box of the architecture with its live numbers."""
    with opsdb.session(settings) as db:
        ops = opsdb.counts(db)
        served = servinglog.totals(db)
        paths = servinglog.path_counts(db)
    wh = {"facts": 0, "quarantined": 0, "served_lists": 0, "data_version": None, "last_etl": None,
          "last_etl_status": None}
    if warehouse.exists(settings):
        with warehouse.session(settings) as con:
            counts = warehouse.status_counts(con)
            v = warehouse.latest_version(con)
            wh["served_lists"] = warehouse.served_counts(con)["lists"]
        wh["facts"], wh["quarantined"] = counts["facts"], counts["quarantined"]
        wh["data_version"] = None if v is None else f"dv{int(v['version'])}"
        wh["last_etl"], wh["last_etl_status"] = counts["last_etl"], counts["last_etl_status"]
    prod = registry.production(settings) if mlopsdb.exists(settings) else None
    jobs = tracking.list_jobs(settings, 1) if mlopsdb.exists(settings) else pd.DataFrame()
    runs = tracking.list_runs(settings, 1000) if mlopsdb.exists(settings) else pd.DataFrame()
    return {
        "ops": ops, "warehouse": wh,
        "training": {"runs": int(len(runs)), "last_job": None if jobs.empty else jobs.iloc[0].to_dict()},
        "registry": {"production": prod,
                     "versions": 0 if not mlopsdb.exists(settings) else int(len(registry.list_versions(settings)))},
        "serving": {"lists_served": served[0], "last_served_at": served[1], "paths": paths},
        "monitoring": {"open_alerts": open_alert_count(settings)},
    }


def open_alert_count(settings: Settings) -> int:
    """Open monitoring alerts (0 until monitoring has run)."""
    if not mlopsdb.exists(settings):
        return 0
    from core.monitoring import monitoring
    return monitoring.open_alert_count(settings)


def movies_frame(settings: Settings, movie_ids=None) -> pd.DataFrame:
    with opsdb.session(settings) as db:
        return opsdb.catalog(db) if movie_ids is None else opsdb.movie_details(db, movie_ids)


def user_directory(settings: Settings) -> pd.DataFrame:
    """Every user with activity counts (for a searchable picker)."""
    with opsdb.session(settings) as db:
        return opsdb.user_directory(db)


def user_profile(settings: Settings, user_id: int, recent: int = 8) -> dict:
    """Favourite genres (share of watched titles) and the latest watches of one user."""
    with opsdb.session(settings) as db:
        user = opsdb.require_user(db, user_id, None)
        watched = opsdb.watched_titles(db, user_id)
        n_ratings, mean_rating = opsdb.rating_summary(db, user_id)
    genres = genre_mix(watched["genres"]) if len(watched) else pd.Series(dtype=float)
    watched["watched_pct"] = (100 * watched["seconds"] / (60 * watched["runtime_min"])).clip(upper=100).round(0)
    return {"user_id": user["user_id"], "created_at": user["created_at"],
            "consent_tracking": bool(user["consent_tracking"]),
            "consent_personalization": bool(user["consent_personalization"]),
            "watches": int(len(watched)), "ratings": int(n_ratings),
            "mean_rating": None if mean_rating is None else float(mean_rating),
            "favourite_genres": genres.head(3).round(3).to_dict(),
            "recent": watched.head(recent)[["movie_id", "title", "year", "genres", "last_watched", "watched_pct"]]}


def genre_mix(genres: pd.Series) -> pd.Series:
    """Share of titles per genre (a title with k genres counts 1/k to each)."""
    split = genres.fillna("").str.split("|")
    weights = split.map(lambda g: 1 / max(len([x for x in g if x]), 1))
    exploded = pd.DataFrame({"genre": split, "w": weights}).explode("genre")
    exploded = exploded[exploded["genre"].astype(bool)]
    if exploded.empty:
        return pd.Series(dtype=float)
    mix = exploded.groupby("genre")["w"].sum()
    return (mix / mix.sum()).sort_values(ascending=False)


def movie_popularity(settings: Settings) -> pd.Series:
    """Distinct watchers per movie (for novelty), from the warehouse's columnar facts when it exists."""
    with opsdb.session(settings) as db:
        users = opsdb.user_count(db)
        if not warehouse.exists(settings):
            watchers = opsdb.watchers_per_movie(db)
    if warehouse.exists(settings):
        with warehouse.session(settings) as con:
            watchers = warehouse.watchers_per_movie(con)
    s = pd.Series(watchers, dtype=float)
    s.attrs["users"] = users
    return s


def list_summary(movie_ids: list[int], movies: pd.DataFrame, popularity: pd.Series) -> dict:
    """Novelty (mean −log2 of the share of users who watched each title) and genre mix of one list."""
    n_users = max(popularity.attrs.get("users", 1), 1)
    pop = popularity.reindex(movie_ids).fillna(0).clip(lower=1).to_numpy()
    listed = movies.set_index("movie_id").reindex(movie_ids)
    return {"novelty": float(np.mean(-np.log2(pop / n_users))) if len(movie_ids) else float("nan"),
            "genre_mix": genre_mix(listed["genres"]).round(3).to_dict()}


def compare_lists(a: list[int], b: list[int]) -> dict:
    sa, sb = set(a), set(b)
    return {"overlap": len(sa & sb), "jaccard": len(sa & sb) / len(sa | sb) if sa | sb else 1.0,
            "only_a": [m for m in a if m not in sb], "only_b": [m for m in b if m not in sa]}


def top50_is_deterministic(settings: Settings) -> dict:
    """Traditional software: computing the Top 50 twice on the same data gives the identical list."""
    with opsdb.session(settings) as db:
        first, second = top50(db), top50(db)
    return {"identical": first.table.equals(second.table), "length": len(first.table)}


def seed_variability(settings: Settings, seeds=(1, 2, 3), model: str = "als", users: int = 200,
                     holdout_days: int = 3, k: int = 10, progress=None) -> dict:
    """ML systems are probabilistic: the same configuration trained with different seeds.

    Returns per-seed holdout metrics and the mean pairwise overlap (Jaccard) of
    the top-k lists of `users` sampled evaluation users. `progress(fraction, message)` hears each seed's steps.
    """
    from core.training.pipeline import evaluate_model
    progress = progress or (lambda fraction, message: None)
    progress(0.0, f"reading the warehouse and splitting off the last {holdout_days} days")
    split = dataset.time_split(settings, holdout_days)
    rng = np.random.default_rng(0)
    pool = np.array(sorted(split.holdout))
    sample = rng.choice(pool, size=min(users, len(pool)), replace=False) if len(pool) else pool
    lists, rows = {}, []
    step = 0.9 / max(len(seeds), 1)
    for i, seed in enumerate(seeds):
        progress(0.05 + i * step, f"seed {seed} ({i + 1} of {len(seeds)}): training {model} on "
                                  f"{split.train.user_items.nnz:,} interactions")
        est = MODELS[model](random_state=int(seed)).fit(split.train.user_items)
        progress(0.05 + (i + 0.6) * step, f"seed {seed} ({i + 1} of {len(seeds)}): evaluating on "
                                          f"{len(split.holdout):,} holdout users")
        m = evaluate_model(est, split, k)
        ids, _ = est.recommend(sample, split.train.user_items, k)
        lists[seed] = ids
        rows.append({"seed": int(seed), **{key: m[key] for key in ("ndcg@10", "precision@10", "hit_rate@10", "coverage")}})
    pairs = []
    for a, b in combinations(seeds, 2):
        jac = [len(set(x) & set(y)) / max(len(set(x) | set(y)), 1) for x, y in zip(lists[a], lists[b])]
        pairs.append({"seed_a": int(a), "seed_b": int(b), "mean_jaccard": float(np.mean(jac)) if jac else float("nan")})
    progress(1.0, f"compared the top-{k} lists of {len(sample):,} users")
    return {"metrics": pd.DataFrame(rows), "overlap": pd.DataFrame(pairs), "users": int(len(sample))}


def etl_report(settings: Settings) -> dict:
    """ETL runs, data versions (with their validation reports), quarantine and daily volumes."""
    if not warehouse.exists(settings):
        return {"runs": pd.DataFrame(), "versions": pd.DataFrame(), "quarantine": pd.DataFrame(), "daily": pd.DataFrame(),
                "reasons": pd.DataFrame()}
    with warehouse.session(settings) as con:
        versions = warehouse.data_versions(con)
        quarantine = warehouse.recent_quarantine(con, 500)
        reasons = warehouse.quarantine_reasons(con)
        daily = warehouse.daily_volumes(con)
        runs = warehouse.etl_runs(con)
    if len(reasons):
        reasons["category"] = [etl.reason_category(r, c) for r, c in zip(reasons["reason"], reasons["code"])]
        reasons = reasons.groupby(["data_version", "category"]).size().rename("rows").reset_index()
    versions["validation"] = versions["validation"].map(json.loads)
    return {"runs": runs, "versions": versions, "quarantine": quarantine, "daily": daily, "reasons": reasons}


def state_token(settings: Settings) -> tuple:
    """A cheap fingerprint of everything the dashboard shows; cached reads key on it, so any write
    (new data, ETL, retrain, promotion, rollback, erasure, ads switched on or off) invalidates them."""
    parts: list = []
    if opsdb.exists(settings):
        with opsdb.session(settings) as db:
            parts += list(opsdb.change_marks(db))
            parts += list(adslog.change_mark(db))   # `ads switch on|off` writes only the ads' own marks
    parts.append(warehouse.changed_at(settings))
    parts.append(mlopsdb.change_mark(settings))   # not the file's mtime: an audited view is no change to show
    return tuple(parts)
