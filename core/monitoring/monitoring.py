"""Monitoring: data drift, concept drift (online quality), model drift, data quality, and alerts.

Per monitored day (one simulated day, or one ETL window):
- data drift of the inputs against the reference window — the last 7 days of the
  data the production model was trained on — with the statistical tests of
  `core.drift`;
- online quality: lists served before the day against what users watched that
  day (hit rate@10, precision@10), for the production model and, as a control,
  for the Top 50;
- model drift: the distribution of served scores and of recommended genres;
- data quality: the ETL gate's quarantine rate;
- the churn model's dependency: a `model-staleness` alert (metric `churn`) while `churn_pipeline.status` calls the
  production churn model possibly stale (the recommender changed since it was trained); it closes when status no
  longer does. It only informs: the retraining policy reads drift and quality alerts, not this one.
Alerts open once per (kind, metric), update while open and close when the
metric recovers — clearly: a drift score must fall below 0.8 × the level that opens
an alert, the online hit rate back above 90 % of its baseline (it opened below 80 %),
so a metric hovering at its threshold does not open and close an alert every day.
An alert needs a change that is both material (the test's threshold; 80 % of the
hit-rate baseline) and beyond chance at the day's window sizes (above the score's
99th percentile when nothing changed, `drift.null_quantile`; a hit-rate drop
significant at 99 % for the users served, `hit_rate_chance_level`): on a small
world a fixed threshold alone alarms on noise.
A day with an open data-quality alert is a *data incident*, not a taste shift,
and the retraining policy does not act on it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from core.monitoring import drift, policy
from core.serving import deployments
from core.store import mlopsdb, opsdb, servinglog
from core.training import metrics, registry
from core.warehouse import dataset, warehouse
from core.training.artifacts import load_bundle
from core.settings import Settings
from core.text import plural

REFERENCE_DAYS = 7
# feature -> (kind, tests; the first test decides the alert)
FEATURES: dict[str, tuple[str, tuple[str, ...]]] = {
    "genre_mix": ("categorical", ("psi", "chi_square")),
    "rating": ("categorical", ("psi", "jensen_shannon")),
    "watch_fraction": ("numeric", ("psi", "ks")),
    "user_activity": ("numeric", ("psi", "ks")),
    "popularity_concentration": ("categorical", ("psi",)),
    "new_titles": ("categorical", ("psi",)),
    "event_mix": ("categorical", ("psi", "jensen_shannon")),
    "title_share": ("categorical", ("max_share_gain",)),
}
FEATURE_LABELS = {
    "genre_mix": "genre mix of watches", "rating": "rating distribution", "watch_fraction": "watch-time distribution",
    "user_activity": "user activity (signals per active user)", "popularity_concentration": "item popularity concentration",
    "new_titles": "share of new titles", "event_mix": "event mix",
    "title_share": "share of watches per title (surges)",
}
TITLE_BUCKETS_SHOWN = 12          # the per-feature chart of title_share shows the titles that moved most
QUARANTINE_RATE_ALERT = 0.02      # > 2 % of a day's rows quarantined = data incident
ONLINE_DROP_ALERT = 0.80          # model hit rate below 80 % of its stable baseline (material)...
ONLINE_CHANCE_Z = float(stats.norm.ppf(drift.NULL_LEVEL))   # ...and below baseline − 2.33 SE (beyond chance)
ONLINE_RECOVERED = 0.90
BASELINE_DAYS = 7
SIGNIFICANT_FACTOR = drift.PSI_SIGNIFICANT / drift.PSI_MODERATE   # 2.5 × a test's threshold (PSI: 0.25)
RECOVERED_FACTOR = 0.8            # a data-drift alert closes below 0.8 × its alerting level (hysteresis: no flapping)
LARGE_WINDOW = 1000               # observations in a day's window above which one day's moderate drift is trusted
STALENESS = ("model-staleness", "churn")   # (kind, metric) of the churn model's staleness alert
RECOMMENDER_ALERTS = ("data-quality", "data-drift", "concept-drift")   # the alerts about the recommender's data


# ------------------------------------------------------------------ features
def _day_bounds(day) -> tuple[pd.Timestamp, pd.Timestamp]:
    start = pd.Timestamp(day).normalize()
    return start, start + pd.Timedelta(days=1)


def window_features(con, start, end, deciles: pd.Series | None, new_since) -> dict:
    """Feature samples for [start, end): counts (dict) for categorical, arrays for numeric features."""
    watches = dataset.watches_between(con, start, end, new_since)
    ratings = dataset.rating_counts_between(con, start, end)
    per_rater = dataset.ratings_per_user_day(con, start, end)
    per_watcher = dataset.watches_per_user_day(con, start, end)
    # Signals per active user and day (so a 7-day reference and a 1-day window compare like with like).
    activity = dataset.signals_per_user_day(con, start, end)
    mix = dataset.kind_counts_between(con, start, end)
    per_title = watches.groupby(["movie_id", "title"], dropna=False).size()
    genres = watches["genres"].fillna("").str.split("|").explode()
    genres = genres[genres.astype(bool)]
    out = {
        "genre_mix": genres.value_counts().to_dict(),
        "rating": dict(zip(ratings["r"].astype(str), ratings["n"].astype(int))),
        "watch_fraction": watches["fraction"].to_numpy(dtype=float),
        "user_activity": activity["n"].to_numpy(dtype=float),
        "new_titles": {"new": int(watches["is_new"].sum()), "catalog": int((~watches["is_new"].astype(bool)).sum())},
        "event_mix": dict(zip(mix["kind"], mix["n"].astype(int))),
        "title_share": {f"{t} (#{m})": int(n) for (m, t), n in per_title.items()},
        "_watch_counts": watches["movie_id"].value_counts(),
        "_design_effect": {"rating": design_effect(per_rater), "popularity_concentration": design_effect(per_watcher)},
    }
    if deciles is not None:
        dec = deciles.reindex(watches["movie_id"].to_numpy()).fillna(10).astype(int)
        out["popularity_concentration"] = {f"decile {d}": int(n) for d, n in dec.value_counts().items()}
    return out


def design_effect(cluster_sizes) -> float:
    """Kish's design effect of rows that come in clusters, taking a cluster's rows as one observation's worth:
    Σ m² / Σ m (1 when every cluster has one row). A user's ratings of a day share the user's harshness and
    taste, so counting them as independent rows understates how much a day's rating mix moves by chance: the
    600-user world of bench_drift (ads on) opened a rating alert in 30 stable days, PSI 0.45 against a chance
    level of 0.28 computed as if its ~100 ratings were independent."""
    m = np.asarray(cluster_sizes, dtype=float)
    return float((m * m).sum() / m.sum()) if m.sum() > 0 else 1.0


# Features whose rows come in clusters per user and day: their chance level is drawn at their effective counts
# (the counts ÷ `design_effect`; `drift.run_test`'s design_effects), the score and the minimum size stay on the rows.
# A user's watches of a day share the user's taste too: the 600-user world of bench_drift (ads on) opened a
# popularity_concentration alert in 30 stable days (PSI 0.105 vs a chance level of 0.070 on independent rows).
# Kish's Σm²/Σm takes every row of a user-day as alike (the upper bound), so only the mixes that alarmed on noise
# use it: on the genre mix it made a 600-user world's chance level 0.47–0.59 and hid a Western trend at strength 1
# (PSI 0.20–0.24) for 3 days. Left out on purpose: genre_mix and new_titles (they catch trends and new releases),
# title_share (its per-title buckets are merged by expected count; a viral surge must show within a day).
CLUSTERED = ("rating", "popularity_concentration")


def popularity_deciles(watch_counts: pd.Series, movie_ids) -> pd.Series:
    """Movie → popularity decile in the reference (1 = the 10 % most-watched titles, 10 = the least)."""
    counts = watch_counts.reindex(movie_ids).fillna(0).sort_values(ascending=False, kind="mergesort")
    ranks = np.arange(len(counts))
    return pd.Series(1 + (10 * ranks // max(len(counts), 1)), index=counts.index)


@dataclass
class Reference:
    version: int | None
    start: pd.Timestamp
    end: pd.Timestamp
    features: dict
    deciles: pd.Series


_references: dict = {}


def clear_caches() -> None:
    """Forget the cached reference window (as serving.clear_caches does for models)."""
    _references.clear()


def reference_for(settings: Settings, con, prod: dict | None) -> Reference | None:
    """The last REFERENCE_DAYS days of the production model's training data (cached per version)."""
    if prod is None:
        return None
    key = (str(settings.home), int(prod["version"]), prod["artifact_hash"])
    if key in _references:
        return _references[key]
    try:
        meta = load_bundle(prod["artifact_path"]).meta
        end = pd.Timestamp(meta["trained_until"]).normalize() + pd.Timedelta(days=1)
    except (OSError, KeyError, ValueError):
        return None
    ref = build_reference(con, int(prod["version"]), end - pd.Timedelta(days=REFERENCE_DAYS), end)
    _references.clear()
    _references[key] = ref
    return ref


