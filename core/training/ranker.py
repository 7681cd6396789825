"""The second model: a gradient-boosted ranker that re-orders the CF candidates.

Candidate generation (the production CF model, top 50) → ranking with
interpretable features → top k. Trained on the warehouse with a time-based
split: CF fit before c1, labels = positive interactions in [c1, c2); evaluated
as CF fit before c2, re-ranked, against what users did in [c2, end] — the same
holdout the CF model is judged on, so "two-stage vs CF alone" is like for like.
Explained per prediction with SHAP (TreeExplainer on the raw log-odds).

The fitted scikit-learn model is stored with joblib (scikit-learn has no
pickle-free format); the file's SHA-256 is recorded in the registry and checked
before loading.
"""
from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.ensemble import HistGradientBoostingClassifier
from threadpoolctl import ThreadpoolController

from core.warehouse import dataset, warehouse
from core.constants import GENRE_INDEX, GENRES
from core.errors import RetroError
from core.filemodes import private_file, private_tree
from core.settings import Settings

FEATURES = ("cf_score", "cf_rank", "genre_affinity", "popularity", "release_recency",
            "days_since_related_watch", "mean_rating", "user_activity")
FEATURE_LABELS = {
    "cf_score": "collaborative-filtering score", "cf_rank": "rank among the CF candidates",
    "genre_affinity": "affinity to the movie's genres", "popularity": "popularity (log watchers)",
    "release_recency": "release year (0 = 1950, 1 = 1999)", "days_since_related_watch": "days since a same-genre watch",
    "mean_rating": "mean rating of the movie", "user_activity": "user activity (log interactions)",
}
CANDIDATES = 50
MAX_DAYS = 60.0
RANKER_FILES = ("ranker.joblib", "context.npz", "ranker.json")   # what the ranker hash covers, in order


class RankerIntegrityError(RetroError):
    """A ranker artifact whose bytes do not match the registry's hash."""


@dataclass
class Context:
    """Everything the features need, aligned to a CF matrix (rows = users, columns = movies)."""

    movie_genres: np.ndarray     # (M, G) genre shares per movie (rows sum to 1 or 0)
    user_genres: np.ndarray      # (U, G) confidence-weighted genre profile (rows sum to 1 or 0)
    user_genre_days: np.ndarray  # (U, G) days since the user's last interaction in each genre (capped)
    popularity: np.ndarray       # (M,) log1p(#users with a positive interaction)
    mean_rating: np.ndarray      # (M,) mean rating 1..10 (global mean where unrated)
    recency: np.ndarray          # (M,) (year − 1950) / 49
    activity: np.ndarray         # (U,) log1p(#interactions)

    def save(self, path: Path) -> None:
        np.savez(path, **self.__dict__)
        private_file(path)

    @classmethod
    def load(cls, path: Path) -> "Context":
        with np.load(path, allow_pickle=False) as d:
            return cls(**{k: d[k] for k in d.files})


def build_context(settings: Settings, matrix: dataset.Matrix, pairs: pd.DataFrame, until) -> Context:
    """Context for `matrix` from the interaction pairs (with last_at) and the warehouse's movie data."""
    until = pd.Timestamp(until)
    with warehouse.session(settings) as con:
        movies = dataset.movie_attributes(con)
        ratings = dataset.mean_ratings_before(con, until)
    movies = movies.reindex(matrix.movie_ids)
    G = len(GENRES)
    mg = np.zeros((len(matrix.movie_ids), G))
    for j, genres in enumerate(movies["genres"].fillna("")):
        idx = [GENRE_INDEX[g] for g in genres.split("|") if g in GENRE_INDEX]
        if idx:
            mg[j, idx] = 1.0 / len(idx)
    ui = matrix.user_items
    ug = np.asarray(ui @ mg)
    ug = ug / np.maximum(ug.sum(axis=1, keepdims=True), 1e-12)
    # Days since the last interaction per (user, genre).
    days = np.full((len(matrix.user_keys), G), MAX_DAYS)
    if len(pairs):
        rows = pd.Index(matrix.user_keys).get_indexer(pairs["user_key"])
        cols = pd.Index(matrix.movie_ids).get_indexer(pairs["movie_id"])
        ok = (rows >= 0) & (cols >= 0)
        age = ((until - pd.to_datetime(pairs["last_at"])).dt.total_seconds() / 86400).to_numpy()[ok]
        r, c = rows[ok], cols[ok]
        for g in range(G):
            has = mg[c, g] > 0
            if has.any():
                frame = pd.DataFrame({"r": r[has], "a": age[has]}).groupby("r")["a"].min()
                days[frame.index.to_numpy(), g] = np.minimum(frame.to_numpy(), MAX_DAYS)
    watchers = np.asarray((ui > 0).sum(axis=0)).ravel()
    C = float(ratings.mean()) if len(ratings) else 5.5
    return Context(
        movie_genres=mg, user_genres=ug, user_genre_days=days, popularity=np.log1p(watchers),
        mean_rating=ratings.reindex(matrix.movie_ids).fillna(C).to_numpy(dtype=float),
        recency=((movies["year"].fillna(1975).to_numpy(dtype=float) - 1950) / 49).clip(0, 1),
        activity=np.log1p(np.diff(ui.indptr)).astype(float),
    )


