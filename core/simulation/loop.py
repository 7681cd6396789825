"""The closed loop: simulated days where users see the *served* recommendations, the ETL and
monitoring run every day (with the ads monitoring when the world shows ads), the production churn model (if any) scores the day's active users, the release
policy judges an active canary, and the retraining policy acts — on the recommender (`policy.apply`) and on the
ads model (`policy.apply_ads`: stale against its CF/churn versions, or an ads-drift alert).

When the world shows ads, each day's sponsored slots are chosen by the production ads model (`AdPolicy("model")`,
its calibrated P(click) at the day's start, stored with each impression, so the ads monitoring judges the model's
calibration), or by the campaigns' click rates while there is none (or its artifact fails to load: the error goes
into the day's log entry, `ads_error`).

shift → behaviour changes → served lists fit worse → alerts → retrain → recovery.

Lists are served in-process (`serving.recommend_many`, the default) or by a running model server
(`serve_url`: one HTTP request per active user, as a streaming front end would make them). Before each day
over HTTP the loop waits until the server serves what the registry and the release say now, so a promotion
made at the end of the previous day is what the next day's lists come from.

Only lists a trusted front end confirmed count as shown (online quality, the release policy). The loop is that
front end: in-process its lists are logged as shown; over HTTP it confirms every answer it shows through the
trusted in-process path (`servinglog.confirm_shown`, 'in-process') rather than with a client key — it already
holds the data folder (it writes the day's events, runs the ETL and the release policy), so a key would add a
secret to store and a rate limit to exempt it from, and prove nothing more.
"""
from __future__ import annotations

from datetime import timedelta

import numpy as np

from core.warehouse import etl
from core.monitoring import monitoring, policy, release
from core.store import adslog, opsdb, servinglog
from core.serving import deployments, remote, serving
from core.simulation import ads_day, simulation
from core.constants import TS_FORMAT
from core.errors import RetroError, ValidationError
from core.settings import Settings
from core.training import churn, churn_pipeline, registry
from core.training.top50 import top50


def run(settings: Settings, days: int, *, shift: str | None = None, strength: float = 1.0, duration: int | None = None,
        params: dict | None = None, policy_mode: str | None = None, progress=simulation._noop,
        serve_url: str | None = None) -> dict:
    """Simulate `days` closed-loop days; returns a per-day log (online quality, alerts, release decisions,
    retrains). `serve_url`: serve through the model server at that URL instead of in-process."""
    if not isinstance(days, (int, np.integer)) or days < 1:
        raise ValidationError(f"--days must be a positive integer, got {days!r}")
    if policy_mode is not None:
        policy.validate(policy_mode)
    if serve_url is not None:
        remote.check_url(serve_url)
    with simulation.running(settings, "closed-loop simulate"):
        return _run(settings, days, shift=shift, strength=strength, duration=duration, params=params,
                    policy_mode=policy_mode, progress=progress, serve_url=serve_url)


def _run(settings: Settings, days: int, *, shift, strength, duration, params, policy_mode, progress, serve_url) -> dict:
    world = simulation.load_world(settings)
    db = opsdb.connect(settings)
    log, started = [], None
    try:
        first = int(opsdb.get_meta(db, "sim_day", "0"))
        if shift is not None:
            with simulation.world_step(db, world, settings.world_file):
                started = simulation.start_shift(db, world, shift, strength, days if duration is None else duration,
                                                 first, params)
        shifts = simulation.load_shifts(db)
        for i in range(days):
            day = first + i

            def stage(name: str, part: float = 0.0, _i=i, _day=day) -> None:
                """Progress with the stage's name and the work done: 'day 3 (2 of 5 simulated): ETL'."""
                progress((_i + part) / days, f"day {_day + 1} ({_i} of {days} days simulated): {name}")

            stage("serving lists and simulating users")
            start = simulation.day_start(day)
            served_at = start.strftime(TS_FORMAT)
            monitoring.record_top50(settings, start, top50(db).movie_ids)

            def serve(user_ids, k, _at=served_at):
                if serve_url is not None:
                    return _serve_over_http(settings, serve_url, user_ids, k, _at)
                recs = serving.recommend_many(settings, user_ids, k, at=_at)
                return {u: r.movie_ids for u, r in recs.items()}

            ad_policy, ads_error = choose_ad_policy(settings, db)
            stats = simulation.simulate_day(db, world, day, shifts, serve, settings.world_file,
                                            ads_slot=settings.ads_slot, ad_policy=ad_policy)
            now = (start + timedelta(days=1)).strftime(TS_FORMAT)
            stage("ETL into the warehouse", 0.3)
            etl.run(settings, at=now)
            stage("monitoring drift and online quality", 0.45)
            report = monitoring.monitor_day(settings, start)
            ads = monitor_ads(settings, db, start)
            stage("scoring churn", 0.55)
            scored = score_churn(settings, now)
            stage("reviewing the running release", 0.6)
            decision = release.review(settings, day=report.day, now=now)
            if decision is not None and decision["decision"] != "continue":
                serving.clear_caches()
            action = policy.apply(settings, report, now=now, mode=policy_mode,
                                  progress=lambda f, m, d=day, _i=i: progress(
                                      (_i + 0.65 + 0.35 * f) / days,
                                      f"day {d + 1} ({_i} of {days} days simulated): retraining — {m}"))
            if action:
                serving.clear_caches()
                record_truth(settings, action.get("job_id"))
            ads_action = policy.apply_ads(settings, ads, now=now, day=report.day, mode=policy_mode)
            if ads_action and ads_action["promoted"]:
                serving.clear_caches()
            log.append({"day": day, "date": report.day, "events": stats.events, "rejected": stats.rejected,
                        "classification": report.classification, "opened": report.opened, "closed": report.closed,
                        "hit_rate_model": report.online.get("hit_rate_model"),
                        "hit_rate_top50": report.online.get("hit_rate_top50"),
                        "quarantine_rate": report.quality["quarantine_rate"], "action": action,
                        "arms": report.online.get("arms"), "release": decision,
                        "hit_rate_by_policy": report.online.get("hit_rate_by_policy"), **scored, "ads": ads,
                        "ad_policy": None if ads is None else (ad_policy.name if ad_policy else "campaign-rate"),
                        "ads_error": ads_error, "ads_action": ads_action})
        progress(1.0, f"done: {days} of {days} days simulated")
    finally:
        db.conn.close()
    summary = {"days": days, "first_day": first, "last_day": first + days - 1, "log": log,
               "retrains": sum(1 for r in log if r["action"]), "alerts_opened": sum(len(r["opened"]) for r in log),
               "ads_retrains": sum(1 for r in log if r["ads_action"])}
    if started is not None:
        summary["shift"] = {"kind": started.kind, "strength": started.strength, "start_day": started.start_day,
                            "duration": started.duration, "params": started.params}
    return summary


