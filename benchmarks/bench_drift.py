"""Drift benchmark: detection delay, false alarms and recovery by retraining, per behaviour shift.

Usage: python benchmarks/bench_drift.py [--days 14] [--stable-days 30] [--scenarios trend,viral,...]
                                        [--strength 1.0] [--duration 14] [--quick] [--stable-small [DAYS]]
       --quick: a smaller world (800 users, 300 movies, 14 days) for a fast check.
       --stable-small [DAYS]: also count false alarms in a 600-user world (init --seed 7 --users 600 --movies 300
       --days 40, retrain, then DAYS (default 30) closed-loop days with policy on-alert): small windows are noisy.
       With --scenarios none and --stable-days 0 the default world is not built (--stable-small alone).
       --no-shift HIT_RATE: with --stable-days 0, the no-shift reference printed by an earlier run on the same
       world (the scenarios can run in parts; the world and the runs are deterministic with the fixed key).
       python benchmarks/bench_drift.py --releases [--release-days 10] [--quick]
       --releases: instead of the shift scenarios, two canary releases in the closed loop on a copy of the
       same base folder (after the warm-up): a good candidate (the default configuration retrained on the
       newer data) ramped 30 % → 60 % → production, and a bad one (a deliberately weak configuration,
       factors 2, iterations 1, regularization 1000) rolled back; prints one Markdown table.

The world (default 3,000 users, 1,500 movies, 60 days, seed 42) is built ONCE into a base folder,
a production model is trained (`pipeline.retrain`), and 7 stable closed-loop days are simulated with
the manual policy so the online hit-rate baseline exists. Every run starts from a fresh copy of that
base folder (artifact paths in mlops.db are repointed to the copy, as in tests/test_monitoring.py).

Definitions (day 1 = the first simulated day of a run; for shifts, the shift starts on day 1):
- detection delay: the day of the first alert opened in the run (1 = alert at the end of the shift's
  first day); '—' if no alert opened during the run;
- baseline: mean model hit rate@10 of the 7 warm-up days (the served lists vs that day's watches);
- worst: the lowest daily model hit rate during the run; after: mean of the last 3 days;
  recovery = after / baseline;
- days to recover: for the day r of the first alert (on-alert retrains at the end of that day; manual
  does not), the smallest d ≥ 1 such that the trailing 2-day moving average of the hit rate on day
  r + d (days r+d-1 and r+d) is ≥ 90 % of the baseline; '—' if never within the run (or no alert);
- after ÷ no-shift: 'hit rate after' divided by the same days of the stable run (the world's own
  decay — users work through the titles that suit them best — taken out); the goal is ≥ 100 %;
- false alarms: alerts opened in the stable runs, which use policy on-alert (an alarm would retrain and start a
  canary, so what a false alarm costs shows too);
- per retrain (tracking.gate_history and the job's result): which estimate decided the gate
  (`checks.yardstick.decided_by`: 'counterfactual' — DR watches/list on the holdout days' exploration log, when
  its ESS ≥ settings.gate_min_ess — or 'holdout'), the checks a refused candidate failed, and the world's truth
  about the decision (`result.truth.verdict`: right, wrong refusal, wrong promotion — loop.record_truth);
- releases (deployments.history, policy.actions): a candidate that passes the gate starts a canary (or waits
  for the running one); canaries started / promoted / rolled back (with why: worse, max-days, floor = the
  registry refused the promotion), waiting ones superseded or dropped; 'retrains (reached production)' counts
  candidates promoted by their canary or directly.

Reproducibility: model training depends on the order of the user rows, which are sorted by their
HMAC pseudonym, and the pseudonymization key is random per data folder. Unless RETRO_PSEUDONYM_KEY
is already set, the benchmark sets a fixed key so that two runs on the same code give the same numbers.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.simulation import loop, simulation
from core.monitoring import monitoring, policy, release
from core.training import pipeline, registry, tracking
from core.serving import deployments, serving  # noqa: E402
from core.pseudonym import KEY_ENV  # noqa: E402
from core.store.mlopsdb import clone_home
from core.settings import load_settings  # noqa: E402

SCENARIO_PARAMS = {"trend": {"genre": "Western"}, "viral": None, "seasonal": {"season": "halloween"},
                   "life-event": None, "new-releases": None, "data-quality": None}
WARMUP_DAYS = 7
RECOVERY_SHARE = 0.90
DETECT_WITHIN = 2
RETRAIN_EVERY = 2
DAY_MSG = re.compile(r"^day (\d+): serving")


def _reset_caches() -> None:
    """Close this thread's cached connections and forget loaded models before a folder is copied or deleted."""
    serving.clear_caches()
    monitoring.clear_caches()


def fresh_copy(base, dest: Path):
    """A copy of the base folder with the absolute artifact paths in mlops.db repointed to it."""
    _reset_caches()
    return clone_home(base, dest)


def timed_run(settings, days: int, **kwargs) -> tuple[dict, list[float], float]:
    """loop.run with per-day wall times (from the progress callback: each day starts with 'serving')."""
    marks: list[float] = []

    def progress(fraction, message):
        if DAY_MSG.match(message):
            marks.append(time.perf_counter())

    t0 = time.perf_counter()
    out = loop.run(settings, days, progress=progress, **kwargs)
    end = time.perf_counter()
    per_day = [b - a for a, b in zip(marks, marks[1:] + [end])]
    return out, per_day, end - t0


def marks(settings) -> dict:
    """What a folder holds before a run (its jobs, releases, alerts, actions), so a run's own rows can be told apart."""
    def ids(frame, col):
        return set() if frame.empty else {int(x) for x in frame[col]}
    return {"deployments": ids(deployments.history(settings), "deployment_id"),
            "alerts": ids(monitoring.all_alerts(settings), "alert_id"),
            "actions": ids(policy.actions(settings), "action_id")}


def _failed(gate: dict) -> list[tuple[str, str]]:
    """(check name, reason) of every check the gate failed, in the gate's order."""
    checks = list((gate.get("checks") or {}).items())
    reasons = gate.get("reasons") or []
    return [(name, reasons[i] if i < len(reasons) else "") for i, (name, c) in enumerate(checks)
            if not c.get("passed")]


