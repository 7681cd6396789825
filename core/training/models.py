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
import time
from pathlib import Path

import implicit.cpu.als  # noqa: F401  (importing implicit loads scipy's OpenBLAS; limit threads after)
import implicit.cpu.bpr
import numpy as np
import scipy.sparse as sp
from scipy.linalg import lapack
from core.threads import pin_blas

from core.constants import DEFAULT_K, SEED
from core.errors import RetroError, ValidationError
from core.filemodes import private_tree

PAD_ID = -1
PAD_SCORE = np.float32(-np.inf)
_FILTERED = np.finfo(np.float32).min  # implicit's score for a filtered-out item


class ModelNotTrained(RetroError):
    """The model was asked to recommend or explain before ``fit`` (or ``load_model``)."""


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


# --- item-based closed form (EASE) and its blend with ALS -------------------------------------------------------
DEFAULT_EASE_MAX_MEMORY_MB = 4096      # the settings' default (`Settings.ease_max_memory_mb`)
_SCORE_CHUNK = 1024                    # users scored at once: a chunk × items dense block


class CatalogueTooLarge(ValidationError):
    """The catalogue needs dense items × items matrices larger than the configured memory limit."""


def ease_memory_mb(n_items: int) -> float:
    """MiB that fitting EASE on `n_items` columns may need: dense items × items matrices — the Gram matrix and its
    regularized inverse (float64, turned into the weights in place) and the float32 weights, with room for a
    copy: 24·n² bytes. 1,500 items: 51 MiB; 9,742: 2,172 MiB."""
    return 24.0 * float(n_items) ** 2 / 2**20


def check_ease_memory(n_items: int, max_memory_mb: float) -> None:
    """Raise `CatalogueTooLarge` (before any allocation) when EASE on `n_items` would exceed the limit."""
    need = ease_memory_mb(n_items)
    if need > max_memory_mb:
        raise CatalogueTooLarge(
            f"EASE on {n_items:,} items needs about {need:,.0f} MiB for its dense item-item matrices, over the "
            f"limit of {max_memory_mb:,.0f} MiB: raise RETRO_EASE_MAX_MEMORY_MB if the machine has the memory, "
            "or train als (its memory grows with factors × items, not items²)")


def ease_penalty(gram_diagonal: np.ndarray, regularization: float, dropout: float = 0.0) -> np.ndarray:
    """The diagonal of Λ, the L2 penalty on B: Λ = λI + p/(1 − p)·diag(XᵀX) (Steck 2020, "Autoencoders that don't
    overfit towards the identity": dropout of the input with probability p, marginalized, penalizes each item's
    weights by its own popularity). p = 0 is EASE's λI; p lies in [0, 1)."""
    return float(regularization) + float(dropout) / (1.0 - float(dropout)) * np.asarray(gram_diagonal, dtype=np.float64)


def _penalized_inverse(gram: np.ndarray, penalty: np.ndarray) -> np.ndarray:
    """P = (G + diag(penalty))⁻¹, float64, both triangles filled.

    G + Λ is symmetric positive definite (Λ > 0), so P comes from its Cholesky factor (LAPACK potrf/potri, in
    place): about half the work of a general inverse (2.4× faster at 3,000 items, one BLAS thread)."""
    n = gram.shape[0]
    A = np.array(gram, dtype=np.float64, order="F")
    A[np.diag_indices(n)] += penalty
    factor, info = lapack.dpotrf(A, lower=False, overwrite_a=True, clean=False)
    if info != 0:
        raise ValidationError(f"XᵀX + Λ is not positive definite (LAPACK dpotrf info {info}); use a larger λ")
    P, info = lapack.dpotri(factor, lower=False, overwrite_c=True)
    if info != 0:
        raise ValidationError(f"could not invert XᵀX + Λ (LAPACK dpotri info {info}); use a larger λ")
    for i0 in range(0, n, 512):               # potri fills the upper triangle: mirror it, block by block, in place
        i1 = min(n, i0 + 512)
        P[i0:i1, :i0] = P[:i0, i0:i1].T
        block = P[i0:i1, i0:i1]
        P[i0:i1, i0:i1] = np.triu(block) + np.triu(block, 1).T
    return P


