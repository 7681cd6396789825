"""The churn model's data: point-in-time features and the 14-day label, from the warehouse only.

A *snapshot* at instant t (midnight) holds one row per active user at t — a user with at least one watch
in [t − 28 days, t), created before t, who has not withdrawn consent to personalization (churn scoring is
profiling too) — with features computed from facts strictly before t and the label "no watch in
[t, t + 14 days)" (NULL when the warehouse does not reach t + 14 days yet). Nothing at or after t enters a
feature: every window below ends at t, which tests/test_churn.py proves by changing the future.

"Share of served recommendations watched" reads `fact_served` (the serving log loaded by the ETL): of the
(user, title) pairs shown in [t − 28 days, t), the share the user watched after it was shown and before t.
It depends on the recommender that served those lists, which is why a churn model records them.
"""
from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import pandas as pd

from core.warehouse import warehouse
from core.settings import Settings

LOOKBACK_DAYS = 28
HORIZON_DAYS = 14
FEATURES = ("days_since_last_watch", "days_since_last_visit", "watches_7d", "watches_28d", "active_days_28d",
            "visits_28d", "visits_without_watch_28d", "watch_time_trend",
            "completion_28d", "served_lists_28d", "served_watch_share_28d", "genre_entropy_28d",
            "mean_rating_28d", "rating_trend", "tenure_days")
FEATURE_LABELS = {
    "days_since_last_watch": "days since the last watch",
    "days_since_last_visit": "days since the last visit (any page view)",
    "visits_28d": "days with a visit in the last 28 days",
    "visits_without_watch_28d": "share of visit days without a watch (28 days)",
    "watches_7d": "watches in the last 7 days",
    "watches_28d": "watches in the last 28 days",
    "active_days_28d": "days with activity in the last 28 days",
    "watch_time_trend": "watch-time trend (log of last 7 days vs the 21 before, per day)",
    "completion_28d": "mean share of a title watched (28 days)",
    "served_lists_28d": "recommendation lists shown (28 days)",
    "served_watch_share_28d": "share of recommended titles watched (28 days)",
    "genre_entropy_28d": "genre variety of watches (entropy, 28 days)",
    "mean_rating_28d": "mean rating given (28 days)",
    "rating_trend": "rating trend (last 14 days − the 42 before)",
    "tenure_days": "days since sign-up",
}

# Who is in a snapshot and what happened after: shared by the features and the daily churn rate, so both count the
# same population. `$user_key` NULL reads everyone; a pseudonym reads that user's facts only (one user's score).
POPULATION_CTES = f"""
snaps AS (SELECT CAST(t AS TIMESTAMP) AS t FROM snap_dates),
facts AS (SELECT * FROM fact_interaction WHERE $user_key IS NULL OR user_key = $user_key),
served_facts AS (SELECT * FROM fact_served WHERE $user_key IS NULL OR user_key = $user_key),
watch AS (
    SELECT s.t, f.user_key, f.occurred_at, f.movie_id, f.value AS seconds,
           least(f.value / (60.0 * coalesce(m.runtime_min, 100)), 1.0) AS fraction, m.genres
    FROM snaps s JOIN facts f
      ON f.kind = 'watch' AND f.occurred_at >= s.t - INTERVAL {LOOKBACK_DAYS} DAY AND f.occurred_at < s.t
    LEFT JOIN dim_movie m ON m.movie_id = f.movie_id),
active AS (
    SELECT w.t, w.user_key FROM watch w JOIN dim_user u ON u.user_key = w.user_key AND u.personalization
                                        AND u.created_at < w.t
    GROUP BY 1, 2),
future AS (
    SELECT s.t, f.user_key, count(*) AS future_watches
    FROM snaps s JOIN facts f
      ON f.kind = 'watch' AND f.occurred_at >= s.t AND f.occurred_at < s.t + INTERVAL {HORIZON_DAYS} DAY
    GROUP BY 1, 2)
"""

