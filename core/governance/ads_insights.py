"""What the dashboard's Ads page reads (issue 25): campaigns and their pacing, revenue next to the recommender's
hit rate and churn per simulated day, the ads model against the campaigns' click rates on its holdout, and
the ads one user was shown (their "Why am I seeing this ad?" is `core.governance.ads_explain`). Read models only:
the page renders, core computes.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd

from core.ads import model as ads_model
from core.ads import pipeline
from core.monitoring import churn_monitoring
from core.settings import Settings
from core.store import adslog, opsdb
from core.training import registry, tracking
from core.warehouse import warehouse

RECENT_ADS = 20        # impressions listed for one user


def enabled(settings: Settings) -> bool:
    """Whether the world shows ads now (not cached by the page: switching changes no other store mark)."""
    if not opsdb.exists(settings):
        return False
    with opsdb.session(settings) as db:
        return adslog.has_tables(db) and adslog.enabled(db)


def _targets(genres, bands) -> str:
    parts = [" / ".join(filter(None, str(genres or "").split("|"))), " / ".join(filter(None, str(bands or "").split("|")))]
    return " · ".join(p for p in parts if p) or "anyone"


def campaigns(settings: Settings) -> dict:
    """{"campaigns": one row per campaign (creative, targeting, bid, budget, totals over the whole log, spend on
    the last simulated day and its share of the daily budget), "day": that day (YYYY-MM-DD) or None, "totals"}."""
    with opsdb.session(settings) as db:
        if not adslog.has_tables(db):
            return {"campaigns": pd.DataFrame(), "day": None, "totals": {"impressions": 0, "clicks": 0, "revenue": 0.0}}
        camps = adslog.campaigns(db)
        totals = adslog.totals(db)
        whole = adslog.campaign_totals(db)
        day = pd.Timestamp(totals["last_shown_at"]).normalize() if totals["last_shown_at"] else None
        last = adslog.campaign_totals(db, day.strftime("%Y-%m-%dT%H:%M:%S"),
                                      (day + pd.Timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%S")) \
            if day is not None else pd.DataFrame(columns=["campaign_id", "impressions", "clicks", "spend"])
        titles = dict(opsdb.catalog(db)[["movie_id", "title"]].itertuples(index=False))
    out = camps.merge(whole, on="campaign_id", how="left").merge(
        last.rename(columns={"impressions": "impressions_day", "clicks": "clicks_day", "spend": "spent_day"}),
        on="campaign_id", how="left")
    for col in ("impressions", "clicks", "spend", "impressions_day", "clicks_day", "spent_day"):
        out[col] = out[col].fillna(0)
    out["creative"] = [titles.get(int(m), f"title {int(m)}") if k == "title" and pd.notna(m) else (p or "")
                       for k, m, p in zip(out["creative_kind"], out["movie_id"], out["product"])]
    out["targets"] = [_targets(g, b) for g, b in zip(out["target_genres"], out["target_age_bands"])]
    out["click_rate"] = np.where(out["impressions"] > 0, out["clicks"] / out["impressions"].clip(lower=1), np.nan)
    out["pacing"] = (out["spent_day"] / out["daily_budget"]).clip(upper=1.0)
    cols = ["campaign_id", "advertiser", "creative", "targets", "bid", "daily_budget", "spent_day", "pacing",
            "frequency_cap", "active", "impressions", "clicks", "click_rate", "spend"]
    return {"campaigns": out[cols], "day": None if day is None else str(day.date()), "totals": totals}


def daily(settings: Settings) -> pd.DataFrame:
    """Per simulated day: impressions, clicks, click_rate, revenue (the warehouse's ad facts) next to the churn
    rate and the recommender's online hit rate@10 (`churn_monitoring.churn_and_quality`); NaN where unknown."""
    with warehouse.session(settings) as con:
        imp = warehouse.ad_impressions(con)
    if len(imp):
        imp["day"] = pd.to_datetime(imp["shown_at"]).dt.normalize().astype("datetime64[ns]")
        ads = imp.groupby("day").agg(impressions=("impression_id", "size"), clicks=("clicked", "sum"),
                                     revenue=("price", "sum")).reset_index()
        ads["click_rate"] = ads["clicks"] / ads["impressions"]
    else:
        ads = pd.DataFrame(columns=["day", "impressions", "clicks", "revenue", "click_rate"]).astype(
            {"day": "datetime64[ns]"})
    quality = churn_monitoring.churn_and_quality(settings)[["day", "churn_rate", "hit_rate_model"]]
    quality["day"] = pd.to_datetime(quality["day"]).astype("datetime64[ns]")
    merged = ads.merge(quality, on="day", how="outer").sort_values("day", kind="mergesort").reset_index(drop=True)
    return merged[["day", "impressions", "clicks", "click_rate", "revenue", "churn_rate", "hit_rate_model"]]


def versions(settings: Settings) -> pd.DataFrame:
    """Every ads version, newest first: version, stage, created_at, run_id and its holdout's log loss and ECE."""
    rows = registry.list_versions(settings)
    rows = rows[rows["family"] == ads_model.FAMILY] if len(rows) else rows
    return rows.reset_index(drop=True)


def model(settings: Settings) -> dict:
    """The ads model to show — the production version, else the newest candidate — with its run's holdout metrics
    next to the campaigns' click rates (and production's, when judged) on the same holdout, the calibration bins
    of both, and its staleness. {"version": None, ...} before any ads model exists."""
    found = versions(settings)
    if not len(found):
        return {"version": None, "candidates": []}
    prod = found[found["stage"] == "production"]
    row = (prod if len(prod) else found).iloc[0].to_dict()
    run = tracking.get_run(settings, int(row["run_id"]))
    baselines = run.get("baselines") or {}
    status = pipeline.status(settings, registry.get_version(settings, int(row["version"])))
    return {"version": int(row["version"]), "stage": row["stage"], "run_id": int(row["run_id"]),
            "created_at": row["created_at"], "metrics": run.get("metrics") or {},
            "baseline": baselines.get("campaign_rate") or {}, "production": baselines.get("production"),
            "split": (run.get("params") or {}).get("split") or {}, "status": status,
            # what "Promote" may offer: candidates newer than production (an archived version was replaced — going
            # back to it is a rollback, `models rollback --family ads`; an older candidate lost to production)
            "candidates": [int(v) for v in found.loc[(found["stage"] == "candidate") & (
                found["version"] > (int(prod["version"].iloc[0]) if len(prod) else 0)), "version"]]}


def retrains(settings: Settings) -> dict:
    """What the retraining policy did to the ads model in the closed loop: {"mode": the policy's mode ('manual'
    never retrains it), "every_days", "retrains": DataFrame at, day, cause, version, log_loss, calibration_error,
    outcome — one row per 'ads-retrain' action, newest first}."""
    from core.monitoring import policy
    acts = policy.actions(settings)
    rows = []
    for r in (acts[acts["kind"] == policy.ADS_RETRAIN] if len(acts) else acts).itertuples():
        res = json.loads(r.result) if r.result else {}
        outcome = (f"could not train: {res['error']}" if res.get("error") else
                   "promoted (gate passed)" if res.get("promoted") else "kept as candidate (gate refused)")
        rows.append({"at": r.at, "day": r.day, "cause": r.cause, "version": res.get("version"),
                     "log_loss": res.get("log_loss"), "calibration_error": res.get("calibration_error"),
                     "outcome": outcome})
    frame = pd.DataFrame(rows, columns=["at", "day", "cause", "version", "log_loss", "calibration_error", "outcome"])
    pol = policy.get_policy(settings)
    return {"mode": pol["mode"], "every_days": pol["every_days"],
            "retrains": frame.iloc[::-1].reset_index(drop=True)}


def calibration(metrics: dict, baseline: dict) -> pd.DataFrame:
    """One row per non-empty calibration bin of either: who ('model' / 'campaign click rates'), bin, rows,
    predicted (mean), observed (click rate) — the calibration plot's points."""
    out = []
    for who, m in (("model", metrics), ("campaign click rates", baseline)):
        bins = (m or {}).get("calibration") or {}
        for b, (n, p, o) in enumerate(zip(bins.get("rows", []), bins.get("predicted", []), bins.get("observed", []))):
            if n and p is not None and o is not None:
                out.append({"who": who, "bin": b, "rows": int(n), "predicted": float(p), "observed": float(o)})
    return pd.DataFrame(out, columns=["who", "bin", "rows", "predicted", "observed"])


def user_ads(settings: Settings, user_id: int, limit: int = RECENT_ADS) -> pd.DataFrame:
    """The user's newest impressions: impression_id, shown_at, advertiser, creative, policy, p_click, clicked,
    price. Personal data: the page shows it only to whom `ui.personal_view` allows."""
    with opsdb.session(settings) as db:
        opsdb.require_user(db, int(user_id))
        rows = adslog.user_impressions(db, int(user_id), limit) if adslog.has_tables(db) else []
        titles = dict(opsdb.catalog(db)[["movie_id", "title"]].itertuples(index=False))
    frame = pd.DataFrame(rows, columns=["impression_id", "served_id", "campaign_id", "advertiser", "creative_kind",
                                        "movie_id", "product", "slot", "shown_at", "price", "p_click", "policy",
                                        "model_version", "clicked", "clicked_at"])
    frame["creative"] = [titles.get(int(m), f"title {int(m)}") if k == "title" and pd.notna(m) else (p or "")
                         for k, m, p in zip(frame["creative_kind"], frame["movie_id"], frame["product"])]
    return frame[["impression_id", "shown_at", "advertiser", "creative", "policy", "p_click", "clicked", "price",
                  "campaign_id", "model_version"]]
