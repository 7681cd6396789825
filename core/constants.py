"""Names shared by every store and stage: genres, event kinds, defaults."""

GENRES: tuple[str, ...] = (
    "Action", "Adventure", "Animation", "Children", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical",
    "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)
GENRE_INDEX = {g: i for i, g in enumerate(GENRES)}

# Behavioural signals; `value` meaning per kind.
EVENT_KINDS: dict[str, str] = {
    "impression": "list position shown (0-based)",
    "click": "1",
    "watch": "seconds watched (>= 0)",
    "like": "1",
    "dislike": "1",
    "share": "1",
    "scroll": "number of titles scrolled past",
}

RATING_MIN, RATING_MAX = 1, 10
CATALOG_FIRST_YEAR, CATALOG_LAST_YEAR = 1950, 1999
DEFAULT_K = 10
SEED = 42
# Collaborative-filtering model kinds `train`/`retrain` accept (core/training/models.py): ALS, BPR, EASE and the
# ALS + EASE blend.
CF_KINDS: tuple[str, ...] = ("als", "bpr", "ease", "blend")
# ISO-8601 UTC, second resolution: sorts lexically, parsed by SQLite and DuckDB.
TS_FORMAT = "%Y-%m-%dT%H:%M:%S"
SIM_START = "2026-01-01T00:00:00"

# Ads (issue 25, docs/ads.md): the age bands a campaign may target (a user's `age_band` is one of them) and how
# an ad was chosen (`ad_impressions.policy`): at random among the eligible campaigns, by each campaign's
# historical click rate, or by the ads model's calibrated click probability.
AGE_BANDS: tuple[str, ...] = ("18-24", "25-34", "35-44", "45-54", "55+")
AD_POLICIES: tuple[str, ...] = ("untargeted", "campaign-rate", "model")
AD_CREATIVE_KINDS: tuple[str, ...] = ("title", "product")
# A campaign targets by genre interest and age band only (`ad_campaigns.target_*`); a campaign naming any other
# criterion is refused, so no attribute outside these two is ever targeted (sensitive ones: docs/ads.md).
AD_TARGETING: tuple[str, ...] = ("target_genres", "target_age_bands")
