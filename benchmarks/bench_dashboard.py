"""Dashboard benchmark: first render of each page in a real browser, warm reruns after a widget change.

Usage: python benchmarks/bench_dashboard.py [--users 3000 --movies 1500 --days 60] [--home DIR] [--no-screenshots]

1. Builds the default world (core.simulation.init_world) and trains the first model (core.pipeline.retrain)
   in a temporary folder (or --home DIR, reused when it already holds a world and a production model).
2. Starts `streamlit run dashboard/app.py` on it and, in Debian's Chromium (Playwright), opens each page by
   URL in a fresh browser session: time until the page's key content is visible and until every table and
   chart is drawn; first visit (cold server caches) and the median of 3 later visits (warm caches).
   Saves full-page screenshots to docs/screenshots/<slug>.png (the README's pictures). Then, as an operator
   uses it: one browser session that has seen every page once clicks each page's sidebar link, 3 rounds.
3. With streamlit.testing.v1.AppTest on the same folder: the rerun after a widget change on each page
   (Top 50: the "m" slider; Training: the "Seeds" slider; Overview and Data: a plain rerun), median of 5.
Goals: first render < 3 s, opening a page warm (sidebar click until all drawn) <= 1.5 s, warm rerun < 1 s, on
2 cores.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.training import pipeline
from core.simulation import simulation  # noqa: E402
from core.bootstrap import needs_demo_world, needs_first_model  # noqa: E402
from core.settings import load_settings  # noqa: E402
from dashboard.readiness import CHROMIUM_ARGS, PAGE_RENDERED_JS, VIEWPORT, full_page_screenshot  # noqa: E402

APP = ROOT / "dashboard" / "app.py"
CHROMIUM = "/usr/bin/chromium"


@dataclass
class Page:
    title: str
    url_path: str            # Streamlit's URL path ("" for the default page)
    slug: str                # screenshot name
    key_text: str            # text only this page shows once its content is there
    script: str              # AppTest page path, relative to dashboard/
    slider: str | None = None        # widget key changed before each warm rerun (None: plain rerun)
    values: list = field(default_factory=list)
    results: dict = field(default_factory=dict)


PAGES = [
    Page("Overview", "", "overview", "the live system", "views/overview.py"),
    Page("Top 50 vs For You", "top50_vs_you", "top50", "Top 50 (same for everyone)", "views/top50_vs_you.py",
         "m", [25, 50, 75, 100, 125]),
    Page("Data", "data", "data", "Data versions", "views/data.py"),
    Page("Training & Models", "training", "training", "Experiment runs", "views/training.py",
         "n_seeds", [2, 4, 5, 2, 4]),
    Page("Drift", "drift", "drift", "simulate days in the closed loop", "views/drift.py",
         "strength", [1.5, 2.0, 2.5, 1.0, 0.5]),
    Page("Churn", "churn", "churn", "Churn and recommendation quality over time", "views/churn.py"),
    Page("Ads", "ads", "ads", "Campaigns and pacing", "views/ads.py"),
    Page("Deployment", "deployment", "deployment", "Release decisions", "views/deployment.py"),
    Page("Explanations & Governance", "governance", "explanations", "Why this movie?", "views/governance.py"),
    Page("Privacy", "privacy", "privacy", "Data inventory", "views/privacy.py"),
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(home: Path, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "RETRO_HOME": str(home), "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false"}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "dashboard/app.py", "--server.headless=true",
                                 f"--server.port={port}", "--server.address=127.0.0.1"],
                                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"streamlit exited with code {proc.returncode}:\n{log.read_text(errors='replace')}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.read().decode().strip() == "ok":
                    return proc, url
        except OSError:
            time.sleep(0.1)
    proc.terminate()
    raise SystemExit("streamlit did not answer /_stcore/health within 60 s")


# Opening a page by its own URL (/data) makes Streamlit's frontend probe /data/_stcore/health and host-config
# before the server root: two harmless 404s per visit (streamlit/streamlit#7074), counted apart.
DEEP_LINK_PROBE = re.compile(r"/[^/]+/_stcore/(health|host-config)$")
KNOWN = "known Streamlit deep-link probe 404"


def console_error(page: Page, message) -> str:
    url = (message.location or {}).get("url", "")
    if "404" in message.text and DEEP_LINK_PROBE.search(url):
        return f"{KNOWN}: {url}"
    return f"{page.title}: console error: {message.text} ({url})"


def visit(browser, url: str, page: Page, errors: list, screenshot: Path | None = None) -> tuple[float, float] | None:
    """Open the page by URL in a fresh session; seconds until key content visible, until fully drawn."""
    context = browser.new_context(viewport=VIEWPORT)
    tab = context.new_page()
    tab.on("console", lambda m: m.type == "error" and errors.append(console_error(page, m)))
    tab.on("pageerror", lambda e: errors.append(f"{page.title}: page error: {e}"))
    try:
        t0 = time.perf_counter()
        tab.goto(f"{url}/{page.url_path}", wait_until="commit")
        try:
            tab.get_by_test_id("stMain").get_by_text(page.key_text).first.wait_for(state="visible", timeout=60_000)
            t_key = time.perf_counter() - t0
            tab.wait_for_function(PAGE_RENDERED_JS, timeout=60_000)
            t_full = time.perf_counter() - t0
        except Exception as exc:  # the page never showed its content: say what it shows instead
            shown = tab.get_by_test_id("stMain").inner_text()[:800] if tab.get_by_test_id("stMain").count() else ""
            errors.append(f"{page.title}: no content ({type(exc).__name__}); the page shows: {shown!r}")
            return None
        shown = tab.get_by_test_id("stException").count() + tab.get_by_test_id("stAlertContentError").count()
        if shown:
            errors.append(f"{page.title}: {shown} exception/error element(s) on the page")
        if screenshot is not None:
            full_page_screenshot(tab, screenshot, settle_ms=500)
        return t_key, t_full
    finally:
        context.close()


def sidebar_link(tab, title: str):
    nav = tab.get_by_test_id("stSidebarNav")
    link = nav.get_by_role("link", name=re.compile(rf"(^|\s){re.escape(title)}$"))
    more = nav.get_by_test_id("stSidebarNavViewButton")
    if link.count() == 0 and more.count() and "more" in more.inner_text():
        more.click()  # many pages: Streamlit folds the list behind "View N more"
    return link


def navigate(browser, url: str, errors: list, rounds: int = 3) -> None:
    """Open pages as an operator does: one browser session, a click on the page's sidebar link. The first round
    warms the browser (Streamlit's and Plotly's scripts) and the server's caches; the next `rounds` are timed:
    seconds from the click until the page's key content is visible and until every table and chart is drawn."""
    context = browser.new_context(viewport=VIEWPORT)
    tab = context.new_page()
    tab.on("pageerror", lambda e: errors.append(f"navigation: page error: {e}"))
    try:
        tab.goto(url, wait_until="commit")
        tab.get_by_test_id("stMain").get_by_text(PAGES[0].key_text).first.wait_for(state="visible", timeout=60_000)
        tab.wait_for_function(PAGE_RENDERED_JS, timeout=60_000)
        for r in range(rounds + 1):
            for page in PAGES[1:] + PAGES[:1]:   # from the Overview on, ending on it: every page is a switch
                link = sidebar_link(tab, page.title)
                t0 = time.perf_counter()
                link.click()
                tab.get_by_test_id("stMain").get_by_text(page.key_text).first.wait_for(state="visible",
                                                                                        timeout=60_000)
                t_key = time.perf_counter() - t0
                tab.wait_for_function(PAGE_RENDERED_JS, timeout=60_000)
                if r:
                    page.results.setdefault("navigate", []).append((t_key, time.perf_counter() - t0))
    finally:
        context.close()


