"""World-build benchmark: time to build the default demo world and rows written per second.

Usage: python benchmarks/bench_world.py [--users 3000 --movies 1500 --days 60]
"""
from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.store import opsdb
from core.simulation import simulation  # noqa: E402
from core.settings import load_settings  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--users", type=int, default=3000)
    p.add_argument("--movies", type=int, default=1500)
    p.add_argument("--days", type=int, default=60)
    p.add_argument("--seed", type=int, default=42)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as home:
        settings = load_settings(home)
        t0 = time.perf_counter()
        simulation.init_world(settings, seed=args.seed, users=args.users, movies=args.movies, days=args.days)
        elapsed = time.perf_counter() - t0
        with opsdb.session(settings) as db:
            c = opsdb.counts(db)
        rows = c["users"] + c["movies"] + c["rating_history"] + c["ratings"] + c["events"]
        t1 = time.perf_counter()
        simulation.simulate(settings, 1)
        one_day = time.perf_counter() - t1
        size_mb = settings.ops_db.stat().st_size / 1e6
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"world build: {args.users} users, {args.movies} movies, {args.days} days (seed {args.seed})")
    print(f"  rows: {c['events']:,} events, {c['ratings']:,} ratings, {c['users']:,} users, {c['movies']:,} movies")
    print(f"  build time: {elapsed:.1f} s  ->  {rows / elapsed:,.0f} rows/s")
    print(f"  one more simulated day: {one_day:.2f} s")
    print(f"  database size: {size_mb:.0f} MB, peak RSS {peak:.0f} MB")


if __name__ == "__main__":
    from benchmarks import results_file
    with results_file.recorded("world", "World build (`bench_world.py`)"):
        main()