def _rollback_cause(reason: str) -> str:
    """A rolled-back canary's end reason in one word: worse, max-days or floor (the registry refused it)."""
    if "registry refused" in (reason or ""):
        return "floor"
    if (reason or "").startswith("significantly worse"):
        return "worse"
    if (reason or "").startswith("not shown to be as good"):
        return "max-days"
    return "other"


def run_figures(settings, log: list[dict], before: dict) -> dict:
    """A run's retrains, gate decisions (which estimate decided, why refused), releases (canaries started,
    promoted, rolled back, waiting), the truth's verdicts and its alerts, from the folder's stores:
    tracking.gate_history and the jobs' results, policy.actions, deployments.history, monitoring.all_alerts."""
    job_ids = [int(r["action"]["job_id"]) for r in log if r["action"]]
    hist = tracking.gate_history(settings)
    hist = hist[hist["job_id"].isin(job_ids)]
    jobs: dict[int, dict] = {}
    decided = {"counterfactual": 0, "holdout": 0}
    refused_by: dict[str, dict[str, int]] = {}
    verdicts = {"right": 0, "wrong refusal": 0, "wrong promotion": 0, "none": 0}
    ess = []
    for row in hist.itertuples():
        res = tracking.get_job(settings, int(row.job_id))["result"] or {}
        gate = res.get("gate") or {}
        y = (gate.get("checks") or {}).get("yardstick") or {}
        by = y.get("decided_by", row.decided_by or "holdout")
        decided[by] = decided.get(by, 0) + 1
        if y.get("ess") is not None:
            ess.append(float(y["ess"]))
        failed = _failed(gate)
        passed = bool(gate.get("promote"))
        if not passed:
            for name, _ in failed or [("(none recorded)", "")]:
                refused_by.setdefault(by, {})[name] = refused_by.setdefault(by, {}).get(name, 0) + 1
        truth = res.get("truth") or {}
        verdicts[truth.get("verdict") or "none"] += 1
        rk = res.get("ranker")
        ranker = ("" if rk is None else f"ranker error: {rk['error']}" if "error" in rk
                  else f"ranker v{rk.get('version')} {'promoted' if rk.get('promoted') else 'kept as candidate'}")
        jobs[int(row.job_id)] = {"version": res.get("version"), "passed": passed, "decided_by": by, "ess": y.get("ess"),
                                 "point": y.get("point"), "lo": y.get("lo"), "hi": y.get("hi"), "failed": failed,
                                 "release": res.get("release"), "promoted": bool(res.get("promoted")),
                                 "truth": truth, "ranker": ranker, "reasons": gate.get("reasons", []),
                                 "estimators": _estimator_differences(y)}

    dep = deployments.history(settings)
    dep = dep[~dep["deployment_id"].isin(before["deployments"])] if not dep.empty else dep
    states = dep["state"].value_counts().to_dict() if not dep.empty else {}
    rolled = [_rollback_cause(r) for r in dep.loc[dep["state"] == "rolled-back", "end_reason"]] if not dep.empty else []
    fate = {int(r.version): r.state for r in dep.itertuples()} if not dep.empty else {}
    ended_why = {int(r.version): r.end_reason for r in dep.itertuples()} if not dep.empty else {}
    acts = policy.actions(settings)
    acts = acts[~acts["action_id"].isin(before["actions"])] if not acts.empty else acts
    queued = int((acts["kind"] == release.QUEUED).sum()) if not acts.empty else 0
    deq = [json.loads(r) for r in acts.loc[acts["kind"] == release.DEQUEUED, "result"]] if not acts.empty else []
    for d in deq:
        if d.get("outcome") in ("dropped", "superseded"):
            fate.setdefault(int(d["version"]), d["outcome"])
    waiting = release.pending(settings)
    if waiting is not None:
        fate.setdefault(int(waiting["version"]), "pending at the end")
    # What became of each candidate the truth judged a wrong promotion (did the canary catch it?).
    wrong_promotions = [fate.get(int(j["version"]), "promoted directly" if j["promoted"] else "—")
                        for j in jobs.values() if j["truth"].get("verdict") == "wrong promotion"]
    for j in jobs.values():
        j["fate"] = fate.get(int(j["version"])) if j["passed"] else None
        j["end_reason"] = ended_why.get(int(j["version"]))

    alerts = monitoring.all_alerts(settings)
    alerts = alerts[~alerts["alert_id"].isin(before["alerts"])] if not alerts.empty else alerts
    prod = registry.production(settings)
    run = tracking.get_run(settings, prod["run_id"]) if prod else None
    floor = registry.baseline_floor({"metrics": json.dumps(run["metrics"]), "baselines": json.dumps(run["baselines"])}) \
        if run else {"passes": True}
    refused = sum(1 for j in jobs.values() if not j["passed"])
    direct = sum(1 for j in jobs.values() if j["promoted"])
    return {"jobs": jobs, "retrains": len(jobs), "gate_passed": len(jobs) - refused, "refused": refused,
            "refused_by": refused_by, "decided": decided, "ess": ess, "verdicts": verdicts,
            "wrong_promotion_fates": wrong_promotions,
            "canaries": len(dep), "canary_promoted": int(states.get("promoted", 0)),
            "canary_rolled_back": int(states.get("rolled-back", 0)), "canary_stopped": int(states.get("stopped", 0)),
            "canary_running": int(states.get("active", 0)), "rollback_causes": rolled, "queued": queued,
            "dropped": sum(1 for d in deq if d.get("outcome") == "dropped"),
            "superseded": sum(1 for d in deq if d.get("outcome") == "superseded"),
            "pending_at_end": waiting is not None, "promoted": int(states.get("promoted", 0)) + direct,
            "alerts": [] if alerts.empty else alerts.to_dict("records"),
            "final_above_baselines": floor["passes"], "final_version": prod["version"] if prod else None}