def build_reference(con, version: int | None, start, end) -> Reference:
    """Features of the window [start, end), with popularity deciles taken from the window itself."""
    start, end = pd.Timestamp(start), pd.Timestamp(end)
    movies = dataset.catalog_movie_ids(con)
    base = window_features(con, start, end, None, end)
    deciles = popularity_deciles(base["_watch_counts"], movies)
    return Reference(version, start, end, window_features(con, start, end, deciles, end), deciles)


# ------------------------------------------------------------------ online quality
def online_quality(settings: Settings, day, k: int = 10) -> dict:
    """Lists served at the start of `day` against the watches of that day (model and Top 50 control).

    Hit rate@k and precision@k are core.training.metrics' formulas over EVERY user served
    (metrics.hit_rate_all_users_at_k, precision_all_users_at_k): a served user who watched nothing that
    day counts as a miss. Offline evaluation (metrics.hit_rate_at_k) skips users without held-out items,
    because there a user with nothing held out says nothing about the model. Online, everyone served was shown a
    list and not watching anything is an outcome, so the online number is the offline formula times the share
    of served users who watched anything that day; it moves with activity as well as with relevance, and is
    compared only with itself (its stable-day baseline) and with the Top 50 control measured the same way.
    """
    start, end = _day_bounds(day)
    s0, s1 = start.strftime("%Y-%m-%dT%H:%M:%S"), end.strftime("%Y-%m-%dT%H:%M:%S")
    with opsdb.session(settings) as db:
        served = servinglog.lists_served_at(db, s0)
        watches = opsdb.watches_between(db, s0, s1)
    with mlopsdb.session(settings) as mdb:
        row = mdb.execute("SELECT movie_ids FROM daily_top50 WHERE day = ?", [str(start.date())]).fetchone()
    top = json.loads(row[0]) if row else []
    with opsdb.session(settings) as db:   # only the Top 50 titles matter for the control's seen filter
        seen_before = opsdb.watched_before(db, top, s0)
    watched: dict[int, set] = {}
    for u, m in watches:
        if isinstance(m, int):   # a movie id written around the write API (NULL, text) matches no served list
            watched.setdefault(u, set()).add(m)
    seen: dict[int, set] = {}
    for u, m in seen_before:
        seen.setdefault(u, set()).add(m)
    model_lists, model_watched, top_lists, top_watched, scores, paths = [], [], [], [], [], {}
    for user, path, ids, sc in served:
        paths[path] = paths.get(path, 0) + 1
        w = watched.get(user, set())
        top_lists.append([m for m in top if m not in seen.get(user, set())][:k])
        top_watched.append(w)
        if path == "model":
            model_lists.append(json.loads(ids)[:k])
            model_watched.append(w)
            scores.extend(json.loads(sc)[:k])

    def rate(metric, lists, relevant):
        return metric(lists, relevant, k) if lists else None

    arms, release = arm_quality(settings, s0, watched, k)
    return {"users_served": len(served), "users_model": len(model_lists), "paths": paths,
            "arms": arms, "release": release, "hit_rate_by_policy": policy_quality(settings, s0, watched, k),
            "hit_rate_model": rate(metrics.hit_rate_all_users_at_k, model_lists, model_watched),
            "precision_model": rate(metrics.precision_all_users_at_k, model_lists, model_watched),
            "hit_rate_top50": rate(metrics.hit_rate_all_users_at_k, top_lists, top_watched),
            "precision_top50": rate(metrics.precision_all_users_at_k, top_lists, top_watched),
            "score_p10": float(np.percentile(scores, 10)) if scores else None,
            "score_p50": float(np.percentile(scores, 50)) if scores else None,
            "score_p90": float(np.percentile(scores, 90)) if scores else None}


