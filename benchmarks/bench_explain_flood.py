"""Does a flood of /explain guesses hold up /recommend? (issue 23.11) — /recommend latency alone and during a
flood of /explain requests with wrong operator tokens under random names, localhost only, bounded in time.

Usage: python benchmarks/bench_explain_flood.py [--home DIR] [--code DIR] [--seconds 15] [--clients 4]
                                                [--flooders 16]

A small world (init --seed 3 --users 800 --movies 300 --days 14, then retrain) is built in a temporary folder
unless --home names a ready one; every phase runs on a copy. The server is a real `python -m core serve`
process started from `--code` (default: this checkout; give an export of an older commit to measure before a
change). Phase 1: `--clients` threads ask /recommend for random users on keep-alive connections for `--seconds`.
Phase 2: the same, while `--flooders` threads send /explain requests with `Authorization: Bearer guessN:wrong`
(a new name each time, as a guesser would) as fast as they are answered. Reported: /recommend p50/p95/p99 (ms,
measured by the client), requests per second, and the flood's answers by status and the audit rows it added.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.serving import remote  # noqa: E402
from core.settings import load_settings  # noqa: E402
from core.store import opsdb  # noqa: E402
from core.store.mlopsdb import clone_home  # noqa: E402


def build_world(home: Path) -> None:
    for argv in (["init", "--seed", "3", "--users", "800", "--movies", "300", "--days", "14"], ["retrain"]):
        subprocess.run([sys.executable, "-m", "core", "--home", str(home), *argv], cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL)


def start_server(home: Path, code: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "core", "--home", str(home), "serve", "--port", "0", "--json"],
                            cwd=code, env=os.environ | {"PYTHONPATH": str(code)}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    s = load_settings(home)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        info = remote.server_status(s)
        if info is not None and info["pid"] == proc.pid:
            try:
                if remote.get_json(info["url"], "/ready", timeout=2)[0] == 200:
                    return proc, info["url"]
            except remote.ServerUnavailable:
                pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the server did not become ready within 90 s")


def audit_rows(home: Path) -> int:
    with sqlite3.connect(home / "mlops.db") as conn:
        return conn.execute("SELECT count(*) FROM operator_audit").fetchone()[0]


def flood(url: str, users: list[int], flooders: int, seconds: float, out) -> None:
    """`flooders` threads sending /explain guesses for `seconds` (run in a process of its own, so the flood's
    client threads do not take the GIL from the threads that measure /recommend); answers by status to `out`."""
    host, port = url.rsplit("/", 1)[1].split(":")
    stop, lock, answers = threading.Event(), threading.Lock(), Counter()

    def flooder(w: int) -> None:
        conn, n, mine = http.client.HTTPConnection(host, int(port), timeout=30), 0, Counter()
        while not stop.is_set():
            n += 1
            try:
                conn.request("GET", f"/explain/{users[n % len(users)]}/1",
                             headers={"Authorization": f"Bearer guess{w}x{n}:wrong-token"})
                r = conn.getresponse()
                r.read()
                mine[r.status] += 1
            except (OSError, http.client.HTTPException):
                mine["error"] += 1
                conn = http.client.HTTPConnection(host, int(port), timeout=30)
        with lock:
            answers.update(mine)

    threads = [threading.Thread(target=flooder, args=(w,)) for w in range(flooders)]
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    out.put(dict(sorted(((str(k), v) for k, v in answers.items()))))


def phase(url: str, users: list[int], clients: int, seconds: float, flooders: int) -> dict:
    import multiprocessing
    host, port = url.rsplit("/", 1)[1].split(":")
    stop = threading.Event()
    latencies: list[float] = []
    lock = threading.Lock()
    results = multiprocessing.get_context("fork").Queue()

    def recommender(w: int) -> None:
        rng, conn, mine = random.Random(w), http.client.HTTPConnection(host, int(port), timeout=30), []
        while not stop.is_set():
            t0 = time.perf_counter()
            conn.request("GET", f"/recommend/{rng.choice(users)}?k=10")
            r = conn.getresponse()
            r.read()
            mine.append((time.perf_counter() - t0) * 1000)
        with lock:
            latencies.extend(mine)

    flooding = None
    if flooders:
        flooding = multiprocessing.get_context("fork").Process(target=flood, args=(url, users, flooders, seconds,
                                                                                   results))
        flooding.start()
    threads = [threading.Thread(target=recommender, args=(w,)) for w in range(clients)]
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    answers = {}
    if flooding is not None:
        answers = results.get(timeout=60)
        flooding.join()
    lat = np.array(latencies)
    return {"requests": len(lat), "rps": round(len(lat) / seconds, 1),
            **{f"p{q}_ms": round(float(np.percentile(lat, q)), 1) for q in (50, 95, 99)}, "flood": answers}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--home", type=Path)
    ap.add_argument("--code", type=Path, default=ROOT)
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--flooders", type=int, default=16)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-flood-") as tmp:
        base = args.home
        if base is None:
            base = Path(tmp) / "world"
            build_world(base)
        with opsdb.session(load_settings(base)) as db:
            users = random.Random(42).sample([int(u) for u in opsdb.user_ids(db)], 200)
        results = {}
        for name, flooders in (("alone", 0), ("during the /explain flood", args.flooders)):
            home = Path(tmp) / name.replace(" ", "-").replace("/", "")
            clone_home(load_settings(base), home)
            proc, url = start_server(home, args.code)
            try:
                before = audit_rows(home)
                phase(url, users, args.clients, 2.0, 0)                                  # warm-up
                results[name] = phase(url, users, args.clients, args.seconds, flooders)
                results[name]["audit_rows_added"] = audit_rows(home) - before
            finally:
                proc.terminate()
                proc.wait(timeout=30)
        print(json.dumps({"code": str(args.code), "clients": args.clients, "flooders": args.flooders,
                          "seconds": args.seconds, "load": os.getloadavg(), **results}, indent=1))


if __name__ == "__main__":
    main()
