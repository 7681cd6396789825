"""Import a MovieLens folder into an empty operational database.

Layouts: ml-latest-small (`ratings.csv`, `movies.csv`) and ml-100k (`u.data`,
`u.item`). Ratings map from stars to our 1..10 scale as rating10 = 2·stars:
0.5→1, 1→2, …, 4.5→9, 5→10 (ml-100k's whole stars give 2, 4, …, 10).
Genres map onto the catalog's genres: "Children's"→Children, IMAX and
"(no genres listed)"/"unknown" are dropped. Titles lose their "(YYYY)" suffix,
which becomes `year`. Everything happens in one transaction: a malformed file
raises ImportFormatError naming the file and line, and nothing is imported.

Every value is checked before anything is written: ids are whole numbers in
1..2^63-1 (SQLite's INTEGER), ratings lie on the half-star grid 0.5..5,
timestamps are seconds since 1970 between 1900-01-01 and the service clock,
titles are non-empty plain text (no NUL or other control characters). The files
are read only from inside the given folder (a symlink out of it is refused), and
error messages name the file, line and column but never quote file contents.
"""
from __future__ import annotations

import os
import re
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import sqlite_utils

from core import bounds
from core.store import clock, opsdb, writes
from core.constants import GENRES, TS_FORMAT
from core.errors import ImportFormatError, NotEmpty

GENRE_MAP = {"Children's": "Children", **{g: g for g in GENRES}}
ML100K_GENRES = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
                 "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
                 "War", "Western"]
ID_MAX = bounds.MAX_GIVEN_ID           # the ids a new row may name (core.bounds: room left for fresh ids)
FLOAT_EXACT = 2**53                    # a float column holds whole numbers exactly only below this
EARLIEST = datetime(1900, 1, 1, tzinfo=timezone.utc)
CONTROL = re.compile(r"[\x00-\x1f\x7f]")   # NUL, tab, newline, escape, DEL …


def _where(source: str | None, pos: int, first_line: int) -> str:
    return f"{source}, line {pos + first_line}: " if source else ""


def stars_to_rating10(stars: pd.Series, source: str | None = None, first_line: int = 2) -> pd.Series:
    """0.5..5 stars in half steps → 1..10; anything else (NaN, inf too) is a format error naming the line."""
    doubled = pd.to_numeric(stars, errors="coerce").to_numpy(dtype=float) * 2
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(doubled) | ~np.isclose(doubled, np.round(doubled)) | (doubled < 1) | (doubled > 10)
    if bad.any():
        where = _where(source, int(np.flatnonzero(bad)[0]), first_line)
        raise ImportFormatError(f"{where}rating is not a MovieLens star rating (0.5..5 in half steps)")
    return pd.Series(np.round(doubled).astype(int), index=stars.index)


def _map_genres(raw: str) -> str:
    return "|".join(GENRE_MAP[g] for g in str(raw).split("|") if g in GENRE_MAP)


def _split_title(titles: pd.Series) -> tuple[pd.Series, pd.Series]:
    parts = titles.str.strip().str.extract(r"^(?P<name>.*?)\s*\((?P<year>\d{4})\)\s*$")
    name = parts["name"].where(parts["name"].notna() & (parts["name"].str.len() > 0), titles.str.strip())
    return name, pd.to_numeric(parts["year"], errors="coerce").astype("Int64")


def _source(folder: Path, name: str) -> Path:
    """`folder/name` resolved, refusing a link that leads out of the folder (e.g. to secrets.toml)."""
    try:
        real, inside = (folder / name).resolve(), folder.resolve()
    except (RuntimeError, OSError) as exc:       # a link to itself, or a loop of links
        raise ImportFormatError(f"{name} in {folder} cannot be opened: {exc}") from None
    if not real.is_relative_to(inside):
        raise ImportFormatError(f"{name} in {folder} is a link to a file outside that folder; links out of the "
                                "folder are not followed — copy the file into the folder instead")
    if not real.is_file():
        raise ImportFormatError(f"{name} in {folder} is not a regular file")
    return real


