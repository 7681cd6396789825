"""Training data from the lake with Spark SQL: `dataset`'s confidence weights and time-based split on the Spark engine.

`CONFIDENCE_SQL` is `dataset.CONFIDENCE_SQL` in Spark's dialect, term for term: the
same weights per kind (watched fraction of the runtime, clicks, likes, dislikes,
shares, the latest rating), the same recency decay max(0.5^(age / half-life), floor)
measured from the newest event of the window, and the same consent exclusion (only
users whose `dim_user.personalization` is true). DuckDB's `epoch(ts)` is
`unix_micros(ts) / 1e6` here and `arg_max` is `max_by`; every literal is a DOUBLE
(Spark reads `0.5` as a DECIMAL). Sums of doubles may differ from DuckDB's in the last
bits (another summation order): equal to 1e-9, which a test checks.

The split (`time_split`) and the refit matrix (`full_matrix`) return the same
`dataset.Split` / `dataset.Matrix` as the embedded engine — the pairs are computed by
Spark, then `dataset.to_matrix` builds the CSR users × items matrix that the metrics,
the gate and the bundle format use unchanged.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from core.errors import RetroError
from core.settings import Settings
from core.text import with_article
from core.warehouse import dataset
from core.warehouse.dataset import ConfidenceWeights, Matrix, Split
from core.warehouse.lake import Lake
from core.warehouse.spark import session_for

CONFIDENCE_SQL = """
WITH w AS (
    SELECT * FROM fact_interaction
    WHERE occurred_at >= CAST(:start AS TIMESTAMP_NTZ) AND occurred_at < CAST(:end AS TIMESTAMP_NTZ)),
ref AS (SELECT unix_micros(CAST(max(occurred_at) AS TIMESTAMP)) / 1e6 AS t FROM w),
ev AS (
    SELECT f.user_key, f.movie_id,
        sum(CASE f.kind
            WHEN 'watch' THEN :watch * least(f.value / (60.0D * coalesce(m.runtime_min, 100)), 1.0D)
            WHEN 'click' THEN :click WHEN 'like' THEN :like WHEN 'dislike' THEN :dislike
            WHEN 'share' THEN :share ELSE 0.0D END
            * greatest(pow(0.5D, (ref.t - unix_micros(CAST(f.occurred_at AS TIMESTAMP)) / 1e6) / :half_life_s),
                       :floor)) AS events_conf,
        max_by(f.value, f.occurred_at) FILTER (WHERE f.kind = 'rating') AS last_rating,
        max(f.occurred_at) FILTER (WHERE f.kind = 'rating') AS rated_at,
        max(f.occurred_at) FILTER (WHERE f.kind <> 'impression' AND f.kind <> 'scroll') AS last_at,
        min(f.occurred_at) AS first_at
    FROM w f CROSS JOIN ref
    JOIN dim_user u ON u.user_key = f.user_key AND u.personalization
    LEFT JOIN dim_movie m ON m.movie_id = f.movie_id
    WHERE f.movie_id IS NOT NULL AND f.kind NOT IN ('impression', 'scroll')
    GROUP BY 1, 2)
SELECT user_key, movie_id, last_at, first_at,
       events_conf + CASE WHEN last_rating IS NULL THEN 0.0D
                          ELSE (:rated + :rating * (last_rating - 5.5D) / 4.5D)
                               * greatest(pow(0.5D, (ref.t - unix_micros(CAST(rated_at AS TIMESTAMP)) / 1e6)
                                              / :half_life_s), :floor) END AS confidence
