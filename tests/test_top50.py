"""The weighted-rating Top 50 against numbers worked out by hand."""
from fractions import Fraction

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings as hyp_settings, strategies as st

from core.store import opsdb, writes
from core.training import top50
from core.errors import ValidationError

# ------------------------------------------------------------------ weighted_rating / min_votes


def test_weighted_rating_hand_computed():
    # v=10, R=8, m=5, C=6 -> 10/15*8 + 5/15*6 = 22/3
    assert float(top50.weighted_rating(10, 8, 5, 6)) == pytest.approx(22 / 3, rel=1e-12)
    # vectorized: v=0 gives C; m=0 gives R; v=m gives the midpoint
    out = top50.weighted_rating([0, 4, 3, 1], [9.0, 7.0, 10.0, 2.0], 3, 5.0)
    np.testing.assert_allclose(out, [5.0, 4 / 7 * 7 + 3 / 7 * 5, 7.5, 1 / 4 * 2 + 3 / 4 * 5], rtol=1e-12)
    np.testing.assert_allclose(top50.weighted_rating([2, 50], [3.0, 9.5], 0, 7.0), [3.0, 9.5], rtol=1e-12)


def test_weighted_rating_no_votes_and_no_prior_is_c():
    assert float(top50.weighted_rating(0, 0.0, 0, 6.5)) == 6.5


@hyp_settings(database=None)
@given(
    v=st.integers(min_value=0, max_value=10**6),
    R=st.floats(min_value=1, max_value=10),
    m=st.floats(min_value=0, max_value=1e6),
    C=st.floats(min_value=1, max_value=10),
)
def test_weighted_rating_lies_between_r_and_c(v, R, m, C):
    wr = float(top50.weighted_rating(v, R, m, C))
    eps = 1e-9
    assert min(R, C) - eps <= wr <= max(R, C) + eps
    if v + m > 0:  # more votes (same R) never move WR away from R
        closer = float(top50.weighted_rating(v + 1, R, m, C))
        assert abs(closer - R) <= abs(wr - R) + eps


def test_min_votes_percentile_hand_list():
    votes = [1, 1, 2, 3, 10]
    # linear interpolation at rank 0.9*(5-1)=3.6 between 3 and 10 -> 3 + 0.6*7 = 7.2
    assert top50.min_votes(votes) == pytest.approx(7.2)
    assert top50.min_votes(votes, 50) == 2.0
    assert top50.min_votes(votes, 0) == 1.0 and top50.min_votes(votes, 100) == 10.0
    assert top50.min_votes([], 90) == 0.0


# ------------------------------------------------------------------ hand-made dataset
# movie -> ratings by users 1, 2, ... (one rating per user and movie)
HAND = {
    8: [8, 8],               # v=2, R=8  (ties with movie 4; higher id)
    1: [8, 8, 8, 8, 8, 8],   # v=6, R=8
    2: [10, 10],             # v=2, R=10
    3: [8, 8, 8, 8],         # v=4, R=8
    4: [8, 8],               # v=2, R=8
    5: [9, 9, 9, 9, 6],      # v=5, R=8.4
    6: [3],                  # v=1, R=3
    7: [2, 4, 6],            # v=3, R=4
}
TOTAL_VOTES = 25
C_EXACT = Fraction(189, 25)  # 7.56


def wr_exact(movie: int, m) -> float:
    v, R = len(HAND[movie]), Fraction(sum(HAND[movie]), len(HAND[movie]))
    m = Fraction(m)
    return float(Fraction(v) / (v + m) * R + m / (v + m) * C_EXACT)


@pytest.fixture
def hand_db(small_db):
    """small_db plus users 3..6 and movies 3..8, rated as in HAND through the write API."""
    writes.add_users(small_db, [{"user_id": u} for u in range(3, 7)])
    writes.add_movies(small_db, [{"movie_id": m, "title": f"Hand Movie {m}", "year": 1950 + m, "genres": "Drama"}
                                 for m in (8, 3, 4, 5, 6, 7)])
    writes.rate_many(small_db, [{"user_id": u, "movie_id": m, "rating": r, "rated_at": "2026-01-05T12:00:00"}
                                for m, ratings in HAND.items() for u, r in enumerate(ratings, start=1)])
    return small_db


