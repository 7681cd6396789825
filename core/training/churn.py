"""The third model: who is about to stop watching? A calibrated gradient-boosted classifier over the
point-in-time features of `core.warehouse.churn_data`.

Time split (nothing of a later period trains an earlier one):
    holdout snapshot  t_h = end − 14 days            (its labels need the 14 days up to the warehouse's end)
    training          t_h − 14 days, t_h − 21 days, … (labels end where the holdout's begin), each with its full
                      28-day feature window inside the data (a truncated window would look like a quiet user)
So a warehouse needs 28 + 14 + 14 = 56 days of watch data. The trees are fit on the training snapshots; a Platt
scaling of their log-odds is fit on out-of-fold log-odds (5 folds grouped by user, so no user is scored by trees
that saw them), so risk = σ(a · f(x) + b). Because that map is linear in log-odds, SHAP values of the trees
times `a` explain the calibrated log-odds exactly: b + a·(φ₀ + Σ φᵢ) = logit(risk).

The baseline is the rule a team has before any model: the longer since the last watch, the likelier the user
is gone. Its ranking metrics use the days themselves; its probabilities (Brier, calibration) the churn rate by
days-since-last-watch on the same training snapshots (isotonic, so more days never means less risk).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.calibration import calibration_curve
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

from core.errors import RetroError
from core.training import tree_artifacts
from core.warehouse.churn_data import FEATURES, HORIZON_DAYS, LOOKBACK_DAYS

MODEL_KIND = "churn_gb"
FAMILY = "churn"
CHURN_FILES = ("churn.joblib", "churn.json")          # what the artifact hash covers, in order
TRAINING_ROWS = tree_artifacts.TRAINING_ROWS           # the rows it was fit and judged on (erasable, not hashed)
SNAPSHOT_EVERY_DAYS = 7
MIN_HISTORY_DAYS = LOOKBACK_DAYS
CALIBRATION_FOLDS = 5
# Small trees, many of them, a large leaf minimum: a few thousand rows per snapshot and labels that are noisy by
# nature (a quiet fortnight of a light user) overfit bigger trees.
DEFAULT_PARAMS = {"max_iter": 200, "learning_rate": 0.03, "max_leaf_nodes": 7, "min_samples_leaf": 80,
                  "l2_regularization": 2.0}
CALIBRATION_BINS = 10


class ChurnIntegrityError(RetroError):
    """A churn artifact whose bytes do not match the registry's hash."""


class NotEnoughHistory(RetroError):
    """The warehouse does not span enough days for a time-split churn model."""