def policy_quality(settings: Settings, served_at: str, watched: dict[int, set], k: int = 10) -> dict:
    """The price of exploring, measured online: {policy: {"users", "hit_rate"}} for the lists shown at
    `served_at` by the deterministic and the exploring logging policy (every list, fallbacks included; the coin
    is independent of the user, so the two groups compare like with like)."""
    with opsdb.session(settings) as db:
        rows = sorted(servinglog.policy_lists_served_at(db, served_at))
    out = {}
    for policy in ("deterministic", "explore"):
        lists = [json.loads(ids)[:k] for _, p, ids in rows if p == policy]
        relevant = [watched.get(u, set()) for u, p, _ in rows if p == policy]
        if lists:
            out[policy] = {"users": len(lists), "hit_rate": metrics.hit_rate_all_users_at_k(lists, relevant, k)}
    return out


def exploration_price(settings: Settings) -> dict:
    """Online hit rate@10 of exploring vs deterministic lists over every monitored day (list-weighted), and
    the difference: {"deterministic": {...}, "explore": {...}, "difference": explore − deterministic or None}."""
    with mlopsdb.session(settings) as db:
        rows = db.execute("SELECT online FROM monitor_days ORDER BY day").fetchall()
    totals = {p: [0, 0.0] for p in ("deterministic", "explore")}
    for (online,) in rows:
        for p, q in ((json.loads(online) if online else {}).get("hit_rate_by_policy") or {}).items():
            totals[p][0] += q["users"]
            totals[p][1] += q["hit_rate"] * q["users"]
    out = {p: {"lists": n, "hit_rate": (hits / n) if n else None} for p, (n, hits) in totals.items()}
    both = all(out[p]["hit_rate"] is not None for p in out)
    out["difference"] = out["explore"]["hit_rate"] - out["deterministic"]["hit_rate"] if both else None
    return out


def arm_quality(settings: Settings, served_at: str, watched: dict[int, set], k: int = 10) -> tuple[dict, dict | None]:
    """Online quality per arm of the release active when the day's lists were served (issue 16).

    {arm: {"users", "hits", "hit_rate", "precision", "model_lists", "versions"}} for 'production' and 'canary'
    (every list shown in the arm, fallbacks included: the arms are split by a hash of the user id, so
    comparing them whole compares like with like) and, during a shadow release, 'shadow' — the candidate's
    unseen lists — beside 'shadow_production', production's lists for the same users (the pairing that makes
    a shadow comparable, though a list nobody saw is only ever watched by chance: a lower bound). Hit rate
    and precision are metrics' all-users formulas, as for the whole day; hits = lists with a hit.
    Second value: the release ({deployment_id, mode, version, share}) or None.
    """
    with opsdb.session(settings) as db:
        # In user order: the lists' logging order (concurrent requests to a server) must not change a mean's last bit.
        shown = sorted(servinglog.arm_lists_served_at(db, served_at), key=lambda r: (r[0], str(r)))
        shadow = sorted(servinglog.shadow_lists_at(db, served_at), key=lambda r: (r[0], str(r)))
    release = deployments.active_at(settings, served_at)

    def quality(rows):
        lists = [json.loads(ids)[:k] for _, ids, _, _ in rows]
        relevant = [watched.get(u, set()) for u, _, _, _ in rows]
        hit_rate = metrics.hit_rate_all_users_at_k(lists, relevant, k)
        return {"users": len(rows), "hits": int(round(hit_rate * len(rows))), "hit_rate": hit_rate,
                "precision": metrics.precision_all_users_at_k(lists, relevant, k),
                "model_lists": sum(1 for _, _, path, _ in rows if path == "model"),
                "versions": sorted({v for _, _, path, v in rows if path == "model" and v is not None})}

    arms = {}
    for arm in ("production", "canary"):
        rows = [(u, ids, path, v) for u, a, path, v, ids in shown if a == arm]
        if rows:
            arms[arm] = quality(rows)
    if shadow:
        arms["shadow"] = quality([(u, ids, "model", v) for u, v, ids in shadow])
        users = {u for u, _, _ in shadow}
        arms["shadow_production"] = quality([(u, ids, path, v) for u, a, path, v, ids in shown if u in users])
    info = None if release is None else {k_: release[k_] for k_ in ("deployment_id", "mode", "version", "share")}
    return arms, info