def test_hand_dataset_is_what_we_think(hand_db):
    stats = top50.movie_votes(hand_db).set_index("movie_id")
    assert stats["votes"].to_dict() == {m: len(r) for m, r in HAND.items()}
    assert stats["rating_sum"].to_dict() == {m: sum(r) for m, r in HAND.items()}
    assert stats["votes"].sum() == TOTAL_VOTES


def test_top50_default_m_is_90th_percentile(hand_db):
    result = top50.top50(hand_db)
    # sorted votes [1,2,2,2,3,4,5,6]: rank 0.9*7 = 6.3 -> 5 + 0.3*(6-5) = 5.3
    assert result.m == pytest.approx(5.3, rel=1e-12)
    assert result.C == pytest.approx(7.56, rel=1e-12)
    assert result.movie_ids == [1]  # only movie 1 has v >= 5.3
    assert result.table.loc[0, "weighted_rating"] == pytest.approx(wr_exact(1, Fraction(53, 10)), rel=1e-12)


def test_top50_with_percentile_and_exact_values(hand_db):
    result = top50.top50(hand_db, percentile=50)
    assert result.m == 2.5  # median of [1,2,2,2,3,4,5,6]
    assert result.movie_ids == [5, 1, 3, 7]  # v >= 2.5 only
    expected = [wr_exact(mid, Fraction(5, 2)) for mid in (5, 1, 3, 7)]
    np.testing.assert_allclose(result.table["weighted_rating"], expected, rtol=1e-12)
    assert result.table["rank"].tolist() == [1, 2, 3, 4]
    assert result.table["votes"].tolist() == [5, 6, 4, 3]
    np.testing.assert_allclose(result.table["mean_rating"], [8.4, 8.0, 8.0, 4.0])
    assert result.table["title"].tolist() == ["Hand Movie 5", "The Silent Harbor", "Hand Movie 3", "Hand Movie 7"]
    assert result.table["year"].tolist() == [1955, 1960, 1953, 1957]


def test_top50_absolute_m_hand_values(hand_db):
    result = top50.top50(hand_db, m=3)
    assert (result.m, result.C) == (3.0, pytest.approx(7.56))
    # WR: 5 -> 5/8*8.4+3/8*7.56 = 8.085; 1 -> 6/9*8+3/9*7.56 = 7.85333; 3 -> 4/7*8+3/7*7.56 = 7.81143; 7 -> 5.78
    assert result.movie_ids == [5, 1, 3, 7]
    np.testing.assert_allclose(result.table["weighted_rating"], [8.085, 7.85 + 1 / 300, 7.8114285714285714, 5.78], rtol=1e-12)


def test_movies_below_m_are_excluded_and_boundary_included(hand_db):
    result = top50.top50(hand_db, m=4)
    assert result.movie_ids == [5, 1, 3]  # movie 3 has exactly v = m = 4; movie 7 (v=3) is out
    assert all(result.table["votes"] >= 4)


def test_ties_break_by_votes_desc_then_movie_id_asc(hand_db):
    # m = 0: WR = R exactly; movies 1, 3, 4, 8 all have R = 8 (votes 6, 4, 2, 2)
    result = top50.top50(hand_db, m=0)
    assert result.movie_ids == [2, 5, 1, 3, 4, 8, 7, 6]
    assert result.table["weighted_rating"].tolist() == [10.0, 8.4, 8.0, 8.0, 8.0, 8.0, 4.0, 3.0]
    assert result.table["rank"].tolist() == list(range(1, 9))


def test_limit_cuts_the_list(hand_db):
    result = top50.top50(hand_db, m=0, limit=3)
    assert result.movie_ids == [2, 5, 1]


def test_rerating_does_not_add_a_vote(hand_db):
    writes.rate(hand_db, 1, 6, 10)  # movie 6: the single rating 3 becomes 10
    result = top50.top50(hand_db, m=0)
    row = result.table.set_index("movie_id").loc[6]
    assert (row["votes"], row["mean_rating"]) == (1, 10.0)
    assert result.C == pytest.approx(196 / 25)


