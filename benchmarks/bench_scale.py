"""Scaling benchmark (issue 15): the embedded engine and the Spark engine at 1M, 5M and 20M interactions.

Usage: python benchmarks/bench_scale.py [--sizes 1e6 5e6 2e7] [--engines embedded spark spark-cluster]
                                        [--timeout 3600] [--out benchmarks/results/scale.md]

`spark-cluster`: the Spark engine against a standalone cluster started for the run from the pyspark distribution
(a master and two workers of 1 core and 1g each on 127.0.0.1, tests/spark_cluster.py), the driver outside it;
its peak RSS counts the driver's Python and JVM only (not the master's, workers' or executors').

For each size a synthetic operational database is written through the bulk path (migrations without indexes,
`executemany` in one transaction per chunk, indexes built after the load — how `init_world` loads a world), then
each engine runs in its own process on that database: ETL (all rows in one run), the training matrix and
time-based split (confidence weights in DuckDB SQL or Spark SQL), ALS fit (`implicit` with 2 threads, or MLlib
in `local[2]`), evaluation on the 3-day holdout (nDCG@10 and the rest, the same driver-side code for both).
Peak RSS is the high-water mark of the worker process, plus the JVM's for Spark. A worker that runs past
`--timeout` is stopped and reported as such. Scaling exponents: least-squares slope of log(time) on
log(interactions) over the sizes measured.

How the synthetic data resembles the simulated world (measured on a 300-user, 10-day simulated world): the
kind mix (impressions ~49 %, clicks ~19 %, watches ~16 %, likes ~5 %, ratings ~5 %, scrolls ~5 %, shares
~0.6 %), about 5.5 interactions per user per day over 30 days, a click → watch → like/rating chain per
engagement, watched seconds as a fraction of the runtime (median ~90 min), ratings 1–10 skewed high, a Zipf
popularity over the catalog and tastes (each user prefers two of 18 genres and 70 % of engagements go there),
so ALS has structure to find. It has no shifts, no faults (nothing is quarantined) and no serving log.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DAYS = 30
START = np.datetime64("2026-01-01T00:00:00", "s")
GENRES = 18
PER_ENGAGEMENT = {"impression": 2.6, "scroll": 0.26}        # rows of these kinds per engagement (on average)
CHAIN = {"watch": 0.85, "like": 0.27, "rating": 0.27, "share": 0.03}   # after the click that opens an engagement
ROWS_PER_ENGAGEMENT = 1 + sum(PER_ENGAGEMENT.values()) + sum(CHAIN.values())
ALS = dict(factors=64, regularization=20.0, alpha=2.0, iterations=10, random_state=42)


# ------------------------------------------------------------------ the synthetic world
def shape(n: int) -> tuple[int, int]:
    """(users, movies) for n interactions: ~5.5 per user per day over 30 days; catalog ~ sqrt(n)."""
    return max(100, round(n / (5.5 * DAYS))), max(200, round(1500 * (n / 1e6) ** 0.5))


def generate(home: Path, n: int, seed: int = 42, chunk: int = 400_000) -> dict:
    """Write ~n interactions into a fresh operational database through the bulk path; returns counts and timing."""
    from core.settings import load_settings
    from core.store import opsdb, writes
    t0 = time.perf_counter()
    settings = load_settings(home)
    users, movies = shape(n)
    rng = np.random.default_rng(seed)
    genre = rng.integers(0, GENRES, movies)
    runtime = rng.integers(80, 140, movies)
    popularity = 1.0 / np.arange(1, movies + 1)                     # Zipf, exponent 1
    popularity = popularity[rng.permutation(movies)]
    taste = np.stack([rng.integers(0, GENRES, users), rng.integers(0, GENRES, users)], axis=1)
    activity = rng.lognormal(0, 0.6, users)
    activity /= activity.sum()
    by_genre = [np.flatnonzero(genre == g) for g in range(GENRES)]
    p_in_genre = [popularity[idx] / popularity[idx].sum() for idx in by_genre]
    p_all = popularity / popularity.sum()
    db = opsdb.connect(settings, defer_indexes=True)
    try:
        end = START + np.timedelta64(DAYS, "D")
        with db.atomic():
            opsdb.set_meta(db, "clock", str(end).replace(" ", "T"))
            names = np.array(["Action", "Adventure", "Animation", "Children", "Comedy", "Crime", "Documentary",
                              "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
                              "Thriller", "War", "Western"])
            writes.add_movies(db, pd.DataFrame({"movie_id": np.arange(1, movies + 1), "title": [f"Title {i}" for i in
                              range(1, movies + 1)], "year": 1950 + (np.arange(movies) % 50), "genres": names[genre],
                              "runtime_min": runtime, "added_at": "2025-01-01T00:00:00"}), source="sim")
            writes.add_users(db, pd.DataFrame({"user_id": np.arange(1, users + 1), "created_at": "2025-06-01T00:00:00"}),
                             source="sim")
        engagements = int(n / ROWS_PER_ENGAGEMENT)
        written = {"events": 0, "rating_history": 0}
        seq = 0
        for start in range(0, engagements, chunk):
            m = min(chunk, engagements - start)
            u = rng.choice(users, m, p=activity)
            liked = rng.random(m) < 0.7
            g = np.where(liked, taste[u, rng.integers(0, 2, m)], rng.integers(0, GENRES, m))
            mv = np.empty(m, dtype=np.int64)
            for gg in np.unique(g):
                sel = np.flatnonzero(g == gg)
                mv[sel] = rng.choice(by_genre[gg], len(sel), p=p_in_genre[gg]) if len(by_genre[gg]) else \
                    rng.choice(movies, len(sel), p=p_all)
            t = START + rng.integers(0, DAYS * 86400 - 4000, m).astype("timedelta64[s]")
            rows = [("click", u, mv, np.ones(m), t)]
            watch = rng.random(m) < CHAIN["watch"]
            frac = rng.beta(2.0, 1.5, m)
            rows.append(("watch", u[watch], mv[watch], np.round(runtime[mv[watch]] * 60 * frac[watch]),
                         t[watch] + np.timedelta64(30, "s")))
            for kind in ("like", "share"):
                k = watch & (rng.random(m) < CHAIN[kind] / CHAIN["watch"])
                rows.append((kind, u[k], mv[k], np.ones(k.sum()), t[k] + np.timedelta64(3600, "s")))
            n_imp = rng.poisson(PER_ENGAGEMENT["impression"], m)
            iu = np.repeat(u, n_imp)
            rows.append(("impression", iu, rng.choice(movies, len(iu), p=p_all), rng.integers(0, 10, len(iu)),
                         np.repeat(t, n_imp) - np.timedelta64(60, "s")))
            scroll = rng.random(m) < PER_ENGAGEMENT["scroll"]
            rows.append(("scroll", u[scroll], None, rng.integers(1, 25, scroll.sum()), t[scroll]))
            events = []
            for kind, uu, mm, vv, tt in rows:
                ids = np.arange(seq, seq + len(uu))
                seq += len(uu)
                movie_col = [None] * len(uu) if mm is None else (mm + 1).tolist()
                events.extend(zip((f"b{i}" for i in ids), (uu + 1).tolist(), movie_col, [kind] * len(uu),
                                  np.asarray(vv, dtype=float).tolist(), np.datetime_as_string(tt, unit="s").tolist()))
            rated = watch & (rng.random(m) < CHAIN["rating"] / CHAIN["watch"])
            match = liked[rated]
            score = np.clip(np.round(rng.normal(np.where(match, 8.0, 6.0), 1.5)), 1, 10).astype(int)
            ratings = list(zip((u[rated] + 1).tolist(), (mv[rated] + 1).tolist(), score.tolist(),
                               np.datetime_as_string(t[rated] + np.timedelta64(3700, "s"), unit="s").tolist()))
            with db.atomic():
                db.conn.executemany("INSERT INTO events(event_id, user_id, movie_id, kind, value, occurred_at) "
                                    "VALUES (?,?,?,?,?,?)", events)
                db.conn.executemany("INSERT INTO rating_history(user_id, movie_id, rating, rated_at) VALUES (?,?,?,?)",
                                    ratings)
            written["events"] += len(events)
            written["rating_history"] += len(ratings)
        opsdb.finish_deferred_migrations(db)
    finally:
        db.conn.close()
    return written | {"users": users, "movies": movies, "interactions": written["events"] + written["rating_history"],
                      "seconds": time.perf_counter() - t0}


# ------------------------------------------------------------------ one engine on one database (a worker process)
def _hwm_mb(pid: int | str = "self") -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def worker(home: str, engine_name: str) -> dict:
    from core.settings import load_settings
    from core.training import evaluation
    settings = load_settings(home)
    out: dict = {"engine": engine_name, "stages": {}, "rss_mb": {}}
    jvm = [None]

    def stage(name, fn):
        t = time.perf_counter()
        value = fn()
        out["stages"][name] = time.perf_counter() - t
        out["rss_mb"][name] = _hwm_mb() + (_hwm_mb(jvm[0]) if jvm[0] else 0.0)
        return value

    if engine_name == "embedded":
        from core.training.models import ALSRecommender
        from core.warehouse import dataset, etl
        stage("etl", lambda: etl.run_etl(settings))
        split = stage("matrix", lambda: dataset.time_split(settings, 3))
        model = stage("fit", lambda: ALSRecommender(**ALS, num_threads=2).fit(split.train.user_items))
    else:
        from core.training.spark_als import SparkALSRecommender
        from core.warehouse import lake_dataset, lake_etl, spark
        master = os.environ["RETRO_SPARK_MASTER"] if engine_name == "spark-cluster" else "local[2]"
        session = stage("session", lambda: spark.get_session(master))
        jvm[0] = spark.jvm_pid(session)
        stage("etl", lambda: lake_etl.run_etl(settings, spark=session))
        split = stage("matrix", lambda: lake_dataset.time_split(settings, 3, spark=session))
        model = stage("fit", lambda: SparkALSRecommender(**ALS, spark=session).fit(split.train.user_items))
    metrics = stage("evaluate", lambda: evaluation.evaluate_model(model, split))
    out |= {"ndcg@10": metrics["ndcg@10"], "train_pairs": split.train_pairs, "users": int(split.train.user_items.shape[0]),
            "peak_rss_mb": max(out["rss_mb"].values()), "python_peak_mb": _hwm_mb(),
            "jvm_peak_mb": _hwm_mb(jvm[0]) if jvm[0] else 0.0}
    return out


def run_worker(home: Path, engine_name: str, timeout: float) -> dict:
    if engine_name == "spark-cluster":
        sys.path.insert(0, str(ROOT / "tests"))
        from spark_cluster import standalone_cluster
        with tempfile.TemporaryDirectory(prefix="bench-cluster-") as root, \
                standalone_cluster(Path(root), workers=2, cores=1, memory="1g") as cluster:
            os.environ |= {"RETRO_SPARK_MASTER": cluster.url, "RETRO_SPARK_SHUFFLE_PARTITIONS": "4"}
            try:
                return _run_worker(home, engine_name, timeout)
            finally:
                for name in ("RETRO_SPARK_MASTER", "RETRO_SPARK_SHUFFLE_PARTITIONS"):
                    os.environ.pop(name, None)
    return _run_worker(home, engine_name, timeout)


def _run_worker(home: Path, engine_name: str, timeout: float) -> dict:
    if engine_name != "embedded":       # each Spark run loads its own lake (another one's would be 'no-new-data')
        import shutil
        shutil.rmtree(home / "lake", ignore_errors=True)
    env = os.environ | {"RETRO_SPARK_DRIVER_MEMORY": os.environ.get("RETRO_SPARK_DRIVER_MEMORY", "6g"),
                        "OPENBLAS_NUM_THREADS": "1"}
    load = os.getloadavg()[0]
    t = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, __file__, "--worker", str(home), engine_name], capture_output=True,
                              text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"engine": engine_name, "error": f"stopped after {timeout:.0f} s", "load": (load, os.getloadavg()[0])}
    if proc.returncode != 0:
        return {"engine": engine_name, "error": proc.stderr.strip().splitlines()[-1][:200],
                "load": (load, os.getloadavg()[0])}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return result | {"load": (load, os.getloadavg()[0]), "wall": time.perf_counter() - t,
                     "driver_memory": env["RETRO_SPARK_DRIVER_MEMORY"] if engine_name != "embedded" else None}


# ------------------------------------------------------------------ report
def exponent(sizes: list[float], times: list[float]) -> float | None:
    ok = [(s, t) for s, t in zip(sizes, times) if t and t > 0]
    if len(ok) < 2:
        return None
    x, y = np.log([s for s, _ in ok]), np.log([t for _, t in ok])
    return float(np.polyfit(x, y, 1)[0])


def report(results: list[dict]) -> str:
    stages = ("etl", "matrix", "fit", "evaluate")
    lines = ["| interactions | users × movies | engine | ETL s | matrix + split s | ALS fit s | evaluate s | "
             "train pairs | nDCG@10 | peak RSS MB | load 1-min (before → after) |",
             "| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['interactions']:,} | {r['users']:,} × {r['movies']:,} | {r['engine']} | "
                         f"{r['error']} | | | | | | | {r['load'][0]:.1f} → {r['load'][1]:.1f} |")
            continue
        st = r["stages"]
        session = f" ({r.get('driver_memory') or '6g'} driver, +{st['session']:.0f} s session)" if "session" in st \
            else ""
        lines.append(f"| {r['interactions']:,} | {r['users']:,} × {r['movies']:,} | {r['engine']}{session} | "
                     + " | ".join(f"{st[s]:.1f}" for s in stages)
                     + f" | {r['train_pairs']:,} | {r['ndcg@10']:.3f} | {r['peak_rss_mb']:,.0f} | "
                       f"{r['load'][0]:.1f} → {r['load'][1]:.1f} |")
    lines += ["", "Scaling exponents (time ∝ interactions^b, least squares over the sizes above):", "",
              "| engine | ETL | matrix + split | ALS fit | evaluate |", "| --- | ---: | ---: | ---: | ---: |"]
    for engine_name in dict.fromkeys(r["engine"] for r in results):
        ok = [r for r in results if r["engine"] == engine_name and "error" not in r]
        cells = []
        for s in stages:
            b = exponent([r["interactions"] for r in ok], [r["stages"][s] for r in ok])
            cells.append("—" if b is None else f"{b:.2f}")
        lines.append(f"| {engine_name} | " + " | ".join(cells) + " |")
    lines += ["", "Per-core throughput (2 cores; interactions per second per core):", "",
              "| interactions | engine | ETL | ALS fit (train pairs × iterations per second per core) |",
              "| ---: | --- | ---: | ---: |"]
    for r in results:
        if "error" not in r:
            lines.append(f"| {r['interactions']:,} | {r['engine']} | {r['interactions'] / r['stages']['etl'] / 2:,.0f} "
                         f"| {r['train_pairs'] * ALS['iterations'] / r['stages']['fit'] / 2:,.0f} |")
    return "\n".join(lines)


def _available_mb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return float("inf")


def _expected_peak_mb(results: list[dict], engine_name: str, size: float) -> float:
    """The engine's peak RSS at its largest size measured, scaled linearly to `size` (0: nothing measured yet)."""
    done = [r for r in results if "error" not in r and r["engine"] == engine_name]
    if not done:
        return 0.0
    last = max(done, key=lambda r: r["interactions"])
    scale = size / last["interactions"]
    if not last.get("jvm_peak_mb"):
        return last["peak_rss_mb"] * scale
    # The JVM's heap is capped by the driver memory (its resident size levels off); Python grows with the batch.
    heap_mb = float(os.environ.get("RETRO_SPARK_DRIVER_MEMORY", "6g").rstrip("gG")) * 1024
    return last["python_peak_mb"] * scale + min(last["jvm_peak_mb"] * scale, 1.3 * heap_mb)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", nargs="+", type=float, default=[1e6, 5e6, 2e7])
    p.add_argument("--engines", nargs="+", default=["embedded", "spark"], choices=["embedded", "spark", "spark-cluster"])
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds per engine and size")
    p.add_argument("--out", default=None, help="also write the Markdown report to this file")
    p.add_argument("--max-memory", type=float, default=0.8,
                   help="skip a size whose extrapolated peak RSS exceeds this fraction of the available memory")
    p.add_argument("--jsonl", default=None, help="append each result (and note) to this JSON-lines file")
    p.add_argument("--report-from", nargs="+", default=None, metavar="JSONL",
                   help="only print the report of results saved with --jsonl (several runs merged)")
    p.add_argument("--note", nargs="*", default=[], help="extra lines for the report's notes (with --report-from)")
    p.add_argument("--worker", nargs=2, metavar=("HOME", "ENGINE"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker)))
        return
    if args.report_from:
        saved = [json.loads(line) for path in args.report_from for line in Path(path).read_text().splitlines() if line]
        results = sorted((r for r in saved if "engine" in r), key=lambda r: (r["interactions"], r["engine"] != "embedded"))
        notes = list({r["note"].split(" written in")[0]: r["note"] for r in reversed(saved) if "note" in r}.values())
        _print_report(results, sorted(notes, key=lambda n: float(n[2:].split(" ")[0].replace(",", "")))
                      + [f"- {n}" for n in args.note], args.out)
        return
    results, notes = [], []
    for size in args.sizes:
        with tempfile.TemporaryDirectory(prefix="bench-scale-") as home:
            load = os.getloadavg()[0]
            data = generate(Path(home), int(size))
            notes.append(f"- {int(size):,} requested: {data['interactions']:,} interactions ({data['events']:,} events, "
                         f"{data['rating_history']:,} ratings), {data['users']:,} users, {data['movies']:,} movies, "
                         f"written in {data['seconds']:.0f} s (load {load:.1f} → {os.getloadavg()[0]:.1f})")
            print(notes[-1], flush=True)
            _save(args.jsonl, {"note": notes[-1]})
            for engine_name in args.engines:
                need, free = _expected_peak_mb(results, engine_name, size), _available_mb()
                if need > args.max_memory * free:
                    notes.append(f"- {int(size):,}, {engine_name}: skipped — its peak RSS extrapolated from the "
                                 f"smaller sizes ({need:,.0f} MB) exceeds {args.max_memory:.0%} of the memory "
                                 f"available now ({free:,.0f} MB)")
                    print(notes[-1], flush=True)
                    _save(args.jsonl, {"note": notes[-1]})
                    continue
                r = run_worker(Path(home), engine_name, args.timeout)
                r |= {k: data[k] for k in ("interactions", "users", "movies")}
                results.append(r)
                print(json.dumps(r), flush=True)
                _save(args.jsonl, r)
    _print_report(results, notes, args.out)


def _save(path: str | None, record: dict) -> None:
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")


def _print_report(results: list[dict], notes: list[str], out: str | None) -> None:
    text = "\n".join(["# Scale benchmark (`benchmarks/bench_scale.py`)", "",
                      f"Machine: {os.cpu_count()} cores, shared with other jobs (load averages in the table). ALS: "
                      f"{ALS}; `implicit` with 2 threads, Spark `local[2]` (driver memory in the engine column).",
                      "", *notes, "", report(results)])
    print(text)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")


if __name__ == "__main__":
    main()
