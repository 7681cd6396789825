"""Real-browser test of the dashboard: Streamlit server + Debian's Chromium driven by Playwright.

Starts `streamlit run dashboard/app.py` on an empty temporary data folder (the app builds a small demo
world and trains the first model), opens every page from the sidebar, waits for its real content, saves a
full-page screenshot to docs/screenshots/<slug>.png, runs a retrain from the Training page and a drift
scenario (trend, on-alert, 2 days) from the Drift page, opens the Churn page and the Training page's dependency
graph on a second server over a prepared world with a churn model (docs/screenshots/churn.png and
training-dependencies.png), and asserts that
the browser logged no console error or uncaught page error and the server no traceback, and that no page
shows a Streamlit help box or docstring text (magic output), grows taller than its height budget, has an
element sticking out of the 1400 px window, or hides a half-width table's columns behind a scrollbar
(`dashboard.readiness.layout_problems`).

Run it alone:  .venv/bin/python -m pytest tests -m browser -q
Needs /usr/bin/chromium (Debian: `apt-get install chromium`); never `playwright install`.
Without Chromium the test skips, except in CI (CI=true), where it fails.
Optional environment: RETRO_CHROMIUM (another Chromium binary), RETRO_SCREENSHOT_DIR (where the PNGs go).
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from dashboard.readiness import CHROMIUM_ARGS, PAGE_RENDERED_JS, VIEWPORT, full_page_screenshot, layout_problems

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]

# Every page of the navigation: (sidebar title, text only that page shows once its content is there,
# height budget in px at the 1400 px viewport — about 1.3× what the page measures on the demo world, so a
# few more rows pass and a 3,000 px help box or a forgotten debug dump does not).
# Adding a page is one line here; its screenshot is docs/screenshots/<slug(title)>.png.
PAGES = [
    ("Overview", "the live system", 1300),
    ("Top 50 vs For You", "Top 50 (same for everyone)", 2300),
    ("Data", "Data versions", 2300),
    ("Training & Models", "Experiment runs", 6000),     # + the yardstick, its chart and exploration (issue 22)
    ("Drift", "simulate days in the closed loop", 1300),        # before any simulated day: form and narrative
    ("Churn", "No churn model yet", 1000),                       # 8 days: too short for the churn model's split
    ("Ads", "Campaigns and pacing", 3200),                       # campaigns, revenue per day, no ads model yet
    ("Deployment", "Online quality per arm", 1600),              # no server, no release yet: what serves, the form
    ("Explanations & Governance", "Why this movie?", 1600),
    ("Privacy", "Data inventory", 3000),            # erasure requests at full width (no half-width table cuts the actor)
]
DRIFT_SCENARIO_BUDGET = 3700   # the Drift page with its three charts and tables after a scenario (+ the demo banner)

# The gate needs RETRO_GATE_MIN_USERS evaluable holdout users; this small world has about 120.
DEMO_SIZE = {"RETRO_DEMO_USERS": "300", "RETRO_DEMO_MOVIES": "600", "RETRO_DEMO_DAYS": "8",
             "RETRO_GATE_MIN_USERS": "100"}
FIRST_START_TIMEOUT_MS = 90_000   # empty folder -> demo world + first model (a few seconds at DEMO_SIZE)
PAGE_TIMEOUT_MS = 20_000
RETRAIN_TIMEOUT_MS = 60_000
OPERATOR = ("browser-test", "browser-test-token")   # retrain and scenarios need an operator login (issue 13)



def slug(title: str) -> str:
    """'Top 50 vs For You' -> 'top50', 'Training & Models' -> 'training', 'Data' -> 'data'."""
    head = re.split(r"\s+(?:vs|&|and)\s+", title.strip(), maxsplit=1)[0]
    return re.sub(r"[^a-z0-9]+", "", head.lower()) or "page"


# Screenshots named otherwise than slug(title): the Churn page of the 8-day world has no model yet (the README's
# churn.png is the page with a model, from `test_churn_page_with_a_model`; ads.png is the page on the default world
# with an ads model, taken from benchmarks/bench_ads.py's model copy).
SHOT_NAMES = {"Churn": "churn-no-model", "Ads": "ads-no-model"}

# A world with a churn model (issue 17): long enough for its time split, a few closed-loop days served and
# monitored, scores on three days a week apart, and a ranker promoted after the churn model was trained (so
# the churn model is possibly stale: the Churn page's banner and the Training page's graph show it).
CHURN_WORLD = dict(seed=5, users=600, movies=300, days=56)
CHURN_PAGE_BUDGET = 3300
DEPENDENCY_TEXT = "Model families and their dependencies"


def screenshot_dir() -> Path:
    return Path(os.environ.get("RETRO_SCREENSHOT_DIR") or ROOT / "docs" / "screenshots")


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chromium_executable() -> str:
    """Debian's Chromium; skip without it locally, fail without it in CI."""
    wanted = os.environ.get("RETRO_CHROMIUM")
    if wanted:
        found = wanted if Path(wanted).is_file() and os.access(wanted, os.X_OK) else None
    elif Path("/usr/bin/chromium").is_file():
        found = "/usr/bin/chromium"
    else:
        found = shutil.which("chromium")
    if found:
        return found
    where = wanted or "/usr/bin/chromium (or `chromium` on PATH)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"Chromium not found at {where}: CI must install Debian's chromium "
                    "(apt-get install -y chromium) for the browser test", pytrace=False)
    pytest.skip("Chromium not found: install Debian's chromium (apt-get install chromium) to run the browser test")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no server log)"


