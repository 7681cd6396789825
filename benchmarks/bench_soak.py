"""Soak benchmark: writers and readers of one data folder at the same time, in separate processes.

Usage: python benchmarks/bench_soak.py [--minutes 10] [--home DIR] [--users 400 --movies 300 --days 20]

1. Builds a small world (`init --users 400 --movies 300 --days 20`, then `retrain`) in a temporary folder
   (or --home DIR, reused when it already holds a production model).
2. Runs four actors for the given time, each in its own process, each calling the CLI (`core.cli.main`)
   or rendering dashboard pages in a loop:
   - simulate: `simulate --days 1`, `--days 2`, `--days 3`, … (closed loop: serving, ETL, monitoring, policy);
   - etl: `etl`;
   - reads: `stats`, `monitor`, `recommend --user N`, `top50`;
   - pages: every dashboard page in turn (streamlit.testing AppTest; a page fails on an exception or an st.error).
   A run fails when the command exits non-zero or raises (a traceback).
3. Prints Markdown: runs / failures per actor, p50 / p95 latency, the days simulated against the days that
   have a monitoring record (`monitor_days`), and the first failure messages.
The suite's soak test (tests/test_soak.py) calls `run_soak` for about half a minute and requires 0 failures.
The report is kept in benchmarks/results/soak.md (soak_postgres.md on PostgreSQL) with date, commit, load average
and machine, failures or not: a failure is what the soak measures.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

APP = ROOT / "dashboard" / "app.py"
PAGES = ["views/overview.py", "views/top50_vs_you.py", "views/data.py", "views/training.py", "views/drift.py",
         "views/churn.py", "views/ads.py", "views/deployment.py", "views/governance.py", "views/privacy.py"]
READS = [["stats"], ["monitor"], ["recommend", "--user", "{user}"], ["top50"]]
ACTORS = ("simulate", "etl", "reads", "pages")


def build_world(home: Path, users: int = 400, movies: int = 300, days: int = 20) -> None:
    """`init` then `retrain` in `home`, through the CLI in a child process (as an operator would)."""
    run = lambda *a: subprocess.run([sys.executable, "-m", "core", "--home", str(home), *a],  # noqa: E731
                                    cwd=ROOT, check=True, capture_output=True, text=True)
    run("init", "--users", str(users), "--movies", str(movies), "--days", str(days))
    run("retrain")


def _cli(home: str, argv: list[str]) -> tuple[bool, str]:
    from core import cli
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            code = cli.main([*argv, "--home", home])
    except BaseException:  # noqa: BLE001 - a traceback is exactly the failure being counted
        return False, traceback.format_exc(limit=3)[-600:]
    return code == 0, "" if code == 0 else out.getvalue()[-600:]


def _page(home: str, state: dict, page: str) -> tuple[bool, str]:
    from streamlit.testing.v1 import AppTest
    try:
        with contextlib.redirect_stdout(io.StringIO()):     # the first start prints the operator token
            if "app" not in state:
                state["app"] = AppTest.from_file(str(APP), default_timeout=120).run()
            at = state["app"]
            at.switch_page(page).run()
    except BaseException:  # noqa: BLE001
        state.pop("app", None)
        return False, traceback.format_exc(limit=3)[-600:]
    problems = [str(e.value)[-300:] for e in at.exception] + [str(e.value)[-300:] for e in at.error]
    if problems:
        state.pop("app", None)     # start the next render from a fresh session
    return not problems, " | ".join(problems)[-600:]


def actor(name: str, home: str, deadline: float, out_path: str) -> None:
    """Loop one kind of work until `deadline` (time.time()); one JSON line per run in `out_path`."""
    os.environ["RETRO_HOME"] = home
    state: dict = {}
    i = 0
    with open(out_path, "a", buffering=1) as out:
        while time.time() < deadline:
            if name == "simulate":
                label, call = f"simulate --days {i % 3 + 1}", lambda: _cli(home, ["simulate", "--days", str(i % 3 + 1)])
            elif name == "etl":
                label, call = "etl", lambda: _cli(home, ["etl"])
            elif name == "reads":
                argv = [a.format(user=1 + (i * 37) % 300) for a in READS[i % len(READS)]]
                label, call = argv[0], lambda: _cli(home, argv)
            else:
                page = PAGES[i % len(PAGES)]
                label, call = page, lambda: _page(home, state, page)
            t0 = time.perf_counter()
            ok, message = call()
            out.write(json.dumps({"actor": name, "what": label, "ok": ok, "seconds": time.perf_counter() - t0,
                                  "error": message}) + "\n")
            i += 1


def _sim_day(home: Path) -> int:
    """The world's simulated day, read-only (the operational store in SQLite or PostgreSQL: RETRO_DATABASE_URL)."""
    from core.settings import load_settings
    from core.store import opsdb
    with opsdb.read_only(load_settings(home)) as conn:
        return int(opsdb.get_meta(conn, "sim_day"))


