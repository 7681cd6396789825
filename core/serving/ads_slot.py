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
from core.serving import serving
from core.settings import Settings
from core.store import adslog, opsdb, writes
from core.training import registry

FAMILY = "ads"
# What a day's selection reads that stays fixed for the day, computed once per (data folder, day): the catalogue's
# genres, each campaign's clicks and impressions before the day, and — with an ads model — P(click) of every user ×
# campaign at the day's start (the scorer's inputs at that instant do not change during the day; computing them for
# everyone costs about what one user costs: the CF bundle's affinities and the churn scores are read whole). On the
# small test world a slot took ~440 ms with the model scored per request and ~60 ms without a model (load ~11).
# The campaigns are read on every request (a few rows) and what is derived from them is cached on those rows, so a
# campaign added, paused or edited is seen by the next list.
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


def _favourites(db, user_ids: np.ndarray, genres: dict) -> np.ndarray:
    """(A, G) bool: each user's 3 favourite genres by share of the titles they watched or rated."""
    share = np.zeros((len(user_ids), len(GENRES)))
    row = {int(u): i for i, u in enumerate(user_ids)}
    pairs = opsdb.seen_pairs(db, [int(u) for u in user_ids])
    if pairs:
        g = auction.genre_matrix([genres.get(m, "") for _, m in pairs])
        np.add.at(share, [row[u] for u, _ in pairs], g / np.maximum(g.sum(axis=1, keepdims=True), 1))
    return auction.favourite_genres(share)


class _Campaigns:
    """The active campaigns as the selection reads them: the frame (`adslog.campaigns`), their ids (C,), bids,
    budgets and caps (C,), target genres (C, G) and age bands (C, B), and which name no criteria (C,)."""

    def __init__(self, rows: tuple):
        self.frame = pd.DataFrame(list(rows), columns=list(adslog.CAMPAIGN_COLUMNS))
        self.rows = [dict(zip(adslog.CAMPAIGN_COLUMNS, r)) for r in rows]
        self.ids = self.frame["campaign_id"].to_numpy(dtype=np.int64)
        self.column = {int(c): j for j, c in enumerate(self.ids)}
        self.bids = self.frame["bid"].to_numpy(dtype=float)
        self.budget = self.frame["daily_budget"].to_numpy(dtype=float)
        self.cap = self.frame["frequency_cap"].to_numpy()
        self.target_g = auction.split_codes(self.frame["target_genres"], GENRES)
        self.target_b = auction.split_codes(self.frame["target_age_bands"], AGE_BANDS)
        self.untargeted = ~self.target_g.any(axis=1) & ~self.target_b.any(axis=1)


def _campaigns(settings: Settings, db, day_start: str) -> _Campaigns:
    rows = tuple(adslog.campaign_rows(db, active_only=True))
    return _for_day(settings, db, day_start, ("campaigns", rows), lambda: _Campaigns(rows))


def choose(settings: Settings, user_id: int, serve_id: int | None, served_at: str) -> dict | None:
    """The sponsored slot of one list (`choose_many` of one)."""
    return choose_many(settings, [(user_id, serve_id, served_at)])[0]


