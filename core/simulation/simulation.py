"""Simulated days of the streaming service, and the behaviour shifts an operator can start.

Each day, active users see impressions (the Top 50, browse rows and, when a
recommender is plugged in, the served recommendations), click, watch (longer
when a movie fits their taste), sometimes rate, like/dislike and share. All of
it is written through the validated write API. Deterministic for a seed: day d
always draws from `default_rng([seed, d, ...])`.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import sqlite_utils

from core import errors, faults
from core.threads import pin_blas
from core.ads import world as ads_world
from core.store import opsdb, servinglog, writes
from core.simulation import ads_day, world as world_mod
from core.constants import AGE_BANDS, GENRE_INDEX, GENRES, SIM_START, TS_FORMAT
from core.settings import Settings
from core.training.top50 import top50_ids

Progress = Callable[[float, str], None]
# A recommender plugged into the simulation: user ids -> {user_id: [movie ids]}.
ServeFn = Callable[[np.ndarray, int], dict]

SHIFT_KINDS = ("trend", "viral", "seasonal", "life-event", "new-releases", "data-quality")
SEASONS = {"halloween": ("Horror", "Thriller", "Mystery"), "holidays": ("Children", "Animation", "Musical", "Romance"),
           "summer": ("Adventure", "Action", "Sci-Fi")}
IMPRESSIONS_PER_SESSION = 10
# Exposure logits: log-popularity weight, Top-50 row boost, weight of browsing by taste.
EXPOSURE_POPULARITY, EXPOSURE_TOP50, EXPOSURE_TASTE = 0.3, 1.0, 2.0
EXPOSURE_SERVED = 1.5  # the 'For you' row on the home page
DAY = timedelta(days=1)
# Churn (issue 17). After a session the user's latent hazard moves: up when nothing of the home page's
# personal row was watched (the served list; the Top 50 row when nothing is served), down when something was.
# It relaxes towards 0 every day. Leaving is decided after a session, with log-odds
# LEAVE_BASE + hazard + LEAVE_SCARCITY · (share of the user's well-fitting titles already watched);
# a life event raises the hazard of the users it changes. A user who left comes back with RETURN_RATE a day.
POOR_LIST_HAZARD, GOOD_SESSION_HAZARD, HAZARD_DECAY = 0.2, 0.4, 0.97
HAZARD_RANGE = (-1.0, 4.0)
LEAVE_BASE, LEAVE_SCARCITY = -5.5, 3.0
LIFE_EVENT_HAZARD = 1.0
RETURN_RATE = 0.01


def _noop(fraction: float, message: str) -> None:
    pass


@dataclass
class Shift:
    """A behaviour change in the world, active for days [start_day, start_day + duration)."""

    kind: str
    strength: float
    start_day: int
    duration: int
    params: dict = field(default_factory=dict)

    def active(self, day: int) -> bool:
        return self.start_day <= day < self.start_day + self.duration

    def age(self, day: int) -> int:
        return day - self.start_day


def day_start(day: int) -> datetime:
    return datetime.strptime(SIM_START, TS_FORMAT) + day * DAY


def _iso(base: datetime, seconds: np.ndarray) -> np.ndarray:
    stamps = np.datetime64(base.strftime(TS_FORMAT), "s") + seconds.astype("int64").astype("timedelta64[s]")
    return np.datetime_as_string(stamps, unit="s")


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


# ------------------------------------------------------------------ shifts
def validate_shift(kind: str, strength: float, duration: int) -> None:
    if kind not in SHIFT_KINDS:
        raise errors.ValidationError(f"unknown shift {kind!r}; choose one of: {', '.join(SHIFT_KINDS)}")
    if not (0 < strength <= 5):
        raise errors.ValidationError(f"shift strength must be in (0, 5], got {strength}")
    if duration < 1:
        raise errors.ValidationError(f"shift duration must be at least 1 day, got {duration}")


def start_shift(db: sqlite_utils.Database, world: world_mod.World, kind: str, strength: float, duration: int,
                day: int, params: dict | None = None) -> Shift:
    """Record a shift and apply its lasting effects (new tastes, new titles) to the world."""
    validate_shift(kind, strength, duration)
    params = dict(params or {})
    rng = np.random.default_rng([world.seed, day, 77])
    if kind == "trend":
        params.setdefault("genre", "Western")
        if params["genre"] not in GENRE_INDEX:
            raise errors.ValidationError(f"unknown genre {params['genre']!r}; known: {', '.join(GENRES)}")
    elif kind == "seasonal":
        params.setdefault("season", "halloween")
        if params["season"] not in SEASONS:
            raise errors.ValidationError(f"unknown season {params['season']!r}; choose one of: {', '.join(SEASONS)}")
    elif kind == "viral":
        if "movie_id" in params and int(params["movie_id"]) not in set(world.movie_ids.tolist()):
            raise errors.UnknownMovie(f"unknown movie {params['movie_id']}: a viral shift needs a title of the catalog")
        if "movie_id" not in params:  # an obscure but decent title takes off
            # An obscure, well-made title with broad appeal (a niche-genre film does not go viral).
            obscure = np.argsort(world.recent_watches)[: max(1, len(world.movie_ids) // 3)]
            shares = world.genre_matrix / np.maximum(world.genre_matrix.sum(axis=1, keepdims=True), 1)
            appeal = np.log(len(GENRES) * (shares[obscure] @ world.taste.mean(axis=0)) + 0.05)
            pick = obscure[np.argmax(world.quality[obscure] + appeal)]
            params["movie_id"] = int(world.movie_ids[pick])
    elif kind == "life-event":
        params.setdefault("genres", ["Children", "Animation", "Comedy"])
        share = min(0.5, 0.25 * strength)
        rows = np.flatnonzero(rng.random(len(world.user_ids)) < share)
        focus = np.zeros(len(GENRES))
        focus[[GENRE_INDEX[g] for g in params["genres"]]] = 1.0
        new_taste = rng.dirichlet(focus * 2 + 0.05, size=len(rows))
        world.taste[rows] = 0.3 * world.taste[rows] + 0.7 * new_taste
        world.hazard[rows] = np.minimum(world.hazard[rows] + LIFE_EVENT_HAZARD * strength, HAZARD_RANGE[1])
        params["users_changed"] = int(len(rows))
    elif kind == "new-releases":
        n = max(1, int(round(50 * strength)))
        taken = set(opsdb.movie_titles(db).values())   # new releases must not repeat a title
        cat = world_mod.new_catalog(n, rng, taken, quality_shift=0.7)
        # The write API numbers them after the largest id ever used (never an id the bounds refuse).
        ids = np.asarray(writes.add_movies(db, pd.DataFrame({
            "movie_id": [None] * n, "title": cat["titles"], "year": cat["year"], "genres": cat["genres"],
            "runtime_min": cat["runtime"], "added_at": day_start(day).strftime(TS_FORMAT),
        }), source="sim"), dtype=np.int64)
        world_mod.add_titles(world, ids, cat)
        params["movie_ids"] = ids.tolist()
    opsdb.add_sim_shift(db, kind, strength, day, duration, params)
    return Shift(kind, strength, day, duration, params)


def load_shifts(db: sqlite_utils.Database) -> list[Shift]:
    return [Shift(k, s, d, n, p) for k, s, d, n, p in opsdb.sim_shifts(db)]


# ------------------------------------------------------------------ one day
@dataclass
class DayStats:
    day: int
    active_users: int = 0
    new_users: int = 0
    events: int = 0
    ratings: int = 0
    rejected: int = 0
    duplicates_ignored: int = 0
    left: int = 0          # users who left the service after today's session
    returned: int = 0      # users who came back today
    by_kind: dict = field(default_factory=dict)
    ad_impressions: int = 0   # sponsored slots shown (0 in a world without ads)
    ad_clicks: int = 0
    ad_revenue: float = 0.0   # what the clicks were charged


def _day_effects(world: world_mod.World, shifts: list[Shift], day: int):
    """Per-genre taste multipliers, per-movie exposure and click boosts for this day."""
    G, M = len(GENRES), len(world.movie_ids)
    taste_mult = np.ones(G)
    exposure = np.zeros(M)
    click = np.zeros(M)
    share = np.zeros(M)
    fault_rate = 0.0
    for s in shifts:
        if not s.active(day):
            continue
        t = s.age(day)
        if s.kind == "trend":
            g = GENRE_INDEX[s.params["genre"]]
            ramp = 1.0                      # a trend surges: full strength from its first day
            taste_mult[g] *= 1 + 3 * s.strength * ramp
            exposure += 0.8 * s.strength * ramp * world.genre_matrix[:, g]
        elif s.kind == "seasonal":
            wave = max(0.0, min(1.0, (t + 1) / 2, (s.duration - t) / 2))   # the season: in over 2 days, out over 2
            for name in SEASONS[s.params["season"]]:
                taste_mult[GENRE_INDEX[name]] *= 1 + 3 * s.strength * wave
        elif s.kind == "viral":
            j = world.movie_rows(np.array([s.params["movie_id"]]))[0]
            intensity = s.strength * np.exp(-t / max(1.0, s.duration / 3))
            exposure[j] += 10 * intensity       # everybody's home page shows it
            click[j] += 2.5 * intensity
            share[j] += 0.3 * min(1.0, intensity)
        elif s.kind == "new-releases":
            rows = world.movie_rows(np.array(s.params["movie_ids"]))
            exposure[rows] += 1.5 * s.strength
        elif s.kind == "data-quality":
            fault_rate = max(fault_rate, min(0.5, 0.15 * s.strength))
    return taste_mult, exposure, click, share, fault_rate


def _inject_faults(ratings: pd.DataFrame, events: pd.DataFrame, rate: float, rng: np.random.Generator):
    """A logging fault: wrong-scale ratings, retried and double-logged events, missing ids."""
    ratings = ratings.copy()
    wrong = rng.random(len(ratings)) < rate
    ratings["rating"] = ratings["rating"].astype(object)
    ratings.loc[wrong, "rating"] = ratings.loc[wrong, "rating"].astype(int) * 10 + 5  # a 0-100 scale build
    retries = events[rng.random(len(events)) < rate]                              # same id: ignored
    doubled = events[rng.random(len(events)) < rate / 2].copy()                   # new id: content duplicate
    doubled["event_id"] = doubled["event_id"] + "-dup"
    broken = events[rng.random(len(events)) < rate / 3].copy()
    broken["event_id"] = broken["event_id"] + "-bad"
    half = rng.random(len(broken)) < 0.5
    broken["user_id"] = broken["user_id"].astype(object)
    broken.loc[half, "user_id"] = None                                            # missing user id
    broken["movie_id"] = broken["movie_id"].astype(object)
    broken.loc[~half, "movie_id"] = -1                                            # unknown movie id
    events = pd.concat([events, retries, doubled, broken], ignore_index=True)
    return ratings, events


def simulate_day(db: sqlite_utils.Database, world: world_mod.World, day: int, shifts: list[Shift],
                 serve: ServeFn | None = None, world_file: Path | None = None, *, ads_slot: int = 3,
                 ad_policy: ads_day.AdPolicy | None = None) -> DayStats:
    """Simulate one day and write it (one transaction); mutates `world` (who watched what). With `world_file`
    the world is saved there in step with the day's commit (`world_step`); without, saving it is the caller's.
    When the world shows ads (`ads_day`), each session's list carries one sponsored slot at `ads_slot`, chosen by
    `ad_policy` (default: campaign click rates)."""
    rng = np.random.default_rng([world.seed, day, 1])
    stats = DayStats(day)
    start = day_start(day)
    present = np.isin(world.user_ids, opsdb.user_ids(db))
    taste_mult, exposure_boost, click_boost, share_boost, fault_rate = _day_effects(world, shifts, day)

    # New sign-ups arrive during the day; they are cold-start users from tomorrow on.
    n_new = int(rng.poisson(0.002 * len(world.user_ids)))

    active = np.flatnonzero(present & ~world.left & (rng.random(len(world.user_ids)) < world.activity))
    stats.active_users, stats.new_users = len(active), n_new
    top = np.array(top50_ids(db), dtype=np.int64)
    exposure = base_exposure(world, top, exposure_boost)
    fit = taste_fit(world, active, taste_mult)                                        # (A, M)

    # What a user sees: the Top 50 row, popular titles, and genre rows they browse (their taste).
    logits = exposure[None, :] + EXPOSURE_TASTE * fit
    personal_row = _top50_rows(world, active, top)       # what a session without a served list offers
    if serve is not None and len(active):
        served = serve(world.user_ids[active], IMPRESSIONS_PER_SESSION)
        for a, uid in enumerate(world.user_ids[active]):
            items = served.get(int(uid))
            if items:
                rows = world.movie_rows(np.asarray(items, dtype=np.int64))
                logits[a, rows] += EXPOSURE_SERVED
                personal_row[a] = False
                personal_row[a, rows] = True
    logits[world.watched[active]] = -np.inf
    logits += rng.gumbel(size=logits.shape)                   # Gumbel-top-k = sampling without replacement
    k = min(IMPRESSIONS_PER_SESSION, logits.shape[1])
    top_k = np.argpartition(-logits, k - 1, axis=1)[:, :k] if len(active) else np.zeros((0, k), dtype=int)
    order = np.argsort(-np.take_along_axis(logits, top_k, axis=1), axis=1)
    shown = np.take_along_axis(top_k, order, axis=1)            # (A, k) movie rows by position
    a_idx = np.repeat(np.arange(len(active)), k)
    m_idx = shown.ravel()
    pos = np.tile(np.arange(k), len(active))
    valid = np.isfinite(logits[a_idx, m_idx])
    a_idx, m_idx, pos = a_idx[valid], m_idx[valid], pos[valid]
    u_idx = active[a_idx]
    f = fit[a_idx, m_idx]
    q = world.quality[m_idx]

    session = rng.uniform(8 * 3600, 22 * 3600, size=len(active))
    t_imp = session[a_idx] + pos * 3
    clicked = rng.random(len(f)) < click_probability(f, q, click_boost[m_idx])
    watched = clicked & (rng.random(len(f)) < WATCH_AFTER_CLICK)
    fraction = _sigmoid(0.3 + 1.2 * f + 0.4 * q + rng.normal(0, 0.6, len(f)))
    seconds = np.round(fraction * world.runtime[m_idx] * 60)
    rates = watched & (rng.random(len(f)) < world.rater[u_idx] * 0.8)
    score = 4.8 + 1.6 * f + 1.0 * q + world.harshness[u_idx] + rng.normal(0, 1, len(f))
    rating = np.clip(np.round(score), 1, 10).astype(int)
    likes = watched & (fraction > 0.7) & (rng.random(len(f)) < 0.35)
    dislikes = watched & (fraction < 0.3) & (rng.random(len(f)) < 0.35)
    shares = watched & (fraction > 0.8) & (rng.random(len(f)) < 0.04 + share_boost[m_idx])
    t_click = t_imp + 20
    t_end = np.minimum(t_click + 30 + seconds, 24 * 3600 - 1)

    parts = []
    def part(mask, kind, value, t):  # noqa: E306
        parts.append(pd.DataFrame({"u": u_idx[mask], "m": m_idx[mask], "kind": kind,
                                   "value": np.broadcast_to(value, mask.shape)[mask].astype(float), "t": t[mask]}))
    part(np.ones(len(f), bool), "impression", pos, t_imp)
    part(clicked, "click", 1.0, t_click)
    part(watched, "watch", seconds, t_click + 30)
    part(likes, "like", 1.0, t_end)
    part(dislikes, "dislike", 1.0, t_end)
    part(shares, "share", 1.0, t_end)
    scroll = pd.DataFrame({"u": active, "m": -1, "kind": "scroll",
                           "value": (k + rng.geometric(0.3, len(active))).astype(float), "t": session + 1})
    ev = pd.concat(parts + [scroll], ignore_index=True)
    events = pd.DataFrame({
        "event_id": [f"d{day:05d}-{i:07d}" for i in range(len(ev))],
        "user_id": world.user_ids[ev["u"].to_numpy()],
        "movie_id": pd.array(np.where(ev["m"] >= 0, world.movie_ids[ev["m"].clip(lower=0)], 0), dtype="Int64"),
        "kind": ev["kind"].to_numpy(),
        "value": ev["value"].to_numpy(),
        "occurred_at": _iso(start, np.minimum(ev["t"].to_numpy(), 24 * 3600 - 1)),
    })
    events.loc[ev["m"].to_numpy() < 0, "movie_id"] = pd.NA
    ratings = pd.DataFrame({"user_id": world.user_ids[u_idx[rates]], "movie_id": world.movie_ids[m_idx[rates]],
                            "rating": rating[rates], "rated_at": _iso(start, t_end[rates])})
    if fault_rate > 0:
        ratings, events = _inject_faults(ratings, events, fault_rate, rng)
    served_at = start.strftime(TS_FORMAT)
    ads = ads_day.show_ads(db, world, served_at, active, session, day=day, slot=ads_slot, policy=ad_policy,
                           served_ids=servinglog.serve_ids_at(db, served_at) if serve is not None else None)
    ad_a, ad_m, ad_events = ad_watches(world, day, active, fit, None if ads is None else ads.title_clicks,
                                       a_idx[watched], m_idx[watched], start)
    if len(ad_events):
        events = pd.concat([events, ad_events], ignore_index=True)
    if n_new:   # their declared age band and ad-targeting consent: the sign-up form's answers
        sign_up = np.random.default_rng([world.seed, day, 6])
        new_bands = ads_world.draw_age_bands(sign_up, n_new)
        new_consent = ads_world.draw_ad_consent(sign_up, n_new)

    with world_step(db, world, world_file):
        opsdb.set_meta(db, "clock", (start + DAY).strftime(TS_FORMAT))
        opsdb.set_meta(db, "sim_day", day + 1)
        if n_new:
            joined = _iso(start, np.sort(rng.uniform(0, 24 * 3600 - 1, n_new)))
            # Numbered by the write API after the largest id ever used (never an id the bounds refuse).
            new_ids = np.asarray(writes.add_users(db, pd.DataFrame({
                "user_id": [None] * n_new, "created_at": joined, "age_band": np.array(AGE_BANDS)[new_bands],
                "consent_ad_targeting": new_consent}), source="sim"), dtype=np.int64)
        ev_result = writes.record_events(db, events, on_invalid="quarantine")
        r_result = writes.rate_many(db, ratings, on_invalid="quarantine")
        if ads is not None:
            ad_result = writes.record_ad_impressions(db, ads.impressions, on_invalid="quarantine")
            stats.ad_impressions, stats.rejected = ad_result.accepted, ad_result.rejected
            stats.ad_clicks = int(ads.impressions["clicked"].sum())
            stats.ad_revenue = round(float(ads.impressions["price"].sum()), 6)
        # Once the writes are in: the humans remember what they watched, and some decide to leave (saved with
        # the day's commit, so the world knows every user the database does).
        stats.left, stats.returned = _churn(world, day, active, fit, personal_row, a_idx[watched], m_idx[watched],
                                            None if ads is None else ads.fatigue)
        world.watched[u_idx[watched], m_idx[watched]] = True
        world.watched[active[ad_a], ad_m] = True
        world.recent_watches = (0.8 * world.recent_watches
                                + np.bincount(np.r_[m_idx[watched], ad_m].astype(np.int64),
                                              minlength=len(world.movie_ids)))
        if n_new:
            world_mod.add_people(world, new_ids, np.random.default_rng([world.seed, day, 2]), new_bands)
    stats.events, stats.ratings = ev_result.accepted, r_result.accepted
    stats.rejected += ev_result.rejected + r_result.rejected
    stats.duplicates_ignored = ev_result.duplicates
    stats.by_kind = events["kind"].value_counts().to_dict()
    return stats


WATCH_AFTER_CLICK = 0.85
AD_WATCH_DELAY = 30        # seconds from a click on a promoted title to the start of its watch (as organic)


def ad_watches(world: world_mod.World, day: int, active: np.ndarray, fit: np.ndarray, title_clicks, watched_a,
               watched_m, start) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """The watches that clicks on promoted titles lead to (`ads_world.AD_CLICK_WATCH`): (active positions, movie
    rows, events with event ids 'dDDDDD-adNNNNNN'). A title the user watched before, or watches in today's session
    anyway (`watched_a`, `watched_m`: the organic watches), is not watched again. Draws come from the day's own
    stream [seed, day, 7], so the organic day is unchanged by them."""
    empty = (np.zeros(0, np.int64), np.zeros(0, np.int64), pd.DataFrame())
    if title_clicks is None or not len(title_clicks):
        return empty
    rng = np.random.default_rng([world.seed, day, 7])
    a = title_clicks["a"].to_numpy(dtype=np.int64)
    m = world.movie_rows(title_clicks["movie_id"].to_numpy(dtype=np.int64))
    draw, noise = rng.random(len(a)), rng.normal(0, 0.6, len(a))
    n_movies = len(world.movie_ids)
    today = np.isin(a * n_movies + m, np.asarray(watched_a, np.int64) * n_movies + np.asarray(watched_m, np.int64))
    keep = (draw < ads_world.AD_CLICK_WATCH) & ~world.watched[active[a], m] & ~today
    keep &= ~pd.Series(a * n_movies + m).duplicated().to_numpy()        # two clicks on one title: one watch
    a, m, noise = a[keep], m[keep], noise[keep]
    if not len(a):
        return empty
    fraction = _sigmoid(0.3 + 1.2 * fit[a, m] + 0.4 * world.quality[m] + noise)       # the organic watch time
    seconds = np.round(fraction * world.runtime[m] * 60)
    t = np.minimum(title_clicks["t"].to_numpy()[keep] + AD_WATCH_DELAY, 24 * 3600 - 1)
    events = pd.DataFrame({"event_id": [f"d{day:05d}-ad{i:06d}" for i in range(len(a))],
                           "user_id": world.user_ids[active[a]], "movie_id": pd.array(world.movie_ids[m], dtype="Int64"),
                           "kind": "watch", "value": seconds.astype(float), "occurred_at": _iso(start, t)})
    return a, m, events


def base_exposure(world: world_mod.World, top: np.ndarray, exposure_boost: np.ndarray) -> np.ndarray:
    """(M,) exposure logits of the day before taste and the served row: popularity, shifts, the Top 50 row."""
    exposure = EXPOSURE_POPULARITY * np.log1p(world.recent_watches) + exposure_boost
    exposure[world.movie_rows(top)] += EXPOSURE_TOP50 if len(top) else 0.0
    return exposure


def taste_fit(world: world_mod.World, rows: np.ndarray, taste_mult: np.ndarray) -> np.ndarray:
    """(A, M) fit of users (world rows) to every movie: log of their taste mass over its genres vs uniform."""
    taste = world.taste[rows] * taste_mult
    taste /= taste.sum(axis=1, keepdims=True)
    genre_share = world.genre_matrix / np.maximum(world.genre_matrix.sum(axis=1, keepdims=True), 1)
    return np.clip(np.log(len(GENRES) * (taste @ genre_share.T) + 0.05), -3, 3)


def click_probability(fit, quality, click_boost):
    """P(click | impression) of a user–movie pair with this fit and quality (shift boosts added)."""
    return _sigmoid(-2.2 + 1.3 * fit + 0.4 * quality + click_boost)


def day_effects(world: world_mod.World, shifts: list, day: int):
    """(taste multipliers, exposure boost, click boost) of the active shifts on `day` (the truth reads them)."""
    taste_mult, exposure, click, _, _ = _day_effects(world, shifts, day)
    return taste_mult, exposure, click


def _top50_rows(world: world_mod.World, active: np.ndarray, top: np.ndarray) -> np.ndarray:
    """(A, M) bool: the first IMPRESSIONS_PER_SESSION Top 50 titles each active user has not seen yet."""
    row = np.zeros((len(active), len(world.movie_ids)), dtype=bool)
    if not len(top) or not len(active):
        return row
    cols = world.movie_rows(top)
    unseen = ~world.watched[np.ix_(active, cols)]
    first = unseen & (np.cumsum(unseen, axis=1) <= IMPRESSIONS_PER_SESSION)
    a, c = np.nonzero(first)
    row[a, cols[c]] = True
    return row


def _churn(world: world_mod.World, day: int, active: np.ndarray, fit: np.ndarray, personal_row: np.ndarray,
           watched_a: np.ndarray, watched_m: np.ndarray, ad_fatigue: np.ndarray | None = None) -> tuple[int, int]:
    """Move the hazards after today's sessions, let some active users leave and some who left come back;
    returns (left, returned). Draws from its own stream, so the day's behaviour draws are unchanged.
    `ad_fatigue` (A,): what the ad of each active user's session adds to their hazard (None: no ads)."""
    rng = np.random.default_rng([world.seed, day, 3])
    gone = np.flatnonzero(world.left)
    back = gone[rng.random(len(gone)) < RETURN_RATE]
    world.hazard *= HAZARD_DECAY
    if len(active):
        hits = np.bincount(watched_a[personal_row[watched_a, watched_m]], minlength=len(active)) > 0
        world.hazard[active] += np.where(hits, -GOOD_SESSION_HAZARD, POOR_LIST_HAZARD)
        if ad_fatigue is not None:
            world.hazard[active] += ad_fatigue
        np.clip(world.hazard, *HAZARD_RANGE, out=world.hazard)
        suits = fit > 0
        seen = world.watched[active] & suits
        seen[watched_a, watched_m] |= suits[watched_a, watched_m]
        exhausted = seen.sum(axis=1) / np.maximum(suits.sum(axis=1), 1)
        p_leave = _sigmoid(LEAVE_BASE + world.hazard[active] + LEAVE_SCARCITY * exhausted)
        leaving = active[rng.random(len(active)) < p_leave]
    else:
        leaving = np.zeros(0, dtype=np.int64)
    world.left[back] = False
    world.hazard[back] = 0.0
    world.left[leaving] = True
    return len(leaving), len(back)


