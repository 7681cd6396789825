"""The simulated humans behind the service: latent tastes, habits and the catalog's latent quality.

This is *not* service data: the operational database only ever sees what these
people do through the write API. The latent state lives in `world.npz` so that
`simulate` can continue a world across processes, deterministically for a seed.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from core.ads import world as ads_world
from core.constants import CATALOG_FIRST_YEAR, CATALOG_LAST_YEAR, GENRES
from core.filemodes import private_file
from core.simulation.titles import generate_titles

N_GENRES = len(GENRES)
# How common each genre is in the catalog (drama and comedy dominate, as in MovieLens).
GENRE_WEIGHTS = np.array([
    1.0, 0.6, 0.25, 0.3, 1.6, 0.7, 0.15, 2.0, 0.35, 0.15, 0.5, 0.25, 0.35, 0.9, 0.45, 0.9, 0.3, 0.4,
])


WATCHED_BITS = "watched_bits"   # world.npz's name for `watched` packed 8 titles to a byte


@dataclass
class World:
    """Arrays indexed by row; `user_ids[i]` / `movie_ids[j]` name the service's ids."""

    seed: int
    user_ids: np.ndarray       # (U,) int64
    taste: np.ndarray          # (U, G) float, rows sum to 1
    activity: np.ndarray       # (U,) probability of a session on a given day
    harshness: np.ndarray      # (U,) offset added to every rating the user gives
    rater: np.ndarray          # (U,) propensity to rate after watching
    movie_ids: np.ndarray      # (M,) int64
    genre_matrix: np.ndarray   # (M, G) 0/1
    quality: np.ndarray        # (M,) latent quality, ~N(0, 1)
    runtime: np.ndarray        # (M,) minutes
    watched: np.ndarray        # (U, M) bool: who has seen what
    recent_watches: np.ndarray  # (M,) decayed watch counts, drives browse exposure
    # Churn (issue 17): a latent hazard per user that poor lists and life events raise and good sessions lower,
    # and whether the user has left the service (a user who left produces no events until they come back).
    hazard: np.ndarray = None   # (U,) float
    left: np.ndarray = None     # (U,) bool
    # The operational database's `world_step` this state belongs to (0: a file saved before steps existed).
    step: int = 0
    # Ads (issue 25): each user's age band, an index into constants.AGE_BANDS (also declared in the store).
    age_band: np.ndarray = None  # (U,) int8

    def __post_init__(self):
        n = len(self.user_ids)
        if self.hazard is None:          # a world saved before churn existed: nobody has left, no hazard yet
            self.hazard = np.zeros(n)
        if self.left is None:
            self.left = np.zeros(n, dtype=bool)
        if self.age_band is None:        # a new world, or a file saved before ads existed: drawn from the seed
            self.age_band = ads_world.world_age_bands(int(self.seed), n)

    def save(self, path: Path) -> None:
        """Uncompressed, with `watched` (users × titles, bool) as packed bits: the world is saved after every simulated
        day, and zlib over the 4.8 MB bool matrix of the default world took 45 ms of the day's ~0.5 s; packed bits
        are 8× smaller than the bools and cost ~1 ms (the file: 1.2 MB instead of 0.7 MB compressed)."""
        tmp = Path(str(path) + ".tmp.npz")
        arrays = {f.name: np.asarray(getattr(self, f.name)) for f in fields(self) if f.name != "watched"}
        arrays[WATCHED_BITS] = np.packbits(np.asarray(self.watched, dtype=bool), axis=1)
        np.savez(tmp, **arrays)
        private_file(tmp)   # owner-only before it takes the real name
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> "World":
        with np.load(path) as data:
            kwargs = {f.name: data[f.name] for f in fields(cls) if f.name in data.files}
            if WATCHED_BITS in data.files:      # files saved before packed bits hold `watched` itself
                kwargs["watched"] = np.unpackbits(data[WATCHED_BITS], axis=1,
                                                  count=len(kwargs["genre_matrix"])).astype(bool)
        kwargs["seed"] = int(kwargs["seed"])
        if "step" in kwargs:
            kwargs["step"] = int(kwargs["step"])
        return cls(**kwargs)

    def user_rows(self, user_ids: np.ndarray) -> np.ndarray:
        order = np.argsort(self.user_ids)
        pos = np.searchsorted(self.user_ids, user_ids, sorter=order)
        return order[np.clip(pos, 0, len(order) - 1)]

    def movie_rows(self, movie_ids: np.ndarray) -> np.ndarray:
        order = np.argsort(self.movie_ids)
        pos = np.searchsorted(self.movie_ids, movie_ids, sorter=order)
        return order[np.clip(pos, 0, len(order) - 1)]


