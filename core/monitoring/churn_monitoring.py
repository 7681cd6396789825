"""Monitoring the churn model: drift of its features and of its predicted risk, and churn next to the
recommender's online quality over simulated time.

Drift compares the scores stored on one day (`churn_predictions`, through `churn_pipeline.predictions`) with
the holdout the production churn version was judged on (`churn_pipeline.reference`), with `core.monitoring.drift`:

- every feature: PSI over the reference's decile bins of its known values (`drift.numeric_bins`) **plus one
  `unknown` bucket** for missing values. A missing value is information, not noise: the share of recommended
  titles watched is unknown for a user who was shown no list, the mean rating for one who rated nothing, so a
  recommender that stops serving (or users who stop rating) moves the unknown share — dropping NaN would hide
  exactly that. Without missing values the score equals `drift.run_test("psi", …)` on the raw samples;
- the predicted risk: PSI over the reference's risk deciles (as for a feature; the classic score-stability
  check), and for the chart the shares in fixed tenths 0, 0.1, …, 1 (`bins`, `reference`, `current`);
- severity: `drift.psi_severity` ("none" < 0.1 ≤ "moderate" < 0.25 ≤ "significant"), or "insufficient" (psi
  None) when either window holds fewer than `settings.drift_min_observations` rows (default
  `drift.MIN_NUMERIC` = 100) — a small holdout or a handful of scores is not judged, as in daily monitoring.

The rows of one day: a day scored by several churn versions (a retrain, then a re-score) counts the production
version's scores when it scored that day, else the newest version's — one row per user.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from core.errors import ValidationError
from core.monitoring import drift as drift_tests   # the module; `drift` below is this module's function
from core.monitoring import monitoring
from core.settings import Settings
from core.training import churn, churn_pipeline, registry
from core.warehouse import churn_data
from core.warehouse.churn_data import FEATURE_LABELS, FEATURES

UNKNOWN = "unknown"                       # the bucket of missing feature values
RISK_EDGES = np.linspace(0.0, 1.0, 11)    # the risk chart's fixed tenths (the last bin includes 1.0)
INSUFFICIENT = "insufficient"


# ------------------------------------------------------------------ pure parts
def _edges(reference: np.ndarray) -> np.ndarray | None:
    """The reference's decile bins of its known values (`drift.numeric_bins`); None when it has none."""
    known = reference[~np.isnan(reference)]
    return drift_tests.numeric_bins(known) if known.size else None


def _count_matrix(values: np.ndarray, groups: np.ndarray, n_groups: int, edges: np.ndarray | None) -> np.ndarray:
    """(n_groups, bins + 1) counts: known values per left-closed bin of `edges` (one bin when None), the last
    column the missing ones. One bincount over all rows, whatever the number of groups."""
    n_bins = 1 if edges is None else len(edges) - 1
    missing = np.isnan(values)
    bucket = np.full(len(values), n_bins, dtype=np.int64)
    if edges is not None:
        bucket[~missing] = np.searchsorted(edges[1:-1], values[~missing], side="right")
    else:
        bucket[~missing] = 0
    flat = np.bincount(groups.astype(np.int64) * (n_bins + 1) + bucket, minlength=n_groups * (n_bins + 1))
    return flat.reshape(n_groups, n_bins + 1).astype(float)


def _judge(ref_counts: np.ndarray, cur_counts: np.ndarray, min_n: int) -> tuple[float | None, str]:
    """(PSI, severity) of two count vectors (last bucket = unknown, left out when both windows have none);
    (None, "insufficient") when either window is empty or has fewer than `min_n` rows, as `drift.run_test`."""
    if ref_counts[-1] == 0 and cur_counts[-1] == 0:
        ref_counts, cur_counts = ref_counts[:-1], cur_counts[:-1]
    n_ref, n_cur = ref_counts.sum(), cur_counts.sum()
    if n_ref == 0 or n_cur == 0 or min(n_ref, n_cur) < min_n:
        return None, INSUFFICIENT
    score = drift_tests.psi_from_counts(ref_counts, cur_counts)
    return score, drift_tests.psi_severity(score)


