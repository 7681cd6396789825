"""The retraining policy: manual, scheduled (every N days) or on alert — and the record of what it did.

On alert, a data-drift or concept-drift alert classified as a taste shift
triggers the retrain pipeline. A candidate that passes the offline gate is not
promoted: it starts a canary release (`on_pass="canary"`), and the release
policy (`core.monitoring.release`) promotes or rolls it back on its online hit
rate; while another release runs it waits for it. A data
incident (open data-quality alert) never triggers a retrain: retraining on
broken data would bake the fault into the model. While a taste-shift alert
stays open, the policy retrains again after a cooldown, because the first
retrain may have seen only a day of the new behaviour; and it follows up
FOLLOW_UPS more times, one cooldown apart, after the alerts close (the retrained
model's reference already contains the shift's first days, so its alerts close
while the shift goes on). Measured in benchmarks/bench_drift.py: with 2
follow-ups the hit rate over the last 3 of 14 shifted days was 87-92 % of the
pre-shift baseline, with 5 follow-ups (about ten more days of fresh models)
91-96 %.

The ads model (family 'ads', `core.ads.pipeline`) is retrained by the same policy (`apply_ads`, actions of kind
'ads-retrain'), in both automatic modes, when the world shows ads and an ads model is in production (the first one
is an operator's call, `ads train`: it needs days of impressions with clicks): at once when the day's ads monitoring opens an
`ads-drift` alert (click rate or calibration, `core.monitoring.ads_monitoring`); and, at most once every
`cooldown_days`, when the production ads model is possibly stale against the CF and churn versions it depends on
(`ads.pipeline.status`: the features it was trained on mean something else now), when an ads-drift alert is still
open, or — in `scheduled` mode — `every_days` after the last ads retrain. The candidate is promoted when the ads gate
passes (no canary: the ads gate compares the candidate with production on the same holdout); a training that cannot
run (too few days or clicks) is recorded with its error and retried after the cooldown.
"""
from __future__ import annotations

import json

import pandas as pd

from core.store import clock, mlopsdb
from core.training import registry, tracking
from core.errors import RetroError, ValidationError
from core.settings import Settings
from core.text import plural

MODES = ("manual", "scheduled", "on-alert")
DEFAULTS = {"mode": "manual", "every_days": 7, "cooldown_days": 2}


def get_policy(settings: Settings) -> dict:
    with mlopsdb.session(settings) as db:
        stored = dict(db.execute("SELECT key, value FROM policy").fetchall())
    return {"mode": stored.get("mode", DEFAULTS["mode"]),
            "every_days": int(stored.get("every_days", DEFAULTS["every_days"])),
            "cooldown_days": int(stored.get("cooldown_days", DEFAULTS["cooldown_days"]))}


def validate(mode: str, every_days: int | None = None) -> None:
    if mode not in MODES:
        raise ValidationError(f"unknown retraining policy {mode!r}; choose one of: {', '.join(MODES)}")
    if every_days is not None and (not isinstance(every_days, int) or every_days < 1):
        raise ValidationError(f"every_days must be a positive integer, got {every_days!r}")


def set_policy(settings: Settings, mode: str, every_days: int | None = None, *, actor: str, at: str | None = None) -> dict:
    """Store the policy and record who changed it (at: default the service clock)."""
    validate(mode, every_days)
    if at is None:
        from core.store import opsdb
        with opsdb.session(settings) as db:
            at = clock.now(db=db)
    before = get_policy(settings)
    with mlopsdb.write_session(settings) as db:
        db.execute("INSERT OR REPLACE INTO policy VALUES ('mode', ?)", [mode])
        if every_days is not None:
            db.execute("INSERT OR REPLACE INTO policy VALUES ('every_days', ?)", [str(every_days)])
        db.execute("INSERT INTO actions(at, day, kind, actor, cause, result) VALUES (?, NULL, 'policy-change', ?, ?, ?)",
                   [at, actor, f"policy {before['mode']} → {mode}", json.dumps({"before": before, "mode": mode,
                                                                                 "every_days": every_days})])
    return get_policy(settings)


def last_retrain_at(settings: Settings) -> pd.Timestamp | None:
    started = tracking.last_finished_job_start(settings, "retrain")
    return pd.Timestamp(started) if started else None