def _read(path: Path, name: str, what: str, **kwargs) -> pd.DataFrame:
    """The parsed file; a parse error names the file (and line, when pandas knows it) but never quotes it."""
    try:
        return pd.read_csv(path, **kwargs)
    except UnicodeDecodeError:
        raise ImportFormatError(f"{name}: cannot parse as {what}: the file is not UTF-8 text") from None
    except pd.errors.EmptyDataError:
        raise ImportFormatError(f"{name}: cannot parse as {what}: the file is empty") from None
    except (ValueError, pd.errors.ParserError) as exc:
        line = re.search(r"line (\d+)", str(exc))
        where = f", line {line.group(1)}" if line else ""
        raise ImportFormatError(f"{name}{where}: cannot parse as {what} (malformed row)") from None
    except OSError as exc:
        raise ImportFormatError(f"{name}: cannot read the file ({exc.strerror or type(exc).__name__})") from None


def _require(df: pd.DataFrame, name: str, columns: list[str]) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ImportFormatError(f"{name}: missing column(s) {', '.join(missing)}; "
                                f"the first line must be the header {','.join(columns)}")


def _first_bad(bad, name: str, first_line: int, message: str) -> None:
    bad = np.asarray(bad, dtype=bool)
    if bad.any():
        raise ImportFormatError(f"{name}, line {int(np.flatnonzero(bad)[0]) + first_line}: {message}")


def _numbers(column: pd.Series, name: str, col: str, first_line: int) -> pd.Series:
    """A finite numeric column (int64, uint64 or float64); text, empty cells, NaN and ±inf are format errors."""
    values = pd.to_numeric(column, errors="coerce")
    if values.dtype == object:
        values = values.astype(float)
    _first_bad(values.isna(), name, first_line, f"{col} is not a number")
    if values.dtype.kind == "f":
        _first_bad(~np.isfinite(values.to_numpy()), name, first_line, f"{col} is not a finite number")
    return values


def _ids(column: pd.Series, name: str, col: str, first_line: int) -> pd.Series:
    """Whole numbers in 1..2^63-1 as int64 (1.5, 0, -3 and 2^63 are format errors, never rounded or wrapped)."""
    values = _numbers(column, name, col, first_line)
    out_of_range = f"{col} must be a whole number between 1 and {ID_MAX}"
    if values.dtype.kind == "f":
        v = values.to_numpy()
        _first_bad(v != np.floor(v), name, first_line, out_of_range)
        _first_bad((v < 1) | (v > ID_MAX), name, first_line, out_of_range)
        _first_bad(v >= FLOAT_EXACT, name, first_line, f"{col} must be written as a whole number (no decimal point "
                                                         "or exponent) when it is 2^53 or more")
    else:
        _first_bad((values < 1) | (values > ID_MAX), name, first_line, out_of_range)
    return values.astype("int64")


def _timestamps(column: pd.Series, name: str, first_line: int, now: datetime) -> pd.Series:
    """Seconds since 1970 between 1900-01-01 and `now` → 'YYYY-MM-DDTHH:MM:SS' (fractions dropped)."""
    values = _numbers(column, name, "timestamp", first_line).astype(float)
    low, high = EARLIEST.timestamp(), now.timestamp()
    _first_bad((values < low) | (values > high), name, first_line,
               f"timestamp must be seconds since 1970 between {EARLIEST:%Y-%m-%d} and the service clock "
               f"({now:%Y-%m-%d %H:%M:%S} UTC)")
    return pd.to_datetime(np.floor(values).astype("int64"), unit="s").dt.strftime(TS_FORMAT)  # Series in, Series out


def _titles(titles: pd.Series, name: str, first_line: int) -> pd.Series:
    titles = titles.fillna("").astype(str)
    _first_bad(titles.str.strip() == "", name, first_line, "title is empty")
    _first_bad(titles.str.contains(CONTROL), name, first_line,
               "title contains a control character (NUL, tab, line break …); titles must be plain text")
    return titles


def _now(at: str | datetime | None) -> datetime:
    if at is None:
        at = clock.utc_now()
    if isinstance(at, str):
        at = datetime.strptime(at, TS_FORMAT)
    return at if at.tzinfo else at.replace(tzinfo=timezone.utc)


