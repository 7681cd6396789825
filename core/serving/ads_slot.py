"""The sponsored slot of one list answered by the model server: the same selection as a simulated day's
(`core.simulation.ads_day`, through `core.ads.auction`), for one user at the moment of the request, logged through
the same validated write (`writes.record_ad_impressions`) with the list's serve id.

Eligibility as there: active campaign, budget left today, the user's frequency cap not reached today, targeting met
(a target genre among the user's 3 favourites by the titles they watched or rated, a targeted age band) — or, for a
user without ad-targeting consent, only campaigns without targeting criteria, picked at random (`untargeted`).
Pacing throttles a campaign that spent more of today's budget than the share of the day gone. Consenting users are
ranked by bid × P(click) in a second-price auction: the production ads model's calibrated P(click) scored at the
day's start, as the closed loop scores its days (`model`), or, without an ads model in production, each
campaign's click rate before today (`campaign-rate`). The server does not see clicks: the impression is stored
unclicked and uncharged (price 0), as a front end would report a click later.
Random draws (pacing, the untargeted pick) come from a stream seeded by the serve id: one list, one answer.
"""
from __future__ import annotations

import threading

import numpy as np
import pandas as pd

from core.ads import auction
from core.constants import AGE_BANDS, GENRES
from core.settings import Settings
from core.store import adslog, opsdb, writes
from core.training import registry

FAMILY = "ads"
_scorers: dict = {}            # (data folder, version, artifact hash) -> scorer: the model is loaded once
_lock = threading.Lock()


def _scorer(settings: Settings, row: dict):
    from core.ads import scoring
    key = (str(settings.home), int(row["version"]), row.get("artifact_hash"))
    with _lock:
        if key not in _scorers:
            _scorers.clear()
            _scorers[key] = scoring.scorer(settings, row)
        return _scorers[key]


def _favourites(db, user_id: int) -> np.ndarray:
    """(1, G) bool: the user's 3 favourite genres by share of the titles they watched or rated."""
    seen = sorted({m for _, m in opsdb.seen_pairs(db, [user_id])})
    texts = opsdb.movie_genres(db)
    g = auction.genre_matrix([texts.get(m, "") for m in seen]) if seen else np.zeros((0, len(GENRES)))
    share = (g / np.maximum(g.sum(axis=1, keepdims=True), 1)).sum(axis=0)
    return auction.favourite_genres(share[None, :])


def choose(settings: Settings, user_id: int, serve_id: int | None, served_at: str, *, slot: int | None = None
           ) -> dict | None:
    """Choose and log the sponsored slot of the list `serve_id` served to `user_id` at `served_at`; None when the
    world shows no ads or no campaign is eligible. Returns {impression_id, campaign_id, advertiser, creative,
    position, policy, p_click, ads_model_version}."""
    slot = settings.ads_slot if slot is None else int(slot)
    day_start = served_at[:10] + "T00:00:00"
    day_end = (pd.Timestamp(day_start) + pd.Timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%S")
    with opsdb.session(settings) as db:
        if not adslog.has_tables(db) or not adslog.enabled(db):
            return None
        camps = adslog.campaigns(db, active_only=True)
        if camps.empty:
            return None
        ids = camps["campaign_id"].to_numpy(dtype=np.int64)
        bids = camps["bid"].to_numpy(dtype=float)
        budget = camps["daily_budget"].to_numpy(dtype=float)
        target_g = auction.split_codes(camps["target_genres"], GENRES)
        target_b = auction.split_codes(camps["target_age_bands"], AGE_BANDS)
        untargeted = ~target_g.any(axis=1) & ~target_b.any(axis=1)
        consent = opsdb.ad_targeting_consent(db, [user_id])
        targeting = auction.targeting_met(_favourites(db, user_id), auction.band_index(opsdb.age_bands(db, [user_id])),
                                          target_g, target_b)
        today = adslog.user_campaign_counts(db, day_start, day_end)
        used = today[today["user_id"] == user_id].set_index("campaign_id")["impressions"].reindex(ids, fill_value=0)
        spent = adslog.campaign_totals(db, day_start, day_end).set_index("campaign_id")["spend"].reindex(
            ids, fill_value=0.0).to_numpy(dtype=float)
        rng = np.random.default_rng([int(serve_id or 0), int(user_id), 5])
        elapsed = (pd.Timestamp(served_at) - pd.Timestamp(day_start)).total_seconds() / 86400
        throttled = rng.random((1, len(ids))) < auction.pacing_throttle(spent, budget, elapsed)[None, :]
        ok = auction.eligible(np.ones(len(ids), bool), spent < budget,
                              (used.to_numpy() < camps["frequency_cap"].to_numpy())[None, :], targeting, consent,
                              untargeted, throttled)
        if not ok.any():
            return None
        p, version = None, None
        if not consent[0]:
            policy, winner = "untargeted", int(auction.pick_random(ok, rng.random((1, len(ids))))[0])
        else:
            prod = registry.production(settings, family=FAMILY)
            if prod is not None:
                policy, version = "model", int(prod["version"])
                p = np.clip(np.asarray(_scorer(settings, prod)([user_id], camps, day_start), dtype=float), 0, 1)
            else:
                policy = "campaign-rate"
                history = adslog.campaign_totals(db, None, day_start).set_index("campaign_id").reindex(
                    ids, fill_value=0)
                p = auction.campaign_rates(history["impressions"], history["clicks"])[None, :]
            winner = int(auction.second_price(ok, bids, p)[0][0])
        p_click = None if p is None else round(float(p[0, winner]), 6)
        writes.record_ad_impressions(db, [{
            "served_id": serve_id, "user_id": int(user_id), "campaign_id": int(ids[winner]), "slot": slot,
            "shown_at": served_at, "price": 0.0, "p_click": p_click, "policy": policy, "model_version": version,
            "clicked": 0, "clicked_at": None}])
        mine = [r for r in adslog.user_impressions(db, user_id, limit=20)
                if r["served_id"] == serve_id and r["campaign_id"] == int(ids[winner])]
        row = camps.iloc[winner]
        creative = row["product"] if row["creative_kind"] == "product" else \
            (opsdb.titles(db, [int(row["movie_id"])]).get(int(row["movie_id"]), ("",))[0])
    return {"impression_id": mine[0]["impression_id"] if mine else None, "campaign_id": int(ids[winner]),
            "advertiser": row["advertiser"], "creative": creative, "creative_kind": row["creative_kind"],
            "position": slot, "policy": policy, "p_click": p_click, "ads_model_version": version}