@contextlib.contextmanager
def streamlit_server(home: Path, environment: dict):
    """`streamlit run dashboard/app.py` on a free port over `home`; yields (url, log file), stops it at the end."""
    log = home.parent / f"{home.name}-streamlit.log"
    port = free_port()
    env = {**os.environ, "RETRO_HOME": str(home), **environment, "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false"}
    cmd = [sys.executable, "-m", "streamlit", "run", "dashboard/app.py", "--server.headless=true",
           f"--server.port={port}", "--server.address=127.0.0.1"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"streamlit exited with code {proc.returncode} before answering:\n{tail(log)}")
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.read().decode().strip() == "ok":
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"streamlit did not answer /_stcore/health within 60 s:\n{tail(log)}")
            time.sleep(0.2)
        yield url, log
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def server(chromium_executable, tmp_path_factory):
    """A Streamlit server on a free port over an empty data folder; yields (url, log file)."""
    home = tmp_path_factory.mktemp("browser-home")
    from core.privacy import access
    from core.settings import load_settings
    access.add_operator(load_settings(home), *OPERATOR)
    with streamlit_server(home, DEMO_SIZE) as running:
        yield running


def _build_churn_world(s) -> None:
    """CHURN_WORLD with a CF model and ranker, 4 closed-loop days, a churn model in production scored on three days a
    week apart, then a ranker promoted after it. Built in the test process: conftest's RETRO_GATE_MIN_USERS=10 applies."""
    import pandas as pd

    from core.simulation import loop, simulation
    from core.training import churn_pipeline, pipeline, registry
    simulation.init_world(s, **CHURN_WORLD)
    pipeline.retrain(s)
    loop.run(s, 4)
    trained = churn_pipeline.train(s, promote=False)
    if registry.production(s, family="churn") is None:         # a world this small rarely beats the rule
        registry.promote(s, trained["version"], "browser-test", "a churn model to look at")
    end = churn_pipeline.current_as_of(s)
    for days_before in (14, 7, 0):
        churn_pipeline.score(s, as_of=end - pd.Timedelta(days=days_before))
    ranker = registry.list_versions(s).query("family == 'ranker' and stage == 'candidate'")
    if len(ranker):
        registry.promote(s, int(ranker["version"].iloc[0]), "browser-test", "re-ranking after the churn model")
    else:       # the first retrain promoted its ranker (the gate's call on this small world): train another one
        again = pipeline.train_ranker(s, seed=7)
        if not again["promoted"]:
            registry.promote(s, again["version"], "browser-test", "re-ranking after the churn model")


@pytest.fixture(scope="module")
def churn_server(chromium_executable, tmp_path_factory):
    """A Streamlit server over a copy of a prepared world with a (possibly stale) churn model; yields (url, log
    file). The world is built once per run (conftest.built_once: this module's tests may run on both workers)."""
    from conftest import built_once, private_copy
    home = private_copy(built_once(tmp_path_factory, "browser-churn", _build_churn_world),
                        tmp_path_factory.mktemp("browser-churn")).home
    with streamlit_server(home, {"RETRO_GATE_MIN_USERS": "10"}) as running:
        yield running