def release_days(settings: Settings, deployment_id: int) -> list[dict]:
    """[{day, arms, release}] of every monitored day whose lists were served under release `deployment_id`,
    in day order: the release policy's evidence."""
    with mlopsdb.session(settings) as db:
        rows = db.execute("SELECT day, online FROM monitor_days ORDER BY day").fetchall()
    out = []
    for day, online in rows:
        online = json.loads(online) if online else {}
        release = online.get("release") or {}
        if release.get("deployment_id") == int(deployment_id):
            out.append({"day": day, "arms": online.get("arms") or {}, "release": release})
    return out


def arm_history(settings: Settings) -> pd.DataFrame:
    """One row per monitored day and arm: day, arm, hit_rate, precision, users, deployment_id, version (the
    Deployment page's per-arm quality over time; days before releases existed have the production arm only,
    taken from the day's model lists)."""
    with mlopsdb.session(settings) as db:
        rows = db.execute("SELECT day, online, model_version FROM monitor_days ORDER BY day").fetchall()
    out = []
    for day, online, version in rows:
        online = json.loads(online) if online else {}
        release = online.get("release") or {}
        arms = online.get("arms")
        if not arms and online.get("hit_rate_model") is not None:
            arms = {"production": {"hit_rate": online["hit_rate_model"], "precision": online.get("precision_model"),
                                   "users": online.get("users_model"), "versions": [version]}}
        for arm, q in (arms or {}).items():
            if arm == "shadow_production" or q.get("hit_rate") is None:
                continue
            versions = q.get("versions") or []
            out.append({"day": day, "arm": arm, "hit_rate": q["hit_rate"], "precision": q.get("precision"),
                        "users": q.get("users"), "deployment_id": release.get("deployment_id"),
                        "version": release.get("version") if arm in ("canary", "shadow") else
                        (versions[0] if len(versions) == 1 else version)})
    return pd.DataFrame(out, columns=["day", "arm", "hit_rate", "precision", "users", "deployment_id", "version"])


def recommended_genres(settings: Settings, day) -> dict:
    start, _ = _day_bounds(day)
    with opsdb.session(settings) as db:
        rows = servinglog.model_lists_served_at(db, start.strftime("%Y-%m-%dT%H:%M:%S"))
        genres = opsdb.movie_genres(db)
    counts: dict[str, int] = {}
    for (ids,) in rows:
        for m in json.loads(ids):
            for g in (genres.get(m) or "").split("|"):
                if g:
                    counts[g] = counts.get(g, 0) + 1
    total = sum(counts.values()) or 1
    return {g: round(n / total, 4) for g, n in sorted(counts.items(), key=lambda kv: -kv[1])}


# ------------------------------------------------------------------ alerts
def drift_confirmed(result: dict, drifted_yesterday: bool) -> bool:
    """A score opens (or updates) an alert when the change is material (``drifted``: ≥ the test's threshold) and
    beyond chance (``beyond_chance``: above its 99th percentile with nothing changed, at these window sizes), and
    it is significant (≥ 2.5 × its threshold), measured on a large window, or was alert-worthy the day before
    too — one noisy small day must not page anyone. A result without a chance level (written before there was
    one) is judged by its threshold alone."""
    if result.get("insufficient") or result.get("empty"):
        return False                          # too small to judge: neither opens nor confirms anything
    return (bool(result["drifted"]) and bool(result.get("beyond_chance", True))
            and (result["score"] >= SIGNIFICANT_FACTOR * result["threshold"]
                 or result["n_current"] >= LARGE_WINDOW or drifted_yesterday))


def alert_level(result: dict) -> float:
    """The score an alert needs: the larger of the test's threshold and its chance level (``null_q99``)."""
    chance = result.get("null_q99")
    if chance is None or not np.isfinite(chance):
        return float(result["threshold"])
    return max(float(result["threshold"]), float(chance))


def drift_recovered(result: dict) -> bool:
    """Clearly back to normal: below 0.8 × `alert_level` — the threshold, or the chance level where noise is
    larger (between the two, an open alert stays open). On a small window a score that is only noise
    sits above 0.8 × the threshold most days (rating PSI at 120 rows a day averages ~0.12), and would keep an
    alert open long after its shift ended."""
    return (not result["empty"] and not result.get("insufficient")
            and result["score"] < RECOVERED_FACTOR * alert_level(result))


