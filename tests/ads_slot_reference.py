"""The sponsored slot as `core.serving.ads_slot` first chose it (plain reads on a session of its own, the whole
day's caps and every consenting user read per request, the write through the general pandas checks, the ids
looked up in `adslog.user_impressions` afterwards): the reference the faster slot must equal
(tests/test_ads_slot_equivalence.py). Kept as it was, apart from its own day cache and the consent and age-band
reads inlined as they were; run it with `writes.SMALL_AD_BATCH = 0`.
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
# What a day's selection reads that stays fixed for the day, computed once per (data folder, day): the catalogue's
# genres, each campaign's clicks and impressions before the day, and — with an ads model — P(click) of every user ×
# campaign at the day's start (the scorer's inputs at that instant do not change during the day; computing them for
# everyone costs about what one user costs: the CF bundle's affinities and the churn scores are read whole). On the
# small test world a slot took ~440 ms with the model scored per request and ~60 ms without a model (load ~11).
_day: dict = {}
_lock = threading.Lock()


def _for_day(settings: Settings, db, day_start: str, key: tuple, make):
    """The day's cached value of `key` (computed by `make()` on first use); a new day drops the old day's."""
    day = (str(settings.home), day_start)
    with _lock:
        if _day.get("day") != day:
            _day.clear()
            _day["day"] = day
        if key not in _day:
            _day[key] = make()
        return _day[key]


def _model_p(settings: Settings, db, row: dict, camps: pd.DataFrame, user_ids: np.ndarray, day_start: str
             ) -> np.ndarray:
    """(A, C) P(click) of the users at the day's start by the ads model `row` (every user scored once a day; users
    who signed up since are scored on their own)."""
    from core.ads import scoring
    key = ("p", int(row["version"]), row.get("artifact_hash"), tuple(int(c) for c in camps["campaign_id"]))

    def make():
        users = np.asarray(opsdb.user_ids(db), dtype=np.int64)
        score = scoring.scorer(settings, row)
        return score, pd.Index(users), np.asarray(score(users, camps, day_start), dtype=float)
    score, index, p = _for_day(settings, db, day_start, key, make)
    at = index.get_indexer(user_ids)
    out = p[np.maximum(at, 0)].copy()
    if (at < 0).any():
        out[at < 0] = np.asarray(score(user_ids[at < 0], camps, day_start), dtype=float)
    return out


def _ad_targeting_consent(db, user_ids) -> np.ndarray:
    ids = np.asarray(user_ids, dtype=np.int64)
    yes = np.array([u for (u,) in db.execute("SELECT user_id FROM users WHERE consent_ad_targeting = 1")],
                   dtype=np.int64)
    return np.isin(ids, yes)


def _age_bands(db, user_ids) -> np.ndarray:
    ids = np.asarray(user_ids, dtype=np.int64)
    found = dict(db.execute("SELECT user_id, age_band FROM users WHERE age_band IS NOT NULL").fetchall())
    bands = pd.Series(ids, dtype="int64").map(found).astype(object)
    return bands.where(bands.notna(), None).to_numpy()


def _favourites(db, user_ids: np.ndarray, genres: dict) -> np.ndarray:
    """(A, G) bool: each user's 3 favourite genres by share of the titles they watched or rated."""
    share = np.zeros((len(user_ids), len(GENRES)))
    row = {int(u): i for i, u in enumerate(user_ids)}
    pairs = opsdb.seen_pairs(db, [int(u) for u in user_ids])
    if pairs:
        g = auction.genre_matrix([genres.get(m, "") for _, m in pairs])
        np.add.at(share, [row[u] for u, _ in pairs], g / np.maximum(g.sum(axis=1, keepdims=True), 1))
    return auction.favourite_genres(share)


