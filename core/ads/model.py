"""The fourth model: will this user click this campaign's ad? A calibrated gradient-boosted classifier over the
point-in-time features of `core.ads.features`, its time split, its baseline and its artifacts.

Time split by day of `shown_at` (nothing later trains anything earlier):
    train        the first days                  the trees
    calibration  the next CALIBRATION_SHARE days the Platt scaling of the trees' log-odds
    holdout      the last HOLDOUT_SHARE days     every metric of the model, the baseline and production
Platt scaling rather than isotonic regression: the map p = σ(a·f(x) + b) is linear in log-odds, so the trees'
SHAP values times `a` explain the calibrated log-odds exactly (b + a·(φ₀ + Σφᵢ) = logit p, as for churn), it
keeps the ranking of the trees (isotonic ties it into steps), and two parameters fit well on a calibration fold of
a few thousand impressions with few clicks, where isotonic regression overfits. Fitting it on days after the
trees' also corrects the drift of the click rate between them.

The baseline is the rule a team has before any model: each campaign's historical click rate (clicks ÷
impressions before the holdout, shrunk towards the overall rate by PRIOR_IMPRESSIONS so a new campaign is not
0 % or 100 %).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression

from core.ads import features
from core.errors import RetroError
from core.training import tree_artifacts

MODEL_KIND = "ads_gb"
FAMILY = "ads"
ADS_FILES = ("ads.joblib", "ads.json")        # what the artifact hash covers, in order
TRAINING_ROWS = tree_artifacts.TRAINING_ROWS           # the rows it was fit and judged on (erasable, not hashed)
CALIBRATION_SHARE, HOLDOUT_SHARE = 0.2, 0.2
MIN_DAYS = 3
PRIOR_IMPRESSIONS = 5.0
PART_CODES = {"train": 0, "calibration": 1, "holdout": 2}
# Clicks are rare (a few %) and a world's log holds a few hundred of them: small trees with a large leaf minimum
# at a low rate (on the default world continued 14 days, 200 15-leaf trees of ≥ 40 rows lost to the campaign rates
# on log loss, 0.2180 vs 0.2137, and ROC AUC; these reached 0.2125 — docs/ads.md, run A).
DEFAULT_PARAMS = {"max_iter": 100, "learning_rate": 0.03, "max_leaf_nodes": 7, "min_samples_leaf": 100,
                  "l2_regularization": 2.0}


class AdsIntegrityError(RetroError):
    """An ads artifact whose bytes do not match the registry's hash."""


class NotEnoughAdsData(RetroError):
    """Too few days or clicks of ad impressions for a time-split click model."""


