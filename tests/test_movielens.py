"""MovieLens import: real data row counts, both layouts, malformed files import nothing."""
from pathlib import Path

import pytest

from core.store import movielens, opsdb
from core.errors import ImportFormatError, NotEmpty
from core.settings import load_settings

pytestmark = pytest.mark.both_backends     # the importer writes through the store on SQLite and on PostgreSQL

ML_SMALL = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "ml-latest-small"


@pytest.fixture
def db(backend_settings):
    conn = opsdb.connect(backend_settings)
    yield conn
    conn.conn.close()


def _table_counts(db):
    return {t: db.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("movies", "users", "ratings", "rating_history")}


def write_small_csv(folder: Path, ratings_body: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "movies.csv").write_text(
        'movieId,title,genres\n1,Toy Story (1995),Adventure|Animation|Children|Comedy|Fantasy\n'
        '2,"City of Lost Children, The (1995)",Drama|IMAX\n3,Untitled Project,(no genres listed)\n')
    (folder / "ratings.csv").write_text(ratings_body or
        "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,2,0.5,964981247\n2,1,5.0,964982224\n2,3,3.5,964983815\n")
    return folder


def test_star_mapping_is_doubling():
    import pandas as pd
    assert movielens.stars_to_rating10(pd.Series([0.5, 1.0, 2.5, 4.5, 5.0])).tolist() == [1, 2, 5, 9, 10]
    with pytest.raises(ImportFormatError, match="0.5..5"):
        movielens.stars_to_rating10(pd.Series([4.0, 4.2]))


def test_small_csv_layout(db, tmp_path):
    result = movielens.import_movielens(db, write_small_csv(tmp_path / "ml"))
    assert result == {"movies": 3, "users": 2, "ratings": 4}
    rows = db.execute("SELECT movie_id, title, year, genres FROM movies ORDER BY movie_id").fetchall()
    assert rows == [(1, "Toy Story", 1995, "Adventure|Animation|Children|Comedy|Fantasy"),
                    (2, "City of Lost Children, The", 1995, "Drama"),
                    (3, "Untitled Project", None, "")]
    assert db.execute("SELECT user_id, movie_id, rating FROM ratings ORDER BY 1, 2").fetchall() == [
        (1, 1, 8), (1, 2, 1), (2, 1, 10), (2, 3, 7)]
    # The user's first rating time becomes their sign-up time (964981247 = 2000-07-30T18:20:47 UTC).
    assert db.execute("SELECT created_at FROM users WHERE user_id = 1").fetchone()[0] == "2000-07-30T18:20:47"


def test_ml100k_layout(db, tmp_path):
    folder = tmp_path / "ml-100k"
    folder.mkdir()
    flags = ["0"] * 19
    western = flags.copy(); western[18] = "1"; western[4] = "1"  # Western + Children's
    (folder / "u.item").write_text(
        "1|Toy Story (1995)|01-Jan-1995||http://x|" + "|".join(western) + "\n"
        "2|GoldenEye (1995)|01-Jan-1995||http://x|" + "|".join(flags) + "\n", encoding="latin-1")
    (folder / "u.data").write_text("10\t1\t5\t881250949\n10\t2\t3\t881250950\n11\t2\t1\t881250951\n")
    assert movielens.import_movielens(db, folder) == {"movies": 2, "users": 2, "ratings": 3}
    assert db.execute("SELECT genres FROM movies WHERE movie_id = 1").fetchone()[0] == "Children|Western"
    assert db.execute("SELECT rating FROM ratings ORDER BY user_id, movie_id").fetchall() == [(10,), (6,), (2,)]