def browser_bench(home: Path, shots: Path | None, errors: list) -> None:
    from playwright.sync_api import sync_playwright
    if not Path(CHROMIUM).is_file():
        raise SystemExit(f"{CHROMIUM} not found: apt-get install chromium (never `playwright install`)")
    log = Path(tempfile.mkstemp(prefix="bench-dashboard-", suffix=".log")[1])
    t0 = time.perf_counter()
    proc, url = start_server(home, log)
    print(f"streamlit server answering after {time.perf_counter() - t0:.2f} s (log {log})")
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            try:
                for page in PAGES:  # first visit of each page: the server's caches are cold for its reads
                    page.results["first"] = visit(browser, url, page, errors,
                                                  shots / f"{page.slug}.png" if shots else None)
                for page in PAGES:  # later visits in new sessions: warm server caches
                    page.results["again"] = [visit(browser, url, page, errors) for _ in range(3)]
                navigate(browser, url, errors)
            finally:
                browser.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
    text = log.read_text(errors="replace")
    if "Traceback" in text:
        errors.append(f"server log holds a traceback ({log}):\n{text[-3000:]}")
    else:
        log.unlink()


def apptest_bench(home: Path, repeat: int, errors: list) -> None:
    os.environ["RETRO_HOME"] = str(home)
    from streamlit.testing.v1 import AppTest  # a fresh process: Streamlit's caches start empty
    at = AppTest.from_file(str(APP), default_timeout=300)
    t0 = time.perf_counter()
    at.run()
    print(f"AppTest: first run of the app (imports, cold caches) {time.perf_counter() - t0:.2f} s")
    for page in PAGES:
        t0 = time.perf_counter()
        at.switch_page(page.script).run()
        page.results["apptest_first"] = time.perf_counter() - t0
        if at.exception:
            errors.append(f"{page.title} (AppTest): {[e.message for e in at.exception]}")
            continue
        times = []
        for i in range(repeat):
            if page.slider:
                at.slider(key=page.slider).set_value(page.values[i % len(page.values)])
            t0 = time.perf_counter()
            at.run()
            times.append(time.perf_counter() - t0)
            if at.exception:
                errors.append(f"{page.title} (AppTest): {[e.message for e in at.exception]}")
                break
        page.results["warm"] = times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=3000)
    p.add_argument("--movies", type=int, default=1500)
    p.add_argument("--days", type=int, default=60)
    p.add_argument("--home", help="data folder to use (built when empty, reused otherwise); default: a temp folder")
    p.add_argument("--repeat", type=int, default=5, help="warm reruns per page (median reported)")
    p.add_argument("--screenshots", default=str(ROOT / "docs" / "screenshots"), help="where the page PNGs go")
    p.add_argument("--no-screenshots", action="store_true")
    args = p.parse_args()

    tmp = None if args.home else tempfile.mkdtemp(prefix="retro-bench-")
    home = Path(args.home or tmp).resolve()
    errors: list[str] = []
    try:
        s = load_settings(home)
        if needs_demo_world(s):
            t0 = time.perf_counter()
            simulation.init_world(s, users=args.users, movies=args.movies, days=args.days)
            print(f"world built in {time.perf_counter() - t0:.1f} s: {args.users} users, {args.movies} movies, "
                  f"{args.days} days")
        if needs_first_model(s):
            t0 = time.perf_counter()
            r = pipeline.retrain(s)
            print(f"first retrain in {time.perf_counter() - t0:.1f} s (v{r['version']}, promoted={r['promoted']})")
        load_before = os.getloadavg()[0]
        browser_bench(home, None if args.no_screenshots else Path(args.screenshots), errors)
        apptest_bench(home, args.repeat, errors)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)

    print(f"\ndashboard benchmark: {home if args.home else 'temporary folder'}, {os.cpu_count()} CPU cores, "
          f"Chromium {CHROMIUM}; load average {load_before:.2f} before the browser part, "
          f"{os.getloadavg()[0]:.2f} now (other processes slow the numbers); goals: first render < 3 s, warm rerun < 1 s, "
          "opening a page warm (sidebar click, all drawn) <= 1.5 s")
    def sec(x, digits=2, goal=None):
        return "—" if x is None else f"{x:.{digits}f}" + (" ⚠" if goal is not None and x >= goal else "")

    print("| page | first render in browser (s) | opening warm: sidebar click to key content / all drawn, median "
          "(max) (s) | warm rerun after a widget change (s) |\n| --- | ---: | ---: | ---: |")
    for page in PAGES:
        first, warm, nav = page.results.get("first"), page.results.get("warm"), page.results.get("navigate")
        opened = "—" if not nav else (f"{statistics.median(k for k, _ in nav):.2f} / "
                                      f"{sec(statistics.median(f for _, f in nav), goal=1.5 + 1e-9)} "
                                      f"({max(f for _, f in nav):.2f})")
        print(f"| {page.title} | {sec(first and first[0], goal=3)} | {opened} | "
              f"{sec(statistics.median(warm) if warm else None, 3, goal=1)} |")
    print("\nfirst render = fresh browser session opened on the page's URL until its key content is visible (first visit"
          " after the server started: cold server caches); opening warm = in one browser session that has seen every page"
          " once, a click on the page's sidebar link, 3 rounds; warm rerun = AppTest rerun after the widget change, median"
          f" of {args.repeat}. ⚠ = goal missed.\n")
    print("| page | key content, first visit | all tables & charts drawn, first visit | later visits (median of 3): key "
          "content / all drawn | AppTest switch to page | warm rerun min–max | widget changed |\n"
          "| --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for page in PAGES:
        first, warm = page.results.get("first"), page.results.get("warm")
        again = list(filter(None, page.results.get("again", [])))
        again_key = statistics.median(k for k, _ in again) if again else None
        again_full = statistics.median(f for _, f in again) if again else None
        print(f"| {page.title} | {sec(first and first[0])} | {sec(first and first[1])} | "
              f"{sec(again_key)} / {sec(again_full)} | {sec(page.results.get('apptest_first'), 3)} | "
              f"{f'{min(warm):.3f}–{max(warm):.3f}' if warm else '—'} | "
              f"{f'slider {page.slider!r}' if page.slider else 'plain rerun'} |")
    known = [e for e in errors if e.startswith(KNOWN)]
    errors = [e for e in errors if not e.startswith(KNOWN)]
    if known:
        print(f"\n{len(known)} {KNOWN}s ignored (GET /<page>/_stcore/health|host-config, streamlit/streamlit#7074)")
    if errors:
        print("\nerrors seen:")
        for e in errors:
            print(f"- {e}")
    else:
        print("\nno console error, page error, exception or server traceback seen")


if __name__ == "__main__":
    from benchmarks import results_file
    with results_file.recorded("dashboard", "Dashboard (`bench_dashboard.py`)"):
        main()