def choose_many(settings: Settings, lists: list[tuple[int, int | None, str]]) -> list[dict | None]:
    """Choose and log the sponsored slot of each list (user id, serve id, served_at) — the server's batch, decided
    together on one snapshot of today's spend and caps, as a simulated day decides a pacing slice — in one validated
    write. Per list None when the world shows no ads or no campaign is eligible, else {impression_id, campaign_id,
    advertiser, creative, creative_kind, position, policy, p_click, ads_model_version}."""
    out: list[dict | None] = [None] * len(lists)
    if not lists:
        return out
    slot = settings.ads_slot
    users = np.array([int(u) for u, _, _ in lists], dtype=np.int64)
    day_start = min(at for _, _, at in lists)[:10] + "T00:00:00"
    day_end = (pd.Timestamp(day_start) + pd.Timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%S")
    with opsdb.session(settings) as db:
        if not adslog.has_tables(db) or not adslog.enabled(db):
            return out
        camps = adslog.campaigns(db, active_only=True)
        if camps.empty:
            return out
        ids = camps["campaign_id"].to_numpy(dtype=np.int64)
        bids = camps["bid"].to_numpy(dtype=float)
        budget = camps["daily_budget"].to_numpy(dtype=float)
        target_g = auction.split_codes(camps["target_genres"], GENRES)
        target_b = auction.split_codes(camps["target_age_bands"], AGE_BANDS)
        untargeted = ~target_g.any(axis=1) & ~target_b.any(axis=1)
        consent = _ad_targeting_consent(db, users)
        genres = _for_day(settings, db, day_start, "genres", lambda: opsdb.movie_genres(db))
        targeting = auction.targeting_met(_favourites(db, users, genres), auction.band_index(_age_bands(db, users)),
                                          target_g, target_b)
        today = adslog.user_campaign_counts(db, day_start, day_end)
        today = today[today["user_id"].isin(users) & today["campaign_id"].isin(ids)]
        used = np.zeros((len(users), len(ids)), dtype=np.int64)
        for u, c, n in today.itertuples(index=False):
            used[users == u, np.flatnonzero(ids == c)[0]] = n
        spent = adslog.campaign_totals(db, day_start, day_end).set_index("campaign_id")["spend"].reindex(
            ids, fill_value=0.0).to_numpy(dtype=float)
        rngs = [np.random.default_rng([int(sid or 0), int(u), 5]) for u, sid, _ in lists]
        elapsed = np.array([(pd.Timestamp(at) - pd.Timestamp(day_start)).total_seconds() / 86400 for _, _, at in lists])
        throttled = np.vstack([r.random(len(ids)) < auction.pacing_throttle(spent, budget, min(e, 1.0))
                               for r, e in zip(rngs, elapsed)])
        ok = auction.eligible(np.ones(len(ids), bool), spent < budget, used < camps["frequency_cap"].to_numpy()[None, :],
                              targeting, consent, untargeted, throttled)
        winner = auction.pick_random(ok, np.vstack([r.random(len(ids)) for r in rngs]))
        policy = np.where(consent, "campaign-rate", "untargeted").astype(object)
        p, version = None, None
        if consent.any():
            prod = registry.production(settings, family=FAMILY)
            if prod is not None:
                version = int(prod["version"])
                policy[consent] = "model"
                p = np.clip(_model_p(settings, db, prod, camps, users, day_start), 0, 1)
            else:
                history = _for_day(settings, db, day_start, "history", lambda: adslog.campaign_totals(
                    db, None, day_start).set_index("campaign_id")).reindex(ids, fill_value=0)
                p = np.broadcast_to(auction.campaign_rates(history["impressions"], history["clicks"]), ok.shape)
            winner[consent] = auction.second_price(ok[consent], bids, p[consent])[0]
        shown = np.flatnonzero(winner >= 0)
        if not len(shown):
            return out
        rows = []
        for i in shown:
            targeted = bool(consent[i])
            rows.append({"served_id": lists[i][1], "user_id": int(users[i]), "campaign_id": int(ids[winner[i]]),
                         "slot": slot, "shown_at": lists[i][2], "price": 0.0,
                         "p_click": round(float(p[i, winner[i]]), 6) if targeted else None,
                         "policy": policy[i], "model_version": version if policy[i] == "model" else None,
                         "clicked": 0, "clicked_at": None})
        writes.record_ad_impressions(db, rows)
        logged = {(r["served_id"], r["campaign_id"]): r["impression_id"]
                  for u in {int(users[i]) for i in shown} for r in adslog.user_impressions(db, u, limit=len(lists) + 5)}
        movies = opsdb.titles(db, [int(m) for m in camps["movie_id"].dropna()])
        for i, r in zip(shown, rows):
            c = camps.iloc[winner[i]]
            creative = c["product"] if c["creative_kind"] == "product" else movies.get(int(c["movie_id"]), ("",))[0]
            out[i] = {"impression_id": logged.get((r["served_id"], r["campaign_id"])), "campaign_id": r["campaign_id"],
                      "advertiser": c["advertiser"], "creative": creative, "creative_kind": c["creative_kind"],
                      "position": slot, "policy": r["policy"], "p_click": r["p_click"],
                      "ads_model_version": r["model_version"]}
    return out
