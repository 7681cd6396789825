"""The ads side of the simulated world (docs/ads.md): who the advertisers are, users' age bands, and how the
simulated humans respond to an ad — click probability and ad fatigue. Latent, like `core.simulation.world`:
the stores only see what users do (impressions, clicks), never these numbers.

Constants (log-odds and hazard units, as in `core.simulation.simulation`'s churn model):

- Click: P(click) = sigmoid(CLICK_BASE + CLICK_INTEREST · interest + CLICK_AGE · age_match), where interest =
  log(G · taste · appeal + 0.05), clipped to [-3, 3] (the taste fit of `simulation.taste_fit`: 0 for a user
  whose taste is uniform, up to +3 for a fan) of the campaign's appeal genres (a title creative: the title's
  genres; a product: its target genres; none: interest 0), and age_match = 1 when the campaign targets age bands
  and the user's is one of them. A fan (interest 2) clicks about 14 % of the time, an indifferent user 2.7 %, a
  user who dislikes the genres 0.2 %.
- Fatigue: every ad shown adds AD_FATIGUE + AD_IRRELEVANT_FATIGUE · sigmoid(-2 · interest) to the user's churn
  hazard (a poor list adds 0.2, a good session takes 0.4 off): 0.02 for an ad the user cares for, up to 0.10
  for an irrelevant one.
- A click on a promoted title (creative kind 'title') opens the title: the user watches it with probability
  AD_CLICK_WATCH (0.5; a click on an organic tile is followed by a watch 85 % of the time, `WATCH_AFTER_CLICK` —
  an ad click is less deliberate), unless they watched it before or watch it in today's session anyway; how much
  of it they watch follows the organic watch-time model. A click on a product leads nowhere in the catalogue.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from core.constants import AGE_BANDS, GENRES

CLICK_BASE, CLICK_INTEREST, CLICK_AGE = -3.6, 0.9, 0.5
AD_FATIGUE, AD_IRRELEVANT_FATIGUE = 0.02, 0.08
AD_CLICK_WATCH = 0.5                             # P(watch | a click on a promoted title not watched before)
AGE_SHARES = (0.16, 0.27, 0.24, 0.18, 0.15)       # of AGE_BANDS among the service's users
NO_AD_CONSENT_SHARE = 0.1                        # simulated users who refuse ad targeting at sign-up

# (advertiser, product, target genres, target age bands): outside products; '' = any.
PRODUCTS = (
    ("Nebula Games", "Starfall Odyssey (video game)", "Sci-Fi|Fantasy|Adventure", "18-24|25-34"),
    ("Popcorn Palace", "Gourmet popcorn delivery", "", ""),
    ("Little Steps Toys", "Wooden toy railway", "Children|Animation", "25-34|35-44"),
    ("Velvet Nights Wines", "Red wine club", "Romance|Drama", "35-44|45-54|55+"),
    ("Shadowline Books", "Crime novels box set", "Crime|Mystery|Thriller|Film-Noir", ""),
    ("Trailhead Outfitters", "Hiking boots", "Adventure|Western|Documentary", ""),
    ("Retro Vinyl Co.", "Soundtrack vinyl records", "Musical", ""),
    ("CityBank", "Student current account", "", "18-24"),
    ("Comfort Sofas", "Reclining sofa", "", ""),
    ("HistoryPlus Magazine", "Magazine subscription", "War|Documentary", "45-54|55+"),
)
STUDIOS = ("Silver Screen Studio", "Retro Movies Originals", "Midnight Pictures", "Lantern Films")


def draw_age_bands(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n,) int8 indices into AGE_BANDS, drawn by AGE_SHARES."""
    return rng.choice(len(AGE_BANDS), size=n, p=AGE_SHARES).astype(np.int8)


def world_age_bands(seed: int, n: int) -> np.ndarray:
    """The age bands of a world's first `n` users, from its seed alone: a new world's, and an older world file's
    (saved before age bands existed) on load — the same users get the same bands either way."""
    return draw_age_bands(np.random.default_rng([seed, 0xA6E]), n)


