"""Recommenders behind one estimator-style interface (scikit-learn conventions).

``__init__`` only stores parameters, ``fit`` returns ``self``, learned attributes end
in ``_``. Every model takes the same input: ``user_items``, a CSR matrix of
users × items float32 confidences (a row per user row id, a column per item column id).

``recommend(user_rows, user_items, k)`` returns ``(ids, scores)``, both n × k:
int64 item columns padded with ``-1`` and float32 scores padded with ``-inf``.
``user_items`` there is the *full* users × items matrix (the rows of ``user_rows``
are read from it); with ``filter_seen`` every nonzero item of a user's row is
excluded, so a title the user already watched is never recommended.

Artifacts are ``model.npz`` (arrays) + ``model.json`` (name, parameters, shapes),
never pickle; ``load_model(directory)`` rebuilds the right class.
"""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import implicit.cpu.als  # noqa: F401  (importing implicit loads scipy's OpenBLAS; limit threads after)
import implicit.cpu.bpr
import numpy as np
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from core.constants import DEFAULT_K, SEED
from core.errors import RetroError, ValidationError
from core.filemodes import private_tree

PAD_ID = -1
PAD_SCORE = np.float32(-np.inf)
_FILTERED = np.finfo(np.float32).min  # implicit's score for a filtered-out item


class ModelNotTrained(RetroError):
    """The model was asked to recommend or explain before ``fit`` (or ``load_model``)."""


_blas_pinned = False
_pin_lock = threading.Lock()


def pin_blas() -> None:
    """Pin every loaded BLAS to one thread, once per process (implicit runs ~1.5–3× slower and warns otherwise;
    see STACK-NOTES).

    OpenBLAS's thread count is process-wide, so one call covers every thread, and `import implicit` at the top
    of this module has already loaded scipy's OpenBLAS. Called before every fit, recommend and explain, but it
    works only the first time: `threadpool_limits` re-discovers the loaded libraries by reading
    /proc/self/maps (2–5 ms), which was about 45 % of a served request when it ran per call (issue 16).
    """
    global _blas_pinned
    if _blas_pinned:
        return
    with _pin_lock:
        if not _blas_pinned:
            threadpool_limits(1, "blas")
            _blas_pinned = True


def _check_matrix(user_items, n_items: int | None = None, *, for_fit: bool = False) -> sp.csr_matrix:
    if not sp.issparse(user_items):
        raise ValidationError("user_items must be a scipy.sparse CSR matrix (users × items)")
    user_items = sp.csr_matrix(user_items)
    if n_items is not None and user_items.shape[1] != n_items:
        raise ValidationError(f"user_items has {user_items.shape[1]} item columns but the model was "
                              f"trained on {n_items}; retrain the model on the current catalog")
    if user_items.dtype != np.float32:
        user_items = user_items.astype(np.float32)
    if for_fit and not (user_items.data > 0).any():
        raise ValidationError("user_items holds no positive interaction: there is nothing to train on")
    return user_items


def _seen_rows(user_items: sp.csr_matrix, user_rows: np.ndarray) -> sp.csr_matrix:
    """The users' rows with explicit zeros dropped, so 'seen' means 'nonzero'."""
    rows = user_items[user_rows]
    rows.eliminate_zeros()
    rows.sort_indices()
    return rows


def _mask_seen(ids: np.ndarray, scores: np.ndarray, seen: sp.csr_matrix | None) -> None:
    """In place: turn every seen item (if ``seen`` is given), filtered sentinel or invalid id into padding."""
    bad = (ids < 0) | (scores <= _FILTERED) | ~np.isfinite(scores)
    if seen is not None and seen.nnz:
        n_items = seen.shape[1]
        seen_keys = np.repeat(np.arange(seen.shape[0], dtype=np.int64), np.diff(seen.indptr)) * n_items + seen.indices
        keys = np.arange(ids.shape[0], dtype=np.int64)[:, None] * n_items + np.where(ids < 0, 0, ids)
        bad |= np.isin(keys, seen_keys)
    ids[bad] = PAD_ID
    scores[bad] = PAD_SCORE
    # Keep padding at the end of each row (items stay in score order).
    order = np.argsort(bad, axis=1, kind="stable")
    ids[:] = np.take_along_axis(ids, order, axis=1)
    scores[:] = np.take_along_axis(scores, order, axis=1)