# Characters that render as empty boxes ("tofu") without an emoji font (Debian's Chromium here, many servers): the
# emoji planes and the emoji-presentation selector (issue 24.6: every page title had them). `:material/` icons are
# no answer either: they fetch a web font, which offline logs the console errors the tests already refuse.
NO_FONT_GLYPHS_JS = r"""() => [...new Set(document.body.innerText.match(/[\u{1F000}-\u{1FAFF}\u{FE0F}]/gu) || [])]"""


class Page:
    """One browser tab on the app, with the console errors and page errors it has collected."""

    def __init__(self, page, url):
        self.page, self.url, self.errors = page, url, []
        page.on("console", lambda m: m.type == "error" and self.errors.append(f"console error: {m.text} @ {m.location}"))
        page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))

    def goto_sidebar(self, title: str) -> None:
        nav = self.page.get_by_test_id("stSidebarNav")
        link = nav.get_by_role("link", name=re.compile(rf"(^|\s){re.escape(title)}$"))
        more = nav.get_by_test_id("stSidebarNavViewButton")
        if link.count() == 0 and more.count() and "more" in more.inner_text():
            more.click()  # many pages: Streamlit folds the list behind "View N more"
        link.click()

    def wait_for(self, text: str, timeout: int = PAGE_TIMEOUT_MS) -> None:
        from playwright.sync_api import expect
        expect(self.page.get_by_test_id("stMain").get_by_text(text).first).to_be_visible(timeout=timeout)
        self.page.wait_for_function(PAGE_RENDERED_JS, timeout=timeout)

    def assert_no_error_on_page(self) -> None:
        main = self.page.get_by_test_id("stMain")
        exceptions = main.get_by_test_id("stException")
        assert exceptions.count() == 0, f"exception shown on {self.page.url}:\n" + "\n".join(exceptions.all_inner_texts())
        errors = main.get_by_test_id("stAlertContentError")
        assert errors.count() == 0, f"st.error shown on {self.page.url}:\n" + "\n".join(errors.all_inner_texts())
        tofu = self.page.evaluate(NO_FONT_GLYPHS_JS)
        assert not tofu, f"{self.page.url} shows text that needs an emoji or icon font this machine lacks: {tofu}"

    def sign_in(self, name: str, token: str) -> None:
        """Sign in through the sidebar's Operator form (once per browser session)."""
        from playwright.sync_api import expect
        side = self.page.get_by_test_id("stSidebar")
        if side.get_by_text(f"Signed in as {name}").count():
            return
        side.get_by_text("Operator", exact=True).click()
        side.get_by_label("Name").fill(name)
        side.get_by_label("Token").fill(token)
        side.get_by_role("button", name="Sign in").click()
        expect(side.get_by_text(f"Signed in as {name}")).to_be_visible(timeout=PAGE_TIMEOUT_MS)

    def assert_layout_ok(self, height_budget: int) -> None:
        problems = layout_problems(self.page, height_budget)
        assert not problems, f"{self.page.url}:\n  " + "\n  ".join(problems)

    def screenshot(self, name: str) -> Path:
        return full_page_screenshot(self.page, screenshot_dir() / f"{name}.png")

    def take_errors(self) -> list[str]:
        errors, self.errors = self.errors, []
        return errors


@pytest.fixture(scope="module")
def browser(chromium_executable):
    """One headless Chromium for the module (Playwright's sync API allows one running instance at a time)."""
    from playwright.sync_api import sync_playwright
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=chromium_executable, args=CHROMIUM_ARGS, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


def _open_overview(server, browser, what: str):
    """A Chromium tab on the server's Overview, once its first start has finished; closed after the module."""
    url, log = server
    page = browser.new_context(viewport=VIEWPORT).new_page()
    tab = Page(page, url)
    page.goto(url + "/")
    try:
        tab.wait_for(PAGES[0][1], timeout=FIRST_START_TIMEOUT_MS)
    except Exception as exc:
        pytest.fail(f"{what}: {exc}\nserver log:\n{tail(log)}")
    yield tab
    page.context.close()


@pytest.fixture(scope="module")
def app(server, browser):
    """The app open in Chromium, after the first-start set-up has finished on the Overview page."""
    yield from _open_overview(server, browser, "first start did not finish")


@pytest.fixture(scope="module")
def churn_app(churn_server, browser):
    """The app over the churn world, open on its Overview."""
    yield from _open_overview(churn_server, browser, "the churn world's Overview did not open")