def psi_by_group(reference, values, groups, n_groups: int, min_n: int = drift_tests.MIN_NUMERIC
                 ) -> list[tuple[float | None, str]]:
    """(PSI, severity) of each group of `values` (group ids 0..n_groups−1, e.g. one per scored day) against
    `reference`: the reference's decile bins of its known values plus one `UNKNOWN` bucket for NaN (see the
    module docstring). Without missing values each score equals `drift.run_test("psi", reference, group)`."""
    reference, values = np.asarray(reference, dtype=float), np.asarray(values, dtype=float)
    edges = _edges(reference)
    ref_counts = _count_matrix(reference, np.zeros(len(reference), dtype=np.int64), 1, edges)[0]
    cur_counts = _count_matrix(values, np.asarray(groups), n_groups, edges)
    return [_judge(ref_counts, row, min_n) for row in cur_counts]     # one entry per group, not per row


def feature_counts(reference, current) -> tuple[dict, dict]:
    """Counts per bucket of two windows of one numeric feature: `bin 00`, … (the reference's decile bins of its
    known values, left-closed, open outer edges; one bucket `known` when the reference has no known value) and
    `UNKNOWN` for NaN (left out when neither window has one)."""
    ref, cur = np.asarray(reference, dtype=float), np.asarray(current, dtype=float)
    edges = _edges(ref)
    names = ["known"] if edges is None else [f"bin {i:02d}" for i in range(len(edges) - 1)]
    both = [_count_matrix(x, np.zeros(len(x), dtype=np.int64), 1, edges)[0] for x in (ref, cur)]
    keep = len(names) + (1 if both[0][-1] or both[1][-1] else 0)
    return tuple(dict(zip([*names, UNKNOWN][:keep], counts[:keep].tolist())) for counts in both)


def feature_psi(reference, current, min_n: int = drift_tests.MIN_NUMERIC) -> tuple[float | None, str]:
    """(PSI, severity) of one feature, missing values as their own bucket (see `feature_counts`); (None,
    "insufficient") when either window has fewer than `min_n` rows (missing ones included) or is empty."""
    current = np.asarray(current, dtype=float)
    return psi_by_group(reference, current, np.zeros(len(current), dtype=np.int64), 1, min_n)[0]


def risk_psi(reference, current, min_n: int = drift_tests.MIN_NUMERIC) -> tuple[float | None, str]:
    """(PSI, severity) of the predicted risk over the reference's risk deciles."""
    return feature_psi(reference, current, min_n)


def risk_shares(risk) -> list[float]:
    """Share of scores per fixed tenth of risk [0, 0.1), …, [0.9, 1.0]; zeros for no score."""
    counts = np.histogram(np.clip(np.asarray(risk, dtype=float), 0.0, 1.0), bins=RISK_EDGES)[0].astype(float)
    total = counts.sum()
    return (counts / total if total else counts).tolist()


# ------------------------------------------------------------------ reads
def _day(value) -> str:
    try:
        stamp = pd.Timestamp(value)
    except (TypeError, ValueError):
        raise ValidationError(f"as_of must be a date like 2026-03-01, got {value!r}") from None
    if pd.isna(stamp):
        raise ValidationError(f"as_of must be a date like 2026-03-01, got {value!r}")
    return str(stamp.normalize().date())


def _one_row_per_user(stored: pd.DataFrame, production: int | None) -> pd.DataFrame:
    """Per as_of, the rows of the production version when it scored that day, else of the newest version."""
    if stored.empty:
        return stored
    versions = stored.groupby("as_of")["model_version"].agg(
        lambda v: production if production in set(v) else int(v.max()))
    keep = stored["model_version"].to_numpy() == stored["as_of"].map(versions).to_numpy()
    return stored[keep].reset_index(drop=True)


def _stored(settings: Settings, production: int | None) -> pd.DataFrame:
    """Every stored score with its features, as_of as "YYYY-MM-DD", one row per user and day."""
    stored = churn_pipeline.predictions(settings, with_features=True)
    if stored.empty:
        return stored.assign(**{f: pd.Series(dtype=float) for f in FEATURES if f not in stored})
    stored["as_of"] = stored["as_of"].str[:10]
    return _one_row_per_user(stored, production)


def _reference(settings: Settings, prod: dict | None) -> pd.DataFrame:
    if prod is None:
        return pd.DataFrame({c: pd.Series(dtype=float) for c in (*FEATURES, "risk")})
    return churn_pipeline.reference(settings, prod).astype(float)