def ease_weights(gram: np.ndarray, regularization: float, dropout: float = 0.0,
                 zero_diagonal: bool = True) -> np.ndarray:
    """Item-item weights from `gram` = XᵀX (items × items), P = (G + Λ)⁻¹ and Λ = `ease_penalty`; float32.

    zero_diagonal=True — EASE (Steck 2019, eq. 8; with dropout > 0, EDLAE, Steck 2020): B = argmin
    ‖X − XB‖² + ‖Λ^½B‖² subject to diag(B) = 0, so B = I − P·diag(1/diag(P)): B_ij = −P_ij / P_jj.
    zero_diagonal=False — DLAE (Steck 2020), the same problem without the constraint: B = (G + Λ)⁻¹G =
    I − PΛ, so B_ij = −P_ij·Λ_jj off the diagonal. Its diagonal only ever scores a title the user already has
    (never recommended), so it is stored as 0 here too: a score stays the sum of the watched titles' weights."""
    penalty = ease_penalty(np.diag(gram), regularization, dropout)
    P = _penalized_inverse(gram, penalty)
    if zero_diagonal:
        P /= -np.diag(P).copy()               # column j divided by −P_jj
    else:
        P *= -penalty                         # column j times −Λ_jj
    P[np.diag_indices(gram.shape[0])] = 0.0
    return np.ascontiguousarray(P, dtype=np.float32)


def _binary(user_items: sp.csr_matrix) -> sp.csr_matrix:
    """Users × items 0/1 (float64): EASE, like Steck's, learns from who interacted, not how strongly."""
    x = sp.csr_matrix(user_items, dtype=np.float64, copy=True)
    x.data = (x.data > 0).astype(np.float64)
    x.eliminate_zeros()
    return x


def ease_gram(user_items: sp.csr_matrix, user_weight: float = 0.0) -> np.ndarray:
    """G = XᵀWX (items × items, float64) of the binary matrix X, W = diag(n_u^−g) with n_u a user's number of titles
    and g = `user_weight`: g = 0 is the plain co-occurrence count XᵀX; g > 0 damps the users with long histories,
    whose pairs otherwise dominate the counts (on MovieLens latest-small 10 % of the users hold 48 % of the ratings).
    Each user's term depends on their own row only, so subtracting ``ease_gram(rows)`` removes them exactly."""
    x = _binary(user_items)
    if user_weight:
        n = np.diff(x.indptr).astype(np.float64)
        x = sp.diags(np.where(n > 0, n, 1.0) ** (-float(user_weight))) @ x
        return np.asarray((x.T @ _binary(user_items)).toarray())
    return (x.T @ x).toarray()


