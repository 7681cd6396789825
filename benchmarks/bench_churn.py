"""Churn benchmark (issue 17): how the recommender moves churn, and the churn model against the recency rule.

Usage: python benchmarks/bench_churn.py [--users 3000] [--movies 1500] [--first-days 30] [--days 42]
                                        [--out benchmarks/results/churn.md] [--quick]
       --quick: 800 users, 400 movies (a fast check; the figures are noisier).

1. The default world: what the first start builds (3,000 users, 1,500 movies, 30 days, seed 42), its ETL and
   first production model (`pipeline.retrain`, ALS + ranker through the gate).
2. The same world continued `--days` days twice, from two copies of that folder:
   - with the recommender: the closed loop (`loop.run`, manual retraining policy: the first model serves
     throughout, lists are served in-process, the ETL and monitoring run daily);
   - Top 50 only: the open loop (`simulation.simulate`: users see the Top 50 row and browse, nothing is served).
   Churn in the world: the share of users present at the fork who had left at its end (World.left), and the
   observable 14-day churn rate from the warehouse (`churn_data.churn_rate_by_day`, mean over the days whose
   14-day horizon falls inside the continuation).
3. The churn model trained on the continued world with the recommender (`churn_pipeline.train`): ROC AUC, PR AUC,
   Brier, top-decile lift and calibration against the recency rule on the same holdout snapshot, and the gate.

Reproducibility: a fixed pseudonymization key (RETRO_PSEUDONYM_KEY, unless set) and seed 42, so two runs on the
same code print the same numbers.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.pseudonym import KEY_ENV  # noqa: E402
from core.settings import load_settings  # noqa: E402
from core.simulation import loop, simulation  # noqa: E402
from core.store.mlopsdb import clone_home  # noqa: E402
from core.training import churn_pipeline, pipeline  # noqa: E402
from core.warehouse import churn_data, etl  # noqa: E402


def left_share(settings, present: np.ndarray) -> float:
    world = simulation.load_world(settings)
    return float(world.left[: len(present)][present].mean())


def observed_churn(settings, fork: pd.Timestamp) -> float:
    rates = churn_data.churn_rate_by_day(settings, start=fork)
    return float(rates["churn_rate"].mean()) if len(rates) else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=3000)
    parser.add_argument("--movies", type=int, default=1500)
    parser.add_argument("--first-days", type=int, default=30)
    parser.add_argument("--days", type=int, default=42)
    parser.add_argument("--out", default=None, help="write the Markdown table here too")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.users, args.movies = 800, 400
    os.environ.setdefault(KEY_ENV, "bench-churn-fixed-key-0123456789abcdef")
    root = Path(tempfile.mkdtemp(prefix="bench-churn-"))
    base = load_settings(root / "base")
    t0 = time.perf_counter()
    simulation.init_world(base, seed=42, users=args.users, movies=args.movies, days=args.first_days)
    pipeline.retrain(base, trigger="first-start")
    built = time.perf_counter() - t0
    present = ~simulation.load_world(base).left
    fork = simulation.day_start(args.first_days)
    served, top50 = clone_home(base, root / "served"), clone_home(base, root / "top50")

    t = time.perf_counter()
    loop.run(served, args.days, policy_mode="manual")
    t_served = time.perf_counter() - t
    t = time.perf_counter()
    simulation.simulate(top50, args.days)
    etl.run(top50)
    t_top50 = time.perf_counter() - t

    rows = {name: {"left": left_share(s, present), "observed": observed_churn(s, pd.Timestamp(fork))}
            for name, s in (("with the recommender", served), ("Top 50 only", top50))}
    t = time.perf_counter()
    result = churn_pipeline.train(served)
    t_churn = time.perf_counter() - t
    m, b = result["metrics"], result["baselines"]["recency"]

    lines = [f"World: {args.users:,} users, {args.movies:,} movies, seed 42; first start {args.first_days} days, "
             f"then {args.days} days continued from two copies (built in {built:.0f} s; closed loop {t_served:.0f} s, "
             f"open loop + ETL {t_top50:.0f} s).", "",
             "| continued with | users who left (of those present at the fork) | observed 14-day churn rate |",
             "| --- | ---: | ---: |"]
    lines += [f"| {name} | {100 * r['left']:.1f} % | {100 * r['observed']:.1f} % |" for name, r in rows.items()]
    lines += ["", f"Churn model v{result['version']} on the continued world with the recommender "
                  f"(training snapshots {', '.join(result['snapshots']['train'])}; holdout "
                  f"{result['snapshots']['holdout'][0]}, {m['rows']:,} users, {m['churned']:,} churned; "
                  f"trained in {t_churn:.1f} s):", "",
              "| metric | churn model | recency rule |", "| --- | ---: | ---: |"]
    for label, key in (("ROC AUC", "roc_auc"), ("PR AUC", "pr_auc"), ("Brier score (lower is better)", "brier"),
                       ("lift in the top decile", "top_decile_lift"), ("mean predicted risk", "mean_predicted")):
        lines.append(f"| {label} | {m[key]:.4f} | {b[key]:.4f} |")
    lines.append(f"| observed churn rate (holdout) | {m['base_rate']:.4f} | {b['base_rate']:.4f} |")
    cal = m["calibration"]
    lines += ["", "Calibration of the model (quantile bins, predicted → observed): "
              + ", ".join(f"{p:.2f} → {o:.2f}" for p, o in zip(cal["predicted"], cal["observed"])),
              "", "Gate: " + ("promoted" if result["promoted"] else "kept as candidate") + " — "
              + "; ".join(result["gate"]["reasons"])]
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text("# Churn benchmark (`benchmarks/bench_churn.py`)\n\n" + text + "\n")


if __name__ == "__main__":
    main()