def drift(settings: Settings, as_of: str | None = None) -> dict:
    """Churn-feature and predicted-risk drift of the stored scores at `as_of` (default: the latest scored day)
    vs the production churn version's holdout (`churn_pipeline.reference`).

    {"version", "as_of" ("YYYY-MM-DD" or None), "reference_rows", "current_rows",
     "features": [{"feature", "label", "psi", "severity"}] in `FEATURES` order,
     "risk": {"psi", "severity", "bins" (11 edges 0..1), "reference", "current" (10 shares each)},
     "history": [{"as_of", "users", "mean_risk", "risk_psi", "max_feature_psi"}] per scored day, oldest first}.
    Raises ValidationError for an `as_of` that is not a date or has no stored score.
    """
    prod = registry.production(settings, family=churn.FAMILY)
    reference = _reference(settings, prod)
    every = _stored(settings, None if prod is None else int(prod["version"]))
    # Every scored day at once: group ids per row, one bincount per feature (no loop over rows or days).
    days, groups = np.unique(every["as_of"].to_numpy(str), return_inverse=True)
    min_n = settings.drift_min_observations
    by_feature = {f: psi_by_group(reference[f], every[f], groups, len(days), min_n) for f in FEATURES}
    by_risk = psi_by_group(reference["risk"], every["risk"], groups, len(days), min_n)
    days = [str(d) for d in days]
    if as_of is None:
        day = days[-1] if days else None
    else:
        day = _day(as_of)
        if day not in days:
            scored = f"scored days: {days[0]} … {days[-1]} ({len(days)})" if days else "nothing is scored yet"
            raise ValidationError(f"no churn scores are stored for {day}; {scored}")
    i = None if day is None else days.index(day)
    none = (None, INSUFFICIENT)
    features = [dict(zip(("feature", "label", "psi", "severity"),
                         (f, FEATURE_LABELS[f], *(none if i is None else by_feature[f][i])))) for f in FEATURES]
    r_psi, r_severity = none if i is None else by_risk[i]
    current = every[every["as_of"] == day]
    return {"version": None if prod is None else int(prod["version"]), "as_of": day,
            "reference_rows": int(len(reference)), "current_rows": int(len(current)), "features": features,
            "risk": {"psi": r_psi, "severity": r_severity, "bins": RISK_EDGES.round(10).tolist(),
                     "reference": risk_shares(reference["risk"]), "current": risk_shares(current["risk"])},
            "history": _history(every, days, by_feature, by_risk)}


def _history(every: pd.DataFrame, days: list[str], by_feature: dict, by_risk: list) -> list[dict]:
    stats = every.groupby("as_of")["risk"].agg(["size", "mean"])
    out = []
    for j, d in enumerate(days):                # one entry per scored day
        known = [by_feature[f][j][0] for f in FEATURES if by_feature[f][j][0] is not None]
        out.append({"as_of": d, "users": int(stats.loc[d, "size"]), "mean_risk": float(stats.loc[d, "mean"]),
                    "risk_psi": by_risk[j][0], "max_feature_psi": max(known) if known else None})
    return out


def churn_and_quality(settings: Settings) -> pd.DataFrame:
    """Per simulated day: the churn rate (`churn_data.churn_rate_by_day`: share of the day's active users with
    no watch in the 14 days after it) next to the recommender's online hit rate@10 of the lists served at that
    day's start (`monitoring.online_by_day`, model and Top 50 control).

    Columns day (datetime64), active_users, churn_rate, hit_rate_model, hit_rate_top50; one row per day that has
    either (outer join, day order), NaN where unknown: no churn rate for the last 14 days (their outcome is not
    known yet), no hit rate for days the closed loop did not monitor.
    """
    rates = churn_data.churn_rate_by_day(settings)
    rates = pd.DataFrame({"day": pd.to_datetime(rates["day"]).astype("datetime64[ns]"),
                          "active_users": pd.to_numeric(rates["active_users"]).astype(float),
                          "churn_rate": pd.to_numeric(rates["churn_rate"]).astype(float)})
    online = monitoring.online_by_day(settings)[["day", "hit_rate_model", "hit_rate_top50"]]
    merged = rates.merge(online, on="day", how="outer").sort_values("day", kind="mergesort")
    return merged.reset_index(drop=True)[["day", "active_users", "churn_rate", "hit_rate_model", "hit_rate_top50"]]