def choose_many(settings: Settings, lists: list[tuple[int, int | None, str]]) -> list[dict | None]:
    """Choose and log the sponsored slot of each list (user id, serve id, served_at) — the server's batch, decided
    together on one snapshot of today's spend and caps, as a simulated day decides a pacing slice — in one validated
    write. Per list None when the world shows no ads or no campaign is eligible, else {impression_id, campaign_id,
    advertiser, creative, creative_kind, position, policy, p_click, ads_model_version}. Reads on the calling
    thread's connections (`serving.ops_connection`), as the lists it goes with."""
    out: list[dict | None] = [None] * len(lists)
    if not lists:
        return out
    slot = settings.ads_slot
    users = np.array([int(u) for u, _, _ in lists], dtype=np.int64)
    day_start = min(at for _, _, at in lists)[:10] + "T00:00:00"
    day_end = (pd.Timestamp(day_start) + pd.Timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%S")
    db = serving.ops_connection(settings)
    if not adslog.has_tables(db) or not adslog.enabled(db):
        return out
    camps = _campaigns(settings, db, day_start)
    if not len(camps.ids):
        return out
    ids = camps.ids
    consent = opsdb.ad_targeting_consent(db, users)
    genres = _for_day(settings, db, day_start, "genres", lambda: opsdb.movie_genres(db))
    targeting = auction.targeting_met(_favourites(db, users, genres), auction.band_index(opsdb.age_bands(db, users)),
                                      camps.target_g, camps.target_b)
    used = np.zeros((len(users), len(ids)), dtype=np.int64)
    at_rows: dict[int, list[int]] = {}
    for i, u in enumerate(users.tolist()):
        at_rows.setdefault(u, []).append(i)
    for u, c, n in adslog.caps_used(db, day_start, day_end, users):
        if c in camps.column:
            used[at_rows[u], camps.column[c]] = n
    spend = {c: s for c, _, _, s in adslog.campaign_total_rows(db, day_start, day_end)}
    spent = np.array([spend.get(c, 0.0) for c in ids.tolist()], dtype=float)
    rngs = [np.random.default_rng([int(sid or 0), int(u), 5]) for u, sid, _ in lists]
    elapsed = np.array([(pd.Timestamp(at) - pd.Timestamp(day_start)).total_seconds() / 86400 for _, _, at in lists])
    throttled = np.vstack([r.random(len(ids)) < auction.pacing_throttle(spent, camps.budget, min(e, 1.0))
                           for r, e in zip(rngs, elapsed)])
    ok = auction.eligible(np.ones(len(ids), bool), spent < camps.budget, used < camps.cap[None, :], targeting,
                          consent, camps.untargeted, throttled)
    winner = auction.pick_random(ok, np.vstack([r.random(len(ids)) for r in rngs]))
    policy = np.where(consent, "campaign-rate", "untargeted").astype(object)
    p, version = None, None
    if consent.any():
        prod = registry.production_on(serving.mlops_connection(settings), settings, family=FAMILY)
        if prod is not None:
            version = int(prod["version"])
            policy[consent] = "model"
            p = np.clip(_model_p(settings, db, prod, camps.frame, users, day_start), 0, 1)
        else:
            history = _for_day(settings, db, day_start, "history", lambda: adslog.campaign_totals(
                db, None, day_start).set_index("campaign_id"))
            rates = _for_day(settings, db, day_start, ("rates", tuple(ids.tolist())), lambda: _rates(history, ids))
            p = np.broadcast_to(rates, ok.shape)
        winner[consent] = auction.second_price(ok[consent], camps.bids, p[consent])[0]
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
    logged = writes.record_ad_impressions(db, rows, return_ids=True).ids
    winners = [camps.rows[winner[i]] for i in shown]
    movies = opsdb.titles(db, [int(c["movie_id"]) for c in winners if c["creative_kind"] != "product"])
    for i, r, c, impression_id in zip(shown, rows, winners, logged):
        creative = c["product"] if c["creative_kind"] == "product" else movies.get(int(c["movie_id"]), ("",))[0]
        out[i] = {"impression_id": impression_id, "campaign_id": r["campaign_id"],
                  "advertiser": c["advertiser"], "creative": creative, "creative_kind": c["creative_kind"],
                  "position": slot, "policy": r["policy"], "p_click": r["p_click"],
                  "ads_model_version": r["model_version"]}
    return out


def _rates(history: pd.DataFrame, ids: np.ndarray) -> np.ndarray:
    """(C,) each campaign's click rate before the day (`auction.campaign_rates`) from the day's `history`."""
    history = history.reindex(ids, fill_value=0)
    return auction.campaign_rates(history["impressions"], history["clicks"])
