"""Ads benchmark (issue 25.5): how much engagement and churn does ad revenue cost, and does the ads model's
targeting earn more than the campaigns' click rates at equal or lower churn?

Usage: python benchmarks/bench_ads.py [--users 3000] [--movies 1500] [--first-days 30] [--days 30]
                                      [--policy-mode scheduled|on-alert] [--retrain-every N]
                                      [--bootstrap 2000] [--out benchmarks/results/ads.md] [--quick]
       --quick: 800 users, 400 movies, 10 days (a fast check; the figures are noisier).
       --policy-mode: the retraining policy's mode in the copy where the platform runs the model (default scheduled).
       --retrain-every N: one more copy where the model is retrained every N days on everything before and served
                          whether or not its gate passes (what the platform would not do).

1. The default world: what the first start builds (3,000 users, 1,500 movies, 30 days, seed 42, ads on with the
   campaign-rate policy during those days), its ETL and first production model (`pipeline.retrain`).
2. Copies of that folder, each continued `--days` days in the closed loop (served lists, daily ETL,
   monitoring; the recommender's retraining policy does not act, so the first recommender serves throughout — the
   variants differ only in their ads):
   - no ads: `ads_day.switch(off)`;
   - untargeted: a random eligible campaign per list (`AdPolicy("untargeted")`);
   - campaign rates (the baseline): bid × each campaign's click rate so far (`AdPolicy("campaign-rate")`);
   - the model, trained once: the ads model trained on the days before the fork (`core.ads.pipeline.train`,
     point-in-time rows from the warehouse), serving through its scorer (`core.ads.scoring.scorer`,
     `AdPolicy("model", ...)`) all along, used whether or not its gate promoted it (the gate's verdict is printed);
   - the model as the platform runs it: the same training at the fork (`ads train`; an operator promotes it when the
     gate refuses it, as the first ads model is an operator's call), then what `loop.run` does for ads each day: the
     slots chosen by the production ads model (`loop.choose_ad_policy`), the ads monitoring (`loop.monitor_ads`,
     ads-drift alerts) and the retraining policy (`policy.apply_ads` in `--policy-mode`: on an ads-drift alert, when
     the model is possibly stale against its CF/churn versions, every 7 days when scheduled), a retrained model
     promoted only when the ads gate passes;
   - with `--retrain-every N`, the model retrained every N days on all the days before (again served whether or not
     the gate promotes it) — as the baseline's click rates follow every day.
3. Per variant over the continuation: revenue (clicks' second prices), click rate, the recommender's online hit
   rate@10 (mean over the days), users who left (of those present at the fork, the world's truth) and the
   observed 14-day churn rate (the warehouse's label, mean over the days whose horizon ends inside the run).
4. The noise: a paired bootstrap over users (`--bootstrap` resamples; every copy has the same users and the same
   organic draws): the 95 % interval of each copy's revenue against the baseline's (ratio of sums − 1) and of the
   difference in users who left (percentage points, users present at the fork). It covers which users the run
   happened to have and their click draws, not a different world (another seed).

Reproducibility: a fixed pseudonymization key (RETRO_PSEUDONYM_KEY, unless set) and seed 42; the organic events
of all four copies are the same draws (ads draw from their own stream), so only churn and the ads differ.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.ads import pipeline as ads_pipeline  # noqa: E402
from core.ads import scoring  # noqa: E402
from core.constants import TS_FORMAT  # noqa: E402
from core.monitoring import monitoring  # noqa: E402
from core.pseudonym import KEY_ENV  # noqa: E402
from core.serving import serving  # noqa: E402
from core.settings import load_settings  # noqa: E402
from core.monitoring import policy as retraining_policy  # noqa: E402
from core.simulation import ads_day, loop, simulation  # noqa: E402
from core.store import adslog, opsdb  # noqa: E402
from core.store.mlopsdb import clone_home  # noqa: E402
from core.text import plural  # noqa: E402
from core.training import pipeline, registry  # noqa: E402
from core.training.top50 import top50  # noqa: E402
from core.warehouse import churn_data, etl  # noqa: E402

BASELINE = "campaign rates (baseline)"
ONCE = "the model, trained once at the fork"
PLATFORM = "the model as the platform runs it"
VARIANTS = ("no ads", "untargeted", BASELINE, ONCE, PLATFORM)


def closed_loop(settings, days: int, ad_policy: ads_day.AdPolicy | None, policy_mode: str | None = None,
                days_log: list | None = None) -> list[float]:
    """`days` closed-loop days with `ad_policy` (what `loop.run` does each day, minus the release and the
    recommender's retraining policy); returns each day's online hit rate@10 of the served lists. With
    `policy_mode`, the ads as `loop.run` runs them instead: each day's slots chosen by the production ads model,
    the ads monitoring and `policy.apply_ads` in that mode (each day's choice and action appended to `days_log`)."""
    hit_rates = []
    with opsdb.session(settings) as db:
        first = int(opsdb.get_meta(db, "sim_day", "0"))
    for day in range(first, first + days):
        start = simulation.day_start(day)
        served_at = start.strftime(TS_FORMAT)
        with opsdb.session(settings) as db:
            monitoring.record_top50(settings, start, top50(db).movie_ids)

        def serve(user_ids, k, _at=served_at):
            return {u: r.movie_ids for u, r in serving.recommend_many(settings, user_ids, k, at=_at).items()}

        ads_error = None
        if policy_mode is not None:
            with opsdb.session(settings) as db:
                ad_policy, ads_error = loop.choose_ad_policy(settings, db)
        simulation.simulate(settings, 1, serve=serve, ad_policy=ad_policy)
        now = (start + timedelta(days=1)).strftime(TS_FORMAT)
        etl.run(settings, at=now)
        report = monitoring.monitor_day(settings, start)
        loop.score_churn(settings, now)
        if policy_mode is not None:
            with opsdb.session(settings) as db:
                ads = loop.monitor_ads(settings, db, start)
            action = retraining_policy.apply_ads(settings, ads, now=now, day=report.day, mode=policy_mode)
            if action and action["promoted"]:
                serving.clear_caches()
            days_log.append({"day": report.day, "ad_policy": ad_policy.name if ad_policy else "campaign-rate",
                             "model_version": getattr(ad_policy, "model_version", None), "ads_error": ads_error,
                             "ads": ads, "action": action})
        if report.online.get("hit_rate_model") is not None:
            hit_rates.append(float(report.online["hit_rate_model"]))
    return hit_rates


def outcome(settings, present: np.ndarray, fork: str, hit_rates: list[float]) -> dict:
    with opsdb.session(settings) as db:
        totals = adslog.campaign_totals(db, fork, None)
        by_user = dict(db.execute("SELECT user_id, coalesce(sum(price), 0) FROM ad_impressions WHERE shown_at >= ? "
                                  "GROUP BY user_id", [fork]).fetchall())
    world = simulation.load_world(settings)
    rates = churn_data.churn_rate_by_day(settings, start=pd.Timestamp(fork))
    impressions, clicks = int(totals["impressions"].sum()), int(totals["clicks"].sum())
    return {"revenue": float(totals["spend"].sum()), "impressions": impressions, "clicks": clicks,
            "click_rate": clicks / impressions if impressions else float("nan"),
            "hit_rate": float(np.mean(hit_rates)) if hit_rates else float("nan"),
            "left": float(world.left[: len(present)][present].mean()),
            "observed_churn": float(rates["churn_rate"].mean()) if len(rates) else float("nan"),
            "churn_days": int(len(rates)),
            # per user, for the paired bootstrap: revenue by user id, and who of those present at the fork left
            "revenue_by_user": by_user, "left_by_user": world.left[: len(present)][present].astype(float)}


def bootstrap(rows: dict[str, dict], resamples: int, seed: int = 42) -> dict[str, dict]:
    """Paired bootstrap over users against the baseline: {copy: {revenue: (lo, hi) of revenue / baseline − 1 (None
    without ads), left: (lo, hi) of the difference in the share of users who left}} (95 % percentile intervals)."""
    base = rows.get(BASELINE)
    if base is None or resamples < 1:
        return {}
    users = sorted(set().union(*(r["revenue_by_user"] for r in rows.values())))
    rng = np.random.default_rng(seed)
    pick_rev = rng.integers(0, len(users), (resamples, len(users)))
    n_left = len(base["left_by_user"])
    pick_left = rng.integers(0, n_left, (resamples, n_left))
    base_rev = np.array([base["revenue_by_user"].get(u, 0.0) for u in users])[pick_rev].sum(axis=1)
    out = {}
    for name, r in rows.items():
        if name == BASELINE:
            continue
        rev = np.array([r["revenue_by_user"].get(u, 0.0) for u in users])[pick_rev].sum(axis=1)
        left = (r["left_by_user"] - base["left_by_user"])[pick_left].mean(axis=1)
        out[name] = {"revenue": None if name == "no ads" else tuple(np.percentile(rev / base_rev - 1, [2.5, 97.5])),
                     "left": tuple(np.percentile(left, [2.5, 97.5]))}
    return out


def retrained(settings, days: int, every: int) -> tuple[list[float], list[dict]]:
    """`days` closed-loop days with the ads model retrained every `every` days (first at the fork)."""
    hit_rates, results = [], []
    for first in range(0, days, every):
        policy, result, _ = train_model(settings)
        results.append(result)
        hit_rates += closed_loop(settings, min(every, days - first), policy)
    return hit_rates, results


def train_model(settings) -> tuple[ads_day.AdPolicy, dict, float]:
    """Train the ads model on the warehouse's impressions so far; the policy serving it (promoted or not)."""
    t = time.perf_counter()
    result = ads_pipeline.train(settings)
    seconds = time.perf_counter() - t
    row = registry.get_version(settings, int(result["version"]))
    score = scoring.scorer(settings, row)
    return ads_day.AdPolicy("model", score, score.model_version), result, seconds


def table(rows: dict[str, dict], noise: dict[str, dict]) -> list[str]:
    base = rows.get(BASELINE)
    lines = ["| continued with | revenue | vs baseline (95 % interval) | impressions | clicks | click rate "
             "| online hit rate@10 | users who left | vs baseline, points (95 % interval) | observed 14-day churn |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, r in rows.items():
        vs = "—" if base is None or name == "no ads" or not base["revenue"] else \
            f"{100 * (r['revenue'] / base['revenue'] - 1):+.1f} %"
        left_vs = "—" if base is None or name == BASELINE else f"{100 * (r['left'] - base['left']):+.2f}"
        if name in noise:
            if noise[name]["revenue"] is not None:
                lo, hi = noise[name]["revenue"]
                vs += f" ({100 * lo:+.1f} … {100 * hi:+.1f})"
            lo, hi = noise[name]["left"]
            left_vs += f" ({100 * lo:+.2f} … {100 * hi:+.2f})"
        rate = "—" if np.isnan(r["click_rate"]) else f"{100 * r['click_rate']:.2f} %"
        lines.append(f"| {name} | {r['revenue']:,.2f} | {vs} | {r['impressions']:,} | {r['clicks']:,} | {rate} "
                     f"| {r['hit_rate']:.4f} | {100 * r['left']:.2f} % | {left_vs} | {100 * r['observed_churn']:.2f} % |")
    return lines


def retrain_line(r: dict, prefix: str) -> str:
    m, b = r["metrics"], r["baselines"]["campaign_rate"]
    return (f"- {prefix}ads v{r['version']} on {r['split']['train'][0]}..{r['split']['holdout'][-1]}, "
            f"CF versions {r['depends_on']['used'].get('cf') or 'none'}; holdout log loss {m['log_loss']:.4f} vs "
            f"{b['log_loss']:.4f}, ECE {m['calibration_error']:.4f} vs {b['calibration_error']:.4f}, AUC "
            f"{m['roc_auc'] or float('nan'):.3f} vs {b['roc_auc'] or float('nan'):.3f}; gate "
            + ("passed" if r["promoted"] else "not passed"))


def platform_lines(result: dict, days_log: list[dict], mode: str) -> list[str]:
    """What the platform did in its copy: the first model's promotion, each day's chooser, each ads retrain."""
    served = [d for d in days_log if d["ad_policy"] == "model"]
    versions = sorted({d["model_version"] for d in served})
    errors = [d for d in days_log if d["ads_error"]]
    lines = ["", f"The model as the platform runs it (retraining policy `{mode}`): ads v{result['version']} trained at "
                 "the fork, " + ("promoted by its gate" if result["promoted"] else
                                 "refused by its gate and promoted by an operator (the first ads model is their call)")
             + f"; the production ads model chose the slots on {len(served)} of {len(days_log)} days (versions "
             + (", ".join(f"v{v}" for v in versions) or "none") + ")"
             + (f", campaign rates on {len(errors)} days its artifact failed to load" if errors else "") + "; "
             + f"{plural(sum(1 for d in days_log if d['action']), 'ads retrain')} by the policy, "
             + f"{sum(1 for d in days_log if d['action'] and d['action']['promoted'])} promoted; ads-drift alerts "
             + f"opened on {sum(1 for d in days_log if d['ads'] and d['ads'].get('opened'))} days:"]
    for d in days_log:
        a = d["action"]
        if a:
            outcome_ = (f"error {a['error']}" if a["error"] else
                        f"ads v{a['version']}, log loss {a['log_loss']:.4f}, ECE {a['calibration_error']:.4f}, gate "
                        + ("passed, promoted" if a["promoted"] else "not passed"))
            lines.append(f"- {d['day']}: {a['cause']} → {outcome_}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=3000)
    parser.add_argument("--movies", type=int, default=1500)
    parser.add_argument("--first-days", type=int, default=30)
    parser.add_argument("--days", type=int, default=None, help="days continued (default 30; 10 with --quick)")
    parser.add_argument("--retrain-every", type=int, default=0, help="add a copy retraining the model every N days")
    parser.add_argument("--policy-mode", default="scheduled", choices=("scheduled", "on-alert"),
                        help="the retraining policy's mode in the platform's copy")
    parser.add_argument("--bootstrap", type=int, default=2000, help="paired bootstrap resamples over users")
    parser.add_argument("--out", default=None, help="write the Markdown result here too")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.users, args.movies = 800, 400
    days = args.days or (10 if args.quick else 30)
    os.environ.setdefault(KEY_ENV, "bench-ads-fixed-key-0123456789abcdef")
    root = Path(tempfile.mkdtemp(prefix="bench-ads-"))
    base = load_settings(root / "base")
    t0 = time.perf_counter()
    simulation.init_world(base, seed=42, users=args.users, movies=args.movies, days=args.first_days)
    pipeline.retrain(base, trigger="first-start")
    built = time.perf_counter() - t0
    present = ~simulation.load_world(base).left
    fork = simulation.day_start(args.first_days).strftime(TS_FORMAT)

    rows, seconds, trained, retrains, platform, days_log = {}, {}, None, [], None, []
    variants = VARIANTS + ((f"the model, retrained every {args.retrain_every} days",) if args.retrain_every else ())
    for i, name in enumerate(variants):
        home = clone_home(base, root / f"v{i}")
        serving.clear_caches()
        t = time.perf_counter()
        policy = None
        if name == "no ads":
            ads_day.switch(home, False)
        elif name == "untargeted":
            policy = ads_day.AdPolicy("untargeted")
        elif name.startswith("campaign rates"):
            policy = ads_day.AdPolicy("campaign-rate")
        elif name == ONCE:
            policy, trained, train_s = train_model(home)
        elif name == PLATFORM:
            platform = ads_pipeline.train(home)
            if not platform["promoted"]:
                registry.promote(home, int(platform["version"]), "operator (bench_ads)",
                                 "the first ads model, served although its gate refused it")
                serving.clear_caches()
        if name.startswith("the model, retrained"):
            hit_rates, retrains = retrained(home, days, args.retrain_every)
        elif name == PLATFORM:
            hit_rates = closed_loop(home, days, None, policy_mode=args.policy_mode, days_log=days_log)
        else:
            hit_rates = closed_loop(home, days, policy)
        seconds[name] = time.perf_counter() - t
        rows[name] = outcome(home, present, fork, hit_rates)
        print(f"{name}: {seconds[name]:.0f} s", file=sys.stderr, flush=True)
    total = time.perf_counter() - t0
    noise = bootstrap(rows, args.bootstrap)

    lines = [f"World: {args.users:,} users, {args.movies:,} movies, seed 42; first start {args.first_days} days "
             f"(built with its first recommender in {built:.0f} s), then {days} days continued in the closed loop "
             f"from {len(seconds)} copies of one fork (" + ", ".join(f"{n} {s:.0f} s" for n, s in seconds.items())
             + f"; whole run {total / 60:.1f} min, load average {os.getloadavg()[0]:.1f} at the end).", ""]
    lines += table(rows, noise)
    if noise:
        lines += ["", f"In brackets: 95 % intervals of a paired bootstrap over users ({args.bootstrap:,} resamples; the "
                      "copies share users and organic draws) — which users and click draws the run had, not "
                      "another world."]
    if trained is not None:
        m, b = trained["metrics"], trained["baselines"]["campaign_rate"]
        split = trained["split"]
        lines += ["", f"The model: ads v{trained['version']} trained in {train_s:.1f} s on the days before the fork "
                      f"(train {split['train'][0]}..{split['train'][-1]}, calibration {split['calibration'][0]}.."
                      f"{split['calibration'][-1]}, holdout {split['holdout'][0]}..{split['holdout'][-1]}: "
                      f"{m['rows']:,} impressions, {m['clicks']:,} clicks); gate: "
                      + ("passed, promoted" if trained["promoted"] else "not passed (served anyway for the comparison)")
                      + ".", "", "| holdout | model | campaign click rates |", "| --- | ---: | ---: |"]
        for label, key in (("log loss", "log_loss"), ("ROC AUC", "roc_auc"), ("ECE (10 bins)", "calibration_error")):
            mv, bv = m.get(key), b.get(key)
            lines.append(f"| {label} | {'—' if mv is None else f'{mv:.4f}'} | {'—' if bv is None else f'{bv:.4f}'} |")
        used = trained["depends_on"]["used"]
        lines += ["", f"Its features' inputs: CF versions {used.get('cf') or 'none'} (genre affinities), churn "
                      f"versions {used.get('churn') or 'none'}; "
                      + (trained["depends_on"]["churn_neutral"]["note"] or "every row had a churn score") + "."]
    if platform is not None:
        lines += platform_lines(platform, days_log, args.policy_mode)
    if retrains:
        lines += ["", f"The model, retrained every {args.retrain_every} days (served whether or not its gate passed):"]
    for r in retrains:
        lines.append(retrain_line(r, "retrained: "))
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text("# Ads benchmark (`benchmarks/bench_ads.py`)\n\n" + text + "\n")


if __name__ == "__main__":
    main()
