"""The traditional, deterministic system: the IMDb-style weighted-rating Top 50.

WR = v/(v+m)·R + m/(v+m)·C, with v the movie's number of ratings, R its mean
rating, C the mean of all ratings and m the minimum votes to be listed.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import sqlite_utils

from core.errors import ValidationError
from core.settings import Settings
from core.store import opsdb


def weighted_rating(v, R, m: float, C: float):
    """IMDb weighted rating; lies between R and C (a Bayesian shrinkage of R toward C).

    v: vote counts (>= 0), R: mean ratings, m: prior weight (>= 0), C: global mean.
    """
    v = np.asarray(v, dtype=float)
    R = np.asarray(R, dtype=float)
    denom = v + m
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, v / denom * R + m / denom * C, C)


def min_votes(votes, percentile: float = 90.0) -> float:
    """Default m: the given percentile (linear interpolation) of per-movie vote counts of rated movies."""
    votes = np.asarray(votes, dtype=float)
    if not len(votes):
        return 0.0
    return float(np.percentile(votes, percentile))


def movie_votes(db: sqlite_utils.Database) -> pd.DataFrame:
    """Per-movie vote count and rating sum straight from the operational ratings table."""
    return opsdb.movie_votes(db)


@dataclass(frozen=True)
class Top50:
    m: float
    C: float
    table: pd.DataFrame  # rank, movie_id, title, year, genres, votes, mean_rating, weighted_rating

    @property
    def movie_ids(self) -> list[int]:
        return self.table["movie_id"].tolist()

    def to_dict(self) -> dict:
        return {"m": self.m, "C": self.C, "movies": self.table.to_dict("records")}


def rank_movies(stats: pd.DataFrame, m: float | None = None, percentile: float = 90.0, limit: int = 50) -> tuple[pd.DataFrame, float, float]:
    """Rank from (movie_id, votes, rating_sum): WR desc, then votes desc, then movie_id asc."""
    if m is not None and (not np.isfinite(m) or m < 0):
        raise ValidationError(f"m must be a non-negative number of votes, got {m!r}")
    if limit < 1:
        raise ValidationError(f"the list length must be at least 1, got {limit}")
    total_votes = int(stats["votes"].sum())
    C = float(stats["rating_sum"].sum()) / total_votes if total_votes else 0.0
    m_used = float(m) if m is not None else min_votes(stats["votes"], percentile)
    df = stats.assign(mean_rating=stats["rating_sum"] / stats["votes"])
    df = df[df["votes"] >= m_used].copy()
    df["weighted_rating"] = weighted_rating(df["votes"], df["mean_rating"], m_used, C)
    df = df.sort_values(["weighted_rating", "votes", "movie_id"], ascending=[False, False, True], kind="mergesort")
    df = df.head(limit).reset_index(drop=True)
    df.insert(0, "rank", np.arange(1, len(df) + 1))
    return df.drop(columns="rating_sum"), m_used, C


def top50(db: sqlite_utils.Database, m: float | None = None, *, limit: int = 50, percentile: float = 90.0) -> Top50:
    """The Top 50 from the operational database; same data → identical list."""
    ranked, m_used, C = rank_movies(movie_votes(db), m, percentile, limit)
    if len(ranked):
        ranked = ranked.merge(opsdb.movie_details(db, ranked["movie_id"].tolist()), on="movie_id", how="left")
    else:
        ranked = ranked.assign(title=[], year=[], genres=[])
    cols = ["rank", "movie_id", "title", "year", "genres", "votes", "mean_rating", "weighted_rating"]
    table = ranked[cols].astype({"rank": int, "movie_id": int, "votes": int})
    return Top50(m=m_used, C=C, table=table)


def top50_ids(db: sqlite_utils.Database, *, limit: int = 50) -> list[int]:
    """`top50(db).movie_ids` without the titles and types the table adds: the simulation reads it every day."""
    return rank_movies(movie_votes(db), limit=limit)[0]["movie_id"].astype(int).tolist()


def current_top50(settings: Settings, m: float | None = None, *, limit: int = 50) -> Top50:
    """The Top 50 of a data folder now (what the dashboard and the CLI show)."""
    with opsdb.session(settings) as db:
        return top50(db, m, limit=limit)