@pytest.mark.parametrize("body, message", [
    ("userId,movieId,stars,timestamp\n1,1,4.0,1\n", "missing column"),
    ("userId,movieId,rating,timestamp\n1,1,4.0,1\n1,x,4.0,2\n", "line 3: movieId is not a number"),
    ("userId,movieId,rating,timestamp\n1,1,4.0,1\n1,2,7.0,2\n", "not a MovieLens star rating"),
    ("userId,movieId,rating,timestamp\n1,99,4.0,1\n", "line 2: movieId is not in movies.csv"),
])
def test_malformed_files_import_nothing(db, tmp_path, body, message):
    folder = write_small_csv(tmp_path / "bad", body)
    with pytest.raises(ImportFormatError, match=message):
        movielens.import_movielens(db, folder)
    assert _table_counts(db) == {"movies": 0, "users": 0, "ratings": 0, "rating_history": 0}


HEADER = "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n"


# Issue 11: values the importer used to round, wrap or crash on. Each must be refused with a one-line
# ImportFormatError naming file and line, and nothing imported. Before the fix: 1.5 was stored as user 1,
# 1e13 raised pandas' OutOfBoundsDatetime (a traceback), a NUL title was imported, 2**63 wrapped to a
# negative id (a ValidationError without file or line), inf crashed the int64 cast.
@pytest.mark.parametrize("body, message", [
    (HEADER + "1.5,1,4.0,964982703\n", "ratings.csv, line 3: userId must be a whole number between 1 and 9007197107257343"),
    (HEADER + "1,1,4.0,1e13\n", "ratings.csv, line 3: timestamp must be seconds since 1970 between 1900-01-01 and the service clock"),
    (HEADER + "1,1,4.0,-2208988801\n", "ratings.csv, line 3: timestamp must be seconds since 1970 between 1900-01-01"),
    (HEADER + "1,1,NaN,964982703\n", "ratings.csv, line 3: rating is not a MovieLens star rating"),
    (HEADER + "NaN,1,4.0,964982703\n", "ratings.csv, line 3: userId is not a number"),
    (HEADER + "1,1,4.0,NaN\n", "ratings.csv, line 3: timestamp is not a number"),
    (HEADER + "1,1,4.0,inf\n", "ratings.csv, line 3: timestamp is not a finite number"),
    (HEADER + f"{2**63},1,4.0,964982703\n", "ratings.csv, line 3: userId must be a whole number between 1 and"),
    (HEADER + "1,1e30,4.0,964982703\n", "ratings.csv, line 3: movieId must be a whole number between 1 and"),
    (HEADER + "0,1,4.0,964982703\n", "ratings.csv, line 3: userId must be a whole number between 1 and"),
    (HEADER + "-4,1,4.0,964982703\n", "ratings.csv, line 3: userId must be a whole number between 1 and"),
    (HEADER + "1,1,0.0,964982703\n", "ratings.csv, line 3: rating is not a MovieLens star rating"),
    (HEADER + "1,1,5.5,964982703\n", "ratings.csv, line 3: rating is not a MovieLens star rating"),
    (HEADER + "1,1,3.25,964982703\n", "ratings.csv, line 3: rating is not a MovieLens star rating"),
])
def test_out_of_range_values_import_nothing(db, tmp_path, body, message):
    folder = write_small_csv(tmp_path / "bad", body)
    with pytest.raises(ImportFormatError) as info:
        movielens.import_movielens(db, folder)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)
    assert _table_counts(db) == {"movies": 0, "users": 0, "ratings": 0, "rating_history": 0}


@pytest.mark.parametrize("title, message", [
    ("Toy\x00Story (1995)", "movies.csv, line 3: title contains a control character"),
    ("Toy\x1bStory (1995)", "movies.csv, line 3: title contains a control character"),
    ('""', "movies.csv, line 3: title is empty"),
])
def test_titles_must_be_plain_text(db, tmp_path, title, message):
    folder = write_small_csv(tmp_path / "bad")
    (folder / "movies.csv").write_text(f"movieId,title,genres\n1,Toy Story (1995),Comedy\n2,{title},Drama\n3,X,Drama\n")
    with pytest.raises(ImportFormatError, match=message):
        movielens.import_movielens(db, folder)
    assert _table_counts(db) == {"movies": 0, "users": 0, "ratings": 0, "rating_history": 0}