def decide(settings: Settings, report, mode: str, now: str) -> str | None:
    """The cause of a retrain today, or None."""
    pol = get_policy(settings)
    last = last_retrain_at(settings)
    days_since = None if last is None else (pd.Timestamp(now) - last) / pd.Timedelta(days=1)
    if mode == "scheduled":
        if days_since is None or days_since >= pol["every_days"]:
            return f"scheduled: {plural(pol['every_days'], 'day')} since the last retrain"
        return None
    if mode == "on-alert" and report.classification == "taste shift":
        fresh = [a for a in report.opened if a.startswith(("data-drift", "concept-drift"))]
        if fresh:
            return "drift alert: " + ", ".join(fresh)
        if days_since is not None and days_since >= pol["cooldown_days"]:
            return f"drift alerts still open {plural(pol['cooldown_days'], 'day')} after the last retrain"
    if mode == "on-alert" and report.classification == "stable" and days_since is not None \
            and days_since >= pol["cooldown_days"]:
        # A shift keeps going after the alert that caught it closes (the retrained model's reference already
        # contains the first shifted day): follow up with more of the new behaviour, FOLLOW_UPS times.
        follow_ups = _follow_ups_since_last_alert(settings)
        if follow_ups is not None and follow_ups < FOLLOW_UPS:
            return f"follow-up {follow_ups + 1} of {FOLLOW_UPS} after a drift retrain (the shift may still be unfolding)"
    return None


FOLLOW_UPS = 5


def _follow_ups_since_last_alert(settings: Settings) -> int | None:
    """Follow-up retrains since the latest alert-triggered retrain (None: no alert-triggered retrain yet)."""
    with mlopsdb.session(settings) as db:
        rows = db.execute("SELECT cause FROM actions WHERE kind = 'retrain' ORDER BY at DESC, action_id DESC").fetchall()
    count = 0
    for (cause,) in rows:
        if cause.startswith("follow-up"):
            count += 1
        elif cause.startswith(("drift alert", "drift alerts still open")):
            return count
        else:
            return None
    return None


def apply(settings: Settings, report, *, now: str, mode: str | None = None, progress=None) -> dict | None:
    """Run the retrain pipeline if the policy says so (a candidate that passes the gate starts a canary, or
    waits for the running release); record the action with its cause and what became of the candidate."""
    from core.monitoring import release
    from core.training.pipeline import retrain
    mode = mode or get_policy(settings)["mode"]
    validate(mode)
    cause = decide(settings, report, mode, now)
    if cause is None:
        return None
    trigger = "scheduled" if mode == "scheduled" else "drift-alert"
    result = retrain(settings, trigger=trigger, actor=f"policy:{mode}", at=now, on_pass="canary",
                     release_with=release.after_gate, **({"progress": progress} if progress else {}))
    action = {"kind": "retrain", "cause": cause, "job_id": result["job_id"], "version": result["version"],
              "promoted": result["promoted"], "ndcg@10": result["metrics"]["ndcg@10"],
              "gate_passed": result["gate"]["promote"], "release": result["release"]}
    with mlopsdb.session(settings) as db:
        db.execute("INSERT INTO actions(at, day, kind, actor, cause, job_id, result) VALUES (?,?,?,?,?,?,?)",
                   [now, report.day, "retrain", f"policy:{mode}", cause, result["job_id"], json.dumps(action)])
    return action


ADS_RETRAIN = "ads-retrain"      # actions.kind of an ads model retrain by the policy


def _last_action_at(settings: Settings, kind: str) -> pd.Timestamp | None:
    with mlopsdb.session(settings) as db:
        row = db.execute("SELECT MAX(at) FROM actions WHERE kind = ?", [kind]).fetchone()
    return pd.Timestamp(row[0]) if row and row[0] else None


