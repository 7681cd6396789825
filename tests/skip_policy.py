"""In CI a test may skip only for a documented optional part; any other skip fails the test there.

CI (`bash .ci/run`, which exports CI=true) installs Chromium, Java and pyspark, so the browser and Spark tests
fail rather than skip without them (their fixtures say so). What CI cannot have is the MovieLens data: its licence
forbids committing it, and the tests that read it skip when `../shared/datasets/` is absent (docs/pipeline.md).
A skip for any other reason — a fixture that finds its world not as expected, a condition that turned false —
is a test that stopped testing; under CI=true it is reported as a failure with its reason.
"""
import os
import re

import pytest

# reason → where the optional part is documented. A skip's message must match one of these to pass in CI.
ALLOWED_IN_CI = {
    re.compile(r"^MovieLens data not found at "): "docs/pipeline.md (the data is not committed: its licence)",
}


def documented(reason: str) -> bool:
    """Whether a skip `reason` (pytest's message, with or without its 'Skipped: ' prefix) is an allowed one."""
    reason = reason.removeprefix("Skipped: ")
    return any(pattern.search(reason) for pattern in ALLOWED_IN_CI)


def _reason(report) -> str:
    longrepr = report.longrepr
    return longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.skipped and not hasattr(report, "wasxfail") and os.environ.get("CI") == "true":
        reason = _reason(report)
        if not documented(reason):
            report.outcome = "failed"
            report.longrepr = (f"skipped in CI for a reason that is not a documented optional part "
                               f"(tests/skip_policy.py ALLOWED_IN_CI): {reason}")
