"""Drift windows too small to judge (issue 12): minimum sizes, merged buckets, constant references.

Found: a 1-row current window gave PSI 8.28 and KS D 0.54, both "drifted"; 100 % of 5-row days and 70 % of
30-row days drawn from the reference itself would have alerted; a constant reference 3.0 against 4.0 gave
PSI 0 while 3.0 against 2.0 gave 18.4.
"""
import numpy as np
import pytest

from core.monitoring import drift, monitoring
from core.monitoring.drift import MIN_NUMERIC, OTHER, run_test

REF_SIZE = 20_000
DRAWS = 500


def test_a_one_row_window_is_insufficient_not_drifted():
    ref = np.random.default_rng(1).lognormal(0, 1, 5000)
    for name in ("psi", "ks", "jensen_shannon"):
        r = run_test(name, ref, [50.0])
        assert r.insufficient and not r.drifted and np.isnan(r.score) and r.n_current == 1
        assert "not enough data" in r.detail
    # 99 rows: still too few; 100: judged
    assert run_test("psi", ref, ref[:99]).insufficient
    assert not run_test("psi", ref, ref[:MIN_NUMERIC]).insufficient
    # an insufficient result never confirms an alert, whatever happened yesterday
    r = run_test("psi", ref, [50.0]).to_dict()
    assert not monitoring.drift_confirmed(r, drifted_yesterday=True)
    assert not monitoring.drift_recovered(r)        # nor closes one: it says nothing


def test_categories_too_few_rows_per_bucket_are_merged_or_insufficient():
    ref = {f"g{i}": 1000 for i in range(18)}
    # 400 rows over 18 categories: 22 per bucket on average, nothing merged
    r = run_test("psi", ref, {f"g{i}": 400 // 18 + (i < 400 % 18) for i in range(18)})
    assert not r.insufficient and OTHER not in r.detail
    # 150 titles, 200 rows: at most 40 buckets; one title surging keeps its own bucket and is named
    titles = {f"t{i:03d}": 100 for i in range(150)}
    current = {f"t{i:03d}": 1 for i in range(150)} | {"t007": 51}
    r = run_test("max_share_gain", titles, current)
    assert not r.insufficient and "merged" in r.detail and r.detail.startswith("t007:")
    assert r.score == pytest.approx(51 / 200 - 1 / 150)
    merged = drift.merge_small_buckets(drift.window(titles), drift.window(current))
    assert merged is not None and len(merged[1].counts) == 200 // 5
    assert merged[1].counts.sum() == 200 and merged[0].counts.sum() == 15_000   # merging keeps every row
    # 9 rows cannot fill two buckets of 5
    assert drift.merge_small_buckets(drift.window(titles), drift.window({"t001": 9})) is None


def test_constant_reference_separates_values_above_and_below():
    up, down = run_test("psi", [3.0] * 500, [4.0] * 500), run_test("psi", [3.0] * 500, [2.0] * 500)
    assert up.drifted and down.drifted and up.score == pytest.approx(down.score) and up.score > 10
    assert run_test("jensen_shannon", [3.0] * 500, [4.0] * 500).score == pytest.approx(1.0)
    assert run_test("psi", [3.0] * 500, [3.0] * 500).score == pytest.approx(0.0)
    # near-constant: 95 % at 3.0 — a move to 4.0 drifts too
    near = [3.0] * 475 + list(np.linspace(1, 2.9, 25))
    assert run_test("psi", near, [4.0] * 500).drifted


def _alerts(name, reference, draw, kind=None):
    """How many single days drawn from the reference would open an alert (monitoring's rule, no yesterday)."""
    alerts = insufficient = 0
    for i in range(DRAWS):
        r = run_test(name, reference, draw(i), kind=kind).to_dict()
        alerts += monitoring.drift_confirmed(r, drifted_yesterday=False)
        insufficient += r["insufficient"]
    return alerts, insufficient


@pytest.mark.slow
@pytest.mark.parametrize("size", [5, 30, 300])
@pytest.mark.parametrize("name", ["psi", "ks", "jensen_shannon"])
def test_numeric_days_from_the_reference_rarely_alert(name, size):
    rng = np.random.default_rng([7, size])
    reference = rng.lognormal(0, 1, REF_SIZE)
    alerts, insufficient = _alerts(name, reference, lambda i: rng.lognormal(0, 1, size))
    assert alerts <= DRAWS // 100, f"{alerts} of {DRAWS} days alerted"
    assert insufficient == (DRAWS if size < MIN_NUMERIC else 0)


@pytest.mark.slow
@pytest.mark.parametrize("size", [5, 30, 300])
@pytest.mark.parametrize("name", ["psi", "chi_square", "jensen_shannon", "max_share_gain"])
def test_categorical_days_from_the_reference_rarely_alert(name, size):
    rng = np.random.default_rng([8, size])
    shares = rng.dirichlet(np.ones(18))                       # a genre-mix-like distribution
    labels = np.array([f"g{i:02d}" for i in range(18)])
    reference = dict(zip(labels, rng.multinomial(REF_SIZE, shares)))
    alerts, insufficient = _alerts(name, reference, lambda i: dict(zip(labels, rng.multinomial(size, shares))))
    assert alerts <= DRAWS // 100, f"{alerts} of {DRAWS} days alerted"
    assert insufficient == (DRAWS if size < MIN_NUMERIC else 0)