@dataclass
class AdsModel:
    """Trees (raw log-odds), the Platt scaling that calibrates them, and the feature order they expect."""

    trees: HistGradientBoostingClassifier
    slope: float
    intercept: float
    features: tuple
    campaigns: tuple            # the campaign ids of the one-hot columns (a campaign born later has none)
    used: tuple = ()            # columns with any known value in training (the trees' inputs); () = all

    def _cols(self) -> list[int]:
        return list(self.used) if self.used else list(range(len(self.features)))

    def logit(self, X: np.ndarray) -> np.ndarray:
        return self.slope * self.trees.decision_function(X[:, self._cols()]) + self.intercept

    def p_click(self, X: np.ndarray) -> np.ndarray:
        """Calibrated click probability of each row of X (n × len(features)), in (0, 1)."""
        return 1.0 / (1.0 + np.exp(-self.logit(X)))

    def matrix(self, rows: pd.DataFrame, campaigns: pd.DataFrame, history: pd.DataFrame | None = None):
        """(X, fills) of `rows` in this model's feature order (`features.build`)."""
        return features.build(rows, campaigns, self.campaigns, history)

    def contributions(self, X: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
        """Per-feature SHAP values on the calibrated log-odds (n × features), the base value and the log-odds:
        base + Σ values = logit(p_click) for every row (TreeExplainer on the trees' raw log-odds, × slope)."""
        import shap
        explainer = shap.TreeExplainer(self.trees)
        values = np.zeros(X.shape)     # a feature unknown for every training row (no CF served yet) contributes 0
        values[:, self._cols()] = np.asarray(explainer.shap_values(X[:, self._cols()])).reshape(len(X), -1)
        base = float(np.ravel(explainer.expected_value)[0]) * self.slope + self.intercept
        return values * self.slope, base, self.logit(X)


# ------------------------------------------------------------------ time split
def time_split(rows: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """{"train", "calibration", "holdout"}: the rows by day of shown_at, oldest days first; calibration and holdout
    each get CALIBRATION_SHARE / HOLDOUT_SHARE of the days (at least one day each). Raises NotEnoughAdsData
    with fewer than MIN_DAYS days."""
    day = pd.to_datetime(rows["shown_at"]).dt.normalize()
    days = np.sort(day.unique())
    if len(days) < MIN_DAYS:
        raise NotEnoughAdsData(f"an ads model needs impressions on at least {MIN_DAYS} days (train, calibration, "
                               f"holdout by time); the log holds {len(days)} — simulate more days with ads on")
    n_hold = max(1, int(round(HOLDOUT_SHARE * len(days))))
    n_cal = max(1, int(round(CALIBRATION_SHARE * len(days))))
    cal_start, hold_start = days[len(days) - n_hold - n_cal], days[len(days) - n_hold]
    parts = {"train": rows[(day < cal_start).to_numpy()], "calibration": rows[((day >= cal_start) & (day < hold_start)).to_numpy()],
             "holdout": rows[(day >= hold_start).to_numpy()]}
    return {k: v.reset_index(drop=True) for k, v in parts.items()}


def split_dates(parts: dict[str, pd.DataFrame]) -> dict[str, list[str]]:
    """First and last day of each part, for the run's record."""
    out = {}
    for name, frame in parts.items():
        day = pd.to_datetime(frame["shown_at"]).dt.normalize()
        out[name] = [str(day.min().date()), str(day.max().date())] if len(frame) else []
    return out


# ------------------------------------------------------------------ fitting
def _both_outcomes(y: np.ndarray, part: str) -> None:
    if len(y) == 0 or y.min() == y.max():
        raise NotEnoughAdsData(f"the {part} days need impressions with and without a click ({len(y)} impressions, "
                               f"{int(np.sum(y))} clicks); simulate more days with ads on")


def fit(X_train: np.ndarray, y_train: np.ndarray, X_cal: np.ndarray, y_cal: np.ndarray, *, seed: int,
        feature_names: tuple, campaign_ids, params: dict | None = None) -> AdsModel:
    """Trees on the training days (on the columns with any known value there: e.g. no CF version served yet
    leaves the affinities unknown); Platt scaling of their log-odds on the calibration days."""
    y_train, y_cal = np.asarray(y_train, dtype=int), np.asarray(y_cal, dtype=int)
    _both_outcomes(y_train, "training")
    _both_outcomes(y_cal, "calibration")
    used = tuple(int(i) for i in np.flatnonzero(~np.isnan(X_train).all(axis=0)))
    trees = HistGradientBoostingClassifier(**(DEFAULT_PARAMS | (params or {})), early_stopping=False,
                                           random_state=seed).fit(X_train[:, list(used)], y_train)
    platt = LogisticRegression(C=1e6).fit(trees.decision_function(X_cal[:, list(used)]).reshape(-1, 1), y_cal)
    return AdsModel(trees, float(platt.coef_[0, 0]), float(platt.intercept_[0]), tuple(feature_names),
                    tuple(sorted(int(c) for c in campaign_ids)), used)


@dataclass
class CampaignRate:
    """The baseline: each campaign's click rate before the holdout, shrunk towards the overall rate."""

    rates: dict
    overall: float

    @classmethod
    def fit(cls, rows: pd.DataFrame, prior: float = PRIOR_IMPRESSIONS) -> "CampaignRate":
        clicked = rows["clicked"].astype(float)
        overall = float(clicked.mean()) if len(rows) else 0.0
        per = clicked.groupby(rows["campaign_id"].astype(int)).agg(["sum", "count"])
        rates = (per["sum"] + prior * overall) / (per["count"] + prior)
        return cls({int(k): float(v) for k, v in rates.items()}, overall)

    def p_click(self, campaign_ids) -> np.ndarray:
        ids = pd.Series(np.asarray(campaign_ids, dtype=np.int64))
        return np.clip(ids.map(self.rates).fillna(self.overall).to_numpy(dtype=float), 1e-6, 1 - 1e-6)


# ------------------------------------------------------------------ artifacts
def save(directory: Path, model: AdsModel, meta: dict, rows: dict[str, np.ndarray]) -> str:
    """Write the model, its metadata and its training rows; returns the artifact hash (model + metadata)."""
    blob = {"trees": model.trees, "slope": model.slope, "intercept": model.intercept, "features": list(model.features),
            "campaigns": list(model.campaigns), "used": list(model.used)}
    return tree_artifacts.save(directory, ADS_FILES, blob, meta, rows)


write_rows, read_rows = tree_artifacts.write_rows, tree_artifacts.read_rows


def artifact_hash(directory: Path) -> str:
    return tree_artifacts.artifact_hash(directory, ADS_FILES)


def load(directory: Path, expected_hash: str | tuple[str, ...] | None = None) -> AdsModel:
    """The ads model in `directory`; with `expected_hash` its bytes are checked before unpickling."""
    blob = tree_artifacts.load_blob(directory, ADS_FILES, expected_hash, AdsIntegrityError, "ads")
    return AdsModel(blob["trees"], float(blob["slope"]), float(blob["intercept"]), tuple(blob["features"]),
                    tuple(int(c) for c in blob["campaigns"]), tuple(int(i) for i in blob.get("used", ())))


def read_meta(directory: Path) -> dict:
    return tree_artifacts.read_meta(directory, ADS_FILES)