def read_movielens(folder: Path, now: str | datetime | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(movies[movie_id,title,year,genres], ratings[user_id,movie_id,rating,rated_at]) from either layout.

    `now` (default: real UTC time) is the latest timestamp accepted: the service clock.
    """
    folder = Path(folder)
    has = lambda name: os.path.lexists(folder / name)  # noqa: E731 - a dangling link counts (and is refused)
    if has("ratings.csv") and has("movies.csv"):
        rname, mname, first = "ratings.csv", "movies.csv", 2
        ratings = _read(_source(folder, rname), rname, "CSV")
        _require(ratings, rname, ["userId", "movieId", "rating", "timestamp"])
        movies = _read(_source(folder, mname), mname, "CSV", dtype={"title": str, "genres": str})
        _require(movies, mname, ["movieId", "title", "genres"])
        genres = movies["genres"].fillna("").map(_map_genres)
    elif has("u.data") and has("u.item"):
        rname, mname, first = "u.data", "u.item", 1
        ratings = _read(_source(folder, rname), rname, "tab-separated u.data", sep="\t", header=None)
        if ratings.shape[1] != 4:
            raise ImportFormatError(f"{rname}: expected 4 tab-separated columns, found {ratings.shape[1]}")
        ratings.columns = ["userId", "movieId", "rating", "timestamp"]
        movies = _read(_source(folder, mname), mname, "pipe-separated u.item", sep="|", header=None,
                       encoding="latin-1", dtype={1: str})
        if movies.shape[1] != 5 + len(ML100K_GENRES):
            raise ImportFormatError(f"{mname}: expected {5 + len(ML100K_GENRES)} '|'-separated columns, found {movies.shape[1]}")
        flags = np.column_stack([_numbers(movies[c], mname, f"genre flag {i + 1}", first).to_numpy()
                                 for i, c in enumerate(movies.columns[5:])]).astype(bool)
        genres = pd.Series(["|".join(GENRE_MAP[g] for g, on in zip(ML100K_GENRES, row) if on and g in GENRE_MAP)
                            for row in flags])
        movies = pd.DataFrame({"movieId": movies[0], "title": movies[1]})
    else:
        raise ImportFormatError(f"{folder} is not a MovieLens folder: expected ratings.csv + movies.csv (ml-latest-small) "
                                "or u.data + u.item (ml-100k)")
    movie_ids = _ids(movies["movieId"], mname, "movieId", first)
    dup = movie_ids.duplicated().to_numpy()
    if dup.any():
        pos = int(np.flatnonzero(dup)[0])
        earlier = int(np.flatnonzero((movie_ids == movie_ids.iloc[pos]).to_numpy())[0])
        raise ImportFormatError(f"{mname}, line {pos + first}: movieId already listed on line {earlier + first}")
    name, year = _split_title(_titles(movies["title"], mname, first))
    movie_df = pd.DataFrame({"movie_id": movie_ids.to_numpy(), "title": name.to_numpy(), "year": year.to_numpy(dtype=object, na_value=None),
                             "genres": genres.to_numpy()})
    user_ids = _ids(ratings["userId"], rname, "userId", first)
    rated_ids = _ids(ratings["movieId"], rname, "movieId", first)
    _first_bad(~rated_ids.isin(movie_df["movie_id"]), rname, first, f"movieId is not in {mname}")
    stars = stars_to_rating10(ratings["rating"], rname, first)
    rated_at = _timestamps(ratings["timestamp"], rname, first, _now(now))
    rating_df = pd.DataFrame({"user_id": user_ids.to_numpy(), "movie_id": rated_ids.to_numpy(),
                              "rating": stars.to_numpy(), "rated_at": rated_at.to_numpy()})
    return movie_df, rating_df


def import_movielens(db: sqlite_utils.Database, folder: Path | str) -> dict:
    """Load a MovieLens folder into an empty database; returns row counts (timestamps up to the service clock)."""
    movies, ratings = read_movielens(Path(folder), now=clock.now(db=db))
    if opsdb.holds_movies_or_users(db):
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