def decide_ads(settings: Settings, ads_report: dict | None, mode: str, now: str) -> str | None:
    """The cause of retraining the ads model today, or None. `ads_report`: the day's ads monitoring (its `opened`
    alerts); None when the world shows no ads (nothing to retrain for)."""
    if ads_report is None or mode == "manual" or registry.production(settings, family="ads") is None:
        return None           # no ads, or no ads model yet: the first one is an operator's call (`ads train`)
    from core.ads import pipeline as ads_pipeline
    fresh = [a for a in ads_report.get("opened") or [] if a.startswith("ads-drift")]
    if fresh:
        return "ads drift alert: " + ", ".join(fresh)
    pol = get_policy(settings)
    last = _last_action_at(settings, ADS_RETRAIN)
    days_since = None if last is None else (pd.Timestamp(now) - last) / pd.Timedelta(days=1)
    if days_since is not None and days_since < pol["cooldown_days"]:
        return None
    status = ads_pipeline.status(settings)
    if status["stale"]:
        return "ads model possibly stale: " + "; ".join(status["reasons"])
    from core.monitoring import monitoring      # here: monitoring imports this module
    alerts = monitoring.open_alerts(settings)
    still = sorted(f"{k}:{m}" for k, m in zip(alerts.get("kind", []), alerts.get("metric", [])) if k == "ads-drift")
    if still:
        return (f"ads drift alerts still open ({', '.join(still)})"
                + ("" if days_since is None else f" {plural(pol['cooldown_days'], 'day')} after the last ads retrain"))
    if mode == "scheduled" and (days_since is None or days_since >= pol["every_days"]):
        return ("scheduled: no ads retrain by the policy yet" if days_since is None
                else f"scheduled: {plural(pol['every_days'], 'day')} since the last ads retrain")
    return None


def apply_ads(settings: Settings, ads_report: dict | None, *, now: str, day: str | None = None,
              mode: str | None = None, progress=None) -> dict | None:
    """Retrain the ads model if the policy says so (`decide_ads`; promoted when the ads gate passes) and record the
    action ('ads-retrain') with its cause and outcome; None when nothing was done. A training that cannot run
    (e.g. too few days with clicks) is recorded with `error` instead of stopping the loop."""
    from core.ads import pipeline as ads_pipeline
    mode = mode or get_policy(settings)["mode"]
    validate(mode)
    cause = decide_ads(settings, ads_report, mode, now)
    if cause is None:
        return None
    action = {"kind": ADS_RETRAIN, "cause": cause, "run_id": None, "version": None, "promoted": False,
              "gate_passed": False, "log_loss": None, "calibration_error": None, "error": None}
    try:
        result = ads_pipeline.train(settings, at=now, actor=f"policy:{mode}",
                                    **({"progress": progress} if progress else {}))
        action |= {"run_id": result["run_id"], "version": result["version"], "promoted": result["promoted"],
                   "gate_passed": bool(result["gate"]["promote"]), "log_loss": result["metrics"].get("log_loss"),
                   "calibration_error": result["metrics"].get("calibration_error")}
    except RetroError as exc:
        action["error"] = f"{type(exc).__name__}: {exc}"
    with mlopsdb.session(settings) as db:
        record_action(db, ADS_RETRAIN, at=now, day=day, actor=f"policy:{mode}", cause=cause, result=action)
    return action


def record_action(db, kind: str, *, at: str, actor: str, cause: str, result: dict, job_id: int | None = None,
                  day: str | None = None) -> None:
    """One row of the actions trail on the caller's connection (e.g. inside its write transaction): the release
    queue's 'release-queued' / 'release-dequeued' rows (`core.monitoring.release`) are written here."""
    db.execute("INSERT INTO actions(at, day, kind, actor, cause, job_id, result) VALUES (?,?,?,?,?,?,?)",
               [at, day, kind, actor, cause, job_id, json.dumps(result)])


def last_action(db, kinds: tuple[str, ...]) -> dict | None:
    """The newest action of one of `kinds` ({action_id, at, kind, actor, cause, job_id, result (decoded)}), or None."""
    row = db.execute(f"SELECT action_id, at, kind, actor, cause, job_id, result FROM actions WHERE kind IN "
                     f"({', '.join('?' * len(kinds))}) ORDER BY action_id DESC LIMIT 1", list(kinds)).fetchone()
    if row is None:
        return None
    return dict(zip(("action_id", "at", "kind", "actor", "cause", "job_id"), row[:6])) | {
        "result": json.loads(row[6]) if row[6] else {}}


def actions(settings: Settings) -> pd.DataFrame:
    with mlopsdb.session(settings) as db:
        return pd.DataFrame(list(db.query("SELECT * FROM actions ORDER BY at, action_id")))
