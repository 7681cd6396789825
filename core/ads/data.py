"""The ads model's training rows from the stores, point in time (the frame `core.ads.features` documents).

For an impression shown at t:
- genre affinities come from the CF version that was in production at t (the registry's history; a version is
  promoted after it was trained, so its bundle saw nothing from t on): the user's mean predicted score over each
  genre's titles, as z-scores across the 18 genres (scale-free, so two CF versions mean the same thing); NaN when
  no CF version served at t or the user is not in its bundle;
- the churn risk is the user's newest stored churn score (`churn_predictions`) with scored_at ≤ t, with the churn
  version that made it; NaN (→ the neutral value) when there is none;
- the age band is the one the ETL recorded with the impression; clicks come with their impression.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from core.ads import features
from core.constants import GENRE_INDEX, GENRES
from core.settings import Settings
from core.store import adslog, mlopsdb, opsdb
from core.training import churn_pipeline, registry
from core.training.artifacts import load_bundle
from core.training.evaluation import current_data_version
from core.warehouse import dataset, warehouse


def movie_genre_matrix(movie_ids: np.ndarray, genres: pd.Series) -> np.ndarray:
    """(M, G): 1 where the movie has the genre; `genres` ('|'-separated) indexed by movie_id."""
    out = np.zeros((len(movie_ids), len(GENRES)))
    texts = genres.reindex(movie_ids).fillna("")
    for j, text in enumerate(texts):
        out[j, [GENRE_INDEX[g] for g in text.split("|") if g in GENRE_INDEX]] = 1.0
    return out


def movie_genres(settings: Settings) -> pd.Series:
    """Each movie's genres ('|'-separated), indexed by movie_id (the warehouse's dim_movie)."""
    with warehouse.session(settings) as con:
        return dataset.movie_attributes(con)["genres"]


def genre_affinity(bundle, genres: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(user keys (U,), affinities (U × G)) of a CF bundle: each user's mean predicted score over every genre's
    titles, standardized across genres per user (NaN for a genre without titles, an erased user, or a model without
    factors — then the user's watched-genre mix is used instead)."""
    mg = movie_genre_matrix(bundle.matrix.movie_ids, genres)
    per_genre = mg / np.maximum(mg.sum(axis=0, keepdims=True), 1)          # (M, G): mean over the genre's titles
    model = bundle.model
    if hasattr(model, "user_factors_") and hasattr(model, "item_factors_"):
        users = np.asarray(model.user_factors_, dtype=float)
        raw = users @ (np.asarray(model.item_factors_, dtype=float).T @ per_genre)
        raw[~users.any(axis=1)] = np.nan                                    # erased: no learned profile
    else:
        raw = np.asarray(bundle.matrix.user_items @ mg, dtype=float)
    raw[:, mg.sum(axis=0) == 0] = np.nan
    mean = np.nanmean(np.where(np.isnan(raw).all(axis=1, keepdims=True), 0.0, raw), axis=1, keepdims=True)
    std = np.nanstd(np.where(np.isnan(raw).all(axis=1, keepdims=True), 0.0, raw), axis=1, keepdims=True)
    return np.asarray(bundle.matrix.user_keys).astype(str), np.round((raw - mean) / np.where(std > 0, std, 1.0), 6)


def production_steps(settings: Settings, family: str) -> pd.DataFrame:
    """at (datetime), version (float, NaN = none): the family's production version after each registry event, in
    event order (events of one second keep their order; the last one of a second holds from then on)."""
    events = registry.history(settings)
    events = events[events["family"] == family]
    serving, out = None, []
    for version, to_stage, at in events[["version", "to_stage", "at"]].itertuples(index=False):
        if to_stage == "production":
            serving = int(version)
        elif version == serving:
            serving = None
        out.append((pd.Timestamp(at), np.nan if serving is None else float(serving)))
    frame = pd.DataFrame(out, columns=["at", "version"])
    return frame.drop_duplicates("at", keep="last").reset_index(drop=True)


def version_at(times: pd.Series, steps: pd.DataFrame) -> np.ndarray:
    """The step's version in force at each time (NaN before the first step)."""
    if steps.empty or not len(times):
        return np.full(len(times), np.nan)
    left = pd.DataFrame({"t": pd.to_datetime(times).astype("datetime64[ns]").to_numpy(), "i": np.arange(len(times))})
    right = steps.assign(at=steps["at"].astype("datetime64[ns]")).sort_values("at")
    merged = pd.merge_asof(left.sort_values("t"), right, left_on="t", right_on="at", direction="backward")
    return merged.sort_values("i")["version"].to_numpy(dtype=float)


