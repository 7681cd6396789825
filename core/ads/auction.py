"""The selection of the one sponsored slot of a list (docs/ads.md): pure functions over arrays, no store.

Shapes: A lists (one per user shown a list), C campaigns, G genres, B age bands. For each list the campaigns
that are eligible — active, budget left, frequency cap not reached, targeting met, not throttled by pacing; for
a user without ad-targeting consent only campaigns without targeting criteria — are ranked by bid × p_click and
the first wins (ties: the lower campaign index, as `core.ads.metrics.expected_revenue` breaks them). Second
price (Vickrey, generalized to click-weighted bids as in sponsored search): on a click the winner pays the least
that would have kept it first, runner-up score / own p_click, never above its bid and never below the reserve.
Pacing throttles a campaign that spends faster than the day passes (see `pacing_throttle`).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd

from core.constants import AGE_BANDS, GENRES

RESERVE_PRICE = 0.05        # a winner without a runner-up pays this per click (or its bid, if lower)
TOP_GENRES = 3              # genre targeting is met when a target genre is one of the user's 3 favourites
# A scorer plugs a click model into the selection: (user ids (A,), campaigns frame (C rows, `adslog` columns),
# as-of time ISO text) -> (A, C) calibrated P(click). Its `model_version` attribute, if any, is logged.
Scorer = Callable[[np.ndarray, pd.DataFrame, str], np.ndarray]


def split_codes(values, known: tuple[str, ...]) -> np.ndarray:
    """(C, len(known)) bool from '|'-separated texts ('' or None: none) — e.g. target genres or age bands."""
    index = {k: i for i, k in enumerate(known)}
    out = np.zeros((len(values), len(known)), dtype=bool)
    for row, text in enumerate(values):
        for code in filter(None, str(text or "").split("|")):
            if code in index:
                out[row, index[code]] = True
    return out


def band_index(bands) -> np.ndarray:
    """(A,) int: each age band's index in AGE_BANDS, -1 for an unknown band (None) — matches no age target."""
    index = {b: i for i, b in enumerate(AGE_BANDS)}
    return np.array([index.get(b, -1) for b in bands], dtype=np.int64)


def favourite_genres(genre_share: np.ndarray, top: int = TOP_GENRES) -> np.ndarray:
    """(A, G) bool: each user's `top` genres by share of what they watched (none for a user with no history)."""
    share = np.asarray(genre_share, dtype=float)
    order = np.argsort(-share, axis=1, kind="stable")[:, :top]
    fav = np.zeros(share.shape, dtype=bool)
    np.put_along_axis(fav, order, True, axis=1)
    fav &= share > 0
    return fav


def targeting_met(favourites: np.ndarray, bands: np.ndarray, target_genres: np.ndarray,
                  target_bands: np.ndarray) -> np.ndarray:
    """(A, C) bool: the campaign's criteria hold for the user. Genres (C, G): a target genre is one of the user's
    favourites (or the campaign names none); age bands (C, B): the user's band (A,) index is targeted (or the
    campaign names none; an unknown band, -1, meets no age target)."""
    genre_ok = ~target_genres.any(axis=1)[None, :] | ((favourites.astype(np.int32) @ target_genres.T.astype(np.int32)) > 0)
    known = bands >= 0
    band_hit = np.zeros((len(bands), target_bands.shape[0]), dtype=bool)
    band_hit[known] = target_bands[:, bands[known]].T
    band_ok = ~target_bands.any(axis=1)[None, :] | band_hit
    return genre_ok & band_ok


def pacing_throttle(spent: np.ndarray, daily_budget: np.ndarray, elapsed: float) -> np.ndarray:
    """(C,) probability that a campaign sits out a list: (spent share − elapsed share) / (1 − elapsed share) when
    it has spent more of its daily budget than the share of the day gone by (`elapsed` in [0, 1]), else 0;
    1 once the budget is spent or the day is over with spend ahead."""
    spent_share = np.asarray(spent, dtype=float) / np.asarray(daily_budget, dtype=float)
    ahead = spent_share - elapsed
    if elapsed >= 1.0:
        p = np.where(ahead > 0, 1.0, 0.0)
    else:
        p = np.clip(ahead / (1.0 - elapsed), 0.0, 1.0)
    return np.where(spent_share >= 1.0, 1.0, p)


