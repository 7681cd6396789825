"""`ads evaluate`: a registered ads version (default: production) and the campaigns' click rates on the same,
current holdout, plus the online check of the click probabilities stored with the impressions it chose.

The holdout is the last days of the warehouse's impressions, cut as training cuts them (`model.time_split`); the
baseline is fit on every impression before it. When the version was trained on those very days (no new day since)
the numbers flatter it, and `overlaps_training` says so, as `evaluate` does for the recommender.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from core.ads import data, metrics, pipeline
from core.ads import model as ads_model
from core.errors import RetroError, ValidationError
from core.settings import Settings
from core.training import registry, tracking
from core.training.ranker import single_threaded_openmp
from core.warehouse import warehouse


def version_row(settings: Settings, version: int | None = None) -> dict:
    """The registry row of ads `version`, or production's; a clear error when there is none or it is another family."""
    row = registry.production(settings, family=ads_model.FAMILY) if version is None \
        else registry.get_version(settings, int(version))
    if row is None:
        raise RetroError("no ads model in production; train one with `ads train` once the world has ad impressions "
                         "with clicks on enough days")
    if row["family"] != ads_model.FAMILY:
        raise ValidationError(f"v{row['version']} is a {row['family']} model, not an ads model")
    return row


def online_check(settings: Settings, version: int | None = None, start=None, end=None) -> dict:
    """The stored p_click of impressions the model chose (policy 'model'; of `version` when given) in
    [start, end) against their clicks, known with the impression: `metrics.scores` (log loss, ROC AUC, ECE, mean
    predicted vs observed click rate, rows, clicks). No such impression: rows 0 and a note."""
    with warehouse.session(settings) as con:
        imp = warehouse.ad_impressions(con, start, end)
    mine = imp[(imp["policy"] == "model") & imp["p_click"].notna()]
    if version is not None:
        mine = mine[mine["model_version"].astype("Int64") == int(version)]
    if mine.empty:
        return {"rows": 0, "note": "no impression chosen by the model has reached the warehouse yet"}
    out = metrics.scores(mine["clicked"].to_numpy(int), mine["p_click"].to_numpy(float))
    shown = pd.to_datetime(mine["shown_at"])
    return out | {"window": [str(shown.min()), str(shown.max())]}


def evaluate(settings: Settings, version: int | None = None) -> dict:
    """The version and the campaign-rate baseline on the current holdout (`pipeline.judge`: log loss, ROC AUC,
    ECE, expected revenue of the selection each drives), and the online check of its stored predictions."""
    row = version_row(settings, version)
    model = pipeline.load_version(settings, row)
    rows, campaigns, data_version = data.training_rows(settings)
    if rows.empty:
        raise ads_model.NotEnoughAdsData("no ad impression in the warehouse yet; simulate days with ads on")
    parts, rows, _ = pipeline.split(rows)     # the population and holdout training cuts, not all impressions
    hold = parts["holdout"]
    start = pd.to_datetime(hold["shown_at"]).min()
    rule = ads_model.CampaignRate.fit(rows[pd.to_datetime(rows["shown_at"]) < start])

    def predict(frame: pd.DataFrame) -> np.ndarray:
        with single_threaded_openmp():
            return model.p_click(model.matrix(frame, campaigns, rows)[0])

    run = tracking.get_run(settings, int(row["run_id"]))
    split = (run.get("params") or {}).get("split") or {}
    fitted = split.get("calibration") or split.get("train") or []     # the days its trees and scaling were fit on
    overlaps = bool(fitted) and pd.Timestamp(fitted[-1]) >= start.normalize()
    days = pd.to_datetime(hold["shown_at"]).dt.normalize()
    return {"version": int(row["version"]), "stage": row["stage"], "data_version": data_version,
            "holdout": [str(days.min().date()), str(days.max().date())],
            "fitted_days": [(split.get("train") or fitted)[0], fitted[-1]] if fitted else [],
            "overlaps_training": overlaps,
            "note": ("the holdout's days were days this version was fit on: these numbers flatter it"
                     if overlaps else None),
            "model": pipeline.judge(predict, hold, campaigns, rows),
            "baseline": pipeline.judge(lambda f: rule.p_click(f["campaign_id"].to_numpy()), hold, campaigns, rows),
            "online": online_check(settings, int(row["version"]))}