def _top_k(scores: np.ndarray, seen: sp.csr_matrix | None, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k columns of each row of a dense score block (ties: lower column first), seen items excluded."""
    scores = np.array(scores, dtype=np.float64)
    if seen is not None and seen.nnz:
        r = np.repeat(np.arange(seen.shape[0]), np.diff(seen.indptr))
        scores[r, seen.indices] = -np.inf
    n_items = scores.shape[1]
    N = min(k, n_items)
    part = np.argpartition(-scores, N - 1, axis=1)[:, :N] if N < n_items else np.tile(np.arange(n_items), (len(scores), 1))
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -part_scores), axis=1)
    ids = np.full((len(scores), k), PAD_ID, dtype=np.int64)
    out = np.full((len(scores), k), PAD_SCORE, dtype=np.float32)
    ids[:, :N] = np.take_along_axis(part, order, axis=1)
    out[:, :N] = np.take_along_axis(part_scores, order, axis=1)
    return ids, out


# λ candidates for EASE (the grid of benchmarks/bench_movielens.py --tune ease), in units of the plain
# co-occurrence counts; with a user weight g, `choose_ease_regularization` rescales them to the weighted Gram's size
EASE_REGULARIZATIONS = (50.0, 100.0, 200.0, 300.0, 500.0, 1000.0)
EASE_DROPOUTS = (0.0, 0.1, 0.25)          # p of the dropout penalty p/(1 − p)·diag(G) (Steck 2020)
EASE_USER_WEIGHTS = (0.0, 0.5)            # g of the users' weights n_u^−g in the Gram matrix
EASE_ZERO_DIAGONALS = (True, False)       # EASE/EDLAE (diag(B) = 0) or DLAE (no constraint)
_EASE_CHOSEN = ("regularization", "dropout", "user_weight", "zero_diagonal")   # what choose_ease_regularization sets


def ease_label(regularization: float, dropout: float, user_weight: float, zero_diagonal: bool) -> str:
    """A grid point as text, the key of the validation curve: 'λ=500 p=0.1 g=0.5 EASE' (λ in plain counts)."""
    return f"λ={regularization:g} p={dropout:g} g={user_weight:g} {'EASE' if zero_diagonal else 'DLAE'}"


def _validation_scores(x: sp.csr_matrix, gram: np.ndarray, seen: sp.csr_matrix, regularization: float,
                       dropout: float, user_weight: float) -> dict[bool, np.ndarray]:
    """{zero_diagonal: dense scores (users of `seen` × items)} of the model fitted on `x` (binary, users × items)
    with `gram` = ease_gram(x, user_weight), for both diagonal rules from one inverse.

    With fewer users than items the inverse is taken in user space (Woodbury): P = Λ⁻¹ − Λ⁻¹X̃ᵀ(I + X̃Λ⁻¹X̃ᵀ)⁻¹X̃Λ⁻¹,
    X̃ = W^½X, so only X_seen·P and diag(P) are formed — a users³ solve instead of an items³ one (MovieLens
    latest-small: 610 users, 9,724 items; 1 s per point instead of 15–40). The same numbers either way."""
    penalty = ease_penalty(np.diag(gram), regularization, dropout)
    xs = _binary(seen)
    if x.shape[0] < x.shape[1]:
        n = np.diff(x.indptr).astype(np.float64)
        xt = (sp.diags(np.where(n > 0, n, 1.0) ** (-0.5 * user_weight)) @ x).toarray()
        xl = xt / penalty                                        # X̃Λ⁻¹
        inner = np.linalg.inv(np.eye(len(xt)) + xl @ xt.T)
        diag_p = 1.0 / penalty - np.einsum("ij,ij->j", inner @ xl, xl)
        xs_l = xs.toarray() / penalty
        xs_p = xs_l - ((xs_l @ xt.T) @ inner) @ xl               # X_seen·P
    else:
        P = _penalized_inverse(gram, penalty)
        diag_p = np.diag(P).copy()
        xs_p = np.asarray(xs @ P)
    # the diagonal of B scores only seen titles, which _top_k excludes
    return {True: -xs_p / diag_p, False: -xs_p * penalty}


def choose_ease_regularization(user_items: sp.csr_matrix, grid=EASE_REGULARIZATIONS, *, dropouts=EASE_DROPOUTS,
                               user_weights=EASE_USER_WEIGHTS, zero_diagonals=EASE_ZERO_DIAGONALS,
                               share: float = 0.2, seed: int = SEED,
                               max_memory_mb: float = DEFAULT_EASE_MAX_MEMORY_MB) -> tuple[dict, dict]:
    """({regularization, dropout, user_weight, zero_diagonal}, {grid point label: validation nDCG@10}): the
    EASERecommender parameters whose model, fitted on a validation split of `user_items` (`validation_split`), ranks
    the held-out titles best. Nothing but `user_items` is read.

    λ in `grid` is in plain co-occurrence counts: with a user weight g the Gram matrix shrinks, so λ is multiplied by
    trace(XᵀWX) / trace(XᵀX) (the returned `regularization` is that product, what the model is given). Ties: the
    larger λ, then the smaller p, the smaller g, the EASE constraint. With nobody to validate on: EASERecommender's
    defaults and an empty curve."""
    from core.training.metrics import ndcg_at_k
    user_items = _check_matrix(user_items, for_fit=True)
    check_ease_memory(user_items.shape[1], max_memory_mb)
    fit, held = validation_split(user_items, share, seed)
    users = np.array([u for u, h in enumerate(held) if h], dtype=np.int64)
    if not len(users):
        return {k: v for k, v in EASERecommender().params().items() if k in _EASE_CHOSEN}, {}
    pin_blas()
    x = _binary(fit)
    seen = _seen_rows(fit, users)
    relevant = [held[u] for u in users]
    plain_trace = float(x.sum())
    curve, points = {}, []
    for g in user_weights:
        gram = ease_gram(x, g)
        scale = float(np.trace(gram)) / plain_trace
        for lam in grid:
            for p in dropouts:
                by_rule = _validation_scores(x, gram, seen, float(lam) * scale, float(p), float(g))
                for zero_diagonal in zero_diagonals:
                    v = ndcg_at_k(_top_k(by_rule[zero_diagonal], seen, DEFAULT_K)[0], relevant, DEFAULT_K)
                    curve[ease_label(float(lam), float(p), float(g), zero_diagonal)] = v
                    points.append((v, float(lam), -float(p), -float(g), zero_diagonal, scale))
    v, lam, p, g, zero_diagonal, scale = max(points)
    return {"regularization": float(f"{lam * scale:.6g}"), "dropout": -p, "user_weight": -g,
            "zero_diagonal": bool(zero_diagonal)}, curve


class EASERecommender(Recommender):
    """EASE, an item-item model in closed form (Steck 2019, "Embarrassingly Shallow Autoencoders"), and its
    dropout-regularized relatives EDLAE and DLAE (Steck 2020, "Autoencoders that don't overfit towards the identity").

    B = argmin ‖X − XB‖² + ‖Λ^½B‖² subject to diag(B) = 0, solved by B = I − P·diag(1/diag(P)) with
    P = (XᵀX + Λ)⁻¹; X is the users × items matrix made binary and Λ = λI + p/(1 − p)·diag(XᵀX) (`dropout` p; 0 is
    plain EASE). ``zero_diagonal=False`` drops the constraint (DLAE: B = I − PΛ); ``user_weight`` g > 0 fits on
    XᵀWX, each user weighted n_u^−g (`ease_gram`). A user's score of item j is x_u · B[:, j]: the
    sum over the titles they watched of the learned weight towards j, so an explanation is exact (the watched
    titles' weights add up to the score) and the model holds no per-user state. The Gram matrix XᵀX is kept
    (`gram_`) so an erasure can take a user's rows out of it (`forget`) and re-solve B without refitting.

    Memory: dense items × items matrices (`ease_memory_mb`); `fit` raises `CatalogueTooLarge` before allocating
    when that exceeds `max_memory_mb` (the settings' `ease_max_memory_mb`). The default λ (500) was picked by
    ``benchmarks/bench_movielens.py --tune ease`` on MovieLens; the training pipeline chooses λ for each training
    window on a validation split of it (`choose_ease_regularization`, the same grid) unless one is given, since
    the best λ grows with the data (a 300-user world wants far less than MovieLens). The same validation chooses
    p, g and the diagonal rule; the defaults here are plain EASE, so a bundle saved before they existed loads as it was.
    """

    name = "ease"

    def __init__(self, regularization: float = 500.0, random_state: int = SEED,
                 max_memory_mb: float = DEFAULT_EASE_MAX_MEMORY_MB, dropout: float = 0.0, user_weight: float = 0.0,
                 zero_diagonal: bool = True):
        self.regularization = regularization
        self.random_state = random_state           # unused (closed form); accepted like every model's
        self.max_memory_mb = max_memory_mb
        self.dropout = dropout
        self.user_weight = user_weight
        self.zero_diagonal = zero_diagonal

    def params(self):
        return {"regularization": self.regularization, "random_state": self.random_state,
                "max_memory_mb": self.max_memory_mb, "dropout": self.dropout, "user_weight": self.user_weight,
                "zero_diagonal": self.zero_diagonal}

    def _solve(self) -> np.ndarray:
        return ease_weights(self.gram_, self.regularization, self.dropout, self.zero_diagonal)

    def fit(self, user_items):
        user_items = _check_matrix(user_items, for_fit=True)
        if not self.regularization > 0:
            raise ValidationError(f"EASE's regularization must be > 0, got {self.regularization!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValidationError(f"EASE's dropout must lie in [0, 1), got {self.dropout!r}")
        if not self.user_weight >= 0:
            raise ValidationError(f"EASE's user_weight must be >= 0, got {self.user_weight!r}")
        check_ease_memory(user_items.shape[1], self.max_memory_mb)
        t0 = time.perf_counter()
        pin_blas()
        self.gram_ = ease_gram(user_items, self.user_weight)
        self.weights_ = self._solve()
        self.n_items_ = user_items.shape[1]
        self.fit_seconds_ = time.perf_counter() - t0
        return self

    def forget(self, user_rows: sp.csr_matrix) -> None:
        """Take these users' rows (users × items, as in the training matrix) out of the Gram matrix and re-solve
        the weights: the model is then the one fitted without them (privacy erasure)."""
        self._check_fitted()
        x = _binary(_check_matrix(user_rows, self.n_items_))
        if not x.nnz:
            return
        pin_blas()
        self.gram_ = np.asarray(self.gram_, dtype=np.float64) - ease_gram(x, self.user_weight)
        self.weights_ = self._solve()

    def user_scores(self, seen: sp.csr_matrix) -> np.ndarray:
        """Dense scores (users of `seen` × items) = X_seen · B."""
        self._check_fitted()
        return np.asarray(_binary(seen) @ self.weights_, dtype=np.float64)

    def _recommend(self, user_rows, seen, k, filter_seen):
        ids = np.full((len(user_rows), k), PAD_ID, dtype=np.int64)
        scores = np.full((len(user_rows), k), PAD_SCORE, dtype=np.float32)
        pin_blas()
        for start in range(0, len(user_rows), _SCORE_CHUNK):
            block = seen[start:start + _SCORE_CHUNK]
            ids[start:start + _SCORE_CHUNK], scores[start:start + _SCORE_CHUNK] = _top_k(
                self.user_scores(block), block if filter_seen else None, k)
        empty = np.diff(seen.indptr) == 0        # no history (an erased row): no personalised list
        ids[empty], scores[empty] = PAD_ID, PAD_SCORE
        return ids, scores

    def score_items(self, user_row, item_ids, user_items):
        self._check_fitted()
        row = _binary(_check_matrix(user_items, self.n_items_)[int(user_row)])
        return np.asarray(row @ self.weights_[:, np.asarray(item_ids, dtype=np.int64)]).ravel().astype(np.float32)

    def explain(self, user_row: int, user_items: sp.csr_matrix, item_id: int, n: int = 5) -> list[tuple[int, float]]:
        """The user's watched titles with the largest weight towards ``item_id``, as (item_id, contribution)."""
        return self.explain_score(user_row, user_items, item_id, n)[1]

    def explain_score(self, user_row: int, user_items: sp.csr_matrix, item_id: int,
                      n: int = 5) -> tuple[float, list[tuple[int, float]]]:
        """(score, top-n contributions): the score is the sum of B[i, item_id] over the user's titles i, exactly
        what ``recommend`` ranks by; contributions are those weights, largest first."""
        self._check_fitted()
        user_items = _check_matrix(user_items, self.n_items_)
        row = user_items[int(user_row)]
        own = row.indices[row.data > 0]
        weights = self.weights_[own, int(item_id)].astype(np.float64)
        order = np.lexsort((own, -weights))[:n]
        return float(weights.sum()), [(int(own[i]), float(weights[i])) for i in order]

    def gram_array(self) -> np.ndarray:
        """The Gram matrix as saved: co-occurrence counts (integers, g = 0) are exact in float32 below 2**24 users;
        weighted ones (g > 0) are not, and stay float64 so an erasure after loading re-solves the same B."""
        return np.asarray(self.gram_, dtype=np.float64 if self.user_weight else np.float32)

    def _arrays(self):
        return {"weights": self.weights_, "gram": self.gram_array()}

    def _set_arrays(self, arrays, meta):
        self.weights_ = arrays["weights"].astype(np.float32)
        self.gram_ = arrays["gram"].astype(np.float64)
        self.n_items_ = int(meta["n_items"])


def _standardize(scores: np.ndarray) -> np.ndarray:
    """Each row to mean 0, standard deviation 1 over the items (a constant row becomes 0)."""
    mean = scores.mean(axis=1, keepdims=True)
    std = scores.std(axis=1, keepdims=True)
    return (scores - mean) / np.where(std > 0, std, 1.0)


def validation_split(user_items: sp.csr_matrix, share: float, seed: int) -> tuple[sp.csr_matrix, list[set]]:
    """Per user, a seeded random `share` of their interactions held out (users with ≥ 2; at least one kept):
    (the rest as users × items, held-out item columns per user row). Reads only `user_items`."""
    x = sp.csr_matrix(user_items, copy=True)
    x.eliminate_zeros()
    rng = np.random.default_rng(seed)
    held: list[set] = [set() for _ in range(x.shape[0])]
    drop = np.zeros(x.nnz, dtype=bool)
    for u in range(x.shape[0]):
        lo, hi = x.indptr[u], x.indptr[u + 1]
        n = hi - lo
        n_val = min(int(round(share * n)), n - 1)
        if n_val < 1:
            continue
        picked = lo + rng.choice(n, size=n_val, replace=False)
        drop[picked] = True
        held[u] = set(x.indices[picked].tolist())
    fit = x.copy()
    fit.data[drop] = 0
    fit.eliminate_zeros()
    return fit, held


class BlendRecommender(Recommender):
    """A score fusion of ALS and EASE: s = (1 − w)·z(ALS) + w·z(EASE), each model's scores standardized per
    user over the catalogue (their scales differ: dot products of factors vs sums of item weights).

    ``weight=None`` (default) chooses w in ``WEIGHTS`` on a validation split carved from the matrix given to
    ``fit`` (`validation_split`, ``validation_share`` of each user's interactions, seeded): both models are fitted
    on the rest, w maximizes validation nDCG@10 (ties: the smaller w), then both are refitted on the whole
    matrix. Nothing outside that matrix is read, so the pipeline's holdout cannot steer w. ``weight_`` is the
    chosen w, ``validation_`` the nDCG@10 of every w tried (empty, and w = 0.5, when no user has two interactions
    to split). Explanations add each watched title's ALS and EASE parts on the fused scale.
    """

    name = "blend"
    WEIGHTS = tuple(i / 10 for i in range(11))

    def __init__(self, factors: int = 128, regularization: float = 20.0, alpha: float = 2.0, iterations: int = 15,
                 ease_regularization: float = 500.0, weight: float | None = None, validation_share: float = 0.2,
                 random_state: int = SEED, num_threads: int = 1, max_memory_mb: float = DEFAULT_EASE_MAX_MEMORY_MB,
                 ease_dropout: float = 0.0, ease_user_weight: float = 0.0, ease_zero_diagonal: bool = True):
        self.factors = factors
        self.regularization = regularization
        self.alpha = alpha
        self.iterations = iterations
        self.ease_regularization = ease_regularization
        self.weight = weight
        self.validation_share = validation_share
        self.random_state = random_state
        self.num_threads = num_threads
        self.max_memory_mb = max_memory_mb
        self.ease_dropout = ease_dropout
        self.ease_user_weight = ease_user_weight
        self.ease_zero_diagonal = ease_zero_diagonal

    def params(self):
        return {"factors": self.factors, "regularization": self.regularization, "alpha": self.alpha,
                "iterations": self.iterations, "ease_regularization": self.ease_regularization, "weight": self.weight,
                "validation_share": self.validation_share, "random_state": self.random_state,
                "num_threads": self.num_threads, "max_memory_mb": self.max_memory_mb, "ease_dropout": self.ease_dropout,
                "ease_user_weight": self.ease_user_weight, "ease_zero_diagonal": self.ease_zero_diagonal}

    def _parts(self) -> tuple[ALSRecommender, EASERecommender]:
        return (ALSRecommender(factors=self.factors, regularization=self.regularization, alpha=self.alpha,
                               iterations=self.iterations, random_state=self.random_state,
                               num_threads=self.num_threads),
                EASERecommender(self.ease_regularization, max_memory_mb=self.max_memory_mb, dropout=self.ease_dropout,
                                user_weight=self.ease_user_weight, zero_diagonal=self.ease_zero_diagonal))

    @staticmethod
    def fused(als_scores: np.ndarray, ease_scores: np.ndarray, weight: float) -> np.ndarray:
        return (1.0 - weight) * _standardize(als_scores) + weight * _standardize(ease_scores)

    def choose_weight(self, user_items: sp.csr_matrix) -> tuple[float, dict]:
        """(w, {w: validation nDCG@10}) from a validation split of `user_items` only."""
        from core.training.metrics import ndcg_at_k
        fit, held = validation_split(user_items, self.validation_share, self.random_state)
        users = np.array([u for u, h in enumerate(held) if h], dtype=np.int64)
        if not len(users):           # nobody with two interactions: nothing to validate on, an even blend
            return 0.5, {}
        als, ease = self._parts()
        als.fit(fit)
        ease.fit(fit)
        seen = _seen_rows(fit, users)
        a = als.user_factors_[users] @ als.item_factors_.T
        e = ease.user_scores(seen)
        relevant = [held[u] for u in users]
        curve = {float(w): ndcg_at_k(_top_k(self.fused(a, e, w), seen, DEFAULT_K)[0], relevant, DEFAULT_K)
                 for w in self.WEIGHTS}
        best = max(curve.values())
        return min(w for w, v in curve.items() if v >= best), curve

    def fit(self, user_items):
        user_items = _check_matrix(user_items, for_fit=True)
        check_ease_memory(user_items.shape[1], self.max_memory_mb)
        t0 = time.perf_counter()
        if self.weight is None:
            self.weight_, self.validation_ = self.choose_weight(user_items)
        else:
            if not 0.0 <= float(self.weight) <= 1.0:
                raise ValidationError(f"the blend's weight must lie in [0, 1], got {self.weight!r}")
            self.weight_, self.validation_ = float(self.weight), {}
        self.als_, self.ease_ = self._parts()
        self.als_.fit(user_items)
        self.ease_.fit(user_items)
        self.n_items_ = user_items.shape[1]
        self.fit_seconds_ = time.perf_counter() - t0
        return self

    def _recommend(self, user_rows, seen, k, filter_seen):
        n_users = self.als_.user_factors_.shape[0]
        if user_rows.size and user_rows.max() >= n_users:
            raise ValidationError(f"user row {int(user_rows.max())} is not in the model (trained on {n_users} "
                                  "users); retrain to include new users")
        ids = np.full((len(user_rows), k), PAD_ID, dtype=np.int64)
        scores = np.full((len(user_rows), k), PAD_SCORE, dtype=np.float32)
        pin_blas()
        items = np.asarray(self.als_.item_factors_)
        for start in range(0, len(user_rows), _SCORE_CHUNK):
            rows, block = user_rows[start:start + _SCORE_CHUNK], seen[start:start + _SCORE_CHUNK]
            fused = self.fused(np.asarray(self.als_.user_factors_)[rows] @ items.T, self.ease_.user_scores(block),
                               self.weight_)
            ids[start:start + len(rows)], scores[start:start + len(rows)] = _top_k(
                fused, block if filter_seen else None, k)
        gone = (np.diff(seen.indptr) == 0) & ~np.asarray(self.als_.user_factors_)[user_rows].any(axis=1)
        ids[gone], scores[gone] = PAD_ID, PAD_SCORE
        return ids, scores

    def score_items(self, user_row, item_ids, user_items):
        self._check_fitted()
        user_items = _check_matrix(user_items, self.n_items_)
        row = int(user_row)
        a = (np.asarray(self.als_.user_factors_)[row] @ np.asarray(self.als_.item_factors_).T)[None, :]
        e = self.ease_.user_scores(user_items[row])
        return self.fused(a, e, self.weight_)[0, np.asarray(item_ids, dtype=np.int64)].astype(np.float32)

    def explain_score(self, user_row: int, user_items: sp.csr_matrix, item_id: int,
                      n: int = 5) -> tuple[float, list[tuple[int, float]]]:
        """(blended score, top-n contributions): each watched title's contribution is the weight of the blend on
        it — its EASE weight towards the item, standardized like EASE's scores, times w, plus its ALS contribution,
        standardized like ALS's scores, times 1 − w."""
        self._check_fitted()
        user_items = _check_matrix(user_items, self.n_items_)
        row = int(user_row)
        a_all = np.asarray(self.als_.user_factors_)[row] @ np.asarray(self.als_.item_factors_).T
        e_all = self.ease_.user_scores(user_items[row])[0]
        a_std, e_std = a_all.std() or 1.0, e_all.std() or 1.0
        _, als_parts = self.als_.explain_score(row, user_items, item_id, n=user_items[row].nnz or 1)
        _, ease_parts = self.ease_.explain_score(row, user_items, item_id, n=user_items[row].nnz or 1)
        contrib: dict[int, float] = {}
        for i, v in als_parts:
            contrib[i] = contrib.get(i, 0.0) + (1 - self.weight_) * v / a_std
        for i, v in ease_parts:
            contrib[i] = contrib.get(i, 0.0) + self.weight_ * v / e_std
        top = [(int(i), float(v)) for i, v in sorted(contrib.items(), key=lambda kv: (-kv[1], kv[0]))[:n]]
        total = float(self.score_items(row, [int(item_id)], user_items)[0])
        return total, top

    def drop_user(self, user_row: int) -> None:
        """Zero the user's ALS factors (the EASE part forgets them through `forget`)."""
        self._check_fitted()
        self.als_.drop_user(user_row)

    def forget(self, user_rows: sp.csr_matrix) -> None:
        self._check_fitted()
        self.ease_.forget(user_rows)

    def save(self, directory: Path) -> dict:
        """As every model, plus the chosen weight and the validation curve in model.json."""
        meta = super().save(directory) | {"weight": self.weight_,
                                          "validation": {str(w): v for w, v in self.validation_.items()}}
        (Path(directory) / "model.json").write_text(json.dumps(meta, indent=2))
        private_tree(Path(directory))
        return meta

    def _arrays(self):
        return {"user_factors": np.asarray(self.als_.user_factors_), "item_factors": np.asarray(self.als_.item_factors_),
                "ease_weights": self.ease_.weights_, "ease_gram": self.ease_.gram_array(),
                "blend_weight": np.array([self.weight_])}

    def _set_arrays(self, arrays, meta):
        self.als_, self.ease_ = self._parts()
        self.als_._set_arrays({"user_factors": arrays["user_factors"], "item_factors": arrays["item_factors"]}, meta)
        self.ease_._set_arrays({"weights": arrays["ease_weights"], "gram": arrays["ease_gram"]}, meta)
        self.weight_ = float(arrays["blend_weight"][0])
        self.validation_ = meta.get("validation") or {}
        self.n_items_ = int(meta["n_items"])


MODELS: dict[str, type[Recommender]] = {
    cls.name: cls for cls in (ALSRecommender, BPRRecommender, EASERecommender, BlendRecommender, PopularityRecommender,
                              WeightedRatingRecommender)
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
