"""When a dashboard page counts as drawn in a real browser — one rule for the browser test and the
dashboard benchmark, so the benchmark times exactly what the test waits for. No Streamlit import."""
from __future__ import annotations

from pathlib import Path

CHROMIUM_ARGS = ["--no-sandbox", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
VIEWPORT = {"width": 1400, "height": 900}
MAX_SCREENSHOT_HEIGHT = 6000

# True once the script has finished and every table and chart on the page has been drawn.
PAGE_RENDERED_JS = """() => {
  const app = document.querySelector('[data-testid="stApp"]');
  if (!app || app.getAttribute('data-test-script-state') !== 'notRunning') return false;
  const main = document.querySelector('[data-testid="stMain"]');
  if (!main || main.querySelector('[data-testid="stSkeleton"]')) return false;
  // Only what is visible: content in inactive tabs is not drawn until its tab is opened.
  for (const df of main.querySelectorAll('[data-testid="stDataFrame"]'))
    if (df.offsetParent !== null && !df.querySelector('table')) return false;
  for (const chart of main.querySelectorAll('[data-testid="stPlotlyChart"]'))
    if (chart.offsetParent !== null && !chart.querySelector('.main-svg')) return false;
  return true;
}"""


def full_page_screenshot(page, path: Path, settle_ms: int = 300) -> Path:
    """The app scrolls inside stMain, so a 'full page' shot first grows the viewport to the content."""
    height = page.evaluate("() => document.querySelector('[data-testid=\"stMain\"]').scrollHeight")
    page.set_viewport_size({"width": VIEWPORT["width"],
                            "height": min(max(height, VIEWPORT["height"]), MAX_SCREENSHOT_HEIGHT)})
    page.wait_for_timeout(settle_ms)  # let charts settle after the resize
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path), full_page=True)
    page.set_viewport_size(VIEWPORT)
    return path
