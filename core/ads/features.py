"""Point-in-time features of the ads (click-through) model, from frames of the documented shape (docs/ads.md).

One row per impression — the *training rows* frame:
    impression_id, user_key, campaign_id, shown_at (datetime), clicked (0/1), clicked_at (datetime, NaT unless
    clicked), age_band (str), churn_risk (float, NaN when no churn score was known at shown_at),
    aff_<genre> for every genre of `core.constants.GENRES` (the user's genre affinity from the CF version in
    production at shown_at, NaN when none served), plus for the campaign: bid, target_genres, target_age_bands
    (`|`-separated, empty = any).

Everything a row's features use is known strictly before its `shown_at`: the affinities and the churn risk
come from models trained before it (the reader, `core.ads.data`, guarantees it), and the exposure counts only
look at impressions shown and clicks made in [shown_at − 7 days, shown_at). The outcome columns (clicked,
clicked_at) never enter a row's own features.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from core.constants import GENRES

EXPOSURE_DAYS = 7
TOP_GENRES = 3                 # a campaign's genre targeting is met when it names one of the user's 3 favourites
# When no churn model is in production the risk is unknown for everyone: one constant (the model cannot split on
# it, so it contributes nothing), recorded with the run. Also used for a user the churn model did not score.
NEUTRAL_CHURN_RISK = 0.5
AFFINITY = tuple(f"aff_{g}" for g in GENRES)
BASE_FEATURES = (*AFFINITY, "churn_risk", "bid", "genre_interest", "genre_match", "age_match", "creative_interest",
                 "impressions_7d", "clicks_7d")
FEATURE_LABELS = {
    **{f"aff_{g}": f"interest in {g} (from the recommender)" for g in GENRES},
    "churn_risk": "churn risk", "bid": "the campaign's bid", "genre_interest": "interest in the campaign's genres",
    "genre_match": "a favourite genre is targeted", "age_match": "age band is targeted",
    "creative_interest": "interest in the ad's own genres",
    "impressions_7d": "ads seen in the last 7 days", "clicks_7d": "ads clicked in the last 7 days",
}
ROW_COLUMNS = ("impression_id", "user_key", "campaign_id", "shown_at", "clicked", "clicked_at", "age_band",
               "churn_risk", *AFFINITY)
CAMPAIGN_COLUMNS = ("campaign_id", "bid", "target_genres", "target_age_bands")
# Optional campaign column `creative_genres`: the genres the creative itself is about (a promoted title's genres);
# where it is absent or empty, the campaign's target genres stand for them.


def campaign_column(campaign_id: int) -> str:
    return f"campaign_{int(campaign_id)}"


def feature_names(campaign_ids) -> tuple[str, ...]:
    """Base features, then one one-hot column per campaign of the training set (in id order)."""
    return (*BASE_FEATURES, *(campaign_column(c) for c in sorted(int(c) for c in campaign_ids)))


def label_of(feature: str) -> str:
    if feature.startswith("campaign_"):
        return f"campaign {feature.removeprefix('campaign_')}"
    return FEATURE_LABELS.get(feature, feature)


def require_columns(frame: pd.DataFrame, columns, what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{what} lacks column(s) {', '.join(missing)}; see core/ads/features.py for its shape")


# ------------------------------------------------------------------ exposure before each impression
def _counts_before(user: np.ndarray, t: np.ndarray, ev_user: np.ndarray, ev_t: np.ndarray, window: int) -> np.ndarray:
    """For each (user, t): events of that user with time in [t − window, t). Times in integer seconds; one
    sorted key (user · span + time) makes it two searchsorted calls for every row at once."""
    if not len(ev_t):
        return np.zeros(len(t), dtype=float)
    lo = min(t.min(), ev_t.min()) - window
    span = int(max(t.max(), ev_t.max()) - lo + window + 1)
    keys = np.sort(ev_user.astype(np.int64) * span + (ev_t - lo))
    q = user.astype(np.int64) * span + (t - lo)
    return (np.searchsorted(keys, q, "left") - np.searchsorted(keys, q - window, "left")).astype(float)


def _seconds(values) -> np.ndarray:
    return (pd.to_datetime(pd.Series(values)).astype("datetime64[s]").astype("int64")).to_numpy()


def exposure(rows: pd.DataFrame, history: pd.DataFrame | None = None, days: int = EXPOSURE_DAYS) -> pd.DataFrame:
    """impressions_7d and clicks_7d of each row: the user's impressions shown, and clicks made, in
    [shown_at − days, shown_at). `history` (same columns user_key, shown_at, clicked, clicked_at) is the log to
    count in; default the rows themselves. Returns a frame aligned with `rows`."""
    history = rows if history is None else history
    codes, uniques = pd.factorize(pd.concat([rows["user_key"], history["user_key"]], ignore_index=True))
    user, ev_user = codes[:len(rows)], codes[len(rows):]
    t = _seconds(rows["shown_at"])
    window = int(days * 86400)
    shown = _counts_before(user, t, ev_user, _seconds(history["shown_at"]), window)
    clicked = history["clicked"].to_numpy(dtype=float) > 0
    click_t = _seconds(history["clicked_at"][clicked]) if clicked.any() else np.zeros(0, dtype=np.int64)
    clicks = _counts_before(user, t, ev_user[clicked], click_t, window)
    return pd.DataFrame({"impressions_7d": shown, "clicks_7d": clicks}, index=rows.index)


# ------------------------------------------------------------------ target match
def _split(values: pd.Series) -> list[set]:
    return [set(filter(None, str(v).split("|"))) if isinstance(v, str) else set() for v in values]


def _genre_rows(texts: pd.Series) -> np.ndarray:
    """(n, G) 0/1 from '|'-separated genre texts, parsed once per distinct text."""
    index = {g: i for i, g in enumerate(GENRES)}
    codes, uniques = pd.factorize(texts.fillna("").astype(str))
    table = np.zeros((len(uniques) + 1, len(GENRES)))
    for u, genres in enumerate(_split(pd.Series(uniques, dtype=object))):
        table[u, [index[g] for g in genres if g in index]] = 1.0
    return table[codes]


def _mean_over(filled: np.ndarray, genres: np.ndarray) -> np.ndarray:
    n = genres.sum(axis=1)
    return np.where(n > 0, (filled * genres).sum(axis=1) / np.maximum(n, 1), 0.0)


def target_match(rows: pd.DataFrame) -> pd.DataFrame:
    """genre_interest (mean affinity over the campaign's target genres; 0 when it targets none), genre_match and
    age_match (1 when the campaign's criterion is met or it has none; genre_match unknown, NaN, when the user's
    affinities are), creative_interest (mean affinity over the creative's genres: `creative_genres` where the rows
    name any, else the target genres). Needs the rows' affinities, age_band and the campaign's target_genres /
    target_age_bands."""
    aff = rows[list(AFFINITY)].to_numpy(dtype=float)
    known = ~np.isnan(aff).all(axis=1)
    targets = _genre_rows(rows["target_genres"])
    n_targets = targets.sum(axis=1)
    filled = np.nan_to_num(aff, nan=0.0)
    interest = _mean_over(filled, targets)
    own = _genre_rows(rows["creative_genres"]) if "creative_genres" in rows else np.zeros_like(targets)
    creative = np.where(own.sum(axis=1) > 0, _mean_over(filled, own), interest)     # none named: the targets
    # The user's favourite genres: the TOP_GENRES highest affinities (stable order; none when nothing is known).
    order = np.argsort(-np.where(np.isnan(aff), -np.inf, aff), axis=1, kind="stable")[:, :TOP_GENRES]
    favourite = np.zeros_like(targets)
    np.put_along_axis(favourite, order, 1.0, axis=1)
    favourite[~known] = 0.0
    genre_match = np.where(n_targets > 0, ((favourite * targets).sum(axis=1) > 0), True).astype(float)
    genre_match[(n_targets > 0) & ~known] = np.nan
    band_codes, band_texts = pd.factorize(rows["target_age_bands"].fillna("").astype(str))
    band_sets = _split(pd.Series(band_texts, dtype=object))
    ages = rows["age_band"].astype(str).to_numpy()
    age_match = np.array([not band_sets[c] or a in band_sets[c] for a, c in zip(ages, band_codes)], dtype=float)
    return pd.DataFrame({"genre_interest": np.where(known, interest, np.nan), "genre_match": genre_match,
                         "age_match": age_match, "creative_interest": np.where(known, creative, np.nan)},
                        index=rows.index)


# ------------------------------------------------------------------ the matrix
def _campaign_columns(campaigns: pd.DataFrame) -> list[str]:
    return list(CAMPAIGN_COLUMNS) + (["creative_genres"] if "creative_genres" in campaigns else [])


def with_campaigns(rows: pd.DataFrame, campaigns: pd.DataFrame) -> pd.DataFrame:
    """The rows joined to their campaign's bid and targeting (rows of an unknown campaign are an error)."""
    require_columns(campaigns, CAMPAIGN_COLUMNS, "the campaigns frame")
    cols = _campaign_columns(campaigns)
    joined = rows.drop(columns=[c for c in cols[1:] if c in rows.columns]).merge(
        campaigns[cols], on="campaign_id", how="left", validate="many_to_one")
    if joined["bid"].isna().any():
        unknown = sorted(joined.loc[joined["bid"].isna(), "campaign_id"].unique().tolist())
        raise ValueError(f"impressions of unknown campaign(s) {unknown}: pass every campaign they name")
    joined.index = rows.index
    return joined


def build(rows: pd.DataFrame, campaigns: pd.DataFrame, campaign_ids, history: pd.DataFrame | None = None
          ) -> tuple[np.ndarray, dict]:
    """The feature matrix (n × len(feature_names(campaign_ids))) of `rows`, and what was filled in:
    {"churn_risk_neutral": rows whose churn risk was unknown and set to NEUTRAL_CHURN_RISK}.
    `history` is the impression log the exposure counts come from (default: the rows)."""
    require_columns(rows, ROW_COLUMNS, "the training rows")
    frame = with_campaigns(rows, campaigns)
    expo = exposure(rows, history)
    match = target_match(frame)
    churn_risk = frame["churn_risk"].to_numpy(dtype=float)
    neutral = np.isnan(churn_risk)
    base = np.column_stack([
        frame[list(AFFINITY)].to_numpy(dtype=float), np.where(neutral, NEUTRAL_CHURN_RISK, churn_risk),
        frame["bid"].to_numpy(dtype=float), match.to_numpy(dtype=float), expo.to_numpy(dtype=float)])
    ids = sorted(int(c) for c in campaign_ids)
    onehot = (frame["campaign_id"].to_numpy(dtype=np.int64)[:, None] == np.array(ids, dtype=np.int64)[None, :])
    return np.column_stack([base, onehot.astype(float)]), {"churn_risk_neutral": int(neutral.sum())}


def candidates(rows: pd.DataFrame, campaigns: pd.DataFrame) -> pd.DataFrame:
    """Every (list, campaign) pair a selection could choose from: each row (one shown list) crossed with every
    active campaign whose targeting the user meets (the criteria known offline: genre and age band; budgets and
    caps are the auction's), with `list_id` = the row's impression_id. Used to value the selection a model drives."""
    active = campaigns[campaigns["active"].astype(int) == 1] if "active" in campaigns else campaigns
    cols = _campaign_columns(campaigns)
    users = rows.drop(columns=["campaign_id", *[c for c in cols[1:] if c in rows.columns]])
    cross = users.assign(list_id=users["impression_id"]).merge(active[cols], how="cross")
    match = target_match(cross)
    keep = (match["genre_match"] > 0) & (match["age_match"] > 0)
    return cross[keep.to_numpy()].reset_index(drop=True)