def hit_rate_chance_level(baseline: float, users: int, baseline_users: int) -> float:
    """The hit rate below which a day's drop from `baseline` is beyond chance at 99 % (one-sided).

    b − z·sqrt(b·(1 − b)·(1/n + 1/n_b)), z = Φ⁻¹(0.99) = 2.33: the normal approximation to the difference of
    two binomial proportions, the day's (n = users served a model list) and the baseline's (n_b = those users
    summed over the baseline days; the baseline is a mean of daily rates). Range −∞ .. b; nan without users.
    On a 600-user world (b 0.8, 130 users a day, 900 in the baseline) it is 0.71, above the material 80 %
    level 0.64; on 20 users it would be 0.58.
    """
    if not users or not baseline_users:
        return float("nan")
    b = float(baseline)
    return b - ONLINE_CHANCE_Z * float(np.sqrt(max(b * (1 - b), 0.0) * (1 / users + 1 / baseline_users)))


def concept_drift_level(baseline: float, users: int, baseline_users: int) -> float:
    """The hit rate a concept-drift alert needs to fall below: under 80 % of the baseline (material) and beyond
    chance for the users served (`hit_rate_chance_level`); the lower of the two. Without user counts (a day
    stored before they were kept), the material level alone."""
    chance = hit_rate_chance_level(baseline, users, baseline_users)
    material = ONLINE_DROP_ALERT * baseline
    return material if not np.isfinite(chance) else min(material, chance)


def _open_or_update(db, kind, metric, test, value, threshold, severity, window, at, classification,
                    chance_level: float | None = None) -> bool:
    """Open an alert (True), or update the open one of (kind, metric) (False). ``chance_level``: the level the
    metric had to pass to be beyond chance when it opened (a drift test's null_q99; the hit rate of
    `hit_rate_chance_level`), kept beside the material ``threshold``."""
    row = db.execute("SELECT alert_id FROM alerts WHERE kind = ? AND metric = ? AND closed_at IS NULL", [kind, metric]).fetchone()
    if row:
        db.execute("UPDATE alerts SET last_value = ?, severity = CASE WHEN ? = 'critical' THEN 'critical' ELSE severity END "
                   "WHERE alert_id = ?", [value, severity, row[0]])
        return False
    if chance_level is not None and not np.isfinite(chance_level):
        chance_level = None
    db.execute("INSERT INTO alerts(kind, metric, test, severity, value, threshold, window_start, window_end, opened_at, "
               "last_value, classification, chance_level) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
               [kind, metric, test, severity, value, threshold, window[0], window[1], at, value, classification,
                chance_level])
    return True


def _close(db, kind, metric, at) -> bool:
    cur = db.execute("UPDATE alerts SET closed_at = ? WHERE kind = ? AND metric = ? AND closed_at IS NULL", [at, kind, metric])
    return cur.rowcount > 0


def open_or_update_alert(db, kind: str, metric: str, value: float, threshold: float, severity: str, window,
                         at: str, classification: str, chance_level: float | None = None) -> bool:
    """The alerting of other monitors (ads): open an alert of (kind, metric), or update the open one; True when
    it opened now. Alerts stay in this module's table, one way for everyone."""
    return _open_or_update(db, kind, metric, None, value, threshold, severity, window, at, classification,
                           chance_level=chance_level)


def close_alert(db, kind: str, metric: str, at: str) -> bool:
    """Close the open alert of (kind, metric); True when one was open."""
    return _close(db, kind, metric, at)


def open_alerts(settings: Settings) -> pd.DataFrame:
    with mlopsdb.session(settings) as db:
        return pd.DataFrame(list(db.query("SELECT * FROM alerts WHERE closed_at IS NULL ORDER BY opened_at, alert_id")))


def all_alerts(settings: Settings) -> pd.DataFrame:
    with mlopsdb.session(settings) as db:
        return pd.DataFrame(list(db.query("SELECT * FROM alerts ORDER BY opened_at, alert_id")))


def _online_baseline(db, before_day: str) -> tuple[float | None, int]:
    """(mean model hit rate of the last BASELINE_DAYS stable days, or None with fewer than 3; users served a
    model list over those days — 0 when a day does not say, and the chance level is then not judged)."""
    rows = db.execute("SELECT online FROM monitor_days WHERE day < ? AND classification = 'stable' "
                      "ORDER BY day DESC LIMIT ?", [before_day, BASELINE_DAYS]).fetchall()
    days = [json.loads(r[0]) for r in rows]
    days = [d for d in days if d.get("hit_rate_model") is not None]
    if len(days) < 3:
        return None, 0
    users = [d.get("users_model") for d in days]
    return float(np.mean([d["hit_rate_model"] for d in days])), (0 if None in users else int(sum(users)))


# ------------------------------------------------------------------ one day
@dataclass
class DayReport:
    day: str
    classification: str
    drift: list = field(default_factory=list)
    online: dict = field(default_factory=dict)
    quality: dict = field(default_factory=dict)
    opened: list = field(default_factory=list)
    closed: list = field(default_factory=list)
    model_version: int | None = None

    def to_dict(self) -> dict:
        return self.__dict__.copy()