# ------------------------------------------------------------------ entry points
# ------------------------------------------------------------------ the world file in step with the database
def _next_file(world_file: Path) -> Path:
    return world_file.with_name(world_file.stem + ".next.npz")


@contextmanager
def world_step(db: sqlite_utils.Database, world: world_mod.World, world_file: Path | None):
    """One transaction of the database and, with `world_file`, the world's state after it.

    Inside the transaction the meta key `world_step` goes up by one and the world, stamped with it, is saved as
    `world.next.npz`; after the commit that file replaces `world.npz`. A kill between the commit and the rename
    is repaired by the next `load_world` (the staged step is the committed one: it takes its place; else it is
    dropped), so the world always knows the users and titles the database has."""
    if world_file is None:
        with db.atomic():
            yield
        return
    staged = _next_file(world_file)
    with db.atomic():
        yield
        world.step = int(opsdb.get_meta(db, "world_step", "0")) + 1
        opsdb.set_meta(db, "world_step", world.step)
        world.save(staged)
    faults.point("simulation:committed")
    staged.replace(world_file)


def _repair_world(settings: Settings) -> None:
    """Finish or drop a world step a kill interrupted (see `world_step`)."""
    staged = _next_file(settings.world_file)
    if not staged.exists():
        return
    db = opsdb.connect(settings)
    try:
        committed = int(opsdb.get_meta(db, "world_step", "0"))
    finally:
        db.conn.close()
    try:
        step = world_mod.World.load(staged).step
    except Exception:  # noqa: BLE001 - a file cut short by the kill: its transaction never committed
        step = None
    if step == committed:
        staged.replace(settings.world_file)
    else:
        staged.unlink(missing_ok=True)


