"""Import a MovieLens folder into an empty operational database.

Layouts: ml-latest-small (`ratings.csv`, `movies.csv`) and ml-100k (`u.data`,
`u.item`). Ratings map from stars to our 1..10 scale as rating10 = 2·stars:
0.5→1, 1→2, …, 4.5→9, 5→10 (ml-100k's whole stars give 2, 4, …, 10).
Genres map onto the catalog's genres: "Children's"→Children, IMAX and
"(no genres listed)"/"unknown" are dropped. Titles lose their "(YYYY)" suffix,
which becomes `year`. Everything happens in one transaction: a malformed file
raises ImportFormatError and nothing is imported.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import sqlite_utils

from . import opsdb, writes
from .constants import GENRES, TS_FORMAT
from .errors import ImportFormatError, NotEmpty

GENRE_MAP = {"Children's": "Children", **{g: g for g in GENRES}}
ML100K_GENRES = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
                 "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
                 "War", "Western"]


def stars_to_rating10(stars: pd.Series) -> pd.Series:
    """0.5..5 stars in half steps → 1..10; anything else is a format error."""
    doubled = stars * 2
    bad = ~np.isclose(doubled, np.round(doubled)) | (doubled < 1) | (doubled > 10)
    if bad.any():
        raise ImportFormatError(f"rating {stars[bad].iloc[0]!r} is not a MovieLens star rating (0.5..5 in half steps)")
    return np.round(doubled).astype(int)


def _map_genres(raw: str) -> str:
    return "|".join(GENRE_MAP[g] for g in str(raw).split("|") if g in GENRE_MAP)


def _split_title(titles: pd.Series) -> tuple[pd.Series, pd.Series]:
    parts = titles.str.strip().str.extract(r"^(?P<name>.*?)\s*\((?P<year>\d{4})\)\s*$")
    name = parts["name"].where(parts["name"].notna() & (parts["name"].str.len() > 0), titles.str.strip())
    return name, pd.to_numeric(parts["year"], errors="coerce").astype("Int64")


def _read(path: Path, what: str, **kwargs) -> pd.DataFrame:
    try:
        return pd.read_csv(path, **kwargs)
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise ImportFormatError(f"{path.name}: cannot parse as {what}: {exc}") from None


def _require(df: pd.DataFrame, path: Path, columns: list[str]) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ImportFormatError(f"{path.name}: missing column(s) {', '.join(missing)}; found {', '.join(map(str, df.columns))}")


def _numeric(df: pd.DataFrame, path: Path, columns: list[str]) -> pd.DataFrame:
    for col in columns:
        values = pd.to_numeric(df[col], errors="coerce")
        if values.isna().any():
            line = int(np.flatnonzero(values.isna().to_numpy())[0]) + 2
            raise ImportFormatError(f"{path.name}, line {line}: {col} {df[col][values.isna()].iloc[0]!r} is not a number")
        df[col] = values
    return df


def read_movielens(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(movies[movie_id,title,year,genres], ratings[user_id,movie_id,stars,timestamp]) from either layout."""
    folder = Path(folder)
    if (folder / "ratings.csv").exists() and (folder / "movies.csv").exists():
        rpath, mpath = folder / "ratings.csv", folder / "movies.csv"
        ratings = _read(rpath, "CSV")
        _require(ratings, rpath, ["userId", "movieId", "rating", "timestamp"])
        movies = _read(mpath, "CSV", dtype={"title": str, "genres": str})
        _require(movies, mpath, ["movieId", "title", "genres"])
        genres = movies["genres"].fillna("").map(_map_genres)
    elif (folder / "u.data").exists() and (folder / "u.item").exists():
        rpath, mpath = folder / "u.data", folder / "u.item"
        ratings = _read(rpath, "tab-separated u.data", sep="\t", header=None)
        if ratings.shape[1] != 4:
            raise ImportFormatError(f"{rpath.name}: expected 4 tab-separated columns, found {ratings.shape[1]}")
        ratings.columns = ["userId", "movieId", "rating", "timestamp"]
        movies = _read(mpath, "pipe-separated u.item", sep="|", header=None, encoding="latin-1", dtype={1: str})
        if movies.shape[1] != 5 + len(ML100K_GENRES):
            raise ImportFormatError(f"{mpath.name}: expected {5 + len(ML100K_GENRES)} '|'-separated columns, found {movies.shape[1]}")
        flags = _numeric(movies.iloc[:, 5:].copy(), mpath, list(movies.columns[5:])).to_numpy().astype(bool)
        genres = pd.Series(["|".join(GENRE_MAP[g] for g, on in zip(ML100K_GENRES, row) if on and g in GENRE_MAP)
                            for row in flags])
        movies = pd.DataFrame({"movieId": movies[0], "title": movies[1].fillna("")})
    else:
        raise ImportFormatError(f"{folder} is not a MovieLens folder: expected ratings.csv + movies.csv (ml-latest-small) "
                                "or u.data + u.item (ml-100k)")
    ratings = _numeric(ratings, rpath, ["userId", "movieId", "rating", "timestamp"])
    movies = _numeric(movies, mpath, ["movieId"])
    name, year = _split_title(movies["title"].fillna(""))
    movie_df = pd.DataFrame({"movie_id": movies["movieId"].astype("int64"), "title": name, "year": year, "genres": genres})
    if movie_df["movie_id"].duplicated().any():
        raise ImportFormatError(f"{mpath.name}: movie id {movie_df['movie_id'][movie_df['movie_id'].duplicated()].iloc[0]} appears twice")
    unknown = ~ratings["movieId"].isin(movie_df["movie_id"])
    if unknown.any():
        raise ImportFormatError(f"{rpath.name}: rating for movie {int(ratings['movieId'][unknown].iloc[0])} that is not in {mpath.name}")
    rating_df = pd.DataFrame({"user_id": ratings["userId"].astype("int64"), "movie_id": ratings["movieId"].astype("int64"),
                              "rating": stars_to_rating10(ratings["rating"]),
                              "rated_at": pd.to_datetime(ratings["timestamp"].astype("int64"), unit="s").dt.strftime(TS_FORMAT)})
    return movie_df, rating_df


def import_movielens(db: sqlite_utils.Database, folder: Path | str) -> dict:
    """Load a MovieLens folder into an empty database; returns row counts."""
    movies, ratings = read_movielens(Path(folder))
    if db.execute("SELECT (SELECT count(*) FROM movies) + (SELECT count(*) FROM users)").fetchone()[0]:
        raise NotEmpty("the operational database already holds movies or users; import into an empty RETRO_HOME")
    first_seen = ratings.groupby("user_id")["rated_at"].min()
    users = pd.DataFrame({"user_id": first_seen.index, "created_at": first_seen.to_numpy()})
    catalog_since = ratings["rated_at"].min() if len(ratings) else None
    with db.atomic():
        writes.add_movies(db, movies.assign(added_at=catalog_since, runtime_min=100), source="movielens")
        writes.add_users(db, users, source="movielens")
        result = writes.rate_many(db, ratings)
        opsdb.set_meta(db, "source", f"movielens:{Path(folder).name}")
    return {"movies": len(movies), "users": len(users), "ratings": result.accepted}