def count_str(counts: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def refused_str(f: dict) -> str:
    """'4: counterfactual 3 (baselines 2, quality 1); holdout 1 (baselines 1)' — refusals by deciding estimate and
    failed check."""
    if not f["refused"]:
        return "0"
    parts = [f"{by} {sum(c.values())} ({count_str(c)})" for by, c in sorted(f["refused_by"].items())]
    return f"{f['refused']}: " + "; ".join(parts)


def canary_str(f: dict) -> str:
    """'3 / 1 / 2 (worse 2)' — canaries started / promoted / rolled back, with extras when any."""
    out = f"{f['canaries']} / {f['canary_promoted']} / {f['canary_rolled_back']}"
    if f["rollback_causes"]:
        out += f" ({count_str({c: f['rollback_causes'].count(c) for c in set(f['rollback_causes'])})})"
    extra = []
    if f["canary_running"]:
        extra.append(f"{f['canary_running']} running at the end")
    if f["canary_stopped"]:
        extra.append(f"{f['canary_stopped']} stopped")
    if f["queued"]:
        extra.append(f"{f['queued']} waited")
    if f["superseded"]:
        extra.append(f"{f['superseded']} superseded while waiting")
    if f["dropped"]:
        extra.append(f"{f['dropped']} dropped")
    if f["pending_at_end"]:
        extra.append("1 still waiting")
    return out + (f"; {', '.join(extra)}" if extra else "")


def verdict_str(f: dict) -> str:
    v = f["verdicts"]
    out = f"{v['right']} / {v['wrong refusal']} / {v['wrong promotion']}"
    if v["none"]:
        out += f" (+{v['none']} without truth)"
    if f["wrong_promotion_fates"]:
        out += f" (wrong promotions: {', '.join(f['wrong_promotion_fates'])})"
    return out


def alert_str(a: dict) -> str:
    chance = a.get("chance_level")
    return (f"{a['kind']}:{a['metric']} ({a.get('test') or '—'} {fmt(a.get('value'), '.4f')} vs threshold "
            f"{fmt(a.get('threshold'), '.4f')}" + ("" if chance is None or chance != chance else
                                                   f", chance level {chance:.4f}") + ")")


def summarize(log: list[dict], baseline: float) -> dict:
    hr = [r["hit_rate_model"] for r in log]
    valid = [h for h in hr if h is not None]
    first = next((i for i, r in enumerate(log) if r["opened"]), None)
    actions = [(i, r["action"]) for i, r in enumerate(log) if r["action"]]
    recover = None
    if first is not None:
        r = first
        for j in range(r + 1, len(log)):
            window = [h for h in hr[j - 1:j + 1] if h is not None]
            if len(window) == 2 and np.mean(window) >= RECOVERY_SHARE * baseline:
                recover = j - r
                break
    last3 = [h for h in hr[-3:] if h is not None]
    after = float(np.mean(last3)) if last3 else None
    return {
        "delay": None if first is None else first + 1,
        "first_alerts": [] if first is None else log[first]["opened"],
        "classification": None if first is None else log[first]["classification"],
        "worst": min(valid) if valid else None,
        "after": after,
        "recovery": None if after is None or not baseline else after / baseline,
        "days_to_recover": recover,
        "retrains": len(actions),
        "alerts_opened": sum(len(r["opened"]) for r in log),
    }


def fmt(x, spec=".3f", none="—") -> str:
    return none if x is None else format(x, spec)


def _action_text(a: dict, job: dict) -> str:
    """A retrain in the per-day log: the gate's decision (which estimate decided), what became of the candidate,
    and the truth's verdict."""
    by = job.get("decided_by", "?")
    est = f"{by}" + (f", ESS {job['ess']:,.0f}" if job.get("ess") is not None else "")
    if job.get("point") is not None and by == "counterfactual":
        est += f", Δ {job['point']:+.3f} [{job['lo']:+.3f}, {job['hi']:+.3f}]"
    rel = a.get("release") or {}
    if a["promoted"]:
        what = "promoted directly"
    elif rel.get("state") == "active":
        what = f"gate passed → canary #{rel['deployment_id']} ({rel['share']:.0%})"
    elif rel.get("state") == "pending":
        what = f"gate passed → waits for release #{rel['waits_for']['deployment_id']}"
    else:
        what = "REFUSED"
    act = f"retrain v{a['version']} {what} ({a['cause']}) — decided on the {est}"
    if not job.get("passed", True):
        act += " — failed: " + "; ".join(reason.lstrip("✗ ") for _, reason in job.get("failed", []))
    if job.get("passed") and job.get("fate"):
        act += f"; release: {job['fate']}"
    if job.get("estimators"):
        act += " (" + ", ".join(f"{k} {v:+.3f}" for k, v in job["estimators"].items()) + ")"
    t = job.get("truth") or {}
    if t.get("verdict"):
        act += f"; truth: **{t['verdict']}** (Δ watches/list {t['difference']:+.4f}{_truth_hit_rate(t)})"
    if job.get("ranker"):
        act += f"; {job['ranker']}"
    return act


def _estimator_differences(y: dict) -> dict:
    """{estimator: candidate − production point} from the gate's yardstick (every estimator the gate computed)."""
    every = y.get("all_estimators") or {}
    cand, prod = every.get(y.get("candidate", "candidate")) or {}, every.get(y.get("reference", "production")) or {}
    return {est: cand[est]["value"] - prod[est]["value"] for est in cand if est in prod}


def _truth_hit_rate(t: dict) -> str:
    """', hit rate@10 +0.0123': the truth's candidate − production hit rate@10 (what a canary measures), or ''."""
    hr = t.get("hit_rate") or {}
    if hr.get("candidate") is None or hr.get("production") is None:
        return ""
    return f", hit rate@10 {hr['candidate'] - hr['production']:+.4f}"


def _release_text(d: dict | None) -> str:
    """The release policy's decision of the day (None: no canary was active)."""
    if not d:
        return ""
    out = f"#{d['deployment_id']} v{d['version']} {d['decision']}"
    if d.get("point") is not None:
        out += f" ({d['point']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}], {d['days']} d)"
    if (d.get("pending") or {}).get("outcome"):
        out += f"; pending v{d['pending']['version']} {d['pending']['outcome']}"
    return out


def detail_table(title: str, log: list[dict], jobs: dict[int, dict], per_day: list[float]) -> list[str]:
    out = [f"\n#### {title}\n",
           "| day | date | classification | hit rate model | hit rate Top 50 | quarantine | opened | closed | release | "
           "action | s |",
           "| ---: | --- | --- | ---: | ---: | ---: | --- | --- | --- | --- | ---: |"]
    for i, r in enumerate(log):
        a = r["action"]
        act = _action_text(a, jobs.get(int(a["job_id"]), {})) if a else ""
        out.append(f"| {i + 1} | {r['date']} | {r['classification']} | {fmt(r['hit_rate_model'])} | "
                   f"{fmt(r['hit_rate_top50'])} | {r['quarantine_rate']:.3%} | {', '.join(r['opened'])} | "
                   f"{', '.join(r['closed'])} | {_release_text(r.get('release'))} | {act} | "
                   f"{fmt(per_day[i] if i < len(per_day) else None, '.1f')} |")
    return out


# ------------------------------------------------------------------ --releases: both outcomes of a canary
GOOD_PARAMS: dict = {}                                                   # the default configuration, newer data
BAD_PARAMS = {"factors": 2, "iterations": 1, "regularization": 1000.0}   # deliberately weak
RELEASE_SCENARIOS = [
    # (name, candidate description, params, policy overrides)
    ("good candidate", "default ALS retrained on the data through the warm-up days", GOOD_PARAMS,
     {"share": 0.3, "ramp": [0.3, 0.6], "min_days": 2}),
    ("bad candidate", "weak ALS (factors 2, iterations 1, regularization 1000), same data", BAD_PARAMS,
     {"share": 0.3}),
]


def run_release(settings, params: dict, rules: dict, max_days: int) -> dict:
    """Train and register a candidate, start it as a canary, then simulate closed-loop days (manual retraining
    policy, so production only changes by the release) one at a time until the release policy ends it."""
    t = time.perf_counter()
    prod = registry.production(settings)["version"]
    version = registry.register(settings, pipeline.train(settings, params=params).run_id)
    rules = dict(rules)
    share = rules.pop("share")
    started = release.start(settings, version, "canary", actor="bench", reason="release benchmark", share=share,
                            **rules)
    t_train = time.perf_counter() - t
    days, per_day = 0, []
    while days < max_days and deployments.active(settings) is not None:
        _, secs, _ = timed_run(settings, 1, policy_mode="manual")
        per_day += secs
        days += 1
    dec = release.decisions(settings, started["deployment_id"])
    last = dec.iloc[-1].to_dict() if len(dec) else None
    ev = json.loads(last["evidence"]) if last else {}
    shares = [d["share"] for d in ev.get("per_day", [])]
    path, runs = [], []
    for s_ in shares:
        if runs and runs[-1][0] == s_:
            runs[-1][1] += 1
        else:
            runs.append([s_, 1])
    path = [f"{s_:.0%} ({n} d)" for s_, n in runs]
    end = deployments.get(settings, started["deployment_id"])["state"]
    if end == "promoted":
        path.append("production")
    return {"version": version, "production_before": prod, "production_after": registry.production(settings)["version"],
            "stage_after": registry.get_version(settings, version)["stage"], "state": end, "path": path,
            "decisions": dec["decision"].tolist(), "last": last, "lists": ev.get("lists_affected"),
            "days_run": days, "train_secs": t_train, "day_secs": per_day, "ranker": started.get("ranker"),
            "metrics": tracking.get_run(settings, registry.get_version(settings, version)["run_id"])["metrics"]}


def releases_report(args, base_note: str, results: list[tuple]) -> list[str]:
    lines = ["# Release benchmark: a good canary ramped to production, a bad one rolled back\n", base_note,
             "\n| scenario | candidate | share path (days at each share) | days until the decision | decision | "
             "hit rate@10 canary / production | difference canary − production: point [90 % interval] | "
             "users affected (lists the candidate reached) | production after |",
             "| --- | --- | --- | ---: | --- | --- | --- | ---: | --- |"]
    for (name, desc, _, _), r in results:
        d = r["last"]
        if d is None:
            lines.append(f"| {name} | v{r['version']}: {desc} | — | — | no decision | — | — | — | v{r['production_after']} |")
            continue
        decided = d["decision"] if d["decision"] in ("promote", "rollback", "stop") else f"none yet ({d['decision']})"
        lines.append(f"| {name} | v{r['version']}: {desc} | {' → '.join(r['path'])} | {d['days']} | **{decided}** "
                     f"(by {d['actor']}) | {fmt(d['hit_rate_canary'], '.3f')} / {fmt(d['hit_rate_production'], '.3f')} | "
                     f"{fmt(d['point'], '+.4f')} [{fmt(d['lo'], '+.4f')}, {fmt(d['hi'], '+.4f')}] | "
                     f"{d['users_affected']} ({fmt(r['lists'], 'd')}) | v{r['production_after']} "
                     f"(v{r['version']} {r['stage_after']}) |")
    lines.append("\nDecisions day by day (release policy, after each monitored day):")
    for (name, _, _, rules), r in results:
        lines.append(f"- {name} (policy {json.dumps(rules)}; margin {release.POLICY['margin']}, level "
                     f"{release.POLICY['level']:.0%}, max_days {release.POLICY['max_days']}): "
                     f"{' → '.join(r['decisions']) or '—'}. Reason: {r['last']['reason'] if r['last'] else '—'}"
                     + ("" if not r["ranker"] else "; the candidate served with its own ranker "
                        + (f"(error: {r['ranker']['error']})" if "error" in r["ranker"] else
                           f"v{r['ranker']['version']} (beats CF offline: {r['ranker']['beats_cf']})")))
    lines.append("\nOffline holdout metrics of the candidates (for comparison): " + "; ".join(
        f"{name} v{r['version']}: " + ", ".join(f"{k} {v:.4f}" for k, v in sorted(r["metrics"].items())
                                                 if isinstance(v, (int, float)) and k.startswith(("ndcg", "recall", "hit")))
        for (name, _, _, _), r in results))
    lines.append("\nTimings: " + "; ".join(
        f"{name}: train + start {r['train_secs']:.1f} s, {r['days_run']} closed-loop day(s), mean "
        f"{np.mean(r['day_secs']):.1f} s/day" for (name, _, _, _), r in results) + ".")
    return lines


SMALL_WORLD = {"seed": 7, "users": 600, "movies": 300, "days": 40}


def stable_figures(s, out: dict, per_day: list[float], before: dict, secs: float, span_days: int) -> dict:
    """False alarms and what the policy did on stable days (alerts with their numbers, retrains, canaries,
    the price of exploring)."""
    log = out["log"]
    opened = [(i + 1, a, r["classification"]) for i, r in enumerate(log) for a in r["opened"]]
    hr = [r["hit_rate_model"] for r in log if r["hit_rate_model"] is not None]
    span = hr[max(0, min(span_days, len(hr)) - 3):min(span_days, len(hr))]
    return {"days": len(log), "opened": opened, "secs": secs,
            "same_span": float(np.mean(span)) if span else None, "same_span_days": min(span_days, len(hr)),
            "hr_first7": float(np.mean(hr[:7])) if hr else None, "hr_last7": float(np.mean(hr[-7:])) if hr else None,
            "classes": sorted({r["classification"] for r in log}), "figures": run_figures(s, log, before),
            "price": monitoring.exploration_price(s)}


def price_str(price: dict) -> str:
    d, e = price["deterministic"], price["explore"]
    return (f"online hit rate@10 of deterministic lists {fmt(d['hit_rate'], '.4f')} ({d['lists']:,} lists) vs "
            f"exploring lists {fmt(e['hit_rate'], '.4f')} ({e['lists']:,}); difference "
            f"{fmt(price['difference'], '+.4f')}")


def stable_lines(title: str, st: dict, policy_name: str) -> list[str]:
    f = st["figures"]
    which = "; ".join(f"day {d}: {a} ({c})" for d, a, c in st["opened"]) or "none"
    out = [f"\n## {title}\n",
           f"alerts opened: **{len(st['opened'])}** in {st['days']} stable days (policy {policy_name}) — {which}. "
           f"Classifications seen: {', '.join(st['classes'])}."]
    if f["alerts"]:
        out.append("Alerts, with their statistic, threshold and chance level (99th null percentile): "
                   + "; ".join(alert_str(a) for a in f["alerts"]) + ".")
    out.append(f"What the policy did: {f['retrains']} retrain(s), refused {refused_str(f)}; canaries started / "
               f"promoted / rolled back {canary_str(f)}; truth right / wrong refusal / wrong promotion "
               f"{verdict_str(f)}. Model hit rate: first 7 days {fmt(st['hr_first7'], '.4f')}, last 7 days "
               f"{fmt(st['hr_last7'], '.4f')}. The price of exploring (every monitored day of the folder): "
               f"{price_str(st['price'])}. {st['secs']:.0f} s.")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--days", type=int, default=14, help="simulated days per shift scenario")
    p.add_argument("--stable-days", type=int, default=30, help="stable days for the false-alarm run (0: skip)")
    p.add_argument("--scenarios", default=",".join(SCENARIO_PARAMS),
                   help="comma-separated shift kinds ('' or 'none': no shift run)")
    p.add_argument("--strength", type=float, default=1.0)
    p.add_argument("--duration", type=int, default=14, help="shift duration in days")
    p.add_argument("--users", type=int, default=3000)
    p.add_argument("--movies", type=int, default=1500)
    p.add_argument("--world-days", type=int, default=60)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--quick", action="store_true", help="small world: 800 users, 300 movies, 14 days")
    p.add_argument("--no-detail", action="store_true", help="do not print the per-day logs")
    p.add_argument("--releases", action="store_true",
                   help="run the two canary releases (good ramped, bad rolled back) instead of the shift scenarios")
    p.add_argument("--release-days", type=int, default=10, help="at most this many closed-loop days per release")
    p.add_argument("--no-shift", type=float, metavar="HIT_RATE",
                   help="with --stable-days 0: the no-shift run's mean model hit rate over the same days, from an "
                        "earlier run on the same world (for 'after ÷ no-shift' when the scenarios run in parts)")
    p.add_argument("--stable-small", type=int, nargs="?", const=30, default=None, metavar="DAYS",
                   help="also count false alarms in a 600-user world (init --seed 7 --users 600 --movies 300 "
                        "--days 40, retrain, then DAYS (default 30) closed-loop days with policy on-alert)")
    args = p.parse_args()
    if args.quick:
        args.users, args.movies, args.world_days = 800, 300, 14
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip() and s.strip() != "none"]
    unknown = [s for s in scenarios if s not in simulation.SHIFT_KINDS]
    if unknown:
        p.error(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(simulation.SHIFT_KINDS)}")
    if args.days < 1:
        p.error("--days must be >= 1")
    if args.stable_small is not None and args.stable_small < 1:
        p.error("--stable-small needs a positive number of days")
    default_world = args.releases or bool(scenarios) or args.stable_days > 0

    fixed_key = KEY_ENV not in os.environ
    if fixed_key:
        os.environ[KEY_ENV] = "bench-drift-fixed-key"
    code = tracking.code_version()
    wall0 = time.perf_counter()
    lines: list[str] = []
    details: list[str] = []
    day_times: list[float] = []          # closed-loop days without a retrain
    retrain_day_times: list[float] = []  # closed-loop days with a retrain
    results = []
    stable = small = None
    t_world = t_retrain = 0.0
    baseline = baseline_top50 = None
    warm_hr: list[float] = []
    first_model = {}

    def note(msg):
        print(f"[{time.perf_counter() - wall0:7.1f}s] {msg}", file=sys.stderr, flush=True)

    def split_times(log, per_day):
        for r, d in zip(log, per_day):
            (retrain_day_times if r["action"] else day_times).append(d)

    with tempfile.TemporaryDirectory(prefix="bench-drift-") as tmp:
        tmp = Path(tmp)
        if args.stable_small is not None:
            # 0. False alarms in a small world (the noise of small windows): built from scratch, no warm-up.
            s = load_settings(tmp / "small")
            t = time.perf_counter()
            simulation.init_world(s, **SMALL_WORLD)
            small_model = pipeline.retrain(s)
            t_small = time.perf_counter() - t
            before = marks(s)
            out, per_day, secs = timed_run(s, args.stable_small, policy_mode="on-alert")
            split_times(out["log"], per_day)
            small = stable_figures(s, out, per_day, before, secs, args.days) | {
                "build_secs": t_small, "version": small_model["version"]}
            note(f"small world stable: {len(small['opened'])} alert(s) in {args.stable_small} days ({secs:.1f}s)")
            if not args.no_detail:
                details += detail_table(f"small world ({SMALL_WORLD['users']} users, {SMALL_WORLD['movies']} movies, "
                                        f"seed {SMALL_WORLD['seed']}): stable ({args.stable_small} days, on-alert)",
                                        out["log"], small["figures"]["jobs"], per_day)
            _reset_caches()
            shutil.rmtree(s.home)
        if default_world:
            base = load_settings(tmp / "base")
            t = time.perf_counter()
            simulation.init_world(base, seed=args.seed, users=args.users, movies=args.movies, days=args.world_days)
            t_world = time.perf_counter() - t
            note(f"world built in {t_world:.1f}s")
            t = time.perf_counter()
            first_model = pipeline.retrain(base)
            t_retrain = time.perf_counter() - t
            note(f"first retrain in {t_retrain:.1f}s (v{first_model['version']}, promoted={first_model['promoted']})")
            warm, warm_days, t_warm = timed_run(base, WARMUP_DAYS, policy_mode="manual")
            day_times += warm_days
            warm_hr = [r["hit_rate_model"] for r in warm["log"] if r["hit_rate_model"] is not None]
            baseline = float(np.mean(warm_hr))
            baseline_top50 = float(np.mean([r["hit_rate_top50"] for r in warm["log"]
                                            if r["hit_rate_top50"] is not None]))
            note(f"warm-up {WARMUP_DAYS} days in {t_warm:.1f}s; baseline hit rate {baseline:.4f}")
            if not args.no_detail and not args.releases:
                details += detail_table(f"warm-up ({WARMUP_DAYS} days, manual)", warm["log"], {}, warm_days)

        if args.releases:
            rel_results = []
            for scenario in RELEASE_SCENARIOS:
                name, _, params, rules = scenario
                s = fresh_copy(base, tmp / name.replace(" ", "-"))
                r = run_release(s, params, rules, args.release_days)
                note(f"{name}: v{r['version']} {r['state']} after {r['days_run']} day(s): {r['decisions']}")
                rel_results.append((scenario, r))
                _reset_caches()
                shutil.rmtree(s.home)
            base_note = (f"world: {args.users} users, {args.movies} movies, {args.world_days} days, seed {args.seed}; "
                         f"production v{first_model['version']} (first retrain), then {WARMUP_DAYS} warm-up days "
                         f"(baseline model hit rate@10 {baseline:.4f}); each release starts on a fresh copy of that "
                         f"folder and runs at most {args.release_days} closed-loop days (retraining policy manual). "
                         f"Code {code}; pseudonymization key "
                         + ("fixed by the benchmark." if fixed_key else f"from ${KEY_ENV}.")
                         + f" Total wall time {time.perf_counter() - wall0:.0f} s.")
            print("\n".join(releases_report(args, base_note, rel_results)))
            return

        # 1. False alarms on stable days (policy on-alert: an alarm would retrain and start a canary).
        if args.stable_days > 0:
            s = fresh_copy(base, tmp / "stable")
            before = marks(s)
            out, per_day, secs = timed_run(s, args.stable_days, policy_mode="on-alert")
            split_times(out["log"], per_day)
            stable = stable_figures(s, out, per_day, before, secs, args.days)
            note(f"stable: {len(stable['opened'])} alert(s) in {args.stable_days} days ({secs:.1f}s)")
            if not args.no_detail:
                details += detail_table(f"stable ({args.stable_days} days, on-alert)", out["log"],
                                        stable["figures"]["jobs"], per_day)
            _reset_caches()
            shutil.rmtree(s.home)

            # What retraining alone does in this world: no shift, a retrain every 2 days, same number of days.
            s = fresh_copy(base, tmp / "stable-retrained")
            policy.set_policy(s, "scheduled", RETRAIN_EVERY, actor="bench")
            before = marks(s)
            out, per_day, secs = timed_run(s, args.days, policy_mode="scheduled")
            split_times(out["log"], per_day)
            hr = [r["hit_rate_model"] for r in out["log"] if r["hit_rate_model"] is not None]
            stable["retrained_last3"] = float(np.mean(hr[-3:])) if hr else None
            stable["retrained_opened"] = sum(len(r["opened"]) for r in out["log"])
            stable["retrained_runs"] = out["retrains"]
            stable["retrained_figures"] = run_figures(s, out["log"], before)
            note(f"stable with a retrain every {RETRAIN_EVERY} days: last 3 days {fmt(stable['retrained_last3'])} "
                 f"({secs:.1f}s)")
            if not args.no_detail:
                details += detail_table(f"stable, retrain every {RETRAIN_EVERY} days ({args.days} days, scheduled)",
                                        out["log"], stable["retrained_figures"]["jobs"], per_day)
            _reset_caches()
            shutil.rmtree(s.home)

        # 2. Shift scenarios, on-alert vs manual.
        for kind in scenarios:
            for mode in ("on-alert", "manual"):
                s = fresh_copy(base, tmp / f"{kind}-{mode}")
                before = marks(s)
                out, per_day, secs = timed_run(s, args.days, shift=kind, strength=args.strength,
                                               duration=args.duration, params=SCENARIO_PARAMS[kind], policy_mode=mode)
                split_times(out["log"], per_day)
                figures = run_figures(s, out["log"], before)
                row = summarize(out["log"], baseline) | {"scenario": kind, "policy": mode, "secs": secs,
                                                          "shift": out.get("shift")} | figures
                results.append(row)
                note(f"{kind} / {mode}: delay {row['delay']}, first {row['first_alerts']}, "
                     f"recovery {fmt(row['recovery'], '.2f')}, retrains {row['retrains']} "
                     f"(refused {refused_str(row)}; canaries {canary_str(row)}; truth {verdict_str(row)}), "
                     f"{secs:.1f}s")
                if not args.no_detail:
                    params = out.get("shift", {}).get("params", {})
                    shown = {k: v for k, v in params.items() if k != "movie_ids"}
                    if "movie_ids" in params:
                        shown["new titles"] = len(params["movie_ids"])
                    details += detail_table(f"{kind} ({mode}) — params {json.dumps(shown)}", out["log"],
                                            figures["jobs"], per_day)
                _reset_caches()
                shutil.rmtree(s.home)
    wall = time.perf_counter() - wall0

    # ------------------------------------------------------------------ report
    lines.append(f"# Drift benchmark\n\nCode {code}; pseudonymization key "
                 + ("fixed by the benchmark." if fixed_key else f"from ${KEY_ENV}.")
                 + f" Load average at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}.")
    if default_world:
        lines.append(f"\nworld: {args.users} users, {args.movies} movies, {args.world_days} days, seed {args.seed}; "
                     f"shifts: strength {args.strength}, duration {args.duration} days, {args.days} simulated days per "
                     f"run.")
        lines.append(f"\nbaseline (mean of the {WARMUP_DAYS} warm-up days, production v{first_model['version']}): "
                     f"model hit rate@10 {baseline:.4f} (Top 50 control {baseline_top50:.4f}); "
                     f"hit rates per warm-up day: {', '.join(f'{h:.3f}' for h in warm_hr)}")
    if stable is not None:
        lines += stable_lines(f"False alarms: {stable['days']} stable days (policy on-alert)", stable, "on-alert")
        lines.append(f"\nDays {stable['same_span_days'] - 2}–{stable['same_span_days']} (the span of 'hit rate after' "
                     f"in the shift runs): {fmt(stable['same_span'], '.4f')} = "
                     f"{fmt(stable['same_span'] / baseline if stable['same_span'] else None, '.0%')} of the baseline "
                     "with no shift at all.")
        if stable.get("retrained_last3") is not None:
            f = stable["retrained_figures"]
            lines.append(f"\nNo shift and a retrain every {RETRAIN_EVERY} days ({stable['retrained_runs']} retrains, "
                         f"{stable['retrained_opened']} alerts) over {args.days} days: last 3 days "
                         f"{stable['retrained_last3']:.4f} = {stable['retrained_last3'] / baseline:.0%} of the baseline — "
                         "what retraining alone does when nothing shifts. Gate decided by counterfactual / holdout "
                         f"{f['decided']['counterfactual']} / {f['decided']['holdout']}; refused {refused_str(f)}; "
                         f"canaries started / promoted / rolled back {canary_str(f)}; truth right / wrong refusal / "
                         f"wrong promotion {verdict_str(f)}.")
    if small is not None:
        lines += stable_lines(f"False alarms in a small world: {SMALL_WORLD['users']} users, {SMALL_WORLD['movies']} "
                              f"movies, {SMALL_WORLD['days']} days, seed {SMALL_WORLD['seed']} (first model "
                              f"v{small['version']}, built and trained in {small['build_secs']:.0f} s, no warm-up)",
                              small, "on-alert")
    no_shift = stable["same_span"] if stable is not None else args.no_shift
    if stable is None and no_shift:
        lines.append(f"\nNo-shift reference for 'after ÷ no-shift' (given with --no-shift, from an earlier run on the "
                     f"same world): {no_shift:.4f}.")
    if results:
        lines.append("\n## Shift scenarios\n")
    for r in results:
        r["vs_no_shift"] = None if r["after"] is None or not no_shift else r["after"] / no_shift
    if results:
        lines.append("| scenario | policy | detection delay (days) | first alert(s) | classification at detection | "
                     "hit rate before (baseline) | worst daily hit rate | hit rate after (last 3 days) | recovery | "
                     "after ÷ no-shift run, same days | days to recover | retrains (reached production) | "
                     "gate decided by: counterfactual / holdout | refused by the gate (decided by: failed checks) | "
                     "canaries started / promoted / rolled back | truth: right / wrong refusal / wrong promotion | "
                     "production at the end beats its baselines |")
        lines.append("| --- | --- | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | --- "
                     "| --- | --- |")
    for r in results:
        lines.append(f"| {r['scenario']} | {r['policy']} | {fmt(r['delay'], 'd')} | {', '.join(r['first_alerts']) or '—'} | "
                     f"{r['classification'] or '—'} | {baseline:.3f} | {fmt(r['worst'])} | {fmt(r['after'])} | "
                     f"{fmt(r['recovery'], '.0%')} | {fmt(r['vs_no_shift'], '.0%')} | {fmt(r['days_to_recover'], 'd')} | "
                     f"{r['retrains']} ({r['promoted']}) | {r['decided']['counterfactual']} / {r['decided']['holdout']} | "
                     f"{refused_str(r)} | {canary_str(r)} | {verdict_str(r)} | "
                     f"{'yes' if r['final_above_baselines'] else 'NO'} (v{r['final_version']}) |")

    all_runs = [(f"{r['scenario']}/{r['policy']}", r) for r in results]
    if stable is not None:
        all_runs = [("stable", stable["figures"]), (f"stable, retrain every {RETRAIN_EVERY} days",
                                                    stable["retrained_figures"])] + all_runs
    if small is not None:
        all_runs = [("small world stable", small["figures"])] + all_runs
    wrong = [(name, j) for name, f in all_runs for j in f["jobs"].values()
             if (j["truth"] or {}).get("verdict") not in (None, "right")]
    ess = [e for _, f in all_runs for e in f["ess"]]
    if any(f["retrains"] for _, f in all_runs):
        total = sum(f["retrains"] for _, f in all_runs)
        cf = sum(f["decided"]["counterfactual"] for _, f in all_runs)
        lines.append(f"\n## Gate decisions and the truth\n\n{total} retrains in all runs; the counterfactual estimate "
                     f"decided {cf}, the holdout {total - cf} (ESS of the holdout days' exploration log: "
                     + (f"{min(ess):,.0f}–{max(ess):,.0f}, median {np.median(ess):,.0f}" if ess else "—")
                     + "). Wrong verdicts by the truth (candidate − production expected watches/list on the next "
                     "day; 'wrong' beyond the truth's margin): " + (str(len(wrong)) if wrong else "none") + ".")
        for name, j in wrong:
            t = j["truth"]
            est = (f"DR Δ {j['point']:+.4f} [{j['lo']:+.4f}, {j['hi']:+.4f}], ESS {j['ess']:,.0f}"
                   if j.get("point") is not None else "no counterfactual estimate")
            why = "; ".join(reason.lstrip("✗ ") for _, reason in j["failed"]) or "passed"
            lines.append(f"- {name}: v{j['version']} {t['verdict']} — truth Δ watches/list {t['difference']:+.4f} "
                         f"(margin {t['margin']}{_truth_hit_rate(t)}), decided on the {j['decided_by']} ({est}); gate: {why}"
                         + (f"; release: {j['fate']}" if j.get("fate") else ""))

    rolled = [(name, j) for name, f in all_runs for j in f["jobs"].values() if j.get("fate") == "rolled-back"]
    if rolled:
        lines.append(f"\nCanaries rolled back ({len(rolled)}), with the gate's estimate and the truth at the retrain:")
        for name, j in rolled:
            t = j["truth"] or {}
            est = (f"DR Δ watches/list {j['point']:+.4f} [{j['lo']:+.4f}, {j['hi']:+.4f}]"
                   if j.get("point") is not None else "no counterfactual estimate")
            lines.append(f"- {name}: v{j['version']} — {est}; truth {t.get('verdict', '—')}, Δ watches/list "
                         f"{fmt(t.get('difference'), '+.4f')}{_truth_hit_rate(t)}; release policy: {j['end_reason']}")

    lines.append("\n## Goals\n")
    taste = [r for r in results if r["scenario"] != "data-quality"]
    dq = [r for r in results if r["scenario"] == "data-quality"]

    def verdict(ok, applicable=True):
        return "n/a" if not applicable else ("PASS" if ok else "FAIL")

    late = [f"{r['scenario']}/{r['policy']} ({fmt(r['delay'], 'd', 'never')})" for r in taste
            if r["delay"] is None or r["delay"] > DETECT_WITHIN]
    lines.append(f"- every taste shift detected within {DETECT_WITHIN} days: {verdict(not late, bool(taste))}"
                 + (f" — late or missed: {', '.join(late)}" if late else ""))
    for name, st in (("default world", stable), (f"{SMALL_WORLD['users']}-user world", small)):
        if st is not None:
            lines.append(f"- zero false alarms in {st['days']} stable days, {name}: {verdict(not st['opened'])}"
                         f" ({len(st['opened'])} opened)")
        else:
            lines.append(f"- zero false alarms, {name}: n/a (not run)")
    auto = [r for r in taste if r["policy"] == "on-alert"]
    never = [r["scenario"] for r in auto if r["days_to_recover"] is None]
    days = ", ".join(f"{r['scenario']} {fmt(r['days_to_recover'], 'd', 'never')}" for r in auto)
    manual_days = ", ".join(f"{r['scenario']} {fmt(r['days_to_recover'], 'd', 'never')}" for r in taste
                            if r["policy"] == "manual")
    lines.append(f"- back to ≥ {RECOVERY_SHARE:.0%} of the pre-shift hit rate (2-day mean) after on-alert retraining: "
                 f"{verdict(not never, bool(auto))} — days after detection: {days} (manual, no retraining: {manual_days})")
    low = [f"{r['scenario']} ({fmt(r['recovery'], '.0%')})" for r in auto
           if r["recovery"] is None or r["recovery"] < RECOVERY_SHARE]
    lines.append(f"- sustained: mean of the last 3 days ≥ {RECOVERY_SHARE:.0%} of baseline with on-alert retraining: "
                 f"{verdict(not low, bool(auto))}" + (f" — below: {', '.join(low)}" if low else ""))
    if no_shift:
        low_cf = [f"{r['scenario']} ({fmt(r['vs_no_shift'], '.0%')})" for r in auto
                  if r["vs_no_shift"] is None or r["vs_no_shift"] < 1.0]
        lines.append(f"- recovery against the no-shift run on the same days (the world's own decay removed) ≥ 100 % "
                     f"for every shift with on-alert retraining: {verdict(not low_cf, bool(auto))} — "
                     + ", ".join(f"{r['scenario']} {fmt(r['vs_no_shift'], '.0%')}" for r in auto))
        gains = [f"{r['scenario']} {fmt(r['after'], '.3f')} vs {fmt(m['after'], '.3f')}" for r in auto
                 for m in results if m["scenario"] == r["scenario"] and m["policy"] == "manual"]
        lines.append(f"  (on-alert vs manual, hit rate after: {'; '.join(gains)})")
    judged = sum(sum(v for k, v in f["verdicts"].items() if k != "none") for _, f in all_runs)
    lines.append(f"- every gate decision right by the truth: {verdict(not wrong, bool(judged))} — {judged} judged, "
                 f"{len(wrong)} wrong" + (f" ({', '.join(sorted({n for n, _ in wrong}))})" if wrong else ""))
    under = [f"{r['scenario']}/{r['policy']}" for r in results if not r["final_above_baselines"]]
    lines.append(f"- no run ends with a production model below its baselines: {verdict(not under, bool(results))}"
                 + (f" — below: {', '.join(under)}" if under else ""))
    bad_dq = [f"{r['policy']} ({r['classification'] or 'no alert'})" for r in dq if r["classification"] != "data incident"]
    lines.append(f"- data-quality flagged as a data incident: {verdict(not bad_dq, bool(dq))}"
                 + (f" — {', '.join(bad_dq)}" if bad_dq else ""))
    dq_retrains = [r for r in dq if r["retrains"]]
    if dq:
        lines.append(f"  (data-quality runs that retrained: {len(dq_retrains)})")
    wrong_class = [f"{r['scenario']}/{r['policy']} ({r['classification']})" for r in taste
                   if r["classification"] is not None and r["classification"] != "taste shift"]
    if taste:
        lines.append(f"- taste shifts classified as 'taste shift' at detection: {verdict(not wrong_class)}"
                     + (f" — {', '.join(wrong_class)}" if wrong_class else ""))

    lines.append("\n## Timings\n")
    lines.append(f"total wall time {wall:.0f} s (world {t_world:.1f} s, first retrain {t_retrain:.1f} s); "
                 f"one closed-loop day without retrain: mean {np.mean(day_times):.2f} s over {len(day_times)} days"
                 + (f"; with a retrain: mean {np.mean(retrain_day_times):.2f} s over {len(retrain_day_times)} days"
                    if retrain_day_times else "") + ".")
    if details:
        lines.append("\n## Per-day logs")
        lines += details
    print("\n".join(lines))


if __name__ == "__main__":
    main()
