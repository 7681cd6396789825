"""Drift benchmark: detection delay, false alarms and recovery by retraining, per behaviour shift.

Usage: python benchmarks/bench_drift.py [--days 14] [--stable-days 30] [--scenarios trend,viral,...]
                                        [--strength 1.0] [--duration 14] [--quick]
       --quick: a smaller world (800 users, 300 movies, 14 days) for a fast check.
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
  decay — users work through the titles that suit them best — taken out).

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
import sqlite3
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


def gate_reasons(settings) -> dict[int, dict]:
    """job_id -> {'reasons': gate reasons, 'ranker': ranker outcome} of the retrain jobs in this folder."""
    con = sqlite3.connect(settings.mlops_db)
    try:
        rows = con.execute("SELECT job_id, result FROM jobs WHERE kind = 'retrain' AND result IS NOT NULL").fetchall()
    finally:
        con.close()
    out = {}
    for job_id, result in rows:
        try:
            res = json.loads(result)
            rk = res.get("ranker")
            ranker = ("" if rk is None else f"ranker error: {rk['error']}" if "error" in rk
                      else f"ranker v{rk.get('version')} {'promoted' if rk.get('promoted') else 'kept as candidate'}")
            out[int(job_id)] = {"reasons": res.get("gate", {}).get("reasons", []), "ranker": ranker}
        except (TypeError, ValueError):
            pass
    return out


def gate_outcomes(settings) -> dict:
    """Refused CF promotions grouped by the failed gate check, and whether production ends above its baselines."""
    con = sqlite3.connect(settings.mlops_db)
    try:
        rows = con.execute("SELECT result FROM jobs WHERE kind = 'retrain' AND result IS NOT NULL").fetchall()
    finally:
        con.close()
    refused: dict[str, int] = {}
    for (result,) in rows:
        res = json.loads(result)
        if res.get("promoted"):
            continue
        failed = [name for name, c in (res.get("gate", {}).get("checks") or {}).items() if not c.get("passed")]
        for name in failed or ["(none recorded)"]:
            refused[name] = refused.get(name, 0) + 1
    prod = registry.production(settings)
    run = tracking.get_run(settings, prod["run_id"]) if prod else None
    floor = registry.baseline_floor({"metrics": json.dumps(run["metrics"]), "baselines": json.dumps(run["baselines"])}) \
        if run else {"passes": True}
    return {"refused": sum(1 for (r,) in rows if not json.loads(r).get("promoted")), "refused_by": refused,
            "final_above_baselines": floor["passes"], "final_version": prod["version"] if prod else None}


def summarize(log: list[dict], baseline: float) -> dict:
    hr = [r["hit_rate_model"] for r in log]
    valid = [h for h in hr if h is not None]
    first = next((i for i, r in enumerate(log) if r["opened"]), None)
    actions = [(i, r["action"]) for i, r in enumerate(log) if r["action"]]
    promoted = [i for i, a in actions if a["promoted"]]
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
        "promoted": len(promoted),
        "alerts_opened": sum(len(r["opened"]) for r in log),
    }


def fmt(x, spec=".3f", none="—") -> str:
    return none if x is None else format(x, spec)


def detail_table(title: str, log: list[dict], jobs: dict[int, dict], per_day: list[float]) -> list[str]:
    out = [f"\n#### {title}\n",
           "| day | date | classification | hit rate model | hit rate Top 50 | quarantine | opened | closed | action | s |",
           "| ---: | --- | --- | ---: | ---: | ---: | --- | --- | --- | ---: |"]
    for i, r in enumerate(log):
        a = r["action"]
        if a:
            job = jobs.get(int(a["job_id"]), {})
            act = f"retrain v{a['version']} {'promoted' if a['promoted'] else 'REFUSED'} ({a['cause']})"
            if not a["promoted"]:
                act += " — gate: " + "; ".join(job.get("reasons", []))
            if job.get("ranker"):
                act += f"; {job['ranker']}"
        else:
            act = ""
        out.append(f"| {i + 1} | {r['date']} | {r['classification']} | {fmt(r['hit_rate_model'])} | "
                   f"{fmt(r['hit_rate_top50'])} | {r['quarantine_rate']:.3%} | {', '.join(r['opened'])} | "
                   f"{', '.join(r['closed'])} | {act} | {fmt(per_day[i] if i < len(per_day) else None, '.1f')} |")
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--days", type=int, default=14, help="simulated days per shift scenario")
    p.add_argument("--stable-days", type=int, default=30, help="stable days for the false-alarm run (0: skip)")
    p.add_argument("--scenarios", default=",".join(SCENARIO_PARAMS), help="comma-separated shift kinds")
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
    args = p.parse_args()
    if args.quick:
        args.users, args.movies, args.world_days = 800, 300, 14
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = [s for s in scenarios if s not in simulation.SHIFT_KINDS]
    if unknown:
        p.error(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(simulation.SHIFT_KINDS)}")
    if args.days < 1:
        p.error("--days must be >= 1")

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

    def note(msg):
        print(f"[{time.perf_counter() - wall0:7.1f}s] {msg}", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="bench-drift-") as tmp:
        tmp = Path(tmp)
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
        baseline_top50 = float(np.mean([r["hit_rate_top50"] for r in warm["log"] if r["hit_rate_top50"] is not None]))
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

        # 1. False alarms on stable days.
        stable = None
        if args.stable_days > 0:
            s = fresh_copy(base, tmp / "stable")
            out, per_day, secs = timed_run(s, args.stable_days, policy_mode="manual")
            day_times += per_day
            opened = [(i + 1, a, r["classification"]) for i, r in enumerate(out["log"]) for a in r["opened"]]
            hr = [r["hit_rate_model"] for r in out["log"] if r["hit_rate_model"] is not None]
            span = hr[max(0, min(args.days, len(hr)) - 3):min(args.days, len(hr))]
            stable = {"days": args.stable_days, "opened": opened, "secs": secs,
                      "same_span": float(np.mean(span)) if span else None, "same_span_days": min(args.days, len(hr)),
                      "hr_first7": float(np.mean(hr[:7])) if hr else None,
                      "hr_last7": float(np.mean(hr[-7:])) if hr else None,
                      "classes": sorted({r["classification"] for r in out["log"]})}
            note(f"stable: {len(opened)} alert(s) in {args.stable_days} days ({secs:.1f}s)")
            if not args.no_detail:
                details += detail_table(f"stable ({args.stable_days} days, manual)", out["log"], {}, per_day)
            _reset_caches()
            shutil.rmtree(s.home)

            # What retraining alone does in this world: no shift, a retrain every 2 days, same number of days.
            s = fresh_copy(base, tmp / "stable-retrained")
            policy.set_policy(s, "scheduled", RETRAIN_EVERY, actor="bench")
            out, per_day, secs = timed_run(s, args.days, policy_mode="scheduled")
            for r, d in zip(out["log"], per_day):
                (retrain_day_times if r["action"] else day_times).append(d)
            hr = [r["hit_rate_model"] for r in out["log"] if r["hit_rate_model"] is not None]
            stable["retrained_last3"] = float(np.mean(hr[-3:])) if hr else None
            stable["retrained_opened"] = sum(len(r["opened"]) for r in out["log"])
            stable["retrained_runs"] = out["retrains"]
            note(f"stable with a retrain every {RETRAIN_EVERY} days: last 3 days {fmt(stable['retrained_last3'])} "
                 f"({secs:.1f}s)")
            if not args.no_detail:
                details += detail_table(f"stable, retrain every {RETRAIN_EVERY} days ({args.days} days, scheduled)",
                                        out["log"], gate_reasons(s), per_day)
            _reset_caches()
            shutil.rmtree(s.home)

        # 2. Shift scenarios, on-alert vs manual.
        for kind in scenarios:
            for mode in ("on-alert", "manual"):
                s = fresh_copy(base, tmp / f"{kind}-{mode}")
                out, per_day, secs = timed_run(s, args.days, shift=kind, strength=args.strength,
                                               duration=args.duration, params=SCENARIO_PARAMS[kind], policy_mode=mode)
                for r, d in zip(out["log"], per_day):
                    (retrain_day_times if r["action"] else day_times).append(d)
                row = summarize(out["log"], baseline) | {"scenario": kind, "policy": mode, "secs": secs,
                                                          "shift": out.get("shift")} | gate_outcomes(s)
                results.append(row)
                note(f"{kind} / {mode}: delay {row['delay']}, first {row['first_alerts']}, "
                     f"recovery {fmt(row['recovery'], '.2f')}, retrains {row['retrains']} "
                     f"({row['promoted']} promoted), {secs:.1f}s")
                if not args.no_detail:
                    params = out.get("shift", {}).get("params", {})
                    shown = {k: v for k, v in params.items() if k != "movie_ids"}
                    if "movie_ids" in params:
                        shown["new titles"] = len(params["movie_ids"])
                    details += detail_table(f"{kind} ({mode}) — params {json.dumps(shown)}", out["log"],
                                            gate_reasons(s), per_day)
                _reset_caches()
                shutil.rmtree(s.home)
    wall = time.perf_counter() - wall0

    # ------------------------------------------------------------------ report
    lines.append(f"# Drift benchmark\n\nworld: {args.users} users, {args.movies} movies, {args.world_days} days, "
                 f"seed {args.seed}; shifts: strength {args.strength}, duration {args.duration} days, "
                 f"{args.days} simulated days per run. Code {code}; pseudonymization key "
                 + ("fixed by the benchmark." if fixed_key else f"from ${KEY_ENV}."))
    lines.append(f"\nbaseline (mean of the {WARMUP_DAYS} warm-up days, production v{first_model['version']}): "
                 f"model hit rate@10 {baseline:.4f} (Top 50 control {baseline_top50:.4f}); "
                 f"hit rates per warm-up day: {', '.join(f'{h:.3f}' for h in warm_hr)}")
    if stable is not None:
        lines.append(f"\n## False alarms: {stable['days']} stable days (policy manual)\n")
        which = "; ".join(f"day {d}: {a} ({c})" for d, a, c in stable["opened"]) or "none"
        lines.append(f"alerts opened: **{len(stable['opened'])}** — {which}. Classifications seen: "
                     f"{', '.join(stable['classes'])}. Model hit rate: first 7 days {fmt(stable['hr_first7'], '.4f')}, "
                     f"last 7 days {fmt(stable['hr_last7'], '.4f')} (no retraining). Days "
                     f"{stable['same_span_days'] - 2}–{stable['same_span_days']} (the span of 'hit rate after' in the shift "
                     f"runs): {fmt(stable['same_span'], '.4f')} = {fmt(stable['same_span'] / baseline if stable['same_span'] else None, '.0%')} "
                     "of the baseline with no shift at all.")
        if stable.get("retrained_last3") is not None:
            lines.append(f"\nNo shift and a retrain every {RETRAIN_EVERY} days ({stable['retrained_runs']} retrains, "
                         f"{stable['retrained_opened']} alerts) over {args.days} days: last 3 days "
                         f"{stable['retrained_last3']:.4f} = {stable['retrained_last3'] / baseline:.0%} of the baseline — "
                         "what retraining alone does when nothing shifts (users work through the titles that suit "
                         "them best; retraining cannot bring those back).")
    lines.append("\n## Shift scenarios\n")
    no_shift = stable["same_span"] if stable is not None else None
    for r in results:
        r["vs_no_shift"] = None if r["after"] is None or not no_shift else r["after"] / no_shift
    lines.append("| scenario | policy | detection delay (days) | first alert(s) | classification at detection | "
                 "hit rate before (baseline) | worst daily hit rate | hit rate after (last 3 days) | recovery | "
                 "after ÷ no-shift run, same days | days to recover | retrains (promoted) | refused by the gate (why) | "
                 "production at the end beats its baselines |")
    lines.append("| --- | --- | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |")
    for r in results:
        lines.append(f"| {r['scenario']} | {r['policy']} | {fmt(r['delay'], 'd')} | {', '.join(r['first_alerts']) or '—'} | "
                     f"{r['classification'] or '—'} | {baseline:.3f} | {fmt(r['worst'])} | {fmt(r['after'])} | "
                     f"{fmt(r['recovery'], '.0%')} | {fmt(r['vs_no_shift'], '.0%')} | {fmt(r['days_to_recover'], 'd')} | "
                     f"{r['retrains']} ({r['promoted']}) | {r['refused']}"
                     + (f" ({', '.join(f'{k} {v}' for k, v in sorted(r['refused_by'].items()))})" if r["refused"] else "")
                     + f" | {'yes' if r['final_above_baselines'] else 'NO'} (v{r['final_version']}) |")

    lines.append("\n## Goals\n")
    taste = [r for r in results if r["scenario"] != "data-quality"]
    dq = [r for r in results if r["scenario"] == "data-quality"]

    def verdict(ok, applicable=True):
        return "n/a" if not applicable else ("PASS" if ok else "FAIL")

    late = [f"{r['scenario']}/{r['policy']} ({fmt(r['delay'], 'd', 'never')})" for r in taste
            if r["delay"] is None or r["delay"] > DETECT_WITHIN]
    lines.append(f"- every taste shift detected within {DETECT_WITHIN} days: {verdict(not late, bool(taste))}"
                 + (f" — late or missed: {', '.join(late)}" if late else ""))
    if stable is not None:
        lines.append(f"- zero false alarms in {stable['days']} stable days: {verdict(not stable['opened'])}"
                     f" ({len(stable['opened'])} opened)")
    else:
        lines.append("- zero false alarms: n/a (--stable-days 0)")
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
                  if r["vs_no_shift"] is None or r["vs_no_shift"] < RECOVERY_SHARE]
        lines.append(f"- sustained, against the no-shift run on the same days (the world's own decay removed): "
                     f"{verdict(not low_cf, bool(auto))}" + (f" — below: {', '.join(low_cf)}" if low_cf else ""))
        gains = [f"{r['scenario']} {fmt(r['after'], '.3f')} vs {fmt(m['after'], '.3f')}" for r in auto
                 for m in results if m["scenario"] == r["scenario"] and m["policy"] == "manual"]
        lines.append(f"  (on-alert vs manual, hit rate after: {'; '.join(gains)})")
    under = [f"{r['scenario']}/{r['policy']}" for r in results if not r["final_above_baselines"]]
    lines.append(f"- no run ends with a production model below its baselines: {verdict(not under, bool(results))}"
                 + (f" — below: {', '.join(under)}" if under else ""))
    bad_dq = [f"{r['policy']} ({r['classification'] or 'no alert'})" for r in dq if r["classification"] != "data incident"]
    lines.append(f"- data-quality flagged as a data incident: {verdict(not bad_dq, bool(dq))}"
                 + (f" — {', '.join(bad_dq)}" if bad_dq else ""))
    dq_retrains = [r for r in dq if r["retrains"]]
    if dq:
        lines.append(f"  (data-quality runs that retrained: {len(dq_retrains)})")
    wrong = [f"{r['scenario']}/{r['policy']} ({r['classification']})" for r in taste
             if r["classification"] is not None and r["classification"] != "taste shift"]
    if taste:
        lines.append(f"- taste shifts classified as 'taste shift' at detection: {verdict(not wrong)}"
                     + (f" — {', '.join(wrong)}" if wrong else ""))

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