# --- tests ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("title,text,budget", PAGES, ids=[slug(t) for t, _, _ in PAGES])
def test_page_renders_real_content(app, title, text, budget):
    app.goto_sidebar(title)
    app.wait_for(text)
    app.assert_no_error_on_page()
    shot = app.screenshot(SHOT_NAMES.get(title, slug(title)))   # before the layout check: a failing page's picture helps
    assert shot.stat().st_size > 10_000
    assert app.take_errors() == []
    app.assert_layout_ok(budget)


def test_retrain_from_the_training_page(app):
    app.goto_sidebar("Training & Models")
    app.wait_for("Experiment runs")
    app.sign_in(*OPERATOR)
    app.page.get_by_role("button", name="Run the retrain pipeline").click()
    outcome = (app.page.get_by_test_id("stMain")
               .locator('[data-testid="stAlertContentSuccess"], [data-testid="stAlertContentWarning"]')
               .filter(has_text=re.compile(r"^Run .+→ v\d+")))
    from playwright.sync_api import expect
    expect(outcome.first).to_be_visible(timeout=RETRAIN_TIMEOUT_MS)
    app.page.wait_for_function(PAGE_RENDERED_JS, timeout=PAGE_TIMEOUT_MS)
    app.assert_no_error_on_page()
    assert app.take_errors() == []
    app.assert_layout_ok(dict((t, b) for t, _, b in PAGES)["Training & Models"] + 400)   # + the run's messages


def test_drift_scenario_from_the_drift_page(app):
    """Pick a shift and a policy in the scenario form, run it, and see monitoring react on the same page."""
    from playwright.sync_api import expect
    app.goto_sidebar("Drift")
    app.wait_for("simulate days in the closed loop")
    app.sign_in(*OPERATOR)
    main = app.page.get_by_test_id("stMain")
    form = main.get_by_test_id("stForm").filter(has_text="Run scenario")
    for label, option in (("Shift", "trend"), ("Policy", "on-alert")):
        form.get_by_test_id("stSelectbox").filter(has_text=label).click()
        app.page.get_by_role("option", name=option, exact=True).click()
    days = form.get_by_label("Days to simulate")
    days.fill("2")
    days.press("Tab")
    form.get_by_role("button", name="Run scenario").click()
    expect(main.get_by_test_id("stAlertContentSuccess").filter(has_text="Simulated 2 days")).to_be_visible(
        timeout=RETRAIN_TIMEOUT_MS)
    app.wait_for("Model drift")                     # the timeline, model-drift and per-feature charts are drawn
    expect(main.get_by_text("Data drift (primary test per feature) vs threshold").first).to_be_visible()
    assert main.get_by_test_id("stPlotlyChart").count() >= 3
    app.assert_no_error_on_page()
    assert app.screenshot("drift-scenario").stat().st_size > 10_000
    assert app.take_errors() == []
    app.assert_layout_ok(DRIFT_SCENARIO_BUDGET)


def test_churn_page_with_a_model(churn_app):
    """Metrics vs the recency rule, the staleness banner, the at-risk table with user ids and reasons, the
    risk histogram, calibration, online check and churn next to the hit rate: all drawn, nothing clipped."""
    from playwright.sync_api import expect
    churn_app.goto_sidebar("Churn")
    churn_app.wait_for("Who is at risk")
    main = churn_app.page.get_by_test_id("stMain")
    expect(main.get_by_text("Possibly stale").first).to_be_visible()
    expect(main.get_by_text(re.compile(r"^Why user \d+ is at risk")).first).to_be_visible()
    expect(main.get_by_test_id("stMarkdown").filter(has_text="log-odds").first).to_be_visible()   # reasons in words
    assert main.get_by_test_id("stDataFrame").locator("th").filter(has_text="why (top SHAP reasons)").count() == 1
    assert main.get_by_test_id("stPlotlyChart").count() == 4
    assert main.get_by_test_id("stMetric").count() == 4
    churn_app.assert_no_error_on_page()
    assert churn_app.screenshot("churn").stat().st_size > 10_000
    assert churn_app.take_errors() == []
    churn_app.assert_layout_ok(CHURN_PAGE_BUDGET)