def run_soak(home: Path, seconds: float, actors=ACTORS, grace: float = 120.0) -> dict:
    """Run the actors concurrently on `home` for `seconds`; returns runs, failures, latencies and day coverage."""
    from core.simulation.simulation import day_start
    home = Path(home)
    first_day = _sim_day(home)
    logs = Path(tempfile.mkdtemp(prefix="soak-logs-"))
    deadline = time.time() + seconds
    env = os.environ | {"RETRO_HOME": str(home), "OPENBLAS_NUM_THREADS": "1", "STREAMLIT_LOGGER_LEVEL": "error"}
    procs = {}
    started = time.perf_counter()
    for name in actors:   # plain child processes: nothing of the caller's state (a test session) is inherited
        with open(logs / f"{name}.stderr", "w") as err:
            procs[name] = subprocess.Popen(
                [sys.executable, __file__, "--actor", name, "--home", str(home), "--deadline", str(deadline),
                 "--out", str(logs / f"{name}.jsonl")], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err)
    hung, crashed = [], {}
    for name, p in procs.items():
        try:
            p.wait(max(0.0, deadline + grace - time.time()))
        except subprocess.TimeoutExpired:
            hung.append(name)
            p.kill()
            p.wait()
        else:
            if p.returncode:
                crashed[name] = (logs / f"{name}.stderr").read_text()[-600:]
    wall = time.perf_counter() - started
    runs = [json.loads(line) for name in actors if (logs / f"{name}.jsonl").exists()
            for line in (logs / f"{name}.jsonl").read_text().splitlines()]
    shutil.rmtree(logs, ignore_errors=True)
    last_day = _sim_day(home)
    simulated = [str(day_start(d).date()) for d in range(first_day, last_day)]
    from core.settings import load_settings
    from core.store import mlopsdb
    with mlopsdb.session(load_settings(home)) as db:
        monitored = {r[0] for r in db.execute("SELECT day FROM monitor_days")}
    per_actor = {}
    for name in actors:
        mine = [r for r in runs if r["actor"] == name]
        secs = sorted(r["seconds"] for r in mine)
        per_actor[name] = {"runs": len(mine), "failures": sum(not r["ok"] for r in mine),
                           "p50": _quantile(secs, 0.5), "p95": _quantile(secs, 0.95)}
    return {"seconds": round(wall, 1), "actors": per_actor, "hung": hung, "crashed": crashed,
            "days_simulated": len(simulated), "days_monitored": sum(d in monitored for d in simulated),
            "days_without_record": [d for d in simulated if d not in monitored],
            "failures": [r for r in runs if not r["ok"]]}


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]


def markdown(result: dict) -> str:
    lines = [f"Soak of {result['seconds']:.0f} s (load average before/after: {result.get('load', '?')})", "",
             "| actor | runs | failures | p50 latency | p95 latency |", "| --- | ---: | ---: | ---: | ---: |"]
    for name, a in result["actors"].items():
        fmt = lambda v: "—" if v is None else f"{v:.2f} s"  # noqa: E731
        lines.append(f"| {name} | {a['runs']} | {a['failures']} | {fmt(a['p50'])} | {fmt(a['p95'])} |")
    lines += ["", f"Days simulated: {result['days_simulated']}; with a monitoring record: {result['days_monitored']}"
              + (f" (missing: {', '.join(result['days_without_record'])})" if result["days_without_record"] else "")]
    if result["hung"]:
        lines.append(f"Still running after the grace period (killed): {', '.join(result['hung'])}")
    for name, err in result["crashed"].items():
        lines.append(f"Actor {name} crashed: `{err.strip().splitlines()[-1] if err.strip() else '?'}`")
    kinds: dict[tuple, int] = {}
    for f in result["failures"]:
        last = f["error"].strip().splitlines()[-1] if f["error"].strip() else "?"
        key = (f["actor"], re.sub(r"\d+", "N", last)[:160])
        kinds[key] = kinds.get(key, 0) + 1
    if kinds:
        lines += ["", "| actor | failures | message (digits as N) |", "| --- | ---: | --- |"]
        lines += [f"| {a} | {n} | `{m}` |" for (a, m), n in sorted(kinds.items(), key=lambda kv: -kv[1])]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--home", type=Path, help="data folder (default: a new temporary one)")
    ap.add_argument("--users", type=int, default=400)
    ap.add_argument("--movies", type=int, default=300)
    ap.add_argument("--days", type=int, default=20)
    ap.add_argument("--postgres", action="store_true",
                    help="put the operational and MLOps stores in a PostgreSQL server started for the run "
                         "(tests/pg_server.py; or set RETRO_DATABASE_URL yourself)")
    ap.add_argument("--actor", choices=ACTORS, help=argparse.SUPPRESS)       # internal: one actor's loop
    ap.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.actor:
        actor(args.actor, str(args.home), args.deadline, args.out)
        return 0
    from benchmarks import results_file
    name = "soak_postgres" if args.postgres or os.environ.get("RETRO_DATABASE_URL") else "soak"
    with results_file.recorded(name, "Concurrent writers and readers (`bench_soak.py`)"):
        if not args.postgres:
            return _main(args)
        sys.path.insert(0, str(ROOT / "tests"))
        from pg_server import fresh_database, postgres_server
        with postgres_server(durable=True) as server:
            os.environ["RETRO_DATABASE_URL"] = fresh_database(server.url, "soak")
            print(f"PostgreSQL on 127.0.0.1:{server.port}", file=sys.stderr)
            return _main(args)


def _main(args) -> int:
    backend = "PostgreSQL" if os.environ.get("RETRO_DATABASE_URL") else "SQLite"
    home = args.home or Path(tempfile.mkdtemp(prefix="soak-")) / "home"
    if not (home / "models").exists():
        t0 = time.perf_counter()
        build_world(home, args.users, args.movies, args.days)
        print(f"built the world in {time.perf_counter() - t0:.1f} s ({home})", file=sys.stderr)
    load = f"{os.getloadavg()[0]:.2f}"
    result = run_soak(home, args.minutes * 60)
    result["load"] = f"{load} / {os.getloadavg()[0]:.2f}"
    print(f"Stores: {backend}\n")
    print(markdown(result))
    ok = not (result["failures"] or result["days_without_record"] or result["hung"] or result["crashed"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