@dataclass
class ChurnModel:
    """Trees (raw log-odds) and the Platt scaling that calibrates them."""

    trees: HistGradientBoostingClassifier
    slope: float
    intercept: float
    features: tuple = FEATURES
    used: tuple = tuple(range(len(FEATURES)))   # columns with any known value in training (the trees' inputs)

    def logit(self, X: np.ndarray) -> np.ndarray:
        return self.slope * self.trees.decision_function(X[:, list(self.used)]) + self.intercept

    def risk(self, X: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-self.logit(X)))

    def contributions(self, X: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
        """Per-feature SHAP values on the calibrated log-odds (n × features), the base value and the log-odds:
        base + Σ values = logit(risk) for every row."""
        import shap
        explainer = shap.TreeExplainer(self.trees)
        values = np.zeros(X.shape)     # a feature the trees never saw (unknown for everyone) contributes nothing
        values[:, list(self.used)] = np.asarray(explainer.shap_values(X[:, list(self.used)])).reshape(len(X), -1)
        base = float(np.ravel(explainer.expected_value)[0]) * self.slope + self.intercept
        return values * self.slope, base, self.logit(X)


# ------------------------------------------------------------------ time split
def snapshot_plan(start: pd.Timestamp, end: pd.Timestamp) -> dict[str, list[pd.Timestamp]]:
    """The snapshot dates of a time split for data in [start, end): {"train": [...], "holdout": [t_h]};
    raises NotEnoughHistory when no training snapshot fits."""
    t_h = end - pd.Timedelta(days=HORIZON_DAYS)
    first = start + pd.Timedelta(days=MIN_HISTORY_DAYS)
    train, t = [], t_h - pd.Timedelta(days=HORIZON_DAYS)
    while t >= first:
        train.append(t)
        t -= pd.Timedelta(days=SNAPSHOT_EVERY_DAYS)
    if not train:
        need = MIN_HISTORY_DAYS + 2 * HORIZON_DAYS
        raise NotEnoughHistory(f"a churn model needs at least {need} days of watch data ({MIN_HISTORY_DAYS} days of "
                               f"features, then {HORIZON_DAYS} days of outcome for training and {HORIZON_DAYS} for "
                               f"the holdout); the warehouse spans {(end - start).days} days — simulate more days")
    return {"train": sorted(train), "holdout": [t_h]}


# ------------------------------------------------------------------ fitting
def matrix(frame: pd.DataFrame) -> np.ndarray:
    return frame[list(FEATURES)].to_numpy(dtype=float)


def fit(train: pd.DataFrame, seed: int, params: dict | None = None) -> ChurnModel:
    """Trees on `train`; Platt scaling on their out-of-fold log-odds (folds grouped by user)."""
    y = train["label"].to_numpy()
    if len(y) == 0 or y.min() == y.max():
        raise RetroError(f"the churn training snapshots need both users who churned and users who stayed "
                         f"({len(y)} rows, {int(np.nansum(y))} churned); simulate more days")
    X, y = matrix(train), y.astype(int)
    used = tuple(int(i) for i in np.flatnonzero(~np.isnan(X).all(axis=0)))   # e.g. no list served yet anywhere
    X = X[:, list(used)]

    def trees_on(rows) -> HistGradientBoostingClassifier:
        return HistGradientBoostingClassifier(**(DEFAULT_PARAMS | (params or {})), early_stopping=False,
                                              random_state=seed).fit(X[rows], y[rows])
    groups = train["user_key"].to_numpy()
    folds = GroupKFold(n_splits=min(CALIBRATION_FOLDS, len(np.unique(groups))))
    out_of_fold = np.zeros(len(y))
    for fit_rows, held in folds.split(X, y, groups):
        out_of_fold[held] = trees_on(fit_rows).decision_function(X[held])
    platt = LogisticRegression(C=1e6).fit(out_of_fold.reshape(-1, 1), y)
    return ChurnModel(trees_on(np.arange(len(y))), float(platt.coef_[0, 0]), float(platt.intercept_[0]), FEATURES, used)


@dataclass
class RecencyRule:
    """The baseline: churn rate by days since the last watch, learned on the training snapshots."""

    iso: IsotonicRegression

    @classmethod
    def fit(cls, frame: pd.DataFrame) -> "RecencyRule":
        iso = IsotonicRegression(increasing=True, out_of_bounds="clip", y_min=0.0, y_max=1.0)
        return cls(iso.fit(frame["days_since_last_watch"].to_numpy(), frame["label"].to_numpy()))

    def risk(self, frame: pd.DataFrame) -> np.ndarray:
        return np.clip(self.iso.predict(frame["days_since_last_watch"].to_numpy()), 1e-6, 1 - 1e-6)


# ------------------------------------------------------------------ metrics
def top_decile_lift(y: np.ndarray, score: np.ndarray) -> float:
    """Churn rate among the 10 % highest scores ÷ the overall churn rate (ties broken by order, stable)."""
    n = max(1, int(np.ceil(0.1 * len(y))))
    top = np.argsort(-score, kind="stable")[:n]
    base = y.mean()
    return float(y[top].mean() / base) if base > 0 else float("nan")


def calibration(y: np.ndarray, prob: np.ndarray, bins: int = CALIBRATION_BINS) -> dict:
    """Reliability curve over quantile bins: mean predicted vs observed churn rate per bin."""
    observed, predicted = calibration_curve(y, prob, n_bins=bins, strategy="quantile")
    return {"predicted": [round(float(v), 6) for v in predicted], "observed": [round(float(v), 6) for v in observed]}


def scores(y: np.ndarray, prob: np.ndarray, rank_score: np.ndarray | None = None) -> dict:
    """ROC AUC, PR AUC, Brier, top-decile lift, calibration curve of `prob` (ranking metrics on `rank_score`
    when given: the recency rule ranks by the days themselves)."""
    y = np.asarray(y, dtype=int)
    rank = prob if rank_score is None else rank_score
    both = 0 < y.sum() < len(y)
    return {
        "roc_auc": float(roc_auc_score(y, rank)) if both else None,
        "pr_auc": float(average_precision_score(y, rank)) if both else None,
        "brier": float(brier_score_loss(y, prob)),
        "top_decile_lift": top_decile_lift(y, rank),
        "base_rate": float(y.mean()) if len(y) else None,
        "mean_predicted": float(np.mean(prob)) if len(prob) else None,
        "rows": int(len(y)), "churned": int(y.sum()),
        "calibration": calibration(y, prob) if both else {"predicted": [], "observed": []},
    }


# ------------------------------------------------------------------ artifacts
def save(directory: Path, model: ChurnModel, meta: dict, rows: dict[str, np.ndarray]) -> str:
    """Write the model, its metadata and its training rows; returns the artifact hash (model + metadata)."""
    blob = {"trees": model.trees, "slope": model.slope, "intercept": model.intercept, "features": list(model.features),
            "used": list(model.used)}
    return tree_artifacts.save(directory, CHURN_FILES, blob, meta, rows)


write_rows, read_rows = tree_artifacts.write_rows, tree_artifacts.read_rows


def artifact_hash(directory: Path) -> str:
    return tree_artifacts.artifact_hash(directory, CHURN_FILES)


def load(directory: Path, expected_hash: str | tuple[str, ...] | None = None) -> ChurnModel:
    """The churn model in `directory`; with `expected_hash` its bytes are checked before unpickling."""
    blob = tree_artifacts.load_blob(directory, CHURN_FILES, expected_hash, ChurnIntegrityError, "churn")
    return ChurnModel(blob["trees"], float(blob["slope"]), float(blob["intercept"]), tuple(blob["features"]),
                      tuple(blob["used"]))


def read_meta(directory: Path) -> dict:
    return tree_artifacts.read_meta(directory, CHURN_FILES)
