"""Monitoring of the ads, one simulated day at a time: click rate, revenue, budget pacing, and the online check of
the stored click probabilities — their calibration against the clicks, known with each impression (a simulated
session records its click at once) — with alerts into the platform's alerting (`monitoring.open_or_update_alert`).

Two alerts (kind `ads-drift`), each needing a change both material and beyond chance, like every drift alert:
- `click_rate`: the day's click rate is CLICK_RATE_DRIFT (30 %) or more away from its baseline (clicks ÷ impressions
  pooled over the previous BASELINE_DAYS stored days, at least MIN_BASELINE_DAYS of them) and outside the
  two-sided 99 % band z·sqrt(b(1 − b)(1/n + 1/n_b)); closes inside 0.8 × the larger of the two.
- `calibration`: the ECE (10 bins) of the day's stored p_click against its clicks is at least CALIBRATION_ALERT
  (0.02) and above its chance level, the 99th percentile of the ECE of perfectly calibrated predictions of the
  same p_click (clicks drawn from them, seeded): at a few hundred impressions a day with clicks at ~3 % the ECE of
  a calibrated model is itself ~0.01, so a fixed threshold alone would alarm on noise — on two stored days in a
  row (a day beyond its 99th percentile comes by chance about once in 100; the 600-user world of bench_drift
  opened one such alert in 30 stable days, ECE 0.054 against a chance level of 0.049); closes below 0.8 × the
  larger of the two.
Days with fewer than `drift_min_observations` impressions (or stored predictions) are not judged. The alerts
do not retrain the recommender; the retraining policy retrains the ads model on them (`policy.apply_ads`).
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
from scipy import stats

from core.ads import metrics as ads_metrics
from core.monitoring import monitoring
from core.settings import Settings
from core.store import adslog, mlopsdb, opsdb
from core.training import registry
from core.warehouse import warehouse

KIND = "ads-drift"
CLICK_RATE_DRIFT = 0.30
CALIBRATION_ALERT = 0.02
RECOVERED_FACTOR = 0.8
BASELINE_DAYS = 7
MIN_BASELINE_DAYS = 3
NULL_DRAWS = 1000
Z99 = float(stats.norm.ppf(0.995))        # two-sided 99 %: 2.576


def pacing(spend: pd.Series, budgets: pd.Series) -> list[dict]:
    """Per campaign (budgets: daily budget by campaign id; spend: the day's charges by campaign id): spend, daily
    budget and pacing = spend ÷ daily budget, in [0, 1] (1: the budget ran out)."""
    spend = spend.reindex(budgets.index, fill_value=0.0)
    return [{"campaign_id": int(c), "spend": round(float(spend[c]), 6), "daily_budget": float(budgets[c]),
             "pacing": round(float(spend[c] / budgets[c]), 6)} for c in budgets.index]


def click_rate_band(baseline: float, n: int, n_baseline: int) -> float:
    """Half-width of the two-sided 99 % band of a day's click rate around `baseline` when nothing changed:
    z₀.₉₉₅ · sqrt(b(1 − b)(1/n + 1/n_b)); inf without impressions."""
    if n <= 0 or n_baseline <= 0:
        return float("inf")
    return Z99 * float(np.sqrt(baseline * (1 - baseline) * (1 / n + 1 / n_baseline)))


def ece_chance(p_click, draws: int = NULL_DRAWS, seed: int = 0) -> float:
    """99th percentile of the ECE of calibrated predictions `p_click`: clicks drawn as Bernoulli(p_click) `draws`
    times (seeded), each scored by `ads_metrics.expected_calibration_error`; NaN without rows."""
    p = np.asarray(p_click, dtype=float)
    if not len(p):
        return float("nan")
    y = np.random.default_rng(seed).random((draws, len(p))) < p[None, :]
    return float(np.quantile([ads_metrics.expected_calibration_error(row, p) for row in y], 0.99))


def day_signals(impressions: pd.DataFrame, budgets: pd.Series) -> dict:
    """The day's signals from its impressions (columns campaign_id, clicked, price, p_click, policy): counts, click
    rate, revenue, the ECE of the stored p_click (rows that have one) and per policy, and pacing per campaign."""
    n, clicks = len(impressions), int(impressions["clicked"].sum()) if len(impressions) else 0
    stored = impressions[impressions["p_click"].notna()]
    y, p = stored["clicked"].to_numpy(int), stored["p_click"].to_numpy(float)
    by_policy = {}
    for name, g in impressions.groupby("policy"):
        s = g[g["p_click"].notna()]
        by_policy[str(name)] = {"impressions": int(len(g)), "clicks": int(g["clicked"].sum()),
                                "revenue": round(float(g["price"].sum()), 6),
                                "mean_p_click": float(s["p_click"].mean()) if len(s) else None,
                                "ece": ads_metrics.expected_calibration_error(s["clicked"], s["p_click"])
                                if len(s) else None}
    spend = impressions.groupby("campaign_id")["price"].sum() if n else pd.Series(dtype=float)
    return {"impressions": n, "clicks": clicks, "click_rate": clicks / n if n else None,
            "revenue": round(float(impressions["price"].sum()), 6) if n else 0.0,
            "ece": ads_metrics.expected_calibration_error(y, p) if len(p) else None, "ece_rows": int(len(p)),
            "mean_p_click": float(p.mean()) if len(p) else None, "by_policy": by_policy,
            "pacing": pacing(spend, budgets)}


def _baseline(db, day: str) -> tuple[float | None, int, int]:
    """(pooled click rate, impressions, days) of the last BASELINE_DAYS stored days before `day`."""
    rows = db.execute("SELECT impressions, clicks FROM ads_days WHERE day < ? AND impressions > 0 ORDER BY day DESC "
                      "LIMIT ?", [day, BASELINE_DAYS]).fetchall()
    n, c = sum(r[0] for r in rows), sum(r[1] for r in rows)
    if len(rows) < MIN_BASELINE_DAYS or n == 0:
        return None, n, len(rows)
    return c / n, n, len(rows)


def _miscalibrated(db, day: str) -> bool:
    """Whether the last stored day before `day` had an ECE both material and beyond its chance level."""
    row = db.execute("SELECT ece, ece_chance FROM ads_days WHERE day < ? ORDER BY day DESC LIMIT 1", [day]).fetchone()
    return bool(row and row[0] is not None and row[1] is not None and row[0] >= CALIBRATION_ALERT and row[0] > row[1])


def _is_open(settings: Settings, metric: str) -> bool:
    alerts = monitoring.open_alerts(settings)
    return bool(len(alerts)) and bool(((alerts["kind"] == KIND) & (alerts["metric"] == metric)).any())


def monitor_day(settings: Settings, day) -> dict:
    """Compute, store and judge one day's ads signals (the warehouse's impressions shown that day, loaded by the
    ETL); returns the stored signals with `opened` / `closed` alerts ('ads-drift:click_rate', …)."""
    start = pd.Timestamp(day).normalize()
    end = start + pd.Timedelta(days=1)
    day_s, at = str(start.date()), end.strftime("%Y-%m-%dT%H:%M:%S")
    with warehouse.session(settings) as con:
        imp = warehouse.ad_impressions(con, start, end)
    with opsdb.session(settings) as db:
        camps = adslog.campaigns(db)
    budgets = camps.set_index("campaign_id")["daily_budget"].astype(float)
    signals = day_signals(imp, budgets)
    prod = registry.production(settings, family="ads")
    signals["model_version"] = None if prod is None else int(prod["version"])
    min_n = settings.drift_min_observations
    signals["ece_chance"] = ece_chance(imp.loc[imp["p_click"].notna(), "p_click"].to_numpy(float)) \
        if signals["ece_rows"] >= min_n else None
    opened, closed, window = [], [], (str(start), str(end))
    with mlopsdb.write_session(settings) as db:
        base, n_base, base_days = _baseline(db, day_s)
        signals |= {"baseline_click_rate": base, "baseline_impressions": n_base, "baseline_days": base_days}
        rate, n = signals["click_rate"], signals["impressions"]
        if base is not None and rate is not None and n >= min_n:
            band = click_rate_band(base, n, n_base)
            material = CLICK_RATE_DRIFT * base
            signals["click_rate_band"] = band
            gap = abs(rate - base)
            if gap >= material and gap > band:
                if monitoring.open_or_update_alert(db, KIND, "click_rate", rate, base, "warning", window, at, "ads",
                                                   chance_level=band):
                    opened.append(f"{KIND}:click_rate")
            elif gap < RECOVERED_FACTOR * max(material, band) and monitoring.close_alert(db, KIND, "click_rate", at):
                closed.append(f"{KIND}:click_rate")
        ece, chance = signals["ece"], signals["ece_chance"]
        if chance is not None and ece is not None:
            if ece >= CALIBRATION_ALERT and ece > chance:
                # Confirmed by the day before (or an alert already open): one day beyond its 99th percentile is
                # what chance gives about 3 days a year per metric.
                if _miscalibrated(db, day_s) or _is_open(settings, "calibration"):
                    if monitoring.open_or_update_alert(db, KIND, "calibration", ece, CALIBRATION_ALERT, "warning",
                                                       window, at, "ads", chance_level=chance):
                        opened.append(f"{KIND}:calibration")
                else:
                    signals["calibration_unconfirmed"] = True
            elif ece < RECOVERED_FACTOR * max(CALIBRATION_ALERT, chance) and \
                    monitoring.close_alert(db, KIND, "calibration", at):
                closed.append(f"{KIND}:calibration")
        db.execute("INSERT OR REPLACE INTO ads_days VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                   [day_s, at, n, signals["clicks"], rate, base, signals["revenue"], signals["ece"],
                    signals["ece_rows"], chance, signals["model_version"], json.dumps(signals, default=float)])
    return {"day": day_s, **signals, "opened": opened, "closed": closed}


def history(settings: Settings) -> pd.DataFrame:
    """Every stored ads day, oldest first, `signals` decoded (the Ads page's time axis, `monitor`)."""
    with mlopsdb.session(settings) as db:
        days = pd.DataFrame(list(db.query("SELECT * FROM ads_days ORDER BY day")))
    if len(days):
        days["signals"] = days["signals"].map(json.loads)
    return days


SUMMARY_DAYS = 7          # the `monitor` command's per-day rows


def summary(settings: Settings, days: int = SUMMARY_DAYS) -> dict:
    """What `monitor` shows of the ads: whether the world shows them, the last monitored day's signals (click rate
    and its baseline, revenue, ECE of the stored p_click and its chance level, budget pacing per campaign), the last
    `days` days (click rate, revenue, ECE and the campaigns' total spend ÷ total daily budget per day), the open
    ads-drift alerts and the production ads model's staleness (`ads.pipeline.status`)."""
    from core.ads import pipeline as ads_pipeline
    with opsdb.session(settings) as db:
        enabled = adslog.enabled(db)
        camps = adslog.campaigns(db)
    names = dict(zip(camps["campaign_id"].astype(int), camps["advertiser"])) if len(camps) else {}
    stored = history(settings)
    open_ = monitoring.open_alerts(settings)
    mine = open_[open_["kind"] == KIND].sort_values("alert_id") if len(open_) else open_
    alerts = [{"alert_id": int(a["alert_id"]), "metric": a["metric"], "value": float(a["value"]),
               "threshold": float(a["threshold"]),
               "chance_level": None if pd.isna(a["chance_level"]) else float(a["chance_level"]),
               "opened_at": a["opened_at"]} for _, a in mine.iterrows()]
    status = ads_pipeline.status(settings)
    out = {"enabled": bool(enabled), "day": None, "impressions": None, "clicks": None, "click_rate": None,
           "baseline_click_rate": None, "revenue": None, "ece": None, "ece_chance": None, "model_version": None,
           "pacing": [], "days": [], "open_alerts": alerts,
           "model": {"version": status["version"], "stale": status["stale"], "reasons": status["reasons"]}}
    if stored.empty:
        return out
    last = stored.iloc[-1]["signals"]
    out |= {"day": str(stored.iloc[-1]["day"]), **{k: last.get(k) for k in (
        "impressions", "clicks", "click_rate", "baseline_click_rate", "revenue", "ece", "ece_chance", "model_version")},
        "pacing": [p | {"advertiser": names.get(int(p["campaign_id"]))} for p in last.get("pacing", [])]}
    for _, row in stored.tail(days).iterrows():
        sig = row["signals"]
        spend = sum(p["spend"] for p in sig.get("pacing", []))
        budget = sum(p["daily_budget"] for p in sig.get("pacing", []))
        out["days"].append({"day": str(row["day"]), "impressions": int(row["impressions"]), "clicks": int(row["clicks"]),
                            "click_rate": sig.get("click_rate"), "revenue": sig.get("revenue"), "ece": sig.get("ece"),
                            "budget_spent": round(spend / budget, 6) if budget else None,
                            "budgets_exhausted": sum(1 for p in sig.get("pacing", []) if p["pacing"] >= 1.0)})
    return out
