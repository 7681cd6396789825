"""First-start benchmark: `make run` on an empty data folder, until the dashboard's Overview is drawn.

Usage: python benchmarks/bench_first_start.py [--users N --movies N --days N] [--no-browser] [--out FILE]

Runs the real first start end to end: a fresh temporary RETRO_HOME, then exactly what `make run` runs
(`make run` itself, with this Python as PY and the install step skipped), the dashboard on a free port.
A browser visitor (Debian's Chromium through Playwright, when present) opens the dashboard at once, sees
the build's progress, and waits until the Overview shows "the live system" with every chart drawn.
Prints Markdown: time to the operator token, to the dashboard answering, each build stage (from
RETRO_HOME/.first-start.json), the build's CPU time, time until the Overview is drawn, and the machine load.
Without --users/--movies/--days the defaults of core.settings (RETRO_DEMO_*) are built.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dashboard.readiness import CHROMIUM_ARGS, PAGE_RENDERED_JS, VIEWPORT  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
STAGES = [("world", "demo world (simulated days)"), ("etl", "ETL into the warehouse"),
          ("train", "train + evaluate + gate + promote")]
# Trained after the status says "done" (the Overview is drawn with CF alone meanwhile: core.bootstrap.follow_up).
FOLLOW_UPS = [("ranker", "ranker (after ready, in the background)"), ("churn", "churn model (after ready)")]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
            return r.read().decode().strip() == "ok"
    except OSError:
        return False


def browser_visit(url: str, t0: float, marks: dict, errors: list) -> None:
    """A visitor who opens the page as soon as the server answers: progress first, then the Overview."""
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        tab = browser.new_context(viewport=VIEWPORT).new_page()
        tab.on("pageerror", lambda e: errors.append(f"page error: {e}"))
        tab.goto(url, wait_until="commit")
        main = tab.get_by_test_id("stMain")
        try:
            main.get_by_text("Setting up Retro Movies").first.wait_for(state="visible", timeout=60_000)
            marks["visitor sees the build's progress"] = time.perf_counter() - t0
        except Exception:  # noqa: BLE001 - a build faster than the page: no progress to see
            errors.append("the visitor never saw the progress screen")
        main.get_by_text("the live system").first.wait_for(state="visible", timeout=600_000)
        tab.wait_for_function(PAGE_RENDERED_JS, timeout=120_000)
        marks["Overview drawn in the browser"] = time.perf_counter() - t0
        browser.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int)
    ap.add_argument("--movies", type=int)
    ap.add_argument("--days", type=int)
    ap.add_argument("--no-browser", action="store_true")
    ap.add_argument("--out", type=Path, help="also write the Markdown here")
    args = ap.parse_args()
    use_browser = not args.no_browser and Path(CHROMIUM).is_file()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    load_before = load()
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "RETRO_HOME": home, "STREAMLIT_SERVER_PORT": str(port),
               "STREAMLIT_SERVER_ADDRESS": "127.0.0.1", "STREAMLIT_SERVER_HEADLESS": "true",
               "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false"}
        for name in ("users", "movies", "days"):
            if getattr(args, name) is not None:
                env[f"RETRO_DEMO_{name.upper()}"] = str(getattr(args, name))
        status_file = Path(home) / ".first-start.json"
        t0 = time.perf_counter()
        make_run = ["make", "--no-print-directory", "run", f"PY={sys.executable}", "-o", ".venv/.installed"]
        proc = subprocess.Popen(make_run, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
        marks: dict[str, float] = {}
        output: list[str] = []

        def reader():
            for line in proc.stdout:
                output.append(line.rstrip("\n"))
                if "operator login" in line and "operator token printed" not in marks:
                    marks["operator token printed"] = time.perf_counter() - t0
        threading.Thread(target=reader, daemon=True).start()
        errors: list[str] = []
        visitor = None
        status: dict = {}
        try:
            deadline = t0 + 1800
            while time.perf_counter() < deadline:
                if proc.poll() is not None:
                    raise SystemExit("make run exited early:\n" + "\n".join(output[-30:]))
                if "dashboard answers (health ok)" not in marks and healthy(url):
                    marks["dashboard answers (health ok)"] = time.perf_counter() - t0
                    if use_browser:
                        visitor = threading.Thread(target=browser_visit, args=(url, t0, marks, errors), daemon=True)
                        visitor.start()
                try:
                    status = json.loads(status_file.read_text())
                except (OSError, ValueError):
                    status = {}
                if status.get("state") == "error":
                    raise SystemExit(f"first start failed: {status.get('error')}")
                if status.get("state") == "done" and "first start done (status file)" not in marks:
                    marks["first start done (status file)"] = time.perf_counter() - t0
                follow_up = status.get("follow_up") or {}
                if follow_up.get("state") == "done" and "ranker and churn model trained (status file)" not in marks:
                    marks["ranker and churn model trained (status file)"] = time.perf_counter() - t0
                if ("first start done (status file)" in marks and "dashboard answers (health ok)" in marks
                        and (follow_up.get("state") in ("done", "error") or not status.get("following"))):
                    break
                time.sleep(0.1)
            if visitor is not None:
                visitor.join(600)
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
    load_after = load()
    world = status.get("world", {})
    secs = status.get("seconds", {})
    lines = ["### First start (`bench_first_start.py`): `make run` on an empty folder",
             "",
             f"World {world.get('users', '?'):,} users × {world.get('movies', '?'):,} movies × "
             f"{world.get('days', '?')} days; load average before {load_before}, after {load_after} "
             f"({os.cpu_count()} cores).",
             "",
             "| build stage (status file) | seconds |", "| --- | ---: |"]
    lines += [f"| {label} | {secs[key]:.1f} |" for key, label in STAGES if key in secs]
    after = status.get("follow_up") or {}
    lines += [f"| **build total, until ready** | **{secs.get('total', float('nan')):.1f}** |",
              f"| build CPU time until ready (all threads) | {secs.get('cpu', float('nan')):.1f} |"]
    lines += [f"| {label} | {secs[key]:.1f} |" for key, label in FOLLOW_UPS if key in secs]
    lines += [f"| CPU time after ready (ranker and churn model) | {after.get('cpu', float('nan')):.1f} |",
              "", "| since `make run` started | seconds |", "| --- | ---: |"]
    lines += [f"| {name} | {value:.1f} |" for name, value in sorted(marks.items(), key=lambda kv: kv[1])]
    if errors:
        lines += ["", "Browser: " + "; ".join(errors)]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    from benchmarks import results_file
    with results_file.recorded("first_start", "First start (`bench_first_start.py`)"):
        main()