def choose_ad_policy(settings: Settings, db) -> tuple[ads_day.AdPolicy | None, str | None]:
    """(the day's ad policy, an error): the production ads model's scorer when the world shows ads and one is in
    production; else None (the simulation's default, the campaigns' click rates). A model that fails to load
    (e.g. its hash check) does not stop the day: campaign rates choose, and the error is returned for the log."""
    if not adslog.enabled(db) or registry.production(settings, family="ads") is None:
        return None, None
    from core.ads import scoring
    try:
        score = scoring.scorer(settings)
    except (RetroError, OSError, ValueError) as exc:
        return None, f"{type(exc).__name__}: {exc}"
    return ads_day.AdPolicy("model", score, score.model_version), None


def monitor_ads(settings: Settings, db, start) -> dict | None:
    """The day's ads monitoring (`ads_monitoring.monitor_day`: click rate, calibration of the stored p_click,
    revenue, pacing, ads-drift alerts) when the world shows ads; None when it does not."""
    if not adslog.enabled(db):
        return None
    from core.monitoring import ads_monitoring
    day = ads_monitoring.monitor_day(settings, start)
    return {k: day[k] for k in ("impressions", "clicks", "click_rate", "revenue", "ece", "opened", "closed")}


def record_truth(settings: Settings, job_id: int | None) -> dict | None:
    """Add the simulated world's truth about a retrain's gate decision to its job (`truth.verdict`)."""
    from core.simulation import truth
    from core.training import tracking
    if job_id is None:
        return None
    job = tracking.get_job(settings, int(job_id))
    if "truth" in (job.get("result") or {}):
        return job["result"]["truth"]
    found = truth.verdict(settings, job.get("result") or {})
    if found is not None:
        tracking.annotate_job(settings, int(job_id), "truth", found)
    return found


def score_churn(settings: Settings, now: str) -> dict:
    """Score the day's active users with the production churn model and store the scores (as_of = `now`, the
    end of the simulated day), so the online check has predictions over time.

    Returns {"churn_scored": users, "churn_mean_risk": mean risk or None, "churn_error": None}; 0 and None
    without a churn model in production. A churn artifact that fails to load (e.g. its hash check) does not
    stop the recommender's day: the error goes into the log entry instead.
    """
    none = {"churn_scored": 0, "churn_mean_risk": None, "churn_error": None}
    if registry.production(settings, family=churn.FAMILY) is None:
        return none
    try:
        # churn_pipeline.score predicts on one OpenMP thread (on a busy 2-core machine 0.6–1.1 s a day → 0.1 s).
        result = churn_pipeline.score(settings, as_of=now, at=now)
    except (RetroError, OSError) as exc:
        return none | {"churn_error": f"{type(exc).__name__}: {exc}"}
    return none | {"churn_scored": result["users"], "churn_mean_risk": result["mean_risk"]}


def _serve_over_http(settings: Settings, url: str, user_ids, k: int, served_at: str) -> dict[int, list[int]]:
    """The day's lists from the server at `url`, once it serves the registry's current production and release;
    every answer must be logged at the simulated day's start (else the server runs on another data folder)."""
    prod = registry.production(settings)
    active = deployments.active(settings)
    remote.wait_until_serving(url, None if prod is None else int(prod["version"]),
                              None if active is None else (active["deployment_id"], active["share"]))
    answers = remote.recommend_many(url, user_ids, k)
    wrong = [a for a in answers.values() if a.get("served_at") != served_at]
    if wrong:
        raise RetroError(f"the server at {url} logged lists at {wrong[0].get('served_at')}, not at the simulated "
                         f"day's start {served_at}: is it serving this data folder ({settings.home})?")
    with opsdb.session(settings) as db:        # the loop shows every list it asked for: confirm them
        servinglog.confirm_shown(db, [a["serve_id"] for a in answers.values()], servinglog.IN_PROCESS)
    return {u: a["movie_ids"] for u, a in answers.items()}
