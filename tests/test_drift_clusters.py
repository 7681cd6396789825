"""Rows that come in clusters (a user's ratings of a day) are judged on their effective sample size, so a day's
rating mix moving by chance is not an alert (issue 22.6; the 600-user world of bench_drift with ads opened a
rating alert in 30 stable days: PSI 0.45 against a chance level of 0.28 computed as if ~100 ratings were
independent). Fails on the old code: no design effect, and the clustered day below opened an alert."""
import numpy as np
import pandas as pd
import pytest

from core.monitoring import drift, monitoring
from core.warehouse import warehouse

RATINGS = [str(r) for r in range(1, 11)]


def test_the_design_effect_by_hand():
    assert monitoring.design_effect([1, 1, 1, 1]) == 1.0              # independent rows
    assert monitoring.design_effect([3, 1]) == pytest.approx(10 / 4)    # (9 + 1) / (3 + 1)
    assert monitoring.design_effect([5] * 20) == 5.0                     # 20 users × 5 ratings: 20 observations
    assert monitoring.design_effect([]) == 1.0
    assert "rating" in monitoring.CLUSTERED


def test_a_clustered_day_moves_the_chance_level_not_the_shares():
    """A reference of 2,000 ratings, then a day of 100 ratings by 20 users (5 each) with many more 9s and 10s: on
    independent rows the move is material, significant and beyond chance (an alert at once, as the old code
    did); on its 20 effective observations it is within chance."""
    p = np.array([2, 2, 4, 6, 10, 16, 22, 20, 11, 7], dtype=float) / 100
    reference = dict(zip(RATINGS, 2000 * p))
    current = dict(zip(RATINGS, [1, 1, 2, 2, 4, 8, 12, 20, 24, 26]))
    raw = drift.run_test("psi", reference, current, min_n=0).to_dict()
    assert raw["beyond_chance"] and monitoring.drift_confirmed(raw, drifted_yesterday=False)   # 0.59 > 0.38
    effect = monitoring.design_effect([5] * 20)
    judged = drift.run_test("psi", reference, current, min_n=0, design_effects=(1.0, effect)).to_dict()
    assert judged["drifted"] and judged["null_q99"] > 4 * raw["null_q99"] and not judged["beyond_chance"]
    assert not monitoring.drift_confirmed(judged, drifted_yesterday=True)
    # The chance level is the one of 20 independent ratings in the same buckets; the score is the rows' own.
    twenty = {k: v / effect for k, v in current.items()}
    assert judged["null_q99"] == pytest.approx(drift.run_test("psi", reference, twenty, min_n=0, min_expected=0)
                                               .null_q99, rel=1e-9)
    assert judged["score"] == raw["score"] and judged["n_current"] == 100 and "20 effective" in judged["detail"]


def test_a_design_effect_leaves_the_minimum_size_and_the_score_on_the_rows():
    """A small world's day of 150 genre labels from 30 users (5 each): 30 effective observations are below the
    100 a day needs, but the rows are not — the day is judged (the Drift page shows its score), only its chance
    level widens. Fails on the version that scaled the counts themselves: that day was 'not enough data'."""
    genres = ["Drama", "Comedy", "Action", "Thriller", "Romance"]
    reference = dict(zip(genres, [600, 500, 400, 300, 200]))
    current = dict(zip(genres, [40, 35, 30, 25, 20]))
    plain = drift.run_test("psi", reference, current, min_n=100).to_dict()
    clustered = drift.run_test("psi", reference, current, min_n=100, design_effects=(3.0, 5.0)).to_dict()
    assert not clustered["insufficient"] and clustered["score"] == plain["score"]
    assert clustered["n_current"] == 150 and clustered["null_q99"] > 1.5 * plain["null_q99"]


def test_window_features_carry_the_ratings_design_effect(cf_world):
    """Σ m² / Σ m over each user's ratings per day, from the warehouse's rating facts, by hand."""
    with warehouse.session(cf_world) as con:
        facts = con.execute("SELECT user_key, occurred_at FROM fact_interaction WHERE kind = 'rating'").df()
        start, end = facts["occurred_at"].min().normalize(), facts["occurred_at"].max().normalize() + pd.Timedelta(days=1)
        features = monitoring.window_features(con, start, end, None, end)
    m = facts.groupby([facts["user_key"], facts["occurred_at"].dt.normalize()]).size().to_numpy(float)
    assert len(m) > 0 and m.max() > 1
    assert features["_design_effect"]["rating"] == pytest.approx((m * m).sum() / m.sum(), rel=1e-12)
    assert sum(features["rating"].values()) == m.sum()


def test_watch_features_carry_the_watches_design_effect(cf_world):
    """A user's watches of a day cluster too: the popularity mix is judged on watches per user and day — Σ m² / Σ m
    by hand from the watch facts (the 600-user world with ads opened a popularity_concentration alert in 30 stable
    days without it); only the clustered features carry a design effect."""
    with warehouse.session(cf_world) as con:
        facts = con.execute("SELECT f.user_key, f.occurred_at, m.genres FROM fact_interaction f "
                            "JOIN dim_movie m USING (movie_id) WHERE f.kind = 'watch'").df()
        start, end = facts["occurred_at"].min().normalize(), facts["occurred_at"].max().normalize() + pd.Timedelta(days=1)
        features = monitoring.window_features(con, start, end, None, end)
    facts["labels"] = facts["genres"].fillna("").map(lambda g: len([x for x in g.split("|") if x]))
    by_user_day = facts.groupby([facts["user_key"], facts["occurred_at"].dt.normalize()])
    m, g = by_user_day.size().to_numpy(float), by_user_day["labels"].sum().to_numpy(float)
    assert m.max() > 1 and g.sum() == sum(features["genre_mix"].values())
    effects = features["_design_effect"]
    assert effects["popularity_concentration"] == pytest.approx((m * m).sum() / m.sum(), rel=1e-12)
    assert effects["popularity_concentration"] > 1 and set(effects) == set(monitoring.CLUSTERED)
    assert set(monitoring.CLUSTERED) == {"rating", "popularity_concentration"}
    # judged on their rows: a trend, a new release and a viral surge must still show within a day or two
    assert not {"genre_mix", "new_titles", "title_share"} & set(monitoring.CLUSTERED)
