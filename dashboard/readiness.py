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


# What a drawn page must not show: Streamlit help boxes (what `st.help` and "magic" print for a bare
# expression that returns an object), text of a Python docstring, elements sticking out of the window on
# the right (content inside a scrolling container — a dataframe's grid, a plotly chart, a code block — is
# scrolled, not cut, and is skipped), and dataframes placed in a column that hide columns behind a
# horizontal scrollbar. Returns the page height (stMain scrolls, so its scrollHeight) and the offenders.
DOCSTRING_FINGERPRINTS = ("Creator of Delta protobuf", "Parameters\n----------", "Returns\n-------",
                          "Initialize self.  See help(type(self))")
PAGE_LAYOUT_JS = """([slack, everyTable]) => {
  const main = document.querySelector('[data-testid="stMain"]');
  const width = document.documentElement.clientWidth;
  const describe = (el) => {
    const id = el.getAttribute('data-testid') || el.tagName.toLowerCase();
    const text = (el.innerText || '').trim().split('\\n')[0].slice(0, 60);
    return `${id} "${text}" right=${Math.round(el.getBoundingClientRect().right)}`;
  };
  const scrolled = (el) => {   // inside a container that scrolls or clips horizontally and itself fits
    for (let p = el.parentElement; p && p !== main; p = p.parentElement) {
      const ox = getComputedStyle(p).overflowX;
      if (['auto', 'scroll', 'hidden', 'clip'].includes(ox) && p.getBoundingClientRect().right <= width + slack)
        return true;
    }
    return false;
  };
  const overflowing = [];
  for (const el of main.querySelectorAll('*')) {
    const r = el.getBoundingClientRect();
    if (r.width === 0 || r.height === 0 || r.right <= width + slack || el.offsetParent === null) continue;
    if (el.closest('[data-testid="stDataFrame"], [data-testid="stPlotlyChart"]') || scrolled(el)) continue;
    overflowing.push(describe(el));
  }
  const mainWidth = main.querySelector('[data-testid="stMainBlockContainer"]')?.getBoundingClientRect().width || width;
  const clippedTables = [];
  for (const df of main.querySelectorAll('[data-testid="stDataFrame"]')) {
    const scroller = df.querySelector('.dvn-scroller');
    if (!scroller || df.offsetParent === null) continue;
    if ((everyTable || df.getBoundingClientRect().width < 0.75 * mainWidth)
        && scroller.scrollWidth > scroller.clientWidth + slack) {
      const heads = [...df.querySelectorAll('th')].map(th => th.innerText.trim()).filter(Boolean);
      clippedTables.push(`table [${heads.join(', ')}] needs ${scroller.scrollWidth}px, has ${scroller.clientWidth}px`);
    }
  }
  return {height: main.scrollHeight, help: main.querySelectorAll('[data-testid="stHelp"]').length,
          text: main.innerText, overflowing, clippedTables};
}"""


def layout_problems(page, height_budget: int, slack: int = 4, *, every_table: bool = False) -> list[str]:
    """Why a drawn page looks broken: help boxes, docstrings, a page taller than its budget (px), elements
    wider than the window, half-width tables that hide columns (`every_table`: any table, full width too, that
    scrolls sideways). Empty when the page is fine."""
    found = page.evaluate(PAGE_LAYOUT_JS, [slack, every_table])
    problems = []
    if found["help"]:
        problems.append(f"{found['help']} Streamlit help box(es) (st.help or magic output of a bare expression)")
    problems += [f"docstring text on the page: {f!r}" for f in DOCSTRING_FINGERPRINTS if f in found["text"]]
    if found["height"] > height_budget:
        problems.append(f"page is {found['height']} px tall, budget {height_budget} px")
    problems += [f"wider than the {page.viewport_size['width']} px window: {o}" for o in found["overflowing"][:10]]
    problems += [f"columns hidden behind a scrollbar: {t}" for t in found["clippedTables"]]
    return problems


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