def test_training_page_dependency_graph(churn_app):
    """The four families drawn by Graphviz (in the browser, from a DOT string), the churn model marked stale."""
    from playwright.sync_api import expect
    churn_app.goto_sidebar("Training & Models")
    churn_app.wait_for(DEPENDENCY_TEXT)
    main = churn_app.page.get_by_test_id("stMain")
    graph = main.get_by_test_id("stGraphVizChart")
    expect(graph.locator("svg g.node").first).to_be_visible(timeout=PAGE_TIMEOUT_MS)
    drawn = graph.locator("svg").text_content()
    for text in ("Collaborative filtering (cf)", "Ranker", "Churn", "Ads targeting", "STALE", "in production"):
        assert text in drawn, f"{text!r} not in the drawn graph: {drawn!r}"
    # cf → ranker, cf → churn, ranker → churn, cf → ads (genre affinities), churn → ads (churn risk)
    assert graph.locator("svg g.node").count() == 4 and graph.locator("svg g.edge").count() == 5
    churn_app.assert_no_error_on_page()
    expect(main.get_by_test_id("stAlertContentWarning").filter(has_text="is possibly stale").first).to_be_visible()
    heading = main.get_by_role("heading", name=DEPENDENCY_TEXT)
    legend = main.get_by_test_id("stAlertContainer").filter(has_text="is possibly stale").first
    assert section_screenshot(churn_app.page, heading, [graph, legend], screenshot_dir() / "training-dependencies.png"
                              ).stat().st_size > 10_000
    assert churn_app.take_errors() == []
    churn_app.assert_layout_ok(dict((t, b) for t, _, b in PAGES)["Training & Models"] + 600)   # + graph, two families


def section_screenshot(page, first, last: list, path: Path, pad: int = 16) -> Path:
    """A picture of the page from element `first` down to the lowest of the elements `last` (the app scrolls
    inside stMain, so the window is grown to the whole page first)."""
    height = page.evaluate("() => document.querySelector('[data-testid=\"stMain\"]').scrollHeight")
    page.set_viewport_size({"width": VIEWPORT["width"], "height": max(height, VIEWPORT["height"])})
    page.wait_for_timeout(300)
    try:
        top = first.bounding_box()
        bottom = max(b["y"] + b["height"] for b in (element.bounding_box() for element in last))
        block = page.get_by_test_id("stMainBlockContainer").bounding_box()
        path.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(path), clip={"x": block["x"], "y": max(top["y"] - pad, 0), "width": block["width"],
                                              "height": bottom - top["y"] + 2 * pad})
    finally:
        page.set_viewport_size(VIEWPORT)
    return path


def test_server_logged_no_traceback(server, app):
    _, log = server
    text = log.read_text(errors="replace")
    assert "Traceback" not in text, f"server log:\n{tail(log, 80)}"


def test_churn_server_logged_no_traceback(churn_server, churn_app):
    _, log = churn_server
    text = log.read_text(errors="replace")
    assert "Traceback" not in text, f"server log:\n{tail(log, 80)}"


def test_layout_check_catches_each_problem(browser):
    """`layout_problems` on a hand-made page: each kind of problem is named, and content that scrolls inside
    its own container (a wide dataframe grid, a code block) is not an overflow. No Streamlit server needed."""
    html = """<body style="margin:0"><div data-testid="stMain" style="width:1400px">
      <div data-testid="stMainBlockContainer" style="width:900px">
        <div data-testid="stHelp">Creator of Delta protobuf messages.</div>
        <pre>Parameters\n----------\nx : int</pre>
        <div id="wide" style="width:1600px;height:20px">a table that sticks out</div>
        <div style="overflow-x:auto;width:900px"><div style="width:3000px;height:20px">scrolled code</div></div>
        <div data-testid="stDataFrame" style="width:400px"><table><tr><th>title</th><th>WR</th></tr></table>
          <div class="dvn-scroller" style="overflow-x:auto;width:400px"><div style="width:470px;height:20px"></div></div>
        </div>
        <div style="height:3000px"></div>
      </div></div></body>"""
    context = browser.new_context(viewport=VIEWPORT)
    try:
        page = context.new_page()
        page.set_content(html)
        problems = layout_problems(page, height_budget=2000)
    finally:
        context.close()
    text = "\n".join(problems)
    assert "1 Streamlit help box" in text
    assert "'Creator of Delta protobuf'" in text and "'Parameters\\n----------'" in text
    assert re.search(r"page is 3\d{3} px tall, budget 2000 px", text)
    assert 'div "a table that sticks out" right=1600' in text and "scrolled code" not in text
    assert "columns hidden behind a scrollbar: table [title, WR] needs 470px, has 400px" in text
