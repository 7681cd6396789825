"""The model and governance pages after their main actions, in a real browser (issue 24's second first day).

Each test performs one action — retrain (Training & Models), a drift scenario (Drift), export and erase
(Privacy) — or opens a page whose hint must work now (Explanations: why is this user at risk?), then asserts
what the page shows afterwards against what the stores say (the registry, the releases, the erasure log, the
warehouse), not only the success message; and that no table on the page scrolls sideways at 1400 px or hides a
column (`layout_problems(..., every_table=True)`). Full-page screenshots go to docs/screenshots/ (name per test).

Same server, browser and helpers as test_browser.py (a fresh 300-user, 8-day demo world built by the first start).
Run alone:  .venv/bin/python -m pytest -q tests/test_browser_model_actions.py
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from test_browser import (OPERATOR, PAGE_TIMEOUT_MS, PAGES, RETRAIN_TIMEOUT_MS, app, browser,  # noqa: F401 - fixtures
                          chromium_executable, server, tail)

from core.settings import load_settings
from dashboard.readiness import PAGE_RENDERED_JS, layout_problems

pytestmark = pytest.mark.browser

BUDGET = dict((title, budget) for title, _, budget in PAGES)
SCENARIO_TIMEOUT_MS = 180_000


def home_of(server) -> Path:
    """The data folder the server runs on (test_browser's server logs to '<home>-streamlit.log' beside it)."""
    _, log = server
    return log.with_name(log.name.removesuffix("-streamlit.log"))


def assert_tables_fit(tab, budget: int) -> None:
    """No table scrolls sideways or hides a column, and the rest of test_browser's layout rules."""
    problems = layout_problems(tab.page, budget, every_table=True)
    assert not problems, f"{tab.page.url}:\n  " + "\n  ".join(problems)


def table(main, key_text: str):
    """The dataframe whose header row holds `key_text`."""
    return main.get_by_test_id("stDataFrame").filter(has=main.page.locator("th").filter(has_text=key_text)).first


def cells(frame) -> list[str]:
    return [t.strip() for t in frame.locator("td").all_text_contents()]


def test_retrain_shows_what_the_registry_says_now(app, server):
    from playwright.sync_api import expect

    from core.monitoring import release
    from core.training import registry
    app.goto_sidebar("Training & Models")
    app.wait_for("Experiment runs")
    app.sign_in(*OPERATOR)
    main = app.page.get_by_test_id("stMain")
    main.get_by_role("button", name="Run the retrain pipeline").click()
    outcome = main.get_by_test_id("stAlertContainer").filter(has_text=re.compile(r"^Run \d+ → v\d+: now "))
    expect(outcome.first).to_be_visible(timeout=RETRAIN_TIMEOUT_MS)
    app.page.wait_for_function(PAGE_RENDERED_JS, timeout=PAGE_TIMEOUT_MS)
    text = outcome.first.inner_text()
    version = int(re.search(r"→ v(\d+)", text).group(1))
    s = load_settings(home_of(server))
    now = release.fate(s, version)
    assert now["text"].removeprefix(f"v{version} ") in text, (text, now)
    if now["state"] == "refused":
        assert "kept as candidate" in text
    else:
        assert "kept as candidate" not in text
    # The registry table below is read after the action: the new version is there with its stage now.
    versions = table(main, "stage")
    expect(versions.locator("td").filter(has_text=re.compile(rf"^{version}$")).first).to_be_attached(
        timeout=PAGE_TIMEOUT_MS)           # the grid's cells are an accessible table under its canvas
    assert registry.get_version(s, version)["stage"] in cells(versions)
    # Compare runs: one model kind, one precision, no None, the derived columns explained.
    compare = table(main, "Δ % of A")
    expect(compare).to_be_visible(timeout=PAGE_TIMEOUT_MS)
    expect(compare.locator("td").first).to_be_attached(timeout=PAGE_TIMEOUT_MS)
    shown = cells(compare)
    assert shown and "None" not in shown and "nan" not in shown
    numbers = [c for c in shown if re.fullmatch(r"[+-]?\d[\d,]*\.\d+", c)]
    assert numbers and {len(c.split(".")[1]) for c in numbers} == {4}, numbers
    expect(main.get_by_text(re.compile(r"Δ % of A = that difference relative to run A")).first).to_be_visible()
    kind = main.get_by_test_id("stSelectbox").filter(has_text="Compare runs of").aria_snapshot()
    assert re.search(r'combobox "Compare runs of": (als|bpr|ranker)\b', kind), kind
    app.assert_no_error_on_page()
    assert app.screenshot("training-after-retrain").stat().st_size > 10_000
    assert app.take_errors() == []
    assert_tables_fit(app, BUDGET["Training & Models"] + 600)


def test_drift_scenario_shows_progress_and_each_retrain_as_it_is_now(app, server):
    from playwright.sync_api import expect

    from core.monitoring import release
    app.goto_sidebar("Drift")
    app.wait_for("simulate days in the closed loop")
    app.sign_in(*OPERATOR)
    main = app.page.get_by_test_id("stMain")
    form = main.get_by_test_id("stForm").filter(has_text="Run scenario")
    for label, option in (("Shift", "trend"), ("Policy", "on-alert")):
        form.get_by_test_id("stSelectbox").filter(has_text=label).click()
        app.page.get_by_role("option", name=option, exact=True).click()
    days = form.get_by_label("Days to simulate")
    days.fill("3")
    days.press("Tab")
    form.get_by_role("button", name="Run scenario").click()
    # Progress names the stage and the days done while it runs.
    progress = main.get_by_test_id("stProgress").filter(has_text=re.compile(r"of 3 days simulated\): \w"))
    expect(progress.first).to_be_visible(timeout=PAGE_TIMEOUT_MS)
    done = main.get_by_test_id("stAlertContentSuccess").filter(has_text="Simulated 3 days")
    expect(done).to_be_visible(timeout=SCENARIO_TIMEOUT_MS)
    app.wait_for("Model drift")
    text = done.inner_text()
    s = load_settings(home_of(server))
    retrained = [int(v) for v in re.findall(r"\bv(\d+)(?: promoted to| in canary| waits for| was promoted| kept as|"
                                            r"'s release)", text)]
    for version in retrained:                                # each retrain's version as the stores say it is now
        assert release.fate(s, version)["text"] in text, (text, release.fate(s, version))
    if "0 automatic retrains" not in text:
        assert retrained, text
    assert "kept as candidate by the gate" not in main.inner_text()         # the narrative re-reads it too
    app.assert_no_error_on_page()
    assert app.screenshot("drift-after-scenario").stat().st_size > 10_000
    assert app.take_errors() == []
    assert_tables_fit(app, 4200)


def test_churn_hint_names_the_missing_days(app, server):
    from playwright.sync_api import expect

    from core.training import churn_pipeline
    app.goto_sidebar("Explanations & Governance")
    app.wait_for("Why this movie?")
    main = app.page.get_by_test_id("stMain")
    main.get_by_role("tab", name="Why is this user at risk?").click()
    need = churn_pipeline.history_needed(load_settings(home_of(server)))
    assert need["missing"] > 0
    hint = main.get_by_test_id("stAlertContainer").filter(has_text=f"{need['missing']} days are missing")
    expect(hint.first).to_be_visible(timeout=PAGE_TIMEOUT_MS)
    assert f"simulate --days {need['missing']}" in hint.first.inner_text()
    assert "train one with" not in hint.first.inner_text()
    app.assert_no_error_on_page()
    assert app.screenshot("explanations-churn-hint").stat().st_size > 10_000
    assert app.take_errors() == []
    assert_tables_fit(app, BUDGET["Explanations & Governance"])


def test_for_you_scores_are_readable(app):
    app.goto_sidebar("Top 50 vs For You")
    app.wait_for("For You")
    main = app.page.get_by_test_id("stMain")
    heads = " ".join(main.get_by_test_id("stDataFrame").locator("th").all_inner_texts())
    assert "P(watch)" in heads or "score" in heads
    if "P(watch)" in heads:
        values = [c for c in cells(table(main, "P(watch)")) if c.endswith("%")]
        assert values and all(0 <= float(v.rstrip("%")) <= 100 for v in values)
    app.assert_no_error_on_page()
    assert app.take_errors() == []
    assert_tables_fit(app, BUDGET["Top 50 vs For You"])


def test_export_and_erase_show_the_stores_afterwards(app, server):
    from playwright.sync_api import expect

    from core.privacy import erasure
    app.goto_sidebar("Privacy")
    app.wait_for("Data inventory")
    app.sign_in(*OPERATOR)
    main = app.page.get_by_test_id("stMain")
    user = main.get_by_label("User id")
    user.fill("3")
    user.press("Enter")
    expect(main.get_by_text("Data held about this user").first).to_be_visible(timeout=PAGE_TIMEOUT_MS)
    app.page.wait_for_function(PAGE_RENDERED_JS, timeout=PAGE_TIMEOUT_MS)
    main.get_by_role("button", name="Prepare export (JSON)").click()
    expect(main.get_by_role("button", name="Download export")).to_be_visible(timeout=PAGE_TIMEOUT_MS)
    app.page.wait_for_function(PAGE_RENDERED_JS, timeout=PAGE_TIMEOUT_MS)
    per_store = main.get_by_test_id("stDataFrame").filter(has=app.page.locator("th").filter(has_text="rows"))
    expect(per_store).to_have_count(2)                      # data held, then the export's rows per store
    exported = cells(per_store.nth(1))
    assert any(re.fullmatch(r"\d+", c) and int(c) > 0 for c in exported), exported
    assert_tables_fit(app, BUDGET["Privacy"] + 800)
    assert app.screenshot("privacy-after-export").stat().st_size > 10_000

    form = main.get_by_test_id("stForm").filter(has_text="Erase this user")
    form.get_by_text("I confirm the erasure of user 3").click()
    form.get_by_role("button", name="Erase").click()
    expect(main.get_by_test_id("stAlertContentSuccess").filter(has_text="Erased. User 3 is gone")).to_be_visible(
        timeout=RETRAIN_TIMEOUT_MS)
    app.page.wait_for_function(PAGE_RENDERED_JS, timeout=PAGE_TIMEOUT_MS)
    # Read after the erasure: the request log holds it, its actor in full; the user is gone from the page too.
    s = load_settings(home_of(server))
    request = erasure.request_log(s).iloc[0]
    requests = table(main, "requested (service clock)")
    expect(requests.locator("td").filter(has_text=request["actor"]).first).to_be_attached(timeout=PAGE_TIMEOUT_MS)
    assert request["actor"] == f"operator:{OPERATOR[0]}" and request["actor"] in cells(requests)
    expect(main.get_by_test_id("stAlertContainer").filter(has_text=re.compile("unknown user 3|erased")).first
           ).to_be_visible()
    audit = table(main, "recorded (real UTC)")
    heads = {h.strip() for h in audit.locator("th").all_text_contents()}
    assert {"recorded (real UTC)", "service time", "clock"} <= heads
    assert {"simulated", "real"} & set(cells(audit))
    app.assert_no_error_on_page()
    assert app.screenshot("privacy-after-erase").stat().st_size > 10_000
    assert app.take_errors() == []
    assert_tables_fit(app, BUDGET["Privacy"] + 800)


def test_server_logged_no_traceback(server, app):
    _, log = server
    assert "Traceback" not in log.read_text(errors="replace"), f"server log:\n{tail(log, 80)}"
