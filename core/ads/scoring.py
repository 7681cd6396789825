"""The ads model as the selection's scorer (`core.ads.auction.Scorer`): calibrated P(click) of every (user,
campaign) pair at one instant, from the same point-in-time features it was trained on.

At `as_of` (the selection's time): genre affinities from the CF version in production then, the newest churn score
made at or before it, the user's declared age band, and the impressions and clicks of [as_of − 7 days, as_of) as
the warehouse holds them — the closed loop loads every simulated day before the next one starts, so at a day's
start that is everything; within a day the exposure of the day itself is not seen.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd

from core.ads import data, features
from core.ads import model as ads_model
from core.ads import pipeline
from core.pseudonym import pseudonym_key, pseudonymize
from core.settings import Settings
from core.store import opsdb
from core.training import registry
from core.training.ranker import single_threaded_openmp
from core.warehouse import warehouse


def pairs(settings: Settings, user_ids, campaigns: pd.DataFrame, as_of) -> pd.DataFrame:
    """One training-shaped row per (user, campaign), users major (A·C rows), shown at `as_of`, with their
    point-in-time inputs; `list_id` = the user's position in `user_ids`."""
    ids = np.asarray(user_ids, dtype=np.int64)
    t = pd.Timestamp(as_of)
    with opsdb.session(settings) as db:
        bands = opsdb.age_bands(db, ids)
    users = pd.DataFrame({"list_id": np.arange(len(ids)), "user_key": pseudonymize(ids, pseudonym_key(settings)),
                          "shown_at": t, "age_band": pd.Series(bands, dtype=object).fillna("").to_numpy()})
    cf = registry.production_at(settings, t.strftime("%Y-%m-%dT%H:%M:%S"))
    users["cf_version"] = np.nan if cf is None else float(cf)
    users = pd.concat([users, data.churn_scores(settings, users),
                       data.affinities(settings, users, data.movie_genres(settings))], axis=1)
    cross = users.merge(campaigns[["campaign_id"]], how="cross")
    return cross.assign(impression_id=np.arange(len(cross)), clicked=0, clicked_at=pd.NaT)


def recent_impressions(settings: Settings, as_of, days: int = features.EXPOSURE_DAYS) -> pd.DataFrame:
    """The warehouse's impressions of [as_of − days − 1 day, as_of) with their clicks: the exposure history (a day
    more, so a click made inside the window on an ad shown just before it counts, as in training)."""
    t = pd.Timestamp(as_of)
    with warehouse.session(settings) as con:
        return warehouse.ad_impressions(con, t - pd.Timedelta(days=days + 1), t)


def scorer(settings: Settings, version: dict | None = None) -> Callable:
    """A `Scorer` (user ids (A,), campaigns frame (C rows), as_of ISO text) -> (A, C) P(click) with the production
    ads model (or registry row `version`); its `model_version` attribute names the version for the log."""
    row = version or registry.production(settings, family=ads_model.FAMILY)
    if row is None:
        pipeline.production_model(settings)           # raises the "no ads model in production" error
    model = pipeline.load_version(settings, row)

    def score(user_ids, campaigns: pd.DataFrame, as_of) -> np.ndarray:
        if "creative_genres" not in campaigns:
            campaigns = data.with_creative_genres(campaigns, data.movie_genres(settings))
        cross = pairs(settings, user_ids, campaigns, as_of)
        X, _ = model.matrix(cross, campaigns, recent_impressions(settings, as_of))
        with single_threaded_openmp():
            return model.p_click(X).reshape(len(user_ids), len(campaigns))
    score.model_version = int(row["version"])
    return score
