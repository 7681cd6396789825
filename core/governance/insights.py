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
from core.store import opsdb
from core.training import registry, tracking
from core.training.models import MODELS
from core.settings import Settings
from core.training.top50 import top50


def system_status(settings: Settings) -> dict:
    """Each box of the architecture with its live numbers."""
    with opsdb.session(settings) as db:
        ops = opsdb.counts(db)
        served = db.execute("SELECT count(*), max(served_at) FROM served_recommendations").fetchone()
        paths = dict(db.execute("SELECT path, count(*) FROM served_recommendations GROUP BY path").fetchall())
    wh = {"facts": 0, "quarantined": 0, "data_version": None, "last_etl": None, "last_etl_status": None}
    if settings.warehouse.exists():
        with warehouse.session(settings) as con:
            wh["facts"] = con.execute("SELECT count(*) FROM fact_interaction").fetchone()[0]
            wh["quarantined"] = con.execute("SELECT count(*) FROM quarantine").fetchone()[0]
            v = warehouse.latest_version(con)
            wh["data_version"] = None if v is None else f"dv{int(v['version'])}"
            last = con.execute("SELECT started_at, status FROM etl_runs ORDER BY run_id DESC LIMIT 1").fetchone()
            if last:
                wh["last_etl"], wh["last_etl_status"] = str(last[0]), last[1]
    prod = registry.production(settings) if settings.mlops_db.exists() else None
    jobs = tracking.list_jobs(settings, 1) if settings.mlops_db.exists() else pd.DataFrame()
    runs = tracking.list_runs(settings, 1000) if settings.mlops_db.exists() else pd.DataFrame()
    return {
        "ops": ops, "warehouse": wh,
        "training": {"runs": int(len(runs)), "last_job": None if jobs.empty else jobs.iloc[0].to_dict()},
        "registry": {"production": prod,
                     "versions": 0 if not settings.mlops_db.exists() else int(len(registry.list_versions(settings)))},
        "serving": {"lists_served": served[0], "last_served_at": served[1], "paths": paths},
        "monitoring": {"open_alerts": open_alert_count(settings)},
    }


def open_alert_count(settings: Settings) -> int:
    """Open monitoring alerts (0 until monitoring has run)."""
    if not settings.mlops_db.exists():
        return 0
    from core.store import mlopsdb
    with mlopsdb.session(settings) as db:
        return db.execute("SELECT count(*) FROM alerts WHERE closed_at IS NULL").fetchone()[0]


def movies_frame(settings: Settings, movie_ids=None) -> pd.DataFrame:
    with opsdb.session(settings) as db:
        if movie_ids is None:
            rows = db.execute("SELECT movie_id, title, year, genres FROM movies").fetchall()
        else:
            ids = [int(m) for m in movie_ids]
            marks = ",".join("?" * len(ids)) or "NULL"
            rows = db.execute(f"SELECT movie_id, title, year, genres FROM movies WHERE movie_id IN ({marks})", ids).fetchall()
    return pd.DataFrame(rows, columns=["movie_id", "title", "year", "genres"])


def user_directory(settings: Settings) -> pd.DataFrame:
    """Every user with activity counts (for a searchable picker)."""
    with opsdb.session(settings) as db:
        rows = db.execute("""
            SELECT u.user_id, u.created_at,
                   (SELECT count(*) FROM events e WHERE e.user_id = u.user_id AND e.kind = 'watch') AS watches,
                   (SELECT count(*) FROM ratings r WHERE r.user_id = u.user_id) AS ratings
            FROM users u ORDER BY u.user_id""").fetchall()
    return pd.DataFrame(rows, columns=["user_id", "created_at", "watches", "ratings"])