class Recommender:
    """Base class: fit on a users × items CSR matrix, recommend top-k per user row."""

    name = "base"

    def params(self) -> dict:
        """Constructor parameters (what ``__init__`` stored)."""
        return {}

    # --- learned state -------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if getattr(self, "n_items_", None) is None:
            raise ModelNotTrained(f"the {self.name} model is not trained yet: call fit() or load_model() first")

    def fit(self, user_items: sp.csr_matrix) -> "Recommender":
        raise NotImplementedError

    def _arrays(self) -> dict[str, np.ndarray]:
        """Learned arrays to write to model.npz."""
        raise NotImplementedError

    def _set_arrays(self, arrays: dict[str, np.ndarray], meta: dict) -> None:
        raise NotImplementedError

    # --- use -----------------------------------------------------------------------------
    def recommend(self, user_rows, user_items: sp.csr_matrix, k: int = DEFAULT_K,
                  filter_seen: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Top-k item columns per user row.

        Parameters
        ----------
        user_rows : array of int, shape (n,)
            Row ids into ``user_items`` (and into the trained model).
        user_items : csr_matrix, users × items
            Current interactions; nonzero entries of each user's row are the seen items.
        k : int
            List length.
        filter_seen : bool
            Exclude seen items (default True).

        Returns
        -------
        ids : int64 array (n × k), padded with -1
        scores : float32 array (n × k), padded with -inf
        """
        self._check_fitted()
        if k < 1:
            raise ValidationError(f"k must be at least 1, got {k}")
        user_items = _check_matrix(user_items, self.n_items_)
        user_rows = np.atleast_1d(np.asarray(user_rows, dtype=np.int64))
        if user_rows.size and (user_rows.min() < 0 or user_rows.max() >= user_items.shape[0]):
            raise ValidationError(f"user rows must lie in 0..{user_items.shape[0] - 1}")
        seen = _seen_rows(user_items, user_rows)
        ids, scores = self._recommend(user_rows, seen, k, filter_seen)
        ids = ids.astype(np.int64, copy=False)
        scores = scores.astype(np.float32, copy=False)
        _mask_seen(ids, scores, seen if filter_seen else None)
        return ids, scores

    def _recommend(self, user_rows, seen, k, filter_seen) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def score_items(self, user_row: int, item_ids, user_items: sp.csr_matrix) -> np.ndarray:
        """Scores (float32, one per item id) of the given items for one user; seen items are not excluded."""
        raise NotImplementedError

    # --- persistence ---------------------------------------------------------------------
    def save(self, directory: Path) -> dict:
        """Write ``model.npz`` + ``model.json`` into ``directory``; return the metadata written."""
        self._check_fitted()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        arrays = self._arrays()
        np.savez(directory / "model.npz", **arrays)
        meta = {
            "name": self.name,
            "params": self.params(),
            "n_items": int(self.n_items_),
            "arrays": {k: list(v.shape) for k, v in arrays.items()},
            "fit_seconds": getattr(self, "fit_seconds_", None),
        }
        (directory / "model.json").write_text(json.dumps(meta, indent=2))
        private_tree(directory)
        return meta


class _StaticRanking(Recommender):
    """One global item order for everyone (popularity, a curated list); seen items skipped."""

    order_: np.ndarray | None = None  # item columns, best first
    item_scores_: np.ndarray | None = None  # float32 per item column; -inf for unlisted items

    def _recommend(self, user_rows, seen, k, filter_seen):
        n = len(user_rows)
        ids = np.full((n, k), PAD_ID, dtype=np.int64)
        scores = np.full((n, k), PAD_SCORE, dtype=np.float32)
        order = self.order_
        if not filter_seen:
            top = order[:k]
            ids[:, : len(top)] = top
            scores[:, : len(top)] = self.item_scores_[top]
            return ids, scores
        # The first k unseen items lie within the first k + |seen| entries of the order.
        for start in range(0, n, 1024):
            block = seen[start:start + 1024]
            longest = int(np.diff(block.indptr).max(initial=0))
            cand = order[: k + longest]
            unseen = ~(block[:, cand].toarray() != 0)
            rank = np.cumsum(unseen, axis=1)
            r, c = np.nonzero(unseen & (rank <= k))
            ids[start + r, rank[r, c] - 1] = cand[c]
            scores[start + r, rank[r, c] - 1] = self.item_scores_[cand[c]]
        return ids, scores

    def score_items(self, user_row, item_ids, user_items):
        self._check_fitted()
        return self.item_scores_[np.asarray(item_ids, dtype=np.int64)].astype(np.float32)

    def _arrays(self):
        return {"order": self.order_, "item_scores": self.item_scores_}

    def _set_arrays(self, arrays, meta):
        self.order_ = arrays["order"].astype(np.int64)
        self.item_scores_ = arrays["item_scores"].astype(np.float32)
        self.n_items_ = int(meta["n_items"])


class PopularityRecommender(_StaticRanking):
    """Most-popular baseline: item score = number of users with a positive interaction.

    Ties are broken by item column (lower first), so the order is deterministic.
    """

    name = "popularity"

    def fit(self, user_items):
        t0 = time.perf_counter()
        user_items = _check_matrix(user_items, for_fit=True)
        counts = np.asarray((user_items > 0).sum(axis=0)).ravel().astype(np.float32)
        self.item_scores_ = counts
        self.order_ = np.lexsort((np.arange(len(counts)), -counts)).astype(np.int64)
        self.n_items_ = user_items.shape[1]
        self.fit_seconds_ = time.perf_counter() - t0
        return self


class WeightedRatingRecommender(_StaticRanking):
    """The Top 50 (weighted rating) as a recommender: its items in list order, seen ones skipped.

    ``ranked_items`` are item columns, best first (e.g. the Top 50 mapped to columns).
    Score of the item at 0-based rank r is len(list) - r; unlisted items are never recommended.
    """

    name = "weighted_rating"

    def __init__(self, ranked_items=()):
        self.ranked_items = ranked_items

    def params(self):
        return {"ranked_items": [int(i) for i in self.ranked_items]}

    def fit(self, user_items):
        t0 = time.perf_counter()
        user_items = _check_matrix(user_items)
        order = np.asarray(list(self.ranked_items), dtype=np.int64)
        n_items = user_items.shape[1]
        if order.size and (order.min() < 0 or order.max() >= n_items):
            raise ValidationError(f"ranked items must be item columns in 0..{n_items - 1}")
        if len(np.unique(order)) != len(order):
            raise ValidationError("ranked items must not repeat")
        scores = np.full(n_items, PAD_SCORE, dtype=np.float32)
        scores[order] = np.arange(len(order), 0, -1, dtype=np.float32)
        self.order_, self.item_scores_, self.n_items_ = order, scores, n_items
        self.fit_seconds_ = time.perf_counter() - t0
        return self


class _MatrixFactorization(Recommender):
    """Shared code for implicit's CPU matrix-factorization models."""

    _model = None  # the implicit estimator, built in fit / load

    @property
    def user_factors_(self) -> np.ndarray:
        self._check_fitted()
        return self._model.user_factors

    @property
    def item_factors_(self) -> np.ndarray:
        self._check_fitted()
        return self._model.item_factors

    def _make_model(self):
        raise NotImplementedError

    def fit(self, user_items):
        user_items = _check_matrix(user_items, for_fit=True)
        t0 = time.perf_counter()
        pin_blas()
        model = self._make_model()
        model.fit(user_items, show_progress=False)
        self._model = model
        self.n_items_ = user_items.shape[1]
        self.fit_seconds_ = time.perf_counter() - t0
        return self

    def _recommend(self, user_rows, seen, k, filter_seen):
        n = len(user_rows)
        n_users = self._model.user_factors.shape[0]
        if user_rows.size and user_rows.max() >= n_users:
            raise ValidationError(f"user row {int(user_rows.max())} is not in the model (trained on {n_users} "
                                  "users); retrain to include new users")
        N = min(k, self.n_items_)
        pin_blas()
        ids, scores = self._model.recommend(user_rows, seen, N=N, filter_already_liked_items=filter_seen)
        out_ids = np.full((n, k), PAD_ID, dtype=np.int64)
        out_scores = np.full((n, k), PAD_SCORE, dtype=np.float32)
        out_ids[:, :N], out_scores[:, :N] = ids, scores
        # An erased user (all-zero factors, see drop_user) gets no personalised list.
        erased = ~self._model.user_factors[user_rows].any(axis=1)
        out_ids[erased], out_scores[erased] = PAD_ID, PAD_SCORE
        return out_ids, out_scores

    def score_items(self, user_row, item_ids, user_items):
        self._check_fitted()
        item_ids = np.asarray(item_ids, dtype=np.int64)
        return (self._model.item_factors[item_ids] @ self._model.user_factors[int(user_row)]).astype(np.float32)

    def drop_user(self, user_row: int) -> None:
        """Erase a user's learned factors (privacy erasure): the row is zeroed, so the
        user gets no personalised recommendations until the next retrain without them."""
        self._check_fitted()
        self._model.user_factors[int(user_row)] = 0
        if hasattr(self._model, "_XtX"):
            self._model._XtX = None
        self._model._user_norms = None

    def _arrays(self):
        return {"user_factors": self._model.user_factors, "item_factors": self._model.item_factors}

    def _set_arrays(self, arrays, meta):
        pin_blas()
        model = self._make_model()
        model.user_factors = arrays["user_factors"].astype(np.float32)
        model.item_factors = arrays["item_factors"].astype(np.float32)
        self._model = model
        self.n_items_ = int(meta["n_items"])


class ALSRecommender(_MatrixFactorization):
    """Implicit-feedback ALS (Hu, Koren & Volinsky 2008) via ``implicit.cpu.als``.

    Confidence: implicit multiplies the *raw* matrix by ``alpha`` (c_ui = alpha · r_ui for
    observed entries, 1 for the rest; ``fit``, ``explain`` and fold-in all apply it), so
    pass unscaled confidences here — scaling them too would apply alpha twice.

    Defaults were picked by ``benchmarks/bench_movielens.py --tune`` (best validation nDCG@10
    on MovieLens latest-small, a validation split carved from the training part): strong
    regularization with a low alpha beat the common (64 factors, reg 0.05, alpha 5) setting
    on held-out nDCG@10 (0.386 vs 0.320), at the price of lower catalog coverage.
    """

    name = "als"

    def __init__(self, factors: int = 128, regularization: float = 20.0, alpha: float = 2.0,
                 iterations: int = 15, random_state: int = SEED, num_threads: int = 1):
        self.factors = factors
        self.regularization = regularization
        self.alpha = alpha
        self.iterations = iterations
        self.random_state = random_state
        self.num_threads = num_threads

    def params(self):
        return {"factors": self.factors, "regularization": self.regularization, "alpha": self.alpha,
                "iterations": self.iterations, "random_state": self.random_state, "num_threads": self.num_threads}

    def _make_model(self):
        return implicit.cpu.als.AlternatingLeastSquares(
            factors=self.factors, regularization=self.regularization, alpha=self.alpha,
            iterations=self.iterations, random_state=self.random_state, num_threads=self.num_threads)

    def explain(self, user_row: int, user_items: sp.csr_matrix, item_id: int, n: int = 5) -> list[tuple[int, float]]:
        """The user's own items that contribute most to ``item_id``'s score, as (item_id, contribution).

        ``user_items`` is the full users × items matrix (implicit re-solves the user's
        vector from it, so contributions sum to a score close to, not equal to, ``recommend``'s).
        Only items the user interacted with appear.
        """
        return self.explain_score(user_row, user_items, item_id, n)[1]

    def explain_score(self, user_row: int, user_items: sp.csr_matrix, item_id: int,
                      n: int = 5) -> tuple[float, list[tuple[int, float]]]:
        """(total score, top-n contributions) of ``item_id`` for the user's current row."""
        self._check_fitted()
        user_items = _check_matrix(user_items, self.n_items_)
        pin_blas()
        total, top, _ = self._model.explain(int(user_row), user_items, int(item_id), N=n)
        return float(total), [(int(i), float(s)) for i, s in top]


class BPRRecommender(_MatrixFactorization):
    """Bayesian Personalized Ranking (Rendle et al. 2009) via ``implicit.cpu.bpr``.

    Treats every nonzero entry as a positive (weights ignored). ``num_threads=1`` keeps
    training reproducible for a given ``random_state`` (multi-threaded SGD is not).
    Defaults picked by ``benchmarks/bench_movielens.py --tune``: quality depends mostly on
    learning_rate × iterations; larger rates or more epochs made held-out nDCG worse.
    """

    name = "bpr"

    def __init__(self, factors: int = 32, learning_rate: float = 0.0025, regularization: float = 0.0001,
                 iterations: int = 200, random_state: int = SEED, num_threads: int = 1):
        self.factors = factors
        self.learning_rate = learning_rate
        self.regularization = regularization
        self.iterations = iterations
        self.random_state = random_state
        self.num_threads = num_threads

    def params(self):
        return {"factors": self.factors, "learning_rate": self.learning_rate,
                "regularization": self.regularization, "iterations": self.iterations,
                "random_state": self.random_state, "num_threads": self.num_threads}

    def _make_model(self):
        return implicit.cpu.bpr.BayesianPersonalizedRanking(
            factors=self.factors, learning_rate=self.learning_rate, regularization=self.regularization,
            iterations=self.iterations, random_state=self.random_state, num_threads=self.num_threads)


MODELS: dict[str, type[Recommender]] = {
    cls.name: cls for cls in (ALSRecommender, BPRRecommender, PopularityRecommender, WeightedRatingRecommender)
}


def load_model(directory: Path) -> Recommender:
    """Rebuild a model saved by ``Recommender.save`` (reads model.json + model.npz, no pickle)."""
    directory = Path(directory)
    meta_path, npz_path = directory / "model.json", directory / "model.npz"
    if not meta_path.exists() or not npz_path.exists():
        raise ModelNotTrained(f"no saved model in {directory}: expected model.json and model.npz; train one first")
    meta = json.loads(meta_path.read_text())
    cls = MODELS.get(meta.get("name"))
    if cls is None:
        raise ValidationError(f"unknown model {meta.get('name')!r} in {meta_path}; known: {', '.join(MODELS)}")
    model = cls(**meta["params"])
    with np.load(npz_path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    model._set_arrays(arrays, meta)
    model.fit_seconds_ = meta.get("fit_seconds")
    return model