def monitor_day(settings: Settings, day) -> DayReport:
    """Compute every monitored signal for one day, store it, open/close alerts; returns the report."""
    start, end = _day_bounds(day)
    day_s = str(start.date())
    at = end.strftime("%Y-%m-%dT%H:%M:%S")
    prod = registry.production(settings)
    with warehouse.session(settings) as con:
        ref = reference_for(settings, con, prod)
        current = window_features(con, start, end, ref.deciles if ref else None, ref.end if ref else start)
        day_rows = dataset.day_counts(con, start)
    quarantined = int(day_rows.loc[day_rows["kind"] == "quarantined", "n"].sum())
    total = int(day_rows["n"].sum())
    quality = {"quarantined": quarantined, "rows": total,
               "quarantine_rate": quarantined / total if total else 0.0}
    results = []
    if ref is not None:
        for feature, (_, tests) in FEATURES.items():
            ref_values, cur_values = ref.features.get(feature, {}), current.get(feature, {})
            effects = ((ref.features.get("_design_effect", {}).get(feature, 1.0), current["_design_effect"][feature])
                       if feature in CLUSTERED else (1.0, 1.0))
            for test in tests:
                r = drift.run_test(test, ref_values, cur_values, min_n=settings.drift_min_observations,
                                   design_effects=effects)
                results.append({"feature": feature, **r.to_dict()})
    online = online_quality(settings, start)
    report = DayReport(day_s, "no reference" if ref is None else "stable", results, online, quality,
                       model_version=None if prod is None else int(prod["version"]))
    window = (str(start), str(end))
    from core.training import churn_pipeline   # here, not at import: it brings scikit-learn (~1 s)
    churn_status = churn_pipeline.status(settings)
    with mlopsdb.write_session(settings) as db:
        # Data quality first: it decides how every other alert of the day is read.
        incident = quality["quarantine_rate"] > QUARANTINE_RATE_ALERT
        if incident:
            if _open_or_update(db, "data-quality", "quarantine_rate", None, quality["quarantine_rate"],
                               QUARANTINE_RATE_ALERT, "critical" if quality["quarantine_rate"] > 0.1 else "warning",
                               window, at, "data incident"):
                report.opened.append("data-quality:quarantine_rate")
        elif _close(db, "data-quality", "quarantine_rate", at):
            report.closed.append("data-quality:quarantine_rate")
        label = "data incident" if incident else "taste shift"
        primary = {f: tests[0] for f, (_, tests) in FEATURES.items()}
        yesterday = str((start - pd.Timedelta(days=1)).date())
        # Alert-worthy yesterday: material and beyond chance (a day stored before chance levels: material).
        drifted_yesterday = {(f, t) for f, t in db.execute(
            "SELECT feature, test FROM drift_scores WHERE day = ? AND drifted = 1 AND coalesce(beyond_chance, 1) = 1",
            [yesterday]).fetchall()}
        for r in results:
            if r["test"] != primary[r["feature"]]:
                continue
            # Material and beyond chance, and: a significant score alerts at once; so does a moderate one
            # measured on a large window; on a small window a moderate score must persist a second day.
            if drift_confirmed(r, (r["feature"], r["test"]) in drifted_yesterday):
                sev = "critical" if r["score"] >= SIGNIFICANT_FACTOR * r["threshold"] else "warning"
                if _open_or_update(db, "data-drift", r["feature"], r["test"], r["score"], r["threshold"], sev, window,
                                   at, label, chance_level=r["null_q99"]):
                    report.opened.append(f"data-drift:{r['feature']}")
            elif drift_recovered(r) and _close(db, "data-drift", r["feature"], at):
                report.closed.append(f"data-drift:{r['feature']}")
        baseline, baseline_users = _online_baseline(db, day_s)
        online["baseline_hit_rate"] = baseline
        hr = online.get("hit_rate_model")
        if baseline and hr is not None:
            # Material (below 80 % of the baseline) and beyond chance for the users served (one-sided, 99 %).
            chance = hit_rate_chance_level(baseline, online.get("users_model") or 0, baseline_users)
            online["baseline_users"] = baseline_users
            online["hit_rate_chance_level"] = None if not np.isfinite(chance) else chance
            if hr < concept_drift_level(baseline, online.get("users_model") or 0, baseline_users):
                if _open_or_update(db, "concept-drift", "hit_rate_model", None, hr, ONLINE_DROP_ALERT * baseline,
                                   "critical" if hr < 0.6 * baseline else "warning", window, at, label,
                                   chance_level=chance):
                    report.opened.append("concept-drift:hit_rate_model")
            elif hr >= ONLINE_RECOVERED * baseline and _close(db, "concept-drift", "hit_rate_model", at):
                report.closed.append("concept-drift:hit_rate_model")
        stale = _churn_staleness(db, churn_status, window, at)
        if stale:
            report.opened.append(stale)
        elif stale is None and _close(db, *STALENESS, at):
            report.closed.append(":".join(STALENESS))
        open_kinds = {r[0] for r in db.execute("SELECT kind FROM alerts WHERE closed_at IS NULL").fetchall()}
        if ref is None:
            report.classification = "no reference"
        elif "data-quality" in open_kinds:
            report.classification = "data incident"
        elif open_kinds & {"data-drift", "concept-drift"}:
            report.classification = "taste shift"
        model_info = {k: online.get(k) for k in ("score_p10", "score_p50", "score_p90")}
        model_info["recommended_genres"] = recommended_genres(settings, start)
        db.execute("INSERT OR REPLACE INTO monitor_days VALUES (?,?,?,?,?,?,?,?,?)",
                   [day_s, at, report.model_version, str(ref.start) if ref else None, str(ref.end) if ref else None,
                    json.dumps(online), json.dumps(quality), json.dumps(model_info), report.classification])
        db.execute("DELETE FROM drift_scores WHERE day = ?", [day_s])
        db.conn.executemany("INSERT INTO drift_scores(day, feature, test, score, threshold, drifted, insufficient, "
                            "n_current, null_q99, beyond_chance) VALUES (?,?,?,?,?,?,?,?,?,?)",
                            [(day_s, r["feature"], r["test"], None if np.isnan(r["score"]) else r["score"],
                              r["threshold"], int(r["drifted"]), int(r["insufficient"]), int(r["n_current"]),
                              None if np.isnan(r["null_q99"]) else r["null_q99"], int(r["beyond_chance"]))
                             for r in results])
    return report