def user_profile(settings: Settings, user_id: int, recent: int = 8) -> dict:
    """Favourite genres (share of watched titles) and the latest watches of one user."""
    with opsdb.session(settings) as db:
        user = db.execute("SELECT user_id, created_at, consent_tracking, consent_personalization FROM users "
                          "WHERE user_id = ?", [int(user_id)]).fetchone()
        if user is None:
            from core.errors import UnknownUser
            raise UnknownUser(f"unknown user {user_id}")
        watched = pd.DataFrame(db.execute("""
            SELECT e.movie_id, m.title, m.year, m.genres, max(e.occurred_at) AS last_watched, max(e.value) AS seconds,
                   m.runtime_min
            FROM events e JOIN movies m USING (movie_id) WHERE e.user_id = ? AND e.kind = 'watch'
            GROUP BY e.movie_id ORDER BY last_watched DESC""", [int(user_id)]).fetchall(),
            columns=["movie_id", "title", "year", "genres", "last_watched", "seconds", "runtime_min"])
        n_ratings, mean_rating = db.execute("SELECT count(*), avg(rating) FROM ratings WHERE user_id = ?",
                                            [int(user_id)]).fetchone()
    genres = genre_mix(watched["genres"]) if len(watched) else pd.Series(dtype=float)
    watched["watched_pct"] = (100 * watched["seconds"] / (60 * watched["runtime_min"])).clip(upper=100).round(0)
    return {"user_id": user[0], "created_at": user[1], "consent_tracking": bool(user[2]),
            "consent_personalization": bool(user[3]), "watches": int(len(watched)), "ratings": int(n_ratings),
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
        users = db.execute("SELECT count(*) FROM users").fetchone()[0]
        if not settings.warehouse.exists():
            rows = db.execute("SELECT movie_id, count(DISTINCT user_id) FROM events WHERE kind = 'watch' "
                              "GROUP BY movie_id").fetchall()
    if settings.warehouse.exists():
        with warehouse.session(settings) as con:
            rows = con.execute("SELECT movie_id, count(DISTINCT user_key) FROM fact_interaction WHERE kind = 'watch' "
                               "GROUP BY movie_id").fetchall()
    s = pd.Series(dict(rows), dtype=float)
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
                     holdout_days: int = 3, k: int = 10) -> dict:
    """ML systems are probabilistic: the same configuration trained with different seeds.

    Returns per-seed holdout metrics and the mean pairwise overlap (Jaccard) of
    the top-k lists of `users` sampled evaluation users.
    """
    from core.training.pipeline import evaluate_model
    split = dataset.time_split(settings, holdout_days)
    rng = np.random.default_rng(0)
    pool = np.array(sorted(split.holdout))
    sample = rng.choice(pool, size=min(users, len(pool)), replace=False) if len(pool) else pool
    lists, rows = {}, []
    for seed in seeds:
        est = MODELS[model](random_state=int(seed)).fit(split.train.user_items)
        m = evaluate_model(est, split, k)
        ids, _ = est.recommend(sample, split.train.user_items, k)
        lists[seed] = ids
        rows.append({"seed": int(seed), **{key: m[key] for key in ("ndcg@10", "precision@10", "hit_rate@10", "coverage")}})
    pairs = []
    for a, b in combinations(seeds, 2):
        jac = [len(set(x) & set(y)) / max(len(set(x) | set(y)), 1) for x, y in zip(lists[a], lists[b])]
        pairs.append({"seed_a": int(a), "seed_b": int(b), "mean_jaccard": float(np.mean(jac)) if jac else float("nan")})
    return {"metrics": pd.DataFrame(rows), "overlap": pd.DataFrame(pairs), "users": int(len(sample))}


def etl_report(settings: Settings) -> dict:
    """ETL runs, data versions (with their validation reports), quarantine and daily volumes."""
    if not settings.warehouse.exists():
        return {"runs": pd.DataFrame(), "versions": pd.DataFrame(), "quarantine": pd.DataFrame(), "daily": pd.DataFrame(),
                "reasons": pd.DataFrame()}
    with warehouse.session(settings) as con:
        versions = con.execute("SELECT * FROM data_versions ORDER BY version DESC").df()
        quarantine = con.execute("SELECT source, source_id, reason, kind, value, occurred_at, data_version, quarantined_at "
                                 "FROM quarantine ORDER BY quarantined_at DESC LIMIT 500").df()
        reasons = con.execute("SELECT reason, data_version FROM quarantine").df()
        daily = con.execute("SELECT day, kind, n, users, movies FROM daily_aggregates ORDER BY day, kind").df()
        runs = con.execute("SELECT * FROM etl_runs ORDER BY run_id DESC").df()
    if len(reasons):
        reasons["category"] = reasons["reason"].map(etl.reason_category)
        reasons = reasons.groupby(["data_version", "category"]).size().rename("rows").reset_index()
    versions["validation"] = versions["validation"].map(json.loads)
    return {"runs": runs, "versions": versions, "quarantine": quarantine, "daily": daily, "reasons": reasons}


def state_token(settings: Settings) -> tuple:
    """A cheap fingerprint of everything the dashboard shows; cached reads key on it, so any write
    (new data, ETL, retrain, promotion, rollback, erasure) invalidates them."""
    parts: list = []
    if settings.ops_db.exists():
        with opsdb.session(settings) as db:
            parts += list(db.execute(
                "SELECT (SELECT max(seq) FROM events), (SELECT max(history_id) FROM rating_history), "
                "(SELECT count(*) FROM users), (SELECT count(*) FROM movies), (SELECT max(serve_id) FROM served_recommendations), "
                "(SELECT value FROM meta WHERE key = 'clock')").fetchone())
    parts.append(settings.warehouse.stat().st_mtime_ns if settings.warehouse.exists() else None)
    parts.append(settings.mlops_db.stat().st_mtime_ns if settings.mlops_db.exists() else None)
    wal = settings.home / "mlops.db-wal"
    parts.append(wal.stat().st_mtime_ns if wal.exists() else None)
    return tuple(parts)