def test_timestamps_after_the_service_clock_are_refused(db, tmp_path):
    opsdb.set_meta(db, "clock", "2000-07-30T18:20:00")      # before the sample's 964981247 = 18:20:47
    with pytest.raises(ImportFormatError, match=r"ratings.csv, line \d: timestamp .* \(2000-07-30 18:20:00 UTC\)"):
        movielens.import_movielens(db, write_small_csv(tmp_path / "ml"))


def test_a_link_out_of_the_folder_is_refused_without_echoing_the_target(db, tmp_path):
    """ratings.csv → a secrets file elsewhere: refused before reading, and no line of it in the error.

    Fails on the code before the fix, which read the link's target and listed its first line
    as the columns it found ("missing column(s) …; found <first line of secrets.toml>")."""
    secret = tmp_path / "home" / "secrets.toml"
    secret.parent.mkdir()
    secret.write_text('[pseudonymization]\nkey = "c0ffee-very-secret"\n')
    folder = write_small_csv(tmp_path / "ml")
    (folder / "ratings.csv").unlink()
    (folder / "ratings.csv").symlink_to(secret)
    with pytest.raises(ImportFormatError, match="link to a file outside that folder") as info:
        movielens.import_movielens(db, folder)
    assert "pseudonymization" not in str(info.value) and "c0ffee" not in str(info.value)
    assert _table_counts(db)["movies"] == 0
    (folder / "ratings.csv").unlink()                        # a dangling link out is refused the same way
    (folder / "ratings.csv").symlink_to(tmp_path / "nowhere.csv")
    with pytest.raises(ImportFormatError, match="outside that folder"):
        movielens.import_movielens(db, folder)


def test_a_link_inside_the_folder_is_followed(db, tmp_path):
    folder = write_small_csv(tmp_path / "ml")
    (folder / "ratings.csv").rename(folder / "ratings-2024.csv")
    (folder / "ratings.csv").symlink_to("ratings-2024.csv")
    assert movielens.import_movielens(db, folder)["ratings"] == 4


def test_errors_never_quote_file_contents(db, tmp_path):
    """A wrong header or a bad cell is named by column and line; the file's text is not repeated."""
    folder = write_small_csv(tmp_path / "ml", "api_key = 'hunter2-secret'\nmore\n")
    with pytest.raises(ImportFormatError, match="missing column") as info:
        movielens.import_movielens(db, folder)
    assert "hunter2" not in str(info.value) and "api_key" not in str(info.value)
    write_small_csv(folder, "userId,movieId,rating,timestamp\n1,hunter2,4.0,1\n")
    with pytest.raises(ImportFormatError, match="line 2: movieId is not a number") as info:
        movielens.import_movielens(db, folder)
    assert "hunter2" not in str(info.value)


def test_not_a_movielens_folder(db, tmp_path):
    with pytest.raises(ImportFormatError, match="not a MovieLens folder"):
        movielens.import_movielens(db, tmp_path)


def test_refuses_non_empty_database(db, tmp_path):
    folder = write_small_csv(tmp_path / "ml")
    movielens.import_movielens(db, folder)
    with pytest.raises(NotEmpty):
        movielens.import_movielens(db, folder)
    assert _table_counts(db)["ratings"] == 4


@pytest.mark.skipif(not ML_SMALL.exists(), reason=f"MovieLens data not found at {ML_SMALL}")
def test_real_ml_latest_small_counts(db):
    assert movielens.import_movielens(db, ML_SMALL) == {"movies": 9742, "users": 610, "ratings": 100836}
    assert _table_counts(db) == {"movies": 9742, "users": 610, "ratings": 100836, "rating_history": 100836}
    low, high = db.execute("SELECT min(rating), max(rating) FROM ratings").fetchone()
    assert (low, high) == (1, 10)
