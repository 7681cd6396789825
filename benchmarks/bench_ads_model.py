"""Ads model figures (issue 25.3): the click-through model against each campaign's click rate on a real world.

Usage: PYTHONPATH=. python benchmarks/bench_ads_model.py [--users 3000] [--movies 1500] [--first-days 30] [--days 14]

1. The default world (seed 42): 3,000 users, 1,500 movies, 30 days with ads chosen by campaign rate, its ETL and
   first production model (`pipeline.retrain`, promoted by hand when a small world's gate leaves it open).
2. `--days` closed-loop days (`loop.run`: lists served, ads chosen by campaign rate, the ETL daily).
3. The ads model trained from the warehouse (`core.ads.pipeline.train`): log loss, ROC AUC, ECE and expected
   revenue on its holdout days, against each campaign's click rate, and the gate.

Reproducibility: a fixed pseudonymization key (RETRO_PSEUDONYM_KEY, unless set) and seed 42.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from core.ads import pipeline as ads_pipeline
from core.settings import load_settings
from core.simulation import loop, simulation
from core.training import pipeline, registry

KEY_ENV = "RETRO_PSEUDONYM_KEY"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=3000)
    parser.add_argument("--movies", type=int, default=1500)
    parser.add_argument("--first-days", type=int, default=30)
    parser.add_argument("--days", type=int, default=14)
    args = parser.parse_args()
    os.environ.setdefault(KEY_ENV, "bench-ads-model-fixed-key-0123456789abcdef")
    s = load_settings(Path(tempfile.mkdtemp(prefix="bench-ads-model-")))
    t0 = time.perf_counter()
    simulation.init_world(s, seed=42, users=args.users, movies=args.movies, days=args.first_days)
    cf = pipeline.retrain(s, with_ranker=False)
    if not cf["promoted"]:
        registry.promote(s, cf["version"], "bench", "promoted by hand: the gate left it open")
    loop.run(s, args.days)
    t1 = time.perf_counter()
    result = ads_pipeline.train(s)
    t2 = time.perf_counter()
    m, b = result["metrics"], result["baselines"]["campaign_rate"]
    print(f"world and {args.days} closed-loop days: {t1 - t0:.0f} s; ads training {t2 - t1:.1f} s")
    print(f"population {result['population']}; training {m['training_rows']:,}, calibration "
          f"{m['calibration_rows']:,}, holdout {m['rows']:,} impressions ({m['clicks']} clicks); split {result['split']}")
    print("| holdout | model | each campaign's click rate |\n| --- | ---: | ---: |")
    for key, fmt in (("log_loss", ".4f"), ("roc_auc", ".3f"), ("calibration_error", ".4f"),
                     ("expected_revenue", ".1f"), ("mean_predicted", ".4f"), ("click_rate", ".4f")):
        print(f"| {key} | {m[key]:{fmt}} | {b[key]:{fmt}} |")
    print("gate:", "passed" if result["gate"]["promote"] else "not passed")
    for reason in result["gate"]["reasons"]:
        print("  " + reason)


if __name__ == "__main__":
    from benchmarks import results_file
    with results_file.recorded("ads_model", "The ads model (`bench_ads_model.py`)"):
        main()