SIM_LOCK = ".simulation.lock"
_held_sims = threading.local()


class SimulationBusy(errors.RetroError):
    """Another simulation is running in this data folder."""


@contextmanager
def running(settings: Settings, what: str):
    """Hold the data folder's simulation lock (an `flock` on RETRO_HOME/.simulation.lock) while the world moves:
    two simulations at once would both number the same new users. A second one is refused at once, naming the
    holder; re-entrant within a thread."""
    held = getattr(_held_sims, "homes", None)
    if held is None:
        held = _held_sims.homes = set()
    key = str(settings.home)
    if key in held:
        yield
        return
    fd = os.open(settings.home / SIM_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise SimulationBusy(f"another simulation is running in {settings.home} ({holder}); {what} did not "
                                 "start — try again when it has finished") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{what}, pid {os.getpid()}".encode(), 0)
        held.add(key)
        try:
            yield
        finally:
            held.discard(key)
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


# Memory of a world: who-watched-what (one byte per user × title) and a day's session arrays over the active
# users, ~10 bytes per user × title in all above a ~200 MB base (peak RSS of `init --days 2`: 3000 × 1500 202 MB,
# 6000 × 3000 342 MB, 12,000 × 6000 827 MB).
BYTES_PER_PAIR, BASE_BYTES = 10, 200 * 2**20


def memory_estimate(users: int, movies: int) -> int:
    """Bytes a world of `users` × `movies` needs while it simulates (see BYTES_PER_PAIR)."""
    return BASE_BYTES + BYTES_PER_PAIR * int(users) * int(movies)


def memory_limit() -> int:
    """Half of this machine's physical memory (8 GiB when it cannot be told)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (ValueError, OSError, AttributeError):
        return 8 * 2**30


def _gib(n: int) -> str:
    return f"{n / 2**30:,.1f} GiB"


def check_world_size(users: int, movies: int) -> None:
    """Refuse a world whose memory estimate exceeds `memory_limit()`, before anything is allocated or written."""
    need, limit = memory_estimate(users, movies), memory_limit()
    if need > limit:
        raise errors.ValidationError(
            f"a world of {int(users):,} users × {int(movies):,} movies needs about {_gib(need)} of memory "
            f"({BYTES_PER_PAIR} bytes per user × movie); the limit here is {_gib(limit)} (half this machine's "
            f"memory) — choose fewer users or movies", code="too_large")


def has_world(settings: Settings) -> bool:
    return settings.world_file.exists() and opsdb.exists(settings)


def init_world(settings: Settings, *, seed: int = 42, users: int = 3000, movies: int = 1500, days: int = 60,
               force: bool = False, progress: Progress = _noop, ads: bool = True) -> dict:
    """Build a world from scratch: catalog, users, then `days` simulated days. With `ads` (the default) the world
    has its campaigns and shows ads from its first day; without, it simulates exactly as a world made before ads
    (campaigns are created when ads are switched on)."""
    for name, value, low in (("users", users, 1), ("movies", movies, 10), ("days", days, 0)):
        if not isinstance(value, (int, np.integer)) or value < low:
            raise errors.ValidationError(f"--{name} must be an integer >= {low}, got {value!r}")
    check_world_size(users, movies)
    with running(settings, "init"):
        return _init_world(settings, seed=seed, users=users, movies=movies, days=days, force=force, progress=progress,
                           ads=ads)


def _init_world(settings: Settings, *, seed: int, users: int, movies: int, days: int, force: bool,
                progress: Progress, ads: bool = True) -> dict:
    if opsdb.holds_data(settings) or settings.world_file.exists():
        if not force:
            raise errors.NotEmpty(f"{settings.home} already holds a world; use --force to replace it")
    for path in [*settings.store_paths(), _next_file(settings.world_file)]:   # stale stores go too; nothing else
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    opsdb.drop_stores(settings)        # the same stores in PostgreSQL, when they live there (docs/postgres.md)
    progress(0.0, "creating catalog and users")
    world, cat = world_mod.create_world(seed, users, movies)
    db = opsdb.connect(settings, defer_indexes=True)
    opsdb.ensure_ads_schema(db)        # the days below show ads before the deferred migrations run
    try:
        t0 = day_start(0)
        rng = np.random.default_rng([seed, 0xA11])
        with world_step(db, world, settings.world_file):
            opsdb.set_meta(db, "seed", seed)
            opsdb.set_meta(db, "clock", t0.strftime(TS_FORMAT))
            opsdb.set_meta(db, "sim_day", 0)
            opsdb.set_meta(db, "world", json.dumps({"seed": seed, "users": users, "movies": movies}))
            writes.add_movies(db, pd.DataFrame({
                "movie_id": world.movie_ids, "title": cat["titles"], "year": cat["year"], "genres": cat["genres"],
                "runtime_min": cat["runtime"], "added_at": (t0 - 400 * DAY).strftime(TS_FORMAT)}), source="sim")
            joined = _iso(t0 - 365 * DAY, np.sort(rng.uniform(0, 365 * 86400 - 1, users)))
            consent = ads_world.draw_ad_consent(np.random.default_rng([seed, 0xC0A5]), users)
            writes.add_users(db, pd.DataFrame({"user_id": world.user_ids, "created_at": joined,
                                               "age_band": np.array(AGE_BANDS)[world.age_band],
                                               "consent_ad_targeting": consent}), source="sim")
            if ads:                                       # a new world shows ads from its first day
                ads_day.seed_campaigns(db, seed, users)
            opsdb.set_meta(db, "ads_enabled", int(ads))
        summary = run_days(db, settings, world, days, progress=progress)
        progress(0.99, "building indexes")
        opsdb.finish_deferred_migrations(db)
        progress(1.0, "world ready")
        return summary
    finally:
        db.conn.close()


def run_days(db: sqlite_utils.Database, settings: Settings, world: world_mod.World, days: int,
             progress: Progress = _noop, serve: ServeFn | None = None,
             ad_policy: ads_day.AdPolicy | None = None) -> dict:
    pin_blas()        # a day's matrix products are small: a second BLAS thread only spins (core/threads.py)
    shifts = load_shifts(db)
    first = int(opsdb.get_meta(db, "sim_day", "0"))
    totals = {"days": days, "first_day": first, "events": 0, "ratings": 0, "rejected": 0, "duplicates_ignored": 0,
              "new_users": 0, "left": 0, "returned": 0, "ad_impressions": 0, "ad_clicks": 0, "ad_revenue": 0.0}
    for i in range(days):
        day = first + i
        progress(i / max(days, 1), f"simulating day {day + 1} ({i + 1}/{days})")
        s = simulate_day(db, world, day, shifts, serve, settings.world_file, ads_slot=settings.ads_slot,
                         ad_policy=ad_policy)
        for key in ("events", "ratings", "rejected", "duplicates_ignored", "new_users", "left", "returned",
                    "ad_impressions", "ad_clicks", "ad_revenue"):
            totals[key] += getattr(s, key)
    totals["ad_revenue"] = round(totals["ad_revenue"], 4)
    totals["last_day"] = first + days - 1
    return totals


def load_world(settings: Settings) -> world_mod.World:
    if opsdb.exists(settings):
        _repair_world(settings)        # first: a kill may have left the very first world only staged
    if not has_world(settings):
        raise errors.WorldNotFound(f"no simulated world in {settings.home}; run `python -m core init` first")
    return world_mod.World.load(settings.world_file)


def simulate(settings: Settings, days: int, *, shift: str | None = None, strength: float = 1.0,
             duration: int | None = None, params: dict | None = None, progress: Progress = _noop,
             serve: ServeFn | None = None, ad_policy: ads_day.AdPolicy | None = None) -> dict:
    """Continue the world for `days` days, optionally starting a behaviour shift today; `ad_policy` chooses the
    sponsored slots when the world shows ads (default: campaign click rates)."""
    if not isinstance(days, (int, np.integer)) or days < 1:
        raise errors.ValidationError(f"--days must be a positive integer, got {days!r}")
    with running(settings, "simulate"):
        return _simulate(settings, days, shift=shift, strength=strength, duration=duration, params=params,
                         progress=progress, serve=serve, ad_policy=ad_policy)


def _simulate(settings: Settings, days: int, *, shift, strength, duration, params, progress, serve,
              ad_policy=None) -> dict:
    world = load_world(settings)
    db = opsdb.connect(settings)
    try:
        if shift is not None:
            day = int(opsdb.get_meta(db, "sim_day", "0"))
            with world_step(db, world, settings.world_file):
                started = start_shift(db, world, shift, strength, days if duration is None else duration, day, params)
        summary = run_days(db, settings, world, days, progress=progress, serve=serve, ad_policy=ad_policy)
        progress(1.0, "done")
        if shift is not None:
            summary["shift"] = {"kind": started.kind, "strength": started.strength, "start_day": started.start_day,
                                "duration": started.duration, "params": started.params}
        return summary
    finally:
        db.conn.close()