def feature_rows(ctx: Context, user_rows: np.ndarray, items: np.ndarray, cf_scores: np.ndarray) -> np.ndarray:
    """Features for candidate lists: user_rows (n,), items/cf_scores (n × c) → (n·c × len(FEATURES))."""
    n, c = items.shape
    u = np.repeat(user_rows, c)
    i = items.ravel()
    valid = i >= 0
    i = np.where(valid, i, 0)
    mg = ctx.movie_genres[i]
    affinity = np.einsum("ij,ij->i", ctx.user_genres[u], mg)
    related = np.where(mg > 0, ctx.user_genre_days[u], np.inf).min(axis=1)
    related = np.where(np.isfinite(related), related, MAX_DAYS)
    X = np.column_stack([
        np.where(valid, cf_scores.ravel(), 0.0), np.tile(np.arange(1, c + 1), n), affinity, ctx.popularity[i],
        ctx.recency[i], related, ctx.mean_rating[i], ctx.activity[u],
    ]).astype(float)
    return X


_openmp = None
_openmp_lock = threading.Lock()


def single_threaded_openmp():
    """A context that runs the block's OpenMP (scikit-learn's tree predictions) on one thread.

    Scoring 50 candidates is microseconds of work per tree; with an OpenMP team per tree (60 trees) the
    thread wake-ups dominated, and on a busy 2-core machine a request spent ~100 ms waiting for threads
    (issue 16). OpenMP's thread count is per calling thread, so the limit is set and restored around each
    call, through one controller built once (the library discovery it saves costs milliseconds; the
    limit itself ~8 µs).
    """
    global _openmp
    if _openmp is None:
        with _openmp_lock:
            if _openmp is None:
                _openmp = ThreadpoolController().select(user_api="openmp")
    return _openmp.limit(limits=1)


def candidates(cf_model, user_rows: np.ndarray, user_items: sp.csr_matrix, n: int = CANDIDATES):
    ids, scores = cf_model.recommend(user_rows, user_items, n)
    return ids, np.where(ids >= 0, scores, 0.0)


@dataclass
class Ranker:
    model: HistGradientBoostingClassifier
    context: Context

    def rerank(self, user_rows, items, cf_scores, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k of each candidate list by the ranker's log-odds (padding stays last)."""
        X = feature_rows(self.context, user_rows, items, cf_scores)
        with single_threaded_openmp():
            logit = self.model.decision_function(X).reshape(items.shape)
        logit = np.where(items >= 0, logit, -np.inf)
        order = np.argsort(-logit, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(items, order, axis=1), np.take_along_axis(logit, order, axis=1)

    def explain(self, X: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
        """SHAP values (n × features), base value and model output (log-odds); base + Σ shap = output."""
        import shap
        explainer = shap.TreeExplainer(self.model)
        values = np.asarray(explainer.shap_values(X))
        base = float(np.ravel(explainer.expected_value)[0])
        return values, base, self.model.decision_function(X)


def fit_ranker(X: np.ndarray, y: np.ndarray, seed: int) -> HistGradientBoostingClassifier:
    if y.sum() == 0 or y.sum() == len(y):
        raise RetroError("the ranker needs both positive and negative candidates in its label window; simulate more days")
    return HistGradientBoostingClassifier(max_iter=60, learning_rate=0.1, max_leaf_nodes=15, l2_regularization=1.0,
                                          early_stopping=False, random_state=seed).fit(X, y)


def labels_for(items: np.ndarray, user_rows: np.ndarray, relevant: dict) -> np.ndarray:
    return np.array([[int(i in relevant.get(int(u), ())) for i in row] for u, row in zip(user_rows, items)]).ravel()


def save_ranker(directory: Path, ranker: Ranker, meta: dict) -> str:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    joblib.dump(ranker.model, directory / "ranker.joblib")
    ranker.context.save(directory / "context.npz")
    (directory / "ranker.json").write_text(json.dumps(meta, indent=2, default=str))
    private_tree(directory)
    return ranker_hash(directory)


def ranker_hash(directory: Path) -> str:
    h = hashlib.sha256()
    for name in RANKER_FILES:
        h.update(name.encode())
        h.update((Path(directory) / name).read_bytes())
    return h.hexdigest()


def load_ranker(directory: Path, expected_hash: str | tuple[str, ...] | None = None) -> Ranker:
    """The ranker in `directory`; with `expected_hash` (one hash, or several accepted ones) its bytes are checked."""
    accepted = (expected_hash,) if isinstance(expected_hash, str) else expected_hash
    if accepted is not None and ranker_hash(directory) not in accepted:
        raise RankerIntegrityError(f"ranker artifact {directory} does not match its registered hash; refusing to load it")
    return Ranker(joblib.load(Path(directory) / "ranker.joblib"), Context.load(Path(directory) / "context.npz"))