SNAPSHOT_SQL = "WITH" + POPULATION_CTES + ",\n" + f"""last_watch AS (
    SELECT t, user_key, max(occurred_at) AS last_at,
           count(*) FILTER (WHERE occurred_at >= t - INTERVAL 7 DAY) AS watches_7d,
           count(*) AS watches_28d,
           sum(seconds) FILTER (WHERE occurred_at >= t - INTERVAL 7 DAY) AS sec_7d,
           sum(seconds) FILTER (WHERE occurred_at < t - INTERVAL 7 DAY) AS sec_21d,
           avg(fraction) AS completion_28d
    FROM watch GROUP BY 1, 2),
days AS (
    SELECT s.t, f.user_key, count(DISTINCT CAST(f.occurred_at AS DATE)) AS active_days_28d
    FROM snaps s JOIN facts f
      ON f.occurred_at >= s.t - INTERVAL {LOOKBACK_DAYS} DAY AND f.occurred_at < s.t
         AND f.kind NOT IN ('impression', 'scroll')
    GROUP BY 1, 2),
visit_days AS (
    SELECT s.t, f.user_key, CAST(f.occurred_at AS DATE) AS day, max(f.occurred_at) AS last_at
    FROM snaps s JOIN facts f
      ON f.occurred_at >= s.t - INTERVAL {LOOKBACK_DAYS} DAY AND f.occurred_at < s.t
    GROUP BY 1, 2, 3),
watch_days AS (SELECT DISTINCT t, user_key, CAST(occurred_at AS DATE) AS day FROM watch),
visits AS (
    SELECT v.t, v.user_key, count(*) AS visits_28d, max(v.last_at) AS last_visit_at,
           avg(CASE WHEN w.day IS NULL THEN 1.0 ELSE 0.0 END) AS visits_without_watch_28d
    FROM visit_days v LEFT JOIN watch_days w ON w.t = v.t AND w.user_key = v.user_key AND w.day = v.day
    GROUP BY 1, 2),
genre_mass AS (
    SELECT t, user_key, g, sum(1.0 / n) AS mass FROM (
        SELECT t, user_key, unnest(string_split(genres, '|')) AS g, len(string_split(genres, '|')) AS n
        FROM watch WHERE genres IS NOT NULL AND genres <> '')
    GROUP BY 1, 2, 3),
entropy AS (
    SELECT t, user_key, -sum(p * ln(p)) AS genre_entropy_28d FROM (
        SELECT t, user_key, mass / sum(mass) OVER (PARTITION BY t, user_key) AS p FROM genre_mass)
    GROUP BY 1, 2),
rating AS (
    SELECT s.t, f.user_key,
           avg(f.value) FILTER (WHERE f.occurred_at >= s.t - INTERVAL {LOOKBACK_DAYS} DAY) AS mean_rating_28d,
           avg(f.value) FILTER (WHERE f.occurred_at >= s.t - INTERVAL 14 DAY) AS r_recent,
           avg(f.value) FILTER (WHERE f.occurred_at < s.t - INTERVAL 14 DAY) AS r_before
    FROM snaps s JOIN facts f
      ON f.kind = 'rating' AND f.occurred_at >= s.t - INTERVAL 56 DAY AND f.occurred_at < s.t
    GROUP BY 1, 2),
shown AS (
    SELECT s.t, fs.user_key, fs.movie_id, min(fs.served_at) AS first_shown
    FROM snaps s JOIN served_facts fs
      ON fs.served_at >= s.t - INTERVAL {LOOKBACK_DAYS} DAY AND fs.served_at < s.t
    GROUP BY 1, 2, 3),
lists AS (
    SELECT s.t, fs.user_key, count(DISTINCT fs.serve_id) AS served_lists_28d
    FROM snaps s JOIN served_facts fs
      ON fs.served_at >= s.t - INTERVAL {LOOKBACK_DAYS} DAY AND fs.served_at < s.t
    GROUP BY 1, 2),
title_watch AS (SELECT t, user_key, movie_id, max(occurred_at) AS last_at FROM watch GROUP BY 1, 2, 3),
served AS (
    SELECT sh.t, sh.user_key, avg(CASE WHEN w.user_key IS NULL THEN 0.0 ELSE 1.0 END) AS served_watch_share_28d
    FROM shown sh LEFT JOIN title_watch w
      ON w.t = sh.t AND w.user_key = sh.user_key AND w.movie_id = sh.movie_id AND w.last_at >= sh.first_shown
    GROUP BY 1, 2)
SELECT a.user_key, a.t AS as_of,
       date_diff('second', lw.last_at, a.t) / 86400.0 AS days_since_last_watch,
       date_diff('second', vi.last_visit_at, a.t) / 86400.0 AS days_since_last_visit,
       lw.watches_7d, lw.watches_28d, coalesce(d.active_days_28d, 0) AS active_days_28d,
       vi.visits_28d, vi.visits_without_watch_28d,
       ln((coalesce(lw.sec_7d, 0) / 7.0 + 60.0) / (coalesce(lw.sec_21d, 0) / 21.0 + 60.0)) AS watch_time_trend,
       lw.completion_28d,
       coalesce(li.served_lists_28d, 0) AS served_lists_28d, sv.served_watch_share_28d,
       coalesce(e.genre_entropy_28d, 0.0) AS genre_entropy_28d,
       r.mean_rating_28d, r.r_recent - r.r_before AS rating_trend,
       date_diff('second', u.created_at, a.t) / 86400.0 AS tenure_days,
       coalesce(fu.future_watches, 0) AS future_watches
FROM active a
JOIN dim_user u ON u.user_key = a.user_key
JOIN last_watch lw ON lw.t = a.t AND lw.user_key = a.user_key
LEFT JOIN days d ON d.t = a.t AND d.user_key = a.user_key
LEFT JOIN visits vi ON vi.t = a.t AND vi.user_key = a.user_key
LEFT JOIN entropy e ON e.t = a.t AND e.user_key = a.user_key
LEFT JOIN rating r ON r.t = a.t AND r.user_key = a.user_key
LEFT JOIN lists li ON li.t = a.t AND li.user_key = a.user_key
LEFT JOIN served sv ON sv.t = a.t AND sv.user_key = a.user_key
LEFT JOIN future fu ON fu.t = a.t AND fu.user_key = a.user_key
ORDER BY a.t, a.user_key
"""