FROM ev CROSS JOIN ref
"""


def register_views(lake: Lake, pointer: dict | None = None) -> dict:
    """The committed warehouse tables as Spark temp views under their own names; returns the pointer used."""
    pointer = pointer or lake.pointer()
    for name in ("fact_interaction", "dim_user", "dim_movie"):
        lake.table(name, pointer).createOrReplaceTempView(name)
    return pointer


def _params(weights: ConfidenceWeights, start, end) -> dict:
    p = {k: float(v) for k, v in weights.sql_params().items()}
    return p | {"start": str(pd.Timestamp(start or "1900-01-01")), "end": str(pd.Timestamp(end or "2999-01-01"))}


def interactions(settings: Settings, start=None, end=None, weights: ConfidenceWeights = ConfidenceWeights(), *,
                 spark=None, lake: Lake | None = None):
    """Spark DataFrame (user_key, movie_id, last_at, first_at, confidence) of the pairs with a positive confidence
    in [start, end) — `dataset.interactions` computed by Spark."""
    spark = spark or session_for(settings)
    lake = lake or Lake(settings, spark)
    register_views(lake)
    return spark.sql(CONFIDENCE_SQL, args=_params(weights, start, end)).where("confidence > 0")


def interactions_frame(settings: Settings, start=None, end=None, weights: ConfidenceWeights = ConfidenceWeights(),
                       *, spark=None, lake: Lake | None = None) -> pd.DataFrame:
    """`interactions` collected to pandas, with `dataset.interactions`' columns and dtypes."""
    df = interactions(settings, start, end, weights, spark=spark, lake=lake).toPandas()
    if len(df):
        df["movie_id"] = df["movie_id"].astype("int64")
    return df.reset_index(drop=True)


def _scalar(spark, sql: str):
    return spark.sql(sql).collect()[0][0]


def time_split(settings: Settings, holdout_days: int = 3, weights: ConfidenceWeights = ConfidenceWeights(),
               all_movie_ids: np.ndarray | None = None, served_pairs=None, start_after=None, *, spark=None) -> Split:
    """`dataset.time_split` on the Spark engine: the same cutoff, windows, exclusions and errors.

    `served_pairs(start, end)` (the titles the production model served, left out of the relevant
    sets) is passed by the caller, as on the embedded engine (see `evaluation.holdout_split`).
    """
    spark = spark or session_for(settings)
    lake = Lake(settings, spark)
    pointer = register_views(lake)
    end = _scalar(spark, "SELECT max(occurred_at) FROM fact_interaction")
    if end is None:
        raise RetroError("the lake is empty; run the ETL first (python -m core etl --engine spark)")
    end = pd.Timestamp(end)
    cutoff = dataset.holdout_cutoff(end, holdout_days, start_after)
    same = {"spark": spark, "lake": lake}
    train_df = interactions_frame(settings, None, cutoff, weights, **same)
    if train_df.empty:
        first = _scalar(spark, "SELECT min(occurred_at) FROM fact_interaction")
        raise RetroError(f"{with_article(f'{holdout_days}-day holdout')} leaves no training data (the lake covers "
                         f"{pd.Timestamp(first).date()} .. {end.date()}); choose fewer holdout days")
    test_df = interactions_frame(settings, cutoff, end + pd.Timedelta(seconds=1), weights, **same)
    if all_movie_ids is None:
        all_movie_ids = movie_ids(spark, lake, pointer)
    return dataset.split_from_frames(train_df, test_df, cutoff, end, all_movie_ids, served_pairs)


def movie_ids(spark, lake: Lake, pointer: dict | None = None) -> np.ndarray:
    """Every catalog movie id, ascending (the item columns of a matrix)."""
    return lake.table("dim_movie", pointer).select("movie_id").orderBy("movie_id").toPandas()["movie_id"] \
        .to_numpy(dtype=np.int64)


def full_matrix(settings: Settings, weights: ConfidenceWeights = ConfidenceWeights(),
                all_movie_ids: np.ndarray | None = None, *, spark=None) -> Matrix:
    """All positive interactions, as `dataset.full_matrix`: the data a deployed model is refit on."""
    spark = spark or session_for(settings)
    lake = Lake(settings, spark)
    pairs = interactions_frame(settings, None, None, weights, spark=spark, lake=lake)
    if all_movie_ids is None:
        all_movie_ids = movie_ids(spark, lake)
    return dataset.to_matrix(pairs, movie_ids=all_movie_ids)