def _churn_staleness(db, status: dict, window, at) -> str | None:
    """Open (or update) the churn model's staleness alert when `status` (`churn_pipeline.status`) says possibly
    stale; returns "model-staleness:churn" when it opened now, "" while it stays open, None when not stale (the
    caller closes it). value = how many reasons (recommender changes) there are; threshold 1."""
    if not status["stale"]:
        return None
    opened = _open_or_update(db, *STALENESS, None, float(len(status["reasons"])), 1.0, "warning", window, at,
                             "model dependency")
    return ":".join(STALENESS) if opened else ""


def record_top50(settings: Settings, day, movie_ids: list[int]) -> None:
    with mlopsdb.session(settings) as db:
        db.execute("INSERT OR REPLACE INTO daily_top50 VALUES (?, ?)", [str(pd.Timestamp(day).date()), json.dumps(movie_ids)])


# ------------------------------------------------------------------ reads for pages and CLI
def history(settings: Settings) -> dict:
    """Everything the Drift page plots: daily scores, online quality, classifications, alerts, retrains."""
    with mlopsdb.session(settings) as db:
        days = pd.DataFrame(list(db.query("SELECT * FROM monitor_days ORDER BY day")))
        scores = pd.DataFrame(list(db.query("SELECT * FROM drift_scores ORDER BY day")))
        alerts = pd.DataFrame(list(db.query("SELECT * FROM alerts ORDER BY opened_at")))
    actions = policy.actions(settings)
    if len(days):
        for col in ("online", "quality", "model"):
            days[col] = days[col].map(json.loads)
    return {"days": days, "scores": scores, "alerts": alerts, "actions": actions}


def latest(settings: Settings) -> dict:
    """The `monitor` command: latest drift scores per feature and test, online quality, open alerts, the churn
    model's staleness and the ads monitoring (`ads_monitoring.summary`)."""
    from core.monitoring import ads_monitoring
    h = history(settings)
    churn = churn_model_status(settings)
    ads = ads_monitoring.summary(settings)
    if h["days"].empty:
        return {"day": None, "classification": None, "drift": [], "online": {}, "quality": {}, "open_alerts": [],
                "churn_model": churn, "ads": ads}
    last = h["days"].iloc[-1]
    scores = h["scores"][h["scores"]["day"] == last["day"]] if len(h["scores"]) else h["scores"]
    alerts = open_alerts(settings)
    return {"day": last["day"], "classification": last["classification"], "model_version": last["model_version"],
            "drift": scores.drop(columns=["day"]).to_dict("records") if len(scores) else [],
            "online": last["online"], "quality": last["quality"],
            "open_alerts": alerts.to_dict("records") if len(alerts) else [], "churn_model": churn, "ads": ads}


def churn_model_status(settings: Settings) -> dict:
    """{"version", "stale", "reasons"} of the production churn model (version None: there is none)."""
    from core.training import churn_pipeline   # here, not at import: it brings scikit-learn (~1 s)
    status = churn_pipeline.status(settings)
    return {"version": status["version"], "stale": status["stale"], "reasons": status["reasons"]}


def online_by_day(settings: Settings) -> pd.DataFrame:
    """day (datetime64), users_served, hit_rate_model, hit_rate_top50 of every monitored day, in day order (NaN
    where a day had no model list or no Top 50 control): the online quality of the lists served at that day's start."""
    keys = ("users_served", "hit_rate_model", "hit_rate_top50")
    with mlopsdb.session(settings) as db:   # parsed here, not by the database: the JSON may hold NaN (Python's dialect)
        rows = db.execute("SELECT day, online FROM monitor_days ORDER BY day").fetchall()
    parsed = [(day, *(((json.loads(online) or {}) if online else {}).get(k) for k in keys)) for day, online in rows]
    frame = pd.DataFrame(parsed, columns=["day", *keys])
    frame["day"] = pd.to_datetime(frame["day"]).astype("datetime64[ns]")
    for col in keys:
        frame[col] = pd.to_numeric(frame[col], errors="coerce").astype(float)
    return frame


def feature_distributions(settings: Settings, feature: str, day) -> pd.DataFrame:
    """Reference vs current distribution of one feature (for the per-feature chart).

    The reference is the one that day was monitored against (stored with the day): after a retrain the
    production model's reference has moved, and an old alert must be shown against what it was judged on.
    """
    start, end = _day_bounds(day)
    with mlopsdb.session(settings) as db:
        row = db.execute("SELECT model_version, reference_start, reference_end FROM monitor_days WHERE day = ?",
                         [str(start.date())]).fetchone()
    with warehouse.session(settings) as con:
        if row and row[1] and row[2]:
            ref = build_reference(con, row[0], row[1], row[2])
        else:
            ref = reference_for(settings, con, registry.production(settings))
        if ref is None:
            return pd.DataFrame(columns=["bucket", "share", "window"])
        cur = window_features(con, start, end, ref.deciles, ref.end)
    r_vals, c_vals = ref.features[feature], cur[feature]
    kind = FEATURES[feature][0]
    if kind == "numeric":
        edges = drift.numeric_bins(r_vals)
        r_d, c_d = drift.distribution(r_vals, edges), drift.distribution(c_vals, edges)
    else:
        r_d, c_d = drift.distribution(r_vals), drift.distribution(c_vals)
        if feature == "title_share":   # 1,500 titles: keep those whose share moved most
            both = pd.concat([r_d.rename("r"), c_d.rename("c")], axis=1).fillna(0.0)
            keep = (both["c"] - both["r"]).abs().sort_values(ascending=False).index[:TITLE_BUCKETS_SHOWN]
            r_d, c_d = both.loc[keep, "r"], both.loc[keep, "c"]
    frame = pd.concat([pd.DataFrame({"bucket": r_d.index.astype(str), "share": r_d.values, "window": "reference"}),
                       pd.DataFrame({"bucket": c_d.index.astype(str), "share": c_d.values, "window": str(start.date())})])
    return frame