def data_bounds(settings: Settings, con=None) -> tuple[pd.Timestamp, pd.Timestamp] | None:
    """(first midnight, end) of the watch facts: end = the midnight after the newest watch (the end of the last
    loaded day). None when the warehouse holds no watch."""
    def read(c):
        return c.execute("SELECT min(occurred_at), max(occurred_at) FROM fact_interaction WHERE kind = 'watch'").fetchall()[0]
    if con is None:
        with warehouse.session(settings) as c:
            lo, hi = read(c)
    else:
        lo, hi = read(con)
    if lo is None:
        return None
    return pd.Timestamp(lo).normalize(), pd.Timestamp(hi).normalize() + pd.Timedelta(days=1)


@contextmanager
def _snapshot_dates(con, stamps):
    """`snap_dates` (the snapshot instants) visible to the query on `con` while it runs."""
    con.register("snap_dates", pd.DataFrame({"t": list(stamps)}))
    try:
        yield con
    finally:
        con.unregister("snap_dates")


def snapshots(settings: Settings, dates, con=None, user_key: str | None = None) -> pd.DataFrame:
    """Feature rows (user_key, as_of, FEATURES…, label) for every active user at each of `dates` (midnights), or
    for the user `user_key` only (only their facts are read).

    `label` is 1 for "no watch in the next 14 days", 0 otherwise, and NaN where t + 14 days lies beyond the
    warehouse's end (the future is not known yet)."""
    stamps = sorted({pd.Timestamp(d).normalize() for d in dates})
    if not stamps:
        return _empty()

    def read(c):
        with _snapshot_dates(c, stamps):
            return c.execute(SNAPSHOT_SQL, {"user_key": user_key}).df(), data_bounds(settings, c)
    if con is None:
        with warehouse.session(settings) as c:
            frame, bounds = read(c)
    else:
        frame, bounds = read(con)
    end = bounds[1] if bounds else pd.Timestamp.min
    frame["as_of"] = pd.to_datetime(frame["as_of"])
    observable = frame["as_of"] + pd.Timedelta(days=HORIZON_DAYS) <= end
    frame["label"] = np.where(observable, (frame.pop("future_watches") == 0).astype(float), np.nan)
    for name in FEATURES:   # rounded: DuckDB's parallel sums differ in the last bits from run to run
        frame[name] = frame[name].astype(float).round(6)
    return frame[["user_key", "as_of", *FEATURES, "label"]].reset_index(drop=True)


def _empty() -> pd.DataFrame:
    return pd.DataFrame({"user_key": pd.Series(dtype=object), "as_of": pd.Series(dtype="datetime64[ns]"),
                         **{f: pd.Series(dtype=float) for f in FEATURES}, "label": pd.Series(dtype=float)})


def churn_rate_by_day(settings: Settings, start=None, end=None) -> pd.DataFrame:
    """day, active_users, churned, churn_rate: for every midnight whose 14-day horizon is observable, the share
    of that day's active users (the snapshots' population: watch in the 28 days before, consent to
    personalization) with no watch in the 14 days after — the label's rate, day by day."""
    bounds = data_bounds(settings)
    if bounds is None:
        return pd.DataFrame(columns=["day", "active_users", "churned", "churn_rate"])
    first = max(bounds[0] + pd.Timedelta(days=LOOKBACK_DAYS // 2), pd.Timestamp(start or bounds[0]).normalize())
    last = min(bounds[1] - pd.Timedelta(days=HORIZON_DAYS), pd.Timestamp(end or bounds[1]).normalize())
    if last < first:
        return pd.DataFrame(columns=["day", "active_users", "churned", "churn_rate"])
    days = pd.date_range(first, last, freq="D")
    with warehouse.session(settings) as con, _snapshot_dates(con, days):
        frame = con.execute("WITH" + POPULATION_CTES + """
            SELECT a.t AS day, count(*) AS active_users, count(*) FILTER (WHERE fu.user_key IS NULL) AS churned
            FROM active a LEFT JOIN future fu ON fu.t = a.t AND fu.user_key = a.user_key
            GROUP BY 1 ORDER BY 1""", {"user_key": None}).df()
    frame["churn_rate"] = frame["churned"] / frame["active_users"].where(frame["active_users"] > 0)
    return frame


def served_versions(settings: Settings, start, end) -> dict[str, list[int]]:
    """The CF and ranker versions whose lists were shown in [start, end) (canary arms included), from the
    warehouse's copy of the serving log: what a churn model's served-share feature depends on."""
    with warehouse.session(settings) as con:
        rows = con.execute("SELECT DISTINCT model_version, ranker_version FROM fact_served "
                           "WHERE served_at >= ? AND served_at < ?", [pd.Timestamp(start), pd.Timestamp(end)]).fetchall()
    cf = sorted({int(m) for m, _ in rows if m is not None})
    ranker = sorted({int(r) for _, r in rows if r is not None})
    return {"cf": cf, "ranker": ranker}
