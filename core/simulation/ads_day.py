"""A simulated day's sponsored slots (docs/ads.md): which ad each active user's list carries, whether they click,
what it costs the advertiser and how much it tires the user; and switching ads on or off for a world.

The service's side only uses what the service knows — campaigns, budgets spent, today's impressions per user
(frequency caps), consent, the declared age band and the genres of what the user watched (their favourites) —
and chooses through `core.ads.auction`. The humans' side (`core.ads.world`) decides clicks and fatigue from the
latent taste. Draws come from the day's own stream `[seed, day, 5]`, so a world without ads simulates exactly as
before, and a world with ads sees the same organic behaviour (only churn moves, through fatigue).

Budgets and pacing follow the day: sessions are taken in time order in PACING_STEP slices; within a slice every
list is decided with the spend at its start, and charges are capped so no campaign spends more than its daily
budget (`auction.charged`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import sqlite_utils

from core import errors
from core.ads import auction
from core.ads import world as ads_world
from core.constants import AGE_BANDS, GENRES, TS_FORMAT
from core.settings import Settings
from core.store import adslog, opsdb, writes

PACING_STEP = 900          # seconds: budgets and pacing are updated every 15 simulated minutes
CLICK_DELAY = 20           # seconds from an ad shown to its click
POLICIES = ("untargeted", "campaign-rate", "model")


@dataclass(frozen=True)
class AdPolicy:
    """How the day's ads are chosen: 'untargeted' (random eligible), 'campaign-rate' (bid × each campaign's
    historical click rate) or 'model' (bid × `scorer`'s calibrated P(click), logged with `model_version`)."""

    name: str = "campaign-rate"
    scorer: auction.Scorer | None = None
    model_version: int | None = None

    def __post_init__(self):
        if self.name not in POLICIES:
            raise errors.ValidationError(f"unknown ad policy {self.name!r}; choose one of {', '.join(POLICIES)}")
        if (self.name == "model") != (self.scorer is not None):
            raise errors.ValidationError("the 'model' ad policy needs a scorer, and only it takes one")


@dataclass
class AdDay:
    """The day's impressions (rows for `writes.record_ad_impressions`), the churn hazard each active user's ad
    adds (A,) — 0 for a user shown none —, and the clicks on promoted titles (`title_clicks`: a = the user's
    position among the active, movie_id, t = click time in seconds since the day's start), which may lead to a
    watch (`simulation.ad_watches`)."""

    impressions: pd.DataFrame
    fatigue: np.ndarray
    title_clicks: pd.DataFrame | None = None


def _iso(base: str, seconds: np.ndarray) -> np.ndarray:
    stamps = np.datetime64(base, "s") + np.asarray(seconds).astype("int64").astype("timedelta64[s]")
    return np.datetime_as_string(stamps, unit="s")


def _user_context(db, world, active: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(consent (A,), age band index (A,), favourite genres (A, G)) as the service knows them: the stored consent
    and band, and the genres of the titles each user watched before today."""
    uids = world.user_ids[active]
    consent = opsdb.ad_targeting_consent(db, uids)
    bands = auction.band_index(opsdb.age_bands(db, uids))
    shares = world.genre_matrix / np.maximum(world.genre_matrix.sum(axis=1, keepdims=True), 1)
    watched_genres = world.watched[active].astype(np.float32) @ shares.astype(np.float32)
    return consent, bands, auction.favourite_genres(watched_genres)


def show_ads(db: sqlite_utils.Database, world, day_start: str, active: np.ndarray, session: np.ndarray, *,
             day: int, slot: int, policy: AdPolicy | None = None, served_ids: dict | None = None) -> AdDay | None:
    """The sponsored slot of each active user's session (world rows `active`, session start seconds `session`);
    None when the world shows no ads (switched off, no active campaign, nobody active)."""
    policy = policy or AdPolicy()
    if not len(active) or not adslog.enabled(db):
        return None
    camps = adslog.campaigns(db, active_only=True)
    if camps.empty:
        return None
    rng = np.random.default_rng([world.seed, day, 5])
    day_end = (pd.Timestamp(day_start) + pd.Timedelta(days=1)).strftime(TS_FORMAT)
    ids = camps["campaign_id"].to_numpy(dtype=np.int64)
    col = {c: i for i, c in enumerate(ids)}
    bids = camps["bid"].to_numpy(dtype=float)
    budget = camps["daily_budget"].to_numpy(dtype=float)
    cap = camps["frequency_cap"].to_numpy(dtype=np.int64)
    target_g = auction.split_codes(camps["target_genres"], GENRES)
    target_b = auction.split_codes(camps["target_age_bands"], AGE_BANDS)
    untargeted = ~target_g.any(axis=1) & ~target_b.any(axis=1)

    consent, bands, favourites = _user_context(db, world, active)
    targeting = auction.targeting_met(favourites, bands, target_g, target_b)
    uids = world.user_ids[active]
    used = np.zeros((len(active), len(ids)), dtype=np.int64)          # today's impressions per user and campaign
    today = adslog.user_campaign_counts(db, day_start, day_end)
    if len(today):
        row_of = pd.Series(np.arange(len(uids)), index=uids)
        today = today[today["user_id"].isin(row_of.index) & today["campaign_id"].isin(col)]
        used[row_of[today["user_id"]].to_numpy(), today["campaign_id"].map(col).to_numpy()] = today["impressions"]
    spent = np.zeros(len(ids))
    spent_today = adslog.campaign_totals(db, day_start, day_end)
    spent_today = spent_today[spent_today["campaign_id"].isin(col)]
    spent[spent_today["campaign_id"].map(col).to_numpy(dtype=np.int64)] = spent_today["spend"].to_numpy(dtype=float)

    if policy.name == "campaign-rate":
        history = adslog.campaign_totals(db, None, day_start).set_index("campaign_id").reindex(ids, fill_value=0)
        p_rank = np.broadcast_to(auction.campaign_rates(history["impressions"], history["clicks"]), used.shape)
    elif policy.name == "model":
        p_rank = np.clip(np.asarray(policy.scorer(uids, camps, day_start), dtype=float), 0.0, 1.0)
        if p_rank.shape != used.shape:
            raise errors.RetroError(f"the ad scorer returned shape {p_rank.shape}, expected {used.shape}")
    else:
        p_rank = None

    movie_genres = opsdb.movie_genres(db)
    latent = ads_world.interest(world.taste[active], ads_world.appeal(camps, movie_genres))
    age_match = target_b[:, np.maximum(bands, 0)].T & (bands >= 0)[:, None]
    p_true = ads_world.click_probability(latent, age_match.astype(float))

    winner = np.full(len(active), -1)
    price = np.zeros(len(active))
    order = np.argsort(session, kind="stable")
    steps = (session[order] // PACING_STEP).astype(np.int64)
    bounds_ = np.flatnonzero(np.r_[True, steps[1:] != steps[:-1], True])
    throttle_u = rng.random((len(active), len(ids)))
    pick_u = rng.random((len(active), len(ids)))
    click_u = rng.random(len(active))
    clicked = np.zeros(len(active), dtype=bool)
    charge = np.zeros(len(active))
    for lo, hi in zip(bounds_[:-1], bounds_[1:]):          # at most 96 slices a day, each vectorized
        rows = order[lo:hi]
        elapsed = steps[lo] * PACING_STEP / 86400
        throttled = throttle_u[rows] < auction.pacing_throttle(spent, budget, elapsed)[None, :]
        ok = auction.eligible(np.ones(len(ids), bool), spent < budget, used[rows] < cap[None, :], targeting[rows],
                              consent[rows], untargeted, throttled)
        # Untargeted (the policy, or a user without ad-targeting consent): a random eligible campaign at a fixed
        # price, its bid — no auction, since nothing about the user may rank the campaigns.
        w = auction.pick_random(ok, pick_u[rows])
        pr = np.where(w >= 0, bids[np.maximum(w, 0)], 0.0)
        if p_rank is not None:
            ranked = consent[rows]
            w_r, pr_r = auction.second_price(ok[ranked], bids, p_rank[rows[ranked]])
            w[ranked], pr[ranked] = w_r, pr_r
        shown = w >= 0
        hit = shown & (click_u[rows] < p_true[rows, np.maximum(w, 0)])
        cost = auction.charged(w, pr, hit, budget - spent)
        spent += np.bincount(w[hit], weights=cost[hit], minlength=len(ids))
        np.add.at(used, (rows[shown], w[shown]), 1)
        winner[rows], price[rows], clicked[rows], charge[rows] = w, pr, hit, cost

    shown = winner >= 0
    rows = np.flatnonzero(shown)
    w = winner[rows]
    at = session[rows] + (slot - 1) * 3                        # the slot's place in the list, as organic impressions
    served = pd.Series(uids[rows]).map(served_ids or {}).astype("Int64")
    targeted = consent[rows] & (p_rank is not None)           # chosen by the policy's ranking, logged as such
    impressions = pd.DataFrame({
        "served_id": served.astype(object).where(served.notna(), None),
        "user_id": uids[rows], "campaign_id": ids[w], "slot": slot,
        "shown_at": _iso(day_start, np.minimum(at, 86399)),
        "price": np.round(charge[rows], 6),
        "p_click": pd.Series(np.round(p_rank[rows, w], 6) if targeted.any() else np.zeros(len(rows)),
                             dtype=object).where(targeted, None),
        "policy": np.where(targeted, policy.name, "untargeted"),
        "model_version": pd.Series(policy.model_version, index=range(len(rows)), dtype=object)
                         .where(targeted & (policy.name == "model"), None),
        "clicked": clicked[rows].astype(int),
        "clicked_at": pd.Series(_iso(day_start, np.minimum(at + CLICK_DELAY, 86399)), dtype=object)
                        .where(clicked[rows], None),
    })
    fat = np.zeros(len(active))
    fat[rows] = ads_world.fatigue(latent[rows, w])
    movie = pd.to_numeric(camps["movie_id"], errors="coerce").to_numpy(dtype=float)
    title = (camps["creative_kind"].to_numpy() == "title") & np.isfinite(movie)
    hit = clicked[rows] & title[w]
    title_clicks = pd.DataFrame({"a": rows[hit], "movie_id": movie[w[hit]].astype(np.int64),
                                 "t": np.minimum(at[hit] + CLICK_DELAY, 86399)})
    return AdDay(impressions, fat, title_clicks)


# ------------------------------------------------------------------ switching ads on or off for a world
def seed_campaigns(db: sqlite_utils.Database, seed: int, n_users: int) -> list[int]:
    """Create the world's campaigns (`ads_world.new_campaigns`) when it has none; returns the new ids."""
    if len(adslog.campaigns(db)):
        return []
    votes = opsdb.movie_votes(db)
    movies = opsdb.catalog(db)[["movie_id", "genres"]].merge(votes, on="movie_id", how="left")
    movies["rating"] = (movies["rating_sum"] / movies["votes"]).fillna(0.0)
    frame = ads_world.new_campaigns(seed, movies, n_users, opsdb.get_meta(db, "clock") or "2026-01-01T00:00:00")
    return writes.add_ad_campaigns(db, frame)


def switch(settings: Settings, on: bool) -> dict:
    """Switch ads on or off for the world in `settings` (`meta.ads_enabled`). Switching on a world made before ads
    creates its campaigns (seeded from the world's seed) and records the users' age bands from the simulated
    world, where it has one and the store has none. Returns {'enabled', 'was_enabled', 'campaigns_created',
    'age_bands_recorded'}."""
    from core.simulation import simulation, world as world_mod
    with simulation.running(settings, "ads switch"):
        with opsdb.session(settings) as db:
            was = adslog.enabled(db)
            created, recorded = [], 0
            with opsdb.write_transaction(db):
                if on:
                    seed = int(opsdb.get_meta(db, "seed", str(settings.seed)))
                    if settings.world_file.exists():
                        world = world_mod.World.load(settings.world_file)
                        recorded = opsdb.set_age_bands(db, world.user_ids, np.array(AGE_BANDS)[world.age_band])
                    created = seed_campaigns(db, seed, opsdb.user_count(db))
                adslog.set_enabled(db, on)
    return {"enabled": bool(on), "was_enabled": was, "campaigns_created": len(created),
            "age_bands_recorded": int(recorded)}


def campaign_report(settings: Settings) -> list[dict]:
    """Every campaign with its totals (impressions, clicks, click rate, spend) over the whole log."""
    with opsdb.session(settings) as db:
        camps = adslog.campaigns(db)
        totals = adslog.campaign_totals(db)
    merged = camps.merge(totals, on="campaign_id", how="left").fillna({"impressions": 0, "clicks": 0, "spend": 0.0})
    merged["click_rate"] = np.where(merged["impressions"] > 0, merged["clicks"] / merged["impressions"].clip(lower=1),
                                    np.nan)
    out = merged.astype(object).where(merged.notna(), None).to_dict("records")
    for row in out:
        for k in ("impressions", "clicks", "frequency_cap", "active", "campaign_id", "movie_id"):
            if row.get(k) is not None:
                row[k] = int(row[k])
        row["spend"] = round(float(row["spend"]), 4)
    return out
