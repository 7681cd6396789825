"""Pipeline benchmark: ETL, train, evaluate, whole retrain, serving latency, and model quality vs the Top 50.

Usage: python benchmarks/bench_pipeline.py [--users 3000 --movies 1500 --days 60]
       python benchmarks/bench_pipeline.py --large     (20,000 users, 3,000 movies: >= 5M interactions)
Peak memory is the process's maximum resident set size after each stage. The report is kept in
benchmarks/results/pipeline.md (pipeline_large.md with --large; pipeline_postgres*.md when RETRO_DATABASE_URL
names a PostgreSQL database).
"""
from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.warehouse import etl, warehouse
from core.training import pipeline
from core.serving import serving
from core.simulation import simulation  # noqa: E402
from core.settings import load_settings  # noqa: E402


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(label: str, fn, rows: list):
    t = time.perf_counter()
    out = fn()
    rows.append((label, time.perf_counter() - t, peak_mb()))
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--users", type=int, default=3000)
    p.add_argument("--movies", type=int, default=1500)
    p.add_argument("--days", type=int, default=60)
    p.add_argument("--large", action="store_true")
    args = p.parse_args()
    if args.large:
        args.users, args.movies = 20000, 3000
    rows: list = []
    with tempfile.TemporaryDirectory() as home:
        s = load_settings(home)
        timed("build world", lambda: simulation.init_world(s, users=args.users, movies=args.movies, days=args.days), rows)
        timed("ETL (first, full load)", lambda: etl.run_etl(s), rows)
        split = pipeline.dataset.time_split(s)
        r = timed("retrain (ETL no-op + train + evaluate + gate)", lambda: pipeline.retrain(s), rows)
        simulation.simulate(s, 1)
        timed("ETL (incremental, one day)", lambda: etl.run_etl(s), rows)
        r2 = timed("retrain after one more day", lambda: pipeline.retrain(s), rows)
        timed("evaluate production on the holdout", lambda: pipeline.evaluate_version(s), rows)
        facts = warehouse.query(s, "SELECT count(*) AS n FROM fact_interaction")["n"][0]

        users = list(range(1, 1001))
        serving.recommend(s, 1, log=False)  # load the bundle once
        lat = []
        for u in users:
            t = time.perf_counter()
            serving.recommend(s, u, log=False)
            lat.append((time.perf_counter() - t) * 1000)
        lat_logged = []
        for u in users[:300]:
            t = time.perf_counter()
            serving.recommend(s, u)
            lat_logged.append((time.perf_counter() - t) * 1000)
        from core.store import opsdb
        with opsdb.session(s) as db:
            ids = [x[0] for x in db.execute("SELECT user_id FROM users").fetchall()]
        t = time.perf_counter()
        serving.recommend_many(s, ids, log=True)
        batch = time.perf_counter() - t

    print(f"pipeline benchmark: {args.users} users, {args.movies} movies, {args.days} days; "
          f"{facts:,} interactions in the warehouse; train matrix {split.train_pairs:,} pairs")
    print("| stage | wall time (s) | peak RSS (MB) |\n| --- | ---: | ---: |")
    for label, secs, mem in rows:
        print(f"| {label} | {secs:.2f} | {mem:.0f} |")
    t = r["timings"]
    print("retrain stage timings (s): " + ", ".join(f"{k} {v:.2f}" for k, v in t.items()))
    print(f"\nholdout quality (last {pipeline.HOLDOUT_DAYS} days, {r['metrics']['users_evaluated']} users):")
    print("| recommender | nDCG@10 | precision@10 | recall@10 | hit rate@10 | coverage |\n| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, m in [("ALS (production)", r["metrics"]), ("popularity", r["baselines"]["popularity"]),
                    ("Top 50 (weighted rating)", r["baselines"]["top50"])]:
        print(f"| {name} | {m['ndcg@10']:.4f} | {m['precision@10']:.4f} | {m['recall@10']:.4f} | "
              f"{m['hit_rate@10']:.4f} | {m['coverage']:.3f} |")
    ratio = r["metrics"]["ndcg@10"] / max(r["baselines"]["top50"]["ndcg@10"], 1e-9)
    print(f"ALS / Top 50 nDCG@10 = {ratio:.2f}x   (second retrain: promoted={r2['promoted']})")
    rk = r.get("ranker") or {}
    if "metrics" in rk:
        m = rk["metrics"]
        print(f"ranker v{rk['version']} on the same holdout: two-stage nDCG@10 {m['ndcg@10']:.4f}, hit rate@10 "
              f"{m['hit_rate@10']:.4f}; CF alone {m['cf_only_ndcg@10']:.4f}, {m['cf_only_hit_rate@10']:.4f} "
              f"(promoted={rk['promoted']})")
    else:
        print(f"ranker: {rk.get('error', 'not trained')}")
    lat = np.array(lat)
    print(f"\nserving one user (not logged): p50 {np.percentile(lat, 50):.2f} ms, p99 {np.percentile(lat, 99):.2f} ms; "
          f"logged: p50 {np.percentile(lat_logged, 50):.2f} ms")
    print(f"batch serving for all {len(ids):,} users (logged): {batch:.2f} s")


if __name__ == "__main__":
    import os
    from benchmarks import results_file
    name = ("pipeline" + ("_large" if "--large" in sys.argv else "")
            + ("_postgres" if os.environ.get("RETRO_DATABASE_URL") else ""))
    with results_file.recorded(name, "Pipeline (`bench_pipeline.py`)"):
        main()