def sample_genres(n: int, rng: np.random.Generator, weights: np.ndarray = GENRE_WEIGHTS) -> np.ndarray:
    """(n, G) 0/1 matrix with 1-3 genres per movie, drawn by catalog frequency."""
    p = weights / weights.sum()
    counts = rng.choice([1, 2, 3], size=n, p=[0.4, 0.4, 0.2])
    matrix = np.zeros((n, N_GENRES), dtype=np.int8)
    keys = rng.random((n, N_GENRES)) ** (1.0 / p)  # weighted sampling without replacement (Efraimidis-Spirakis)
    order = np.argsort(-keys, axis=1)
    for c in (1, 2, 3):
        rows = np.flatnonzero(counts == c)
        for k in range(c):
            matrix[rows, order[rows, k]] = 1
    return matrix


def new_catalog(n: int, rng: np.random.Generator, taken_titles: set[str] | None = None, quality_shift: float = 0.0) -> dict:
    """Latent and visible attributes for `n` movies (ids assigned by the caller)."""
    gm = sample_genres(n, rng)
    genre_lists = [[GENRES[g] for g in np.flatnonzero(row)] for row in gm]
    # Genre order within a title's genre string: as in constants (stable, readable).
    return {
        "genre_matrix": gm,
        "genres": ["|".join(g) for g in genre_lists],
        "titles": generate_titles(genre_lists, rng, taken_titles),
        "year": rng.integers(CATALOG_FIRST_YEAR, CATALOG_LAST_YEAR + 1, size=n),
        "quality": rng.normal(quality_shift, 1.0, size=n),
        "runtime": np.clip(rng.normal(105, 20, size=n), 70, 200).astype(np.int64),
    }


def new_people(n: int, rng: np.random.Generator) -> dict:
    """Latent tastes and habits for `n` users: peaked genre tastes (Dirichlet 0.3)."""
    taste = rng.dirichlet(np.full(N_GENRES, 0.3) * GENRE_WEIGHTS / GENRE_WEIGHTS.mean(), size=n)
    return {
        "taste": taste,
        "activity": np.clip(rng.lognormal(np.log(0.2), 0.6, size=n), 0.02, 0.9),
        "harshness": rng.normal(0.0, 0.8, size=n),
        "rater": np.clip(rng.beta(2, 3, size=n), 0.05, 0.95),
    }


def create_world(seed: int, n_users: int, n_movies: int) -> tuple[World, dict]:
    """A fresh world; returns it with the visible catalog (titles, years, genres) for the service."""
    rng = np.random.default_rng([seed, 0xC0FFEE])
    cat = new_catalog(n_movies, rng)
    people = new_people(n_users, rng)
    world = World(
        seed=seed,
        user_ids=np.arange(1, n_users + 1, dtype=np.int64),
        movie_ids=np.arange(1, n_movies + 1, dtype=np.int64),
        genre_matrix=cat["genre_matrix"], quality=cat["quality"], runtime=cat["runtime"],
        watched=np.zeros((n_users, n_movies), dtype=bool),
        recent_watches=np.zeros(n_movies, dtype=float),
        **people,
    )
    return world, cat


def add_people(world: World, ids: np.ndarray, rng: np.random.Generator, age_band: np.ndarray | None = None) -> None:
    """New users' latent state; `age_band`: the bands already declared for them (else drawn after their people)."""
    people = new_people(len(ids), rng)
    if age_band is None:
        age_band = ads_world.draw_age_bands(rng, len(ids))
    world.age_band = np.concatenate([world.age_band, np.asarray(age_band, dtype=np.int8)])
    world.user_ids = np.concatenate([world.user_ids, ids])
    for key, value in people.items():
        setattr(world, key, np.concatenate([getattr(world, key), value]))
    world.hazard = np.concatenate([world.hazard, np.zeros(len(ids))])
    world.left = np.concatenate([world.left, np.zeros(len(ids), dtype=bool)])
    world.watched = np.vstack([world.watched, np.zeros((len(ids), world.watched.shape[1]), dtype=bool)])


def add_titles(world: World, ids: np.ndarray, cat: dict) -> None:
    world.movie_ids = np.concatenate([world.movie_ids, ids])
    world.genre_matrix = np.vstack([world.genre_matrix, cat["genre_matrix"]])
    world.quality = np.concatenate([world.quality, cat["quality"]])
    world.runtime = np.concatenate([world.runtime, cat["runtime"]])
    world.recent_watches = np.concatenate([world.recent_watches, np.zeros(len(ids))])
    world.watched = np.hstack([world.watched, np.zeros((world.watched.shape[0], len(ids)), dtype=bool)])


def describe(world: World) -> str:
    return json.dumps({"users": len(world.user_ids), "movies": len(world.movie_ids), "seed": world.seed})