def draw_ad_consent(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n,) int 0/1: whether each new simulated user consents to ad targeting (1 − NO_AD_CONSENT_SHARE do)."""
    return (rng.random(n) >= NO_AD_CONSENT_SHARE).astype(np.int64)


def new_campaigns(seed: int, movies: pd.DataFrame, n_users: int, created_at: str) -> pd.DataFrame:
    """The world's advertisers: one campaign per product of PRODUCTS and one per studio promoting a catalogue title
    (a well-rated one when `movies` has `rating`, targeting its genres), as rows for `writes.add_ad_campaigns`.

    `movies`: movie_id, genres (and optionally a score column `rating`). Bids 0.30–2.00 per click; daily
    budgets sized to the audience (n_users / 1000 × bid × 1–5 clicks), so some campaigns run out of budget on a
    busy day and pacing matters; frequency caps 1–3 a day. Seeded: the same world gets the same campaigns."""
    rng = np.random.default_rng([seed, 0xAD5])
    rows = [{"advertiser": a, "creative_kind": "product", "movie_id": None, "product": p, "target_genres": g,
             "target_age_bands": b} for a, p, g, b in PRODUCTS]
    if len(movies):
        pool = movies.sort_values("rating", ascending=False).head(max(20, len(movies) // 10)) \
            if "rating" in movies else movies
        picks = pool.iloc[rng.choice(len(pool), size=min(len(STUDIOS), len(pool)), replace=False)]
        for studio, (_, movie) in zip(STUDIOS, picks.iterrows()):
            genres = [g for g in str(movie["genres"]).split("|") if g in GENRES]
            rows.append({"advertiser": studio, "creative_kind": "title", "movie_id": int(movie["movie_id"]),
                         "product": None, "target_genres": "|".join(genres[:2]), "target_age_bands": ""})
    frame = pd.DataFrame({k: pd.Series([r[k] for r in rows], dtype=object) for k in rows[0]})   # None stays None
    n = len(frame)
    frame["bid"] = np.round(rng.uniform(0.30, 2.00, n), 2)
    scale = max(n_users, 100) / 1000
    frame["daily_budget"] = np.round(frame["bid"] * scale * rng.uniform(1.0, 5.0, n), 2)
    frame["frequency_cap"] = rng.integers(1, 4, n)
    frame["active"] = 1
    frame["created_at"] = created_at
    return frame


def appeal(campaigns: pd.DataFrame, movie_genres: dict[int, str]) -> np.ndarray:
    """(C, G) the genres a campaign's creative appeals to, as shares summing to 1 (a row of zeros: none): a
    title's own genres, else the campaign's target genres."""
    texts = [movie_genres.get(int(m), "") if k == "title" and pd.notna(m) else (t or "")
             for k, m, t in zip(campaigns["creative_kind"], campaigns["movie_id"], campaigns["target_genres"])]
    index = {g: i for i, g in enumerate(GENRES)}
    out = np.zeros((len(texts), len(GENRES)))
    for row, text in enumerate(texts):
        for g in filter(None, text.split("|")):
            if g in index:
                out[row, index[g]] = 1.0
    return out / np.maximum(out.sum(axis=1, keepdims=True), 1.0)


def interest(taste: np.ndarray, appeal_shares: np.ndarray) -> np.ndarray:
    """(A, C) latent interest of users (taste (A, G), rows summing to 1) in campaigns (appeal (C, G)): the taste
    fit log(G · taste · appeal + 0.05) clipped to [-3, 3]; 0 for a campaign that appeals to no genre."""
    fit = np.clip(np.log(len(GENRES) * (taste @ appeal_shares.T) + 0.05), -3, 3)
    return np.where(appeal_shares.sum(axis=1)[None, :] > 0, fit, 0.0)


def click_probability(interest_: np.ndarray, age_match: np.ndarray) -> np.ndarray:
    """P(click | the ad is shown), same shape as `interest_` (see the module docstring)."""
    return 1.0 / (1.0 + np.exp(-(CLICK_BASE + CLICK_INTEREST * interest_ + CLICK_AGE * age_match)))


def fatigue(interest_: np.ndarray) -> np.ndarray:
    """Churn hazard one ad shown adds (see the module docstring): more for an irrelevant ad."""
    return AD_FATIGUE + AD_IRRELEVANT_FATIGUE / (1.0 + np.exp(2.0 * interest_))
