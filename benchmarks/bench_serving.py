"""Serving load benchmark (issue 16.5): in-process `recommend` and the HTTP model server under 1, 8 and 32
concurrent clients, localhost only, bounded in time.

Usage: python benchmarks/bench_serving.py [--home DIR] [--seconds 20] [--clients 1,8,32] [--users 200]
                                          [--out benchmarks/results/serving.md] [--no-http] [--no-inprocess]

The report is kept in --out (default benchmarks/results/serving.md; serving_postgres.md when RETRO_DATABASE_URL
names a PostgreSQL database) with date, commit, load average and machine.

The default world (first start: 3,000 users, 1,500 movies, 30 days, ALS + ranker in production) is built in a
temporary folder unless --home names a ready one; every run works on a copy, since each request writes the
serving log. Each level runs for --seconds: `clients` threads, each asking for the top 10 of a user drawn from
--users random users (seed 42) again and again. In-process: `serving.recommend` (logged, as the server does).
HTTP: a fresh `python -m core serve` per level on a free port, clients on keep-alive `http.client`
connections in this process, `/recommend/{user}?k=10` as a client asks it (with the sponsored slot, which the
in-process `recommend` does not choose), then again with `ads=0` (the lists alone, as the closed loop asks);
latency is measured by the client (request sent → body read); the server's own view (its last-minute p50/p99
from /metrics) is reported beside it. The clients share the machine's cores with
the server, as a front end on the same host would. Goals (quiet 2-core machine): in-process p99 ≤ 5 ms; over
HTTP ≥ 300 requests/s with p99 ≤ 25 ms at 8 clients and 0 errors.
"""
from __future__ import annotations

import argparse
import http.client
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.serving import remote, serving  # noqa: E402
from core.settings import load_settings  # noqa: E402
from core.store import opsdb  # noqa: E402
from core.store.mlopsdb import clone_home  # noqa: E402


def load() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def build_default_world(home: Path):
    from core import bootstrap
    s = load_settings(home)
    bootstrap.first_start(s)
    return s


def sample_users(s, n: int) -> list[int]:
    with opsdb.session(s) as db:
        ids = [int(u) for u in opsdb.user_ids(db)]
    return random.Random(42).sample(ids, min(n, len(ids)))


