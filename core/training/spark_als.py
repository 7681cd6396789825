"""Implicit-feedback ALS on Spark MLlib, exported into the project's bundle format (issue 15).

`SparkALSRecommender` is an `ALSRecommender` whose `fit` runs MLlib's ALS
(`pyspark.ml.recommendation.ALS`, `implicitPrefs=True`) on the same users × items
confidence matrix, then stores the learned user and item factors exactly where the
`implicit` model keeps them. It saves as `"als"` (model.json + model.npz), so a
Spark-trained bundle is served, explained, registered, erased and re-keyed by the
unchanged code paths, and `load_model` brings it back as an `ALSRecommender`.

Parameter mapping (ours → MLlib): factors → rank, regularization → regParam,
alpha → alpha, iterations → maxIter, random_state → seed. Both solve Hu, Koren &
Volinsky (2008) with confidence c = 1 + alpha·r and preference 1 for r > 0, but
MLlib scales the regularization of each user (item) by its number of observed
pairs (ALS-WR, Zhou et al. 2008) where `implicit` uses one λ for all. With
`reg_scaling="per-pair"` (the default) regParam = regularization / (mean observed
pairs per user), so a user with an average history gets the λ `implicit` would
use; `"none"` passes regularization through unchanged. The rows of the exported
factors are the matrix rows (users ordered as `dataset.to_matrix` orders them), so
nothing about the mapping changes; items no training pair touches get zero factors
(MLlib learns none for them; `implicit` solves them to zero as well).

Runs record `engine: "spark"` in their parameters (`SparkALSRecommender.run_params`) and
the bundle's `bundle.json`; the factors themselves carry no trace of the engine.
"""
from __future__ import annotations

import time

import numpy as np
import pandas as pd
import scipy.sparse as sp

from core.constants import SEED
from core.errors import ValidationError
from core.training.models import ALSRecommender, _check_matrix
from core.warehouse.spark import get_session

ENGINE = "spark"
REG_SCALINGS = ("per-pair", "none")


class SparkALSRecommender(ALSRecommender):
    """`ALSRecommender` trained by Spark MLlib (see the module docstring); saves and loads as `"als"`.

    Parameters are `ALSRecommender`'s, plus `reg_scaling` ("per-pair" or "none") and an optional
    `spark` session (default: the process's, `core.warehouse.spark.get_session`). `num_threads`
    is kept for the saved parameters; Spark's parallelism comes from its master.
    """

    engine = ENGINE

    def __init__(self, factors: int = 128, regularization: float = 20.0, alpha: float = 2.0,
                 iterations: int = 15, random_state: int = SEED, num_threads: int = 1,
                 reg_scaling: str = "per-pair", spark=None):
        super().__init__(factors=factors, regularization=regularization, alpha=alpha, iterations=iterations,
                         random_state=random_state, num_threads=num_threads)
        self.reg_scaling = reg_scaling
        self.spark = spark

    def run_params(self) -> dict:
        """What a run records (`tracking.start_run`): the saved parameters, the engine and the λ scaling."""
        return self.params() | {"engine": ENGINE, "reg_scaling": self.reg_scaling}

    def mllib_params(self, user_items: sp.csr_matrix) -> dict:
        """The MLlib ALS parameters this model fits with on `user_items`."""
        if self.reg_scaling not in REG_SCALINGS:
            raise ValidationError(f"unknown reg_scaling {self.reg_scaling!r}; choose one of: {', '.join(REG_SCALINGS)}")
        reg = float(self.regularization)
        if self.reg_scaling == "per-pair":
            rows = int((np.diff(user_items.indptr) > 0).sum())
            reg = reg / max(user_items.nnz / max(rows, 1), 1.0)
        return {"rank": int(self.factors), "regParam": reg, "alpha": float(self.alpha),
                "maxIter": int(self.iterations), "seed": int(self.random_state), "implicitPrefs": True,
                "nonnegative": False, "checkpointInterval": -1}

    def fit(self, user_items: sp.csr_matrix) -> "SparkALSRecommender":
        """Fit on a users × items CSR confidence matrix (float32, unscaled: alpha is applied by ALS)."""
        from pyspark.ml.recommendation import ALS
        user_items = _check_matrix(user_items, for_fit=True)
        spark = self.spark or get_session()
        t0 = time.perf_counter()
        coo = user_items.tocoo()
        keep = coo.data > 0
        pairs = pd.DataFrame({"user": coo.row[keep].astype(np.int32), "item": coo.col[keep].astype(np.int32),
                              "rating": coo.data[keep].astype(np.float32)})
        blocks = max(1, spark.sparkContext.defaultParallelism)
        frame = spark.createDataFrame(pairs, "user INT, item INT, rating FLOAT").repartition(blocks).cache()
        try:
            als = ALS(userCol="user", itemCol="item", ratingCol="rating", numUserBlocks=blocks, numItemBlocks=blocks,
                      **self.mllib_params(user_items))
            fitted = als.fit(frame)
            users = _factors(fitted.userFactors, user_items.shape[0], self.factors)
            items = _factors(fitted.itemFactors, user_items.shape[1], self.factors)
        finally:
            frame.unpersist()
        self._set_arrays({"user_factors": users, "item_factors": items}, {"n_items": user_items.shape[1]})
        self.fit_seconds_ = time.perf_counter() - t0
        return self


def _factors(frame, n: int, rank: int) -> np.ndarray:
    """MLlib's (id, features) factor table as an n × rank float32 array (ids it has no row for: zeros)."""
    out = np.zeros((n, rank), dtype=np.float32)
    df = frame.toPandas()
    if len(df):
        out[df["id"].to_numpy(dtype=np.int64)] = np.stack(df["features"].to_numpy()).astype(np.float32)
    return out