def test_recomputing_gives_an_identical_frame(hand_db):
    a, b = top50.top50(hand_db, percentile=50), top50.top50(hand_db, percentile=50)
    pd.testing.assert_frame_equal(a.table, b.table)
    assert a.to_dict() == b.to_dict()


def test_to_dict_contract(hand_db):
    d = top50.top50(hand_db, m=4).to_dict()
    assert set(d) == {"m", "C", "movies"}
    assert [m["movie_id"] for m in d["movies"]] == [5, 1, 3]
    assert set(d["movies"][0]) == {"rank", "movie_id", "title", "year", "genres", "votes", "mean_rating", "weighted_rating"}


@pytest.mark.parametrize("bad_m", [-1, -0.5, float("nan"), float("inf")])
def test_invalid_m_raises(hand_db, bad_m):
    with pytest.raises(ValidationError, match="m must be a non-negative number"):
        top50.top50(hand_db, m=bad_m)


def test_invalid_limit_raises(hand_db):
    with pytest.raises(ValidationError, match="at least 1"):
        top50.top50(hand_db, limit=0)


def test_the_ids_alone_are_the_lists_ids(hand_db):
    """top50_ids (what the simulation reads every day) is the list's movie ids, in order, as ints."""
    for limit in (1, 3, 50):
        assert top50.top50_ids(hand_db, limit=limit) == top50.top50(hand_db, limit=limit).movie_ids
    assert top50.top50_ids(hand_db) == [1]         # m = 5.3, the 90th percentile of the hand votes: only movie 1
    assert all(type(i) is int for i in top50.top50_ids(hand_db, limit=50))


def test_empty_database_gives_empty_list(db):
    assert top50.top50_ids(db) == []
    result = top50.top50(db)
    assert (result.m, result.C, len(result.table)) == (0.0, 0.0, 0)
    assert list(result.table.columns) == ["rank", "movie_id", "title", "year", "genres", "votes", "mean_rating",
                                          "weighted_rating"]


# ------------------------------------------------------------------ rank_movies properties
@hyp_settings(database=None)
@given(st.lists(st.tuples(st.integers(1, 40), st.integers(1, 10)), min_size=1, max_size=30),
       st.one_of(st.none(), st.floats(0, 50)), st.integers(1, 10))
def test_rank_movies_invariants(rows, m, limit):
    votes = np.array([v for v, _ in rows])
    means = np.array([r for _, r in rows])
    stats = pd.DataFrame({"movie_id": np.arange(1, len(rows) + 1), "votes": votes, "rating_sum": votes * means})
    ranked, m_used, C = top50.rank_movies(stats, m, limit=limit)
    assert C == pytest.approx((votes * means).sum() / votes.sum())
    assert m_used == (m if m is not None else top50.min_votes(votes))
    eligible = int((votes >= m_used).sum())
    assert len(ranked) == min(limit, eligible)
    assert (ranked["votes"] >= m_used).all()
    assert ranked["rank"].tolist() == list(range(1, len(ranked) + 1))
    keys = list(zip(-ranked["weighted_rating"], -ranked["votes"], ranked["movie_id"]))
    assert keys == sorted(keys)


# ------------------------------------------------------------------ on the simulated world
def test_top50_on_small_world(small_world):
    with opsdb.session(small_world) as db:
        a, b = top50.top50(db), top50.top50(db)
        n_rated = db.execute("SELECT count(DISTINCT movie_id) FROM ratings").fetchone()[0]
    pd.testing.assert_frame_equal(a.table, b.table)
    assert 0 < len(a.table) <= min(50, n_rated)
    assert (a.table["votes"] >= a.m).all()
    assert a.table["weighted_rating"].is_monotonic_decreasing
    assert a.table["weighted_rating"].between(1, 10).all() and a.table["title"].notna().all()
    with opsdb.session(small_world) as db:
        assert top50.top50_ids(db) == a.movie_ids