def affinities(settings: Settings, rows: pd.DataFrame, genres: pd.Series) -> pd.DataFrame:
    """The AFFINITY columns of each row from its cf_version's bundle."""
    out = np.full((len(rows), len(GENRES)), np.nan)
    for version in sorted(v for v in rows["cf_version"].dropna().unique()):
        entry = registry.get_version(settings, int(version))
        try:
            bundle = load_bundle(mlopsdb.artifact_dir(settings, entry["artifact_path"]))
        except (OSError, ValueError, KeyError):
            continue                                  # a bundle gone from disk: its rows stay unknown
        keys, aff = genre_affinity(bundle, genres)
        mine = (rows["cf_version"] == version).to_numpy()
        at = pd.Index(keys).get_indexer(rows.loc[mine, "user_key"].astype(str))
        block = np.full((int(mine.sum()), len(GENRES)), np.nan)
        block[at >= 0] = aff[at[at >= 0]]
        out[mine] = block
    return pd.DataFrame(out, columns=list(features.AFFINITY), index=rows.index)


def churn_scores(settings: Settings, rows: pd.DataFrame) -> pd.DataFrame:
    """churn_risk, churn_version: each row's user's newest stored churn score made at or before shown_at."""
    stored = churn_pipeline.predictions(settings) if mlopsdb.exists(settings) else pd.DataFrame()
    empty = pd.DataFrame({"churn_risk": np.nan, "churn_version": np.nan}, index=rows.index)
    if stored.empty or not len(rows):
        return empty
    right = pd.DataFrame({"user_key": stored["user_key"].astype(str),
                          "t": pd.to_datetime(stored["scored_at"]).astype("datetime64[ns]"),
                          "churn_risk": stored["risk"].astype(float),
                          "churn_version": stored["model_version"].astype(float)}).sort_values("t")
    left = pd.DataFrame({"user_key": rows["user_key"].astype(str).to_numpy(),
                         "t": pd.to_datetime(rows["shown_at"]).astype("datetime64[ns]").to_numpy(),
                         "i": np.arange(len(rows))}).sort_values("t")
    merged = pd.merge_asof(left, right, on="t", by="user_key", direction="backward").sort_values("i")
    return pd.DataFrame({"churn_risk": merged["churn_risk"].to_numpy(), "churn_version": merged["churn_version"].to_numpy()},
                        index=rows.index)


def with_creative_genres(campaigns: pd.DataFrame, genres: pd.Series) -> pd.DataFrame:
    """The campaigns with `creative_genres`: a promoted title's own genres, else the campaign's target genres (what
    the ad is about, as the world's latent interest sees it)."""
    title = (campaigns["creative_kind"] == "title") & campaigns["movie_id"].notna()
    own = campaigns["movie_id"].map(lambda m: genres.get(int(m), "") if pd.notna(m) else "")
    return campaigns.assign(creative_genres=np.where(title, own, campaigns["target_genres"].fillna("")))


def campaigns(settings: Settings, genres: pd.Series | None = None) -> pd.DataFrame:
    """Every campaign (the operational store's `adslog.campaigns`) with its creative's genres."""
    with opsdb.session(settings) as db:
        frame = adslog.campaigns(db)
    return with_creative_genres(frame, movie_genres(settings) if genres is None else genres)


def training_rows(settings: Settings, start=None, end=None) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """(rows, campaigns, data version): every impression in the warehouse shown in [start, end) with its outcome
    and point-in-time inputs (`cf_version`, `churn_version` name the models they came from)."""
    with warehouse.session(settings) as con:
        imp = warehouse.ad_impressions(con, start, end)
        genres = dataset.movie_attributes(con)["genres"]
    version = current_data_version(settings)
    rows = imp[["impression_id", "user_key", "campaign_id", "shown_at", "clicked", "clicked_at", "age_band"]].copy()
    rows["age_band"] = rows["age_band"].fillna("")
    rows["cf_version"] = version_at(rows["shown_at"], production_steps(settings, registry.CF))
    rows = pd.concat([rows, churn_scores(settings, rows), affinities(settings, rows, genres)], axis=1)
    return rows, campaigns(settings, genres), version
