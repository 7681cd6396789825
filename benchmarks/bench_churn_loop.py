"""What scoring churn every day costs the closed loop: seconds per simulated day with and without it.

Builds (or reuses, with --home) a world with a CF and a churn model in production, copies it twice and runs the
same closed-loop days on both copies, alternating day by day so both see the same machine load: one with the
daily churn scoring (`loop.score_churn`), one with it replaced by a no-op. Also times the scoring step itself
and `churn_monitoring.drift` / `churn_and_quality` on the scores the loop stored.

Usage: python benchmarks/bench_churn_loop.py [--users 3000] [--movies 1500] [--days 56] [--loop-days 6] [--home DIR]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.monitoring import churn_monitoring  # noqa: E402
from core.serving import serving  # noqa: E402
from core.settings import load_settings  # noqa: E402
from core.simulation import loop, simulation  # noqa: E402
from core.store.mlopsdb import clone_home  # noqa: E402
from core.training import churn, churn_pipeline, pipeline, registry  # noqa: E402


def prepare(home: Path, users: int, movies: int, days: int):
    s = load_settings(home)
    if not simulation.has_world(s):
        simulation.init_world(s, seed=42, users=users, movies=movies, days=days)
    if registry.production(s) is None:
        pipeline.retrain(s, with_ranker=False)
    if registry.production(s, family=churn.FAMILY) is None:
        trained = churn_pipeline.train(s)
        if not trained["promoted"]:
            registry.promote(s, trained["version"], "bench", "benchmark: a churn model to score with")
    return s


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=3000)
    parser.add_argument("--movies", type=int, default=1500)
    parser.add_argument("--days", type=int, default=56)
    parser.add_argument("--loop-days", type=int, default=6)
    parser.add_argument("--home", type=Path, default=None)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-churn-loop-"))
    base = prepare(args.home or tmp / "base", args.users, args.movies, args.days)
    with_churn, without = clone_home(base, tmp / "with"), clone_home(base, tmp / "without")
    real = loop.score_churn
    step: list[tuple[float, float]] = []

    def timed(settings, now):
        t, c = time.perf_counter(), time.process_time()
        out = real(settings, now)
        step.append((time.perf_counter() - t, time.process_time() - c))
        return out

    wall = {"with": [], "without": []}
    cpu = {"with": [], "without": []}
    for _ in range(args.loop_days):
        for name, s, fn in (("without", without, lambda settings, now: {}), ("with", with_churn, timed)):
            loop.score_churn = fn
            serving.clear_caches()
            t, c = time.perf_counter(), time.process_time()
            loop.run(s, 1, policy_mode="manual")
            wall[name].append(time.perf_counter() - t)
            cpu[name].append(time.process_time() - c)
    loop.score_churn = real
    print(f"world: {args.users} users, {args.movies} movies, {args.days} days + {args.loop_days} closed-loop days")
    for name in ("without", "with"):
        print(f"  loop day {name:<7} churn scoring: wall median {np.median(wall[name]):.2f} s "
              f"(mean {np.mean(wall[name]):.2f}), CPU median {np.median(cpu[name]):.2f} s")
    w, c = zip(*step)
    print(f"  the scoring step itself: wall median {np.median(w):.3f} s, CPU median {np.median(c):.3f} s "
          f"({churn_pipeline.predictions(with_churn).groupby('as_of').size().median():.0f} users a day)")
    t = time.perf_counter()
    result = churn_monitoring.drift(with_churn)
    print(f"  churn_monitoring.drift over {len(result['history'])} scored days: {time.perf_counter() - t:.2f} s")
    t = time.perf_counter()
    churn_monitoring.churn_and_quality(with_churn)
    print(f"  churn_monitoring.churn_and_quality: {time.perf_counter() - t:.2f} s")


if __name__ == "__main__":
    from benchmarks import results_file
    with results_file.recorded("churn_loop", "Churn in the closed loop (`bench_churn_loop.py`)"):
        main()