def drive(clients: int, seconds: float, one) -> dict:
    """Run `one(worker, i)` in `clients` threads for `seconds`; latencies in ms and errors."""
    stop = time.monotonic() + seconds
    lat: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    first_error: list[str] = []

    def worker(w: int) -> None:
        i = w
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            try:
                ok = one(w, i)
            except Exception as exc:  # noqa: BLE001 - counted, the first one reported
                ok = False
                if not first_error:
                    first_error.append(f"{type(exc).__name__}: {exc}")
            lat[w].append((time.perf_counter() - t0) * 1000)
            if not ok:
                errors[w] += 1
            i += clients
    threads = [threading.Thread(target=worker, args=(w,)) for w in range(clients)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    all_lat = np.array([x for per in lat for x in per])
    return {"clients": clients, "requests": int(all_lat.size), "seconds": elapsed,
            "throughput": all_lat.size / elapsed, "p50": float(np.percentile(all_lat, 50)),
            "p95": float(np.percentile(all_lat, 95)), "p99": float(np.percentile(all_lat, 99)),
            "errors": int(sum(errors)), "first_error": first_error[0] if first_error else ""}


def in_process(s, users: list[int], clients: int, seconds: float) -> dict:
    serving.recommend(s, users[0])                         # load the bundles once

    def one(worker: int, i: int) -> bool:
        serving.recommend(s, users[i % len(users)], 10)
        return True
    return drive(clients, seconds, one)


def start_server(s) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "core", "--home", str(s.home), "serve", "--port", "0", "--json"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        info = remote.server_status(s)
        if info is not None and info["pid"] == proc.pid:
            try:
                if remote.get_json(info["url"], "/ready", timeout=2)[0] == 200:
                    return proc, info["url"]
            except remote.ServerUnavailable:
                pass
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited: {proc.stderr.read()}")
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the server did not become ready within 120 s")


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    proc.stderr.close()


def over_http(s, users: list[int], clients: int, seconds: float, ads: bool = True) -> dict:
    proc, url = start_server(s)
    try:
        host, port = url.removeprefix("http://").split(":")
        conns = [http.client.HTTPConnection(host, int(port), timeout=30) for _ in range(clients)]

        def one(worker: int, i: int) -> bool:
            c = conns[worker]
            try:
                c.request("GET", f"/recommend/{users[i % len(users)]}?k=10" + ("" if ads else "&ads=0"))
                r = c.getresponse()
                r.read()
            except (OSError, http.client.HTTPException):
                c.close()                                  # reconnect on the next request
                raise
            return r.status == 200
        for w in range(clients):                           # connect and warm up outside the clock
            one(w, w)
        result = drive(clients, seconds, one)
        server = remote.metrics(url)
        result |= {"server_p50": server.recent_p50_ms, "server_p99": server.recent_p99_ms}
        for c in conns:
            c.close()
    finally:
        stop_server(proc)
    return result


def table(rows: list[dict]) -> str:
    lines = ["| mode | clients | requests | throughput (req/s) | p50 (ms) | p95 (ms) | p99 (ms) | errors | "
             "server-side p50 / p99 (ms) | load average before → after |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in rows:
        server = (f"{r['server_p50']:.2f} / {r['server_p99']:.2f}" if r.get("server_p50") is not None else "—")
        lines.append(f"| {r['mode']} | {r['clients']} | {r['requests']:,} | {r['throughput']:,.0f} | {r['p50']:.2f} | "
                     f"{r['p95']:.2f} | {r['p99']:.2f} | {r['errors']} | {server} | {r['load']} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--home", help="a ready data folder (default: build the default world in a temporary folder)")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--clients", default="1,8,32")
    p.add_argument("--users", type=int, default=200)
    p.add_argument("--out", help="the results file (default benchmarks/results/serving.md, serving_postgres.md "
                                 "when RETRO_DATABASE_URL is set)")
    p.add_argument("--no-http", action="store_true")
    p.add_argument("--no-inprocess", action="store_true")
    args = p.parse_args()
    from benchmarks import results_file
    name = "serving_postgres" if os.environ.get("RETRO_DATABASE_URL") else "serving"
    with results_file.recorded(name, "Serving under load (`bench_serving.py`)", out=args.out and Path(args.out)):
        run(args)


def run(args) -> None:
    levels = [int(x) for x in args.clients.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        base = load_settings(args.home) if args.home else build_default_world(Path(tmp) / "base")
        built = time.perf_counter() - t
        s = clone_home(base, Path(tmp) / "run")
        users = sample_users(s, args.users)
        rows = []
        lists_only = lambda *a: over_http(*a, ads=False)        # noqa: E731
        for mode, fn, skip in (("in-process", in_process, args.no_inprocess), ("HTTP", over_http, args.no_http),
                               ("HTTP, ads=0", lists_only, args.no_http)):
            if skip:
                continue
            for clients in levels:
                before = load()
                r = fn(s, users, clients, args.seconds)
                r |= {"mode": mode, "load": f"{before} → {load()}"}
                rows.append(r)
                print(f"{mode:>10} {clients:>3} clients: {r['throughput']:7.0f} req/s  p50 {r['p50']:6.2f}  "
                      f"p95 {r['p95']:6.2f}  p99 {r['p99']:6.2f} ms  errors {r['errors']}"
                      + (f" ({r['first_error']})" if r["first_error"] else ""), flush=True)
        from core.training import registry
        prod, rk = registry.production(s), registry.production(s, family="ranker")
        with opsdb.session(s) as db:
            n_users, n_movies = len(opsdb.user_ids(db)), len(opsdb.movie_titles(db))
            days = opsdb.get_meta(db, "sim_day")
    world = (f"{n_users:,} users, {n_movies:,} movies, {days} simulated days"
             + (f", the ready folder given with --home" if args.home else f", built by the first start in {built:.0f} s"))
    head = (f"{args.seconds:.0f} s per level; {len(users)} random users (seed 42); world: "
            f"{world}; production v{prod['version']} ({prod['model_kind']}) re-ranked by ranker "
            f"{'v' + str(rk['version']) if rk else '— (none)'}; {os.cpu_count()} cores. Latency in ms; HTTP latency "
            "measured by the client (its threads share the cores with the server).\n\n")
    print("\n" + head + table(rows))


if __name__ == "__main__":
    main()