def _largest_change(settings: Settings, feature: str, day) -> str:
    """'Western share 9% → 27%' for the bucket that moved most between reference and `day`."""
    try:
        dist = feature_distributions(settings, feature, day)
    except Exception:  # noqa: BLE001 - a summary must never fail the page
        return ""
    if dist.empty:
        return ""
    wide = dist.pivot_table(index="bucket", columns="window", values="share", aggfunc="sum").fillna(0)
    if "reference" not in wide or wide.shape[1] < 2:
        return ""
    cur_col = [c for c in wide.columns if c != "reference"][0]
    # The bucket that contributes most to PSI, (p − q)·ln(p / q): a small genre tripling (Western 2 % → 6 %)
    # says more than a big one moving by the same points (Drama 28 % → 32 %).
    p, q = wide[cur_col] + drift.EPSILON, wide["reference"] + drift.EPSILON
    b = ((p - q) * np.log(p / q)).idxmax()
    return f"{b} share {wide.loc[b, 'reference']:.0%} → {wide.loc[b, cur_col]:.0%}"


def retrain_sentence(settings: Settings, action) -> str:
    """An automatic retrain (a row of `actions`) and what became of its version by now — read from the registry
    and the releases, not from the action's result (a canary it started may have been promoted since)."""
    from core.monitoring import release        # release imports this module
    version = int(json.loads(action["result"])["version"])
    return (f"Model retrained on {str(action['at'])[:10]} ({action['actor']}); now: "
            + release.fate(settings, version)["text"] + ".")


def narrative(settings: Settings) -> str:
    """The current state in one or two plain sentences (what drifted, what was done, did it recover)."""
    h = history(settings)
    days, alerts, actions = h["days"], h["alerts"], h["actions"]
    if days.empty:
        return "Nothing monitored yet: simulate some days (the closed loop runs the ETL and monitoring every day)."
    last = days.iloc[-1]
    parts = []
    stale_note = ""
    if len(alerts):
        stale = alerts[(alerts["kind"] == STALENESS[0]) & alerts["closed_at"].isna()]
        if len(stale):
            stale_note = (f" The churn model is possibly stale since {str(stale.iloc[0]['opened_at'])[:10]}: the "
                          "recommender changed after it was trained (`python -m core churn status`).")
        alerts = alerts[alerts["kind"].isin(RECOMMENDER_ALERTS)]
    if alerts.empty:
        return (f"All quiet: {plural(len(days), 'day')} monitored up to {last['day']}, no drift or data-quality alert. "
                f"Online hit rate@10 of the model {last['online'].get('hit_rate_model') or 0:.1%} "
                f"vs {last['online'].get('hit_rate_top50') or 0:.1%} for the Top 50." + stale_note)
    a = alerts.iloc[-1] if alerts["closed_at"].notna().all() else alerts[alerts["closed_at"].isna()].iloc[0]
    day = str(a["window_start"])[:10]
    if a["kind"] == "data-quality":
        parts.append(f"Data incident on {day}: {a['value']:.1%} of the day's rows were quarantined "
                     f"(threshold {a['threshold']:.0%}) — a logging fault, not a change in taste; no retrain is triggered.")
    elif a["kind"] == "data-drift":
        change = _largest_change(settings, a["metric"], day)
        label = FEATURE_LABELS.get(a["metric"], a["metric"])
        parts.append(f"{label[0].upper() + label[1:]} drifted on {day} ({a['test'].upper()} {a['value']:.2f} ≥ "
                     f"{a['threshold']:.2f}){': ' + change if change else ''}"
                     + (" — read as a data incident (quarantine rate alert open)." if a["classification"] == "data incident" else "."))
    else:
        parts.append(f"Online hit rate of the model fell on {day} to {a['value']:.1%} (alert below {a['threshold']:.1%}).")
    retrains = actions[(actions["kind"] == "retrain") & (actions["at"] >= a["opened_at"])] if len(actions) else actions
    if len(retrains):
        parts.append(retrain_sentence(settings, retrains.iloc[0]))
    stable = days[(days["day"] < day) & (days["classification"] == "stable")]
    base = [o.get("hit_rate_model") for o in stable["online"].tail(BASELINE_DAYS)]
    base = [b for b in base if b is not None]
    now_hr = last["online"].get("hit_rate_model")
    if base and now_hr is not None:
        parts.append(f"Hit rate now {now_hr:.1%} = {now_hr / np.mean(base):.0%} of the pre-alert baseline.")
    parts.append("Alert closed." if pd.notna(a["closed_at"]) else "Alert still open.")
    return " ".join(parts) + stale_note


def open_alert_count(settings: Settings) -> int:
    """Alerts not closed yet."""
    with mlopsdb.session(settings) as db:
        return db.execute("SELECT count(*) FROM alerts WHERE closed_at IS NULL").fetchone()[0]