def eligible(active: np.ndarray, budget_left: np.ndarray, cap_left: np.ndarray, targeting: np.ndarray,
             consent: np.ndarray, untargeted_campaign: np.ndarray, throttled: np.ndarray | None = None) -> np.ndarray:
    """(A, C) bool: campaign active (C,), budget left (C,), the user's frequency cap not reached (A, C), and either
    the user consents to ad targeting (A,) and meets the criteria (A, C), or the campaign has none (C,)
    (untargeted: chosen without the user's data); minus lists where pacing throttles it (A, C)."""
    ok = (active & budget_left)[None, :] & cap_left
    ok &= np.where(consent[:, None], targeting, untargeted_campaign[None, :])
    if throttled is not None:
        ok &= ~throttled
    return ok


def second_price(ok: np.ndarray, bids: np.ndarray, p_click: np.ndarray,
                 reserve: float = RESERVE_PRICE) -> tuple[np.ndarray, np.ndarray]:
    """(winner (A,) campaign index or -1 without an eligible one, price per click (A,), 0 without a winner).

    Rank by score = bid × p_click (p_click (A, C) or (C,)); the first of the highest scores wins. Its price:
    runner-up score / own p_click, clipped to [min(reserve, bid), bid] (a lone campaign pays the reserve)."""
    p = np.broadcast_to(np.asarray(p_click, dtype=float), ok.shape)
    score = np.where(ok, bids[None, :] * p, -np.inf)
    n = ok.shape[0]
    if ok.shape[1] == 0:
        return np.full(n, -1), np.zeros(n)
    winner = np.argmax(score, axis=1)
    rows = np.arange(n)
    has = ok[rows, winner]
    rest = score.copy()
    rest[rows, winner] = -np.inf
    runner = rest.max(axis=1) if ok.shape[1] > 1 else np.full(n, -np.inf)
    own_p = p[rows, winner]
    bid = bids[winner]
    with np.errstate(divide="ignore", invalid="ignore"):
        price = np.where(np.isfinite(runner) & (own_p > 0), runner / own_p, 0.0)
    price = np.clip(np.maximum(price, np.minimum(reserve, bid)), 0.0, bid)
    return np.where(has, winner, -1), np.where(has, price, 0.0)


def pick_random(ok: np.ndarray, u: np.ndarray) -> np.ndarray:
    """(A,) index of a uniformly random eligible campaign per list (-1 without one); `u` (A, C) uniform draws."""
    keys = np.where(ok, u, -1.0)
    winner = np.argmax(keys, axis=1) if ok.shape[1] else np.zeros(ok.shape[0], dtype=np.int64)
    return np.where(ok.any(axis=1), winner, -1)


def campaign_rates(impressions: np.ndarray, clicks: np.ndarray, prior_rate: float = 0.03,
                   prior_weight: float = 50.0) -> np.ndarray:
    """(C,) each campaign's historical click rate, shrunk towards `prior_rate` as if it had `prior_weight` more
    impressions at that rate (a new campaign starts at the prior, not at 0 or 1): (clicks + w·r) / (imps + w)."""
    return (np.asarray(clicks, dtype=float) + prior_weight * prior_rate) / (np.asarray(impressions, dtype=float)
                                                                            + prior_weight)


def charged(campaign: np.ndarray, price: np.ndarray, clicked: np.ndarray, remaining: np.ndarray) -> np.ndarray:
    """(A,) what each click is charged in time order (rows already in time order) so that no campaign spends more
    than its `remaining` (C,) budget: the click that reaches the limit pays what is left, later ones nothing (an
    ad server's over-delivery is free). Non-clicks pay 0."""
    out = np.zeros(len(price))
    idx = np.flatnonzero(clicked & (campaign >= 0))
    if not len(idx):
        return out
    idx = idx[np.argsort(campaign[idx], kind="stable")]          # by campaign, time order kept within one
    c, p = campaign[idx], price[idx]
    cum = np.cumsum(p)
    starts = np.flatnonzero(np.r_[True, c[1:] != c[:-1]])
    offset = np.repeat(cum[starts] - p[starts], np.diff(np.r_[starts, len(c)]))
    before = cum - p - offset                                      # spent by the campaign's earlier clicks
    out[idx] = np.minimum(p, np.maximum(remaining[c] - before, 0.0))
    return out


def genre_matrix(genre_texts) -> np.ndarray:
    """(n, G) 0/1 float of '|'-separated genre texts (the catalogue's `genres`)."""
    return split_codes(genre_texts, GENRES).astype(float)

