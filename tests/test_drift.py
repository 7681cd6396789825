"""Drift tests: hand-computed scores on tiny windows, empty windows, kind checks, Hypothesis properties, 1M rows."""
import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.distance import jensenshannon
from scipy.stats import norm

from core.constants import SEED
from core.monitoring.drift import (EPSILON, PSI_SIGNIFICANT, TESTS, DriftResult, UnknownDriftTest, distribution,
    get_test, numeric_bins, psi_severity)
from core.monitoring.drift import run_test as _run_test
from core.monitoring.drift import run_tests as _run_tests
from core.errors import ValidationError


# The hand-computed examples here use a few rows on purpose, so the minimum-window limits are off;
# tests/test_drift_windows.py tests the limits themselves (issue 12).
def run_test(*args, **kwargs):
    return _run_test(*args, **{"min_n": 0, "min_expected": 0, **kwargs})


def run_tests(*args, **kwargs):
    return _run_tests(*args, **{"min_n": 0, "min_expected": 0, **kwargs})

NUMERIC_TESTS = [n for n, t in TESTS.items() if t.kind in ("numeric", "both")]  # psi, jensen_shannon, ks
# psi, jensen_shannon, chi_square, max_share_gain
CATEGORICAL_TESTS = [n for n, t in TESTS.items() if t.kind in ("categorical", "both")]


# ------------------------------------------------------------------ registry
def test_registry_names_kinds_and_thresholds():
    assert sorted(TESTS) == ["chi_square", "jensen_shannon", "ks", "max_share_gain", "psi"]
    assert {n: t.kind for n, t in TESTS.items()} == {
        "psi": "both", "jensen_shannon": "both", "ks": "numeric", "chi_square": "categorical",
        "max_share_gain": "categorical"}
    assert {n: t.default_threshold for n, t in TESTS.items()} == {
        "psi": 0.1, "jensen_shannon": 0.1, "ks": 0.1, "chi_square": 0.1, "max_share_gain": 0.03}
    assert PSI_SIGNIFICANT == 0.25 and EPSILON == 1e-4
    for name, t in TESTS.items():
        assert t.name == name and t.description
        assert "Range" in t.fn.__doc__  # every test states its formula and range
        assert get_test(name) is t


def test_unknown_test_lists_the_available_ones():
    with pytest.raises(UnknownDriftTest) as exc:
        get_test("foo")
    assert str(exc.value) == "unknown drift test 'foo'; available: chi_square, jensen_shannon, ks, max_share_gain, psi"
    assert isinstance(exc.value, ValidationError)
    with pytest.raises(UnknownDriftTest, match="available: chi_square"):
        run_test("KS", [1.0], [2.0])
    with pytest.raises(UnknownDriftTest):  # run_tests checks every name before doing any work
        run_tests(["psi", "nope"], [1.0], [2.0])


def test_results_are_frozen_dataclasses_with_to_dict():
    r = run_test("psi", {"a": 50, "b": 50}, {"a": 80, "b": 20})
    assert isinstance(r, DriftResult)
    d = r.to_dict()
    assert list(d) == ["test", "score", "drifted", "threshold", "n_reference", "n_current", "empty", "detail",
                       "insufficient", "null_q99", "beyond_chance"]
    assert (d["test"], d["drifted"], d["threshold"], d["n_reference"], d["n_current"], d["empty"]) == \
        ("psi", True, 0.1, 100, 100, False)
    # chance level of PSI over 2 buckets at 100 + 100 rows ≈ (1/100 + 1/100)·χ²₁(0.99) = 0.02 · 6.63 = 0.133
    assert 0.1 < d["null_q99"] < 0.17 and d["beyond_chance"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.score = 0.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        TESTS["psi"].default_threshold = 1.0


# ------------------------------------------------------------------ PSI by hand
def test_psi_two_categories():
    # p_ref = (0.5, 0.5), p_cur = (0.8, 0.2)
    # PSI = (0.8−0.5)·ln(0.8/0.5) + (0.2−0.5)·ln(0.2/0.5)
    #     = 0.3·0.47000 + (−0.3)·(−0.91629) = 0.14100 + 0.27489 = 0.41589
    r = run_test("psi", {"a": 50, "b": 50}, {"a": 80, "b": 20})
    assert r.score == pytest.approx(0.3 * math.log(1.6) + 0.3 * math.log(2.5))
    assert r.score == pytest.approx(0.41589, abs=1e-5)
    assert r.drifted and psi_severity(r.score) == "significant"
    assert "significant" in r.detail


def test_psi_counts_labels_and_series_agree():
    # the same windows as raw labels, a Series of labels, a dict and a Series of counts
    ref_labels, cur_labels = ["a"] * 50 + ["b"] * 50, ["a"] * 80 + ["b"] * 20
    forms = [
        (ref_labels, cur_labels),
        (pd.Series(ref_labels), pd.Series(cur_labels)),
        (np.array(ref_labels), np.array(cur_labels)),
        (pd.Series({"a": 50, "b": 50}), pd.Series({"a": 80, "b": 20})),
        ({"b": 50, "a": 50}, {"a": 80, "b": 20}),  # key order does not matter
    ]
    for ref, cur in forms:
        assert run_test("psi", ref, cur).score == pytest.approx(0.41589, abs=1e-5)


def test_psi_epsilon_for_an_empty_bin_with_renormalisation():
    # union of categories {a, b, c}; the reference has no 'c'.
    # p_ref raw (0.5, 0.5, 0) → (0.5, 0.5, 1e-4) / 1.0001 = (0.4999500, 0.4999500, 0.0000999900)
    # p_cur = (0.5, 0.4, 0.1)
    # a: (0.5 − 0.49995)·ln(0.5/0.49995)         = 0.00005·0.0001       ≈ 0.000000005
    # b: (0.4 − 0.49995)·ln(0.4/0.49995)         = (−0.09995)·(−0.22304) = 0.0222932
    # c: (0.1 − 0.00009999)·ln(0.1/0.00009999)   = 0.0999000·6.90786    = 0.6900948
    # PSI = 0.7123880
    r = run_test("psi", {"a": 50, "b": 50}, {"a": 50, "b": 40, "c": 10})
    p_ref = np.array([0.5, 0.5, 1e-4]) / 1.0001
    p_cur = np.array([0.5, 0.4, 0.1])
    assert r.score == pytest.approx(float(np.sum((p_cur - p_ref) * np.log(p_cur / p_ref))))
    assert r.score == pytest.approx(0.7123880, abs=1e-6)
    # a category listed with count 0 is the same as a missing one
    assert run_test("psi", {"a": 50, "b": 50, "c": 0}, {"a": 50, "b": 40, "c": 10}).score == pytest.approx(r.score)


def test_psi_numeric_uses_reference_deciles_and_open_outer_bins():
    # reference 1..10: deciles 1.9, 2.8, …, 9.1 → 10 bins holding one value each, p_ref = 0.1 everywhere.
    # current: five 1s (first bin) and five 10s (last bin); 8 empty bins.
    # p_cur raw (0.5, 0×8, 0.5) → (0.5, 1e-4×8, 0.5) / 1.0008 = (0.499600, 0.0000999201×8, 0.499600)
    # outer bins:  (0.499600 − 0.1)·ln(0.499600/0.1)     = 0.399600·1.608638 = 0.642812  (×2)
    # inner bins:  (0.0000999 − 0.1)·ln(0.0000999/0.1)   = (−0.099900)·(−6.908755) = 0.690165  (×8)
    # PSI = 2·0.642812 + 8·0.690165 = 6.806946
    ref = np.arange(1, 11, dtype=float)
    r = run_test("psi", ref, [1] * 5 + [10] * 5)
    assert r.score == pytest.approx(6.806946, abs=1e-5)
    # values far outside the reference range land in the same outer bins: same PSI
    assert run_test("psi", ref, [-1000] * 5 + [1e9] * 5).score == pytest.approx(r.score)


def test_psi_severity_bands():
    assert psi_severity(0.0) == psi_severity(0.0999) == psi_severity(float("nan")) == "none"
    assert psi_severity(0.1) == psi_severity(0.2499) == "moderate"
    assert psi_severity(0.25) == psi_severity(3.0) == "significant"


# ------------------------------------------------------------------ Jensen–Shannon by hand
def test_js_distance_hand_values():
    # p = (0.5, 0.5), q = (0.9, 0.1), m = (0.7, 0.3)
    # KL(p‖m) = 0.5·log2(0.5/0.7) + 0.5·log2(0.5/0.3) = 0.5·(−0.485427) + 0.5·0.736966 = 0.125769
    # KL(q‖m) = 0.9·log2(0.9/0.7) + 0.1·log2(0.1/0.3) = 0.9·0.362570 + 0.1·(−1.584963) = 0.167817
    # JSD = (0.125769 + 0.167817)/2 = 0.146793 → distance = sqrt(0.146793) = 0.383136
    r = run_test("jensen_shannon", {"x": 5, "y": 5}, {"x": 9, "y": 1})
    assert r.score == pytest.approx(0.383136, abs=1e-6)
    assert r.score == pytest.approx(jensenshannon([0.5, 0.5], [0.9, 0.1], base=2))
    assert r.drifted


def test_js_distance_with_a_missing_category_and_disjoint_supports():
    # p = (0.5, 0.5), q = (1, 0), m = (0.75, 0.25)
    # KL(p‖m) = 0.5·log2(0.5/0.75) + 0.5·log2(0.5/0.25) = −0.292481 + 0.5 = 0.207519
    # KL(q‖m) = 1·log2(1/0.75) = 0.415037
    # JSD = 0.311278 → distance 0.557923
    assert run_test("jensen_shannon", ["a", "b"], ["a", "a"]).score == pytest.approx(0.557923, abs=1e-6)
    # disjoint supports: m = (½, ½); KL(p‖m) = KL(q‖m) = log2(2) = 1 → JSD 1 → distance 1 (the maximum)
    assert run_test("jensen_shannon", ["a"], ["b"]).score == pytest.approx(1.0)


# ------------------------------------------------------------------ KS by hand
def test_ks_statistic_hand_values():
    # F_ref − F_cur at x = 2: 2/4 − 0/4 = 0.5, the largest gap (at x = 4 both are 1, at 3: 3/4 − 1/4)
    r = run_test("ks", [1, 2, 3, 4], [3, 4, 5, 6])
    assert r.score == pytest.approx(0.5)
    assert r.drifted and "p-value" in r.detail
    # completely separated samples: D = 1
    assert run_test("ks", [1, 2, 3], [4, 5, 6]).score == 1.0
    # the threshold is inclusive: D = 0.5 ≥ 0.5 is drift, D = 0.5 < 0.6 is not
    assert run_test("ks", [1, 2, 3, 4], [3, 4, 5, 6], threshold=0.5).drifted
    assert not run_test("ks", [1, 2, 3, 4], [3, 4, 5, 6], threshold=0.6).drifted


# ------------------------------------------------------------------ chi-square / Cramér's V by hand
def test_cramers_v_2x2():
    # table [[30, 20], [10, 40]], n = 100; row totals 50, 50; column totals 40, 60
    # expected [[20, 30], [20, 30]]
    # χ² = 10²/20 + 10²/30 + 10²/20 + 10²/30 = 5 + 3.3333 + 5 + 3.3333 = 16.6667 (no Yates correction)
    # V = sqrt(16.6667 / (100·(min(2, 2) − 1))) = sqrt(0.166667) = 0.408248
    # (= |phi| = (30·40 − 20·10)/sqrt(50·50·40·60) = 1000/2449.49)
    r = run_test("chi_square", {"a": 30, "b": 20}, {"a": 10, "b": 40})
    assert r.score == pytest.approx(0.408248, abs=1e-6)
    assert r.drifted and "p-value" in r.detail and "chi2 = 16.67" in r.detail


def test_max_share_gain_hand_values():
    # shares: ref a .5 b .3 c .2; cur a .4 b .2 c .35 d .05 → gains -.1, -.1, +.15, +.05
    r = run_test("max_share_gain", {"a": 50, "b": 30, "c": 20}, {"a": 40, "b": 20, "c": 35, "d": 5})
    assert r.score == pytest.approx(0.15) and r.drifted and r.threshold == 0.03
    assert r.detail == "c: 20.00% → 35.00%"
    # one title of 1,500 takes 7 % of the watches: PSI barely notices, the surge test does
    ref = {f"t{i}": 10 for i in range(1500)}
    cur = dict(ref, t7=10 + 1130)   # 1140 / 16130 = 7.07 %, from 0.0667 %
    gain = 1140 / 16130 - 10 / 15000
    assert run_test("max_share_gain", ref, cur).score == pytest.approx(gain)
    assert run_test("max_share_gain", ref, cur).detail.startswith("t7: 0.07% → 7.07%")
    # only rises count: a title losing all its share does not score
    assert run_test("max_share_gain", {"a": 50, "b": 50}, {"a": 100}).score == pytest.approx(0.5)
    assert run_test("max_share_gain", {"a": 100}, {"a": 100}).detail == "no category gained share"


def test_cramers_v_2x3_and_a_category_absent_from_both_windows():
    # table [[10, 10, 10], [20, 10, 0]], n = 60; columns 30, 20, 10 → expected [[15, 10, 5], [15, 10, 5]]
    # χ² = 2·(5²/15 + 0 + 5²/5) = 2·(1.6667 + 5) = 13.3333, dof 2; V = sqrt(13.3333/60) = sqrt(2/9) = 0.471405
    r = run_test("chi_square", {"a": 10, "b": 10, "c": 10}, {"a": 20, "b": 10, "c": 0})
    assert r.score == pytest.approx(math.sqrt(2 / 9))
    assert "dof = 2" in r.detail
    # 'z' has count 0 in both windows: its column is dropped (expected 0), same table as above
    r2 = run_test("chi_square", {"a": 10, "b": 10, "c": 10, "z": 0}, {"a": 20, "b": 10, "z": 0})
    assert r2.score == pytest.approx(r.score)


def test_chi_square_single_category_scores_zero():
    r = run_test("chi_square", {"a": 10}, {"a": 99})
    assert (r.score, r.drifted) == (0.0, False)


def test_numbers_as_labels_with_kind_categorical():
    # ratings as raw numbers: table [[1, 1], [0, 2]] over labels (1, 2), n = 4; column totals 1, 3
    # → expected [[0.5, 1.5], [0.5, 1.5]]
    # χ² = 0.5²/0.5 + 0.5²/1.5 + 0.5²/0.5 + 0.5²/1.5 = 0.5 + 0.1667 + 0.5 + 0.1667 = 1.3333
    # V = sqrt(1.3333/4) = 0.57735
    r = run_test("chi_square", [1, 2], [2, 2], kind="categorical")
    assert r.score == pytest.approx(math.sqrt(1 / 3))


# ------------------------------------------------------------------ empty windows and kind checks
EMPTIES = {"none": None, "dict": {}, "list": [], "array": np.array([], dtype=float), "zero-counts": {"a": 0, "b": 0},
           "all-nan": [float("nan")] * 3, "series": pd.Series([], dtype=float)}


@pytest.mark.parametrize("name", sorted(TESTS))
@pytest.mark.parametrize("empty", list(EMPTIES.values()), ids=list(EMPTIES))
def test_empty_windows_are_reported_not_raised(name, empty):
    full = {"a": 3, "b": 1} if TESTS[name].kind == "categorical" else np.array([1.0, 2.0, 3.0])
    r = run_test(name, empty, full)
    assert (r.empty, r.drifted, r.detail, r.n_reference) == (True, False, "empty reference window", 0)
    assert math.isnan(r.score) and r.n_current > 0
    r = run_test(name, full, empty)
    assert (r.empty, r.drifted, r.detail, r.n_current) == (True, False, "empty current window", 0)
    assert r.threshold == TESTS[name].default_threshold


def test_run_tests_on_an_empty_day_never_raises():
    results = run_tests(["psi", "ks"], np.array([0.1, 0.5, 0.9]), {})
    assert [(r.test, r.empty, r.drifted) for r in results] == [("psi", True, False), ("ks", True, False)]


def test_kind_mismatch_raises_a_clear_error():
    with pytest.raises(ValidationError, match="'ks' needs numeric data but got categorical"):
        run_test("ks", ["a", "b"], ["a", "a"])
    with pytest.raises(ValidationError, match="'ks' needs numeric data"):
        run_test("ks", {"a": 1}, {"a": 2})
    with pytest.raises(ValidationError, match="'chi_square' needs categorical data.*kind='categorical'"):
        run_test("chi_square", [1.0, 2.0], [2.0, 3.0])
    with pytest.raises(ValidationError, match="reference window is numeric but the current window is categorical"):
        run_test("psi", [1.0, 2.0], {"a": 1})
    with pytest.raises(ValidationError, match="cannot be read as numeric"):
        run_test("psi", ["a"], ["b"], kind="numeric")


@pytest.mark.parametrize("bad", ["abc", 3.0, {1, 2}, pd.DataFrame({"x": [1]}), np.ones((2, 2))],
                         ids=["str", "scalar", "set", "frame", "2d"])
def test_unreadable_windows_raise(bad):
    with pytest.raises(ValidationError):
        run_test("psi", bad, [1.0])


def test_bad_counts_and_thresholds_raise():
    with pytest.raises(ValidationError, match="non-negative"):
        run_test("psi", {"a": -1, "b": 3}, {"a": 1})
    with pytest.raises(ValidationError, match="threshold"):
        run_test("psi", {"a": 1}, {"a": 1}, threshold=-0.1)
    with pytest.raises(ValidationError, match="threshold"):
        run_test("psi", {"a": 1}, {"a": 1}, threshold=float("nan"))
    with pytest.raises(ValidationError, match="kind"):
        run_test("psi", {"a": 1}, {"a": 1}, kind="ordinal")


def test_threshold_override_and_run_tests_order():
    r = run_test("psi", {"a": 50, "b": 50}, {"a": 80, "b": 20}, threshold=0.5)  # 0.4159 < 0.5
    assert (r.threshold, r.drifted) == (0.5, False)
    results = run_tests(["chi_square", "psi"], {"a": 30, "b": 20}, {"a": 10, "b": 40}, thresholds={"psi": 5.0})
    assert [r.test for r in results] == ["chi_square", "psi"]
    assert [r.threshold for r in results] == [0.1, 5.0]
    assert run_tests("psi", {"a": 1}, {"a": 1})[0].test == "psi"  # one name as a plain string


def test_missing_values_are_ignored():
    # NaN samples and missing labels do not count as rows
    r = run_test("ks", [1, 2, np.nan, 3, 4], [3, 4, 5, 6, None])
    assert (r.score, r.n_reference, r.n_current) == (0.5, 4, 4)
    r = run_test("psi", ["a", None, "b"], pd.Series(["a", "b", np.nan]))
    assert (r.score, r.n_reference, r.n_current) == (0.0, 2, 2)


# ------------------------------------------------------------------ bins and distributions
def test_numeric_bins_deciles_deduplicated_open_ended():
    # 1..10: the k-th decile at position 0.1·k·9 → 1 + 0.9·k
    assert numeric_bins(np.arange(1, 11)) == pytest.approx(
        [-np.inf, 1.9, 2.8, 3.7, 4.6, 5.5, 6.4, 7.3, 8.2, 9.1, np.inf])
    # eight 0s and two 1s: deciles 0 (×7, positions 0.9 … 6.3), 0.2 (position 7.2: 0 + 0.2·(1 − 0)),
    # 1 (position 8.1) → deduplicated
    # (the top decile is the maximum: a one-value bin [1, 1⁺) keeps larger current values apart, issue 12)
    assert numeric_bins([0] * 8 + [1] * 2) == pytest.approx([-np.inf, 0.0, 0.2, 1.0, np.nextafter(1.0, 2), np.inf])
    # a constant reference: three bins, below, at and above the constant
    assert numeric_bins([5.0] * 4).tolist() == [-np.inf, 5.0, np.nextafter(5.0, 6), np.inf]
    with pytest.raises(ValidationError, match="empty reference"):
        numeric_bins([])


def test_distribution_numeric_on_shared_edges():
    edges = numeric_bins([0] * 8 + [1] * 2)  # [-inf, 0, 0.2, 1, 1⁺, inf]; bins are [a, b)
    d = distribution([-5, 0, 0.1, 0.5, 1, 7, 100, 100], edges)
    # [-inf,0): -5 → 1/8; [0,0.2): 0, 0.1 → 2/8; [0.2,1): 0.5 → 1/8; [1]: 1 → 1/8; (1,inf): 7, 100, 100 → 3/8
    assert list(d.index) == ["[-inf, 0)", "[0, 0.2)", "[0.2, 1)", "[1]", "(1, inf)"]
    assert d.tolist() == [0.125, 0.25, 0.125, 0.125, 0.375]
    assert distribution(np.array([], dtype=float), edges).tolist() == [0.0] * 5


def test_distribution_categorical():
    d = distribution({"b": 1, "a": 3})
    assert d.to_dict() == {"a": 0.75, "b": 0.25}  # labels sorted, shares sum to 1
    assert distribution(["b", "a", "a", "a"]).to_dict() == d.to_dict()
    # align to a category list (e.g. the union of both windows)
    assert distribution({"a": 1}, bins=["a", "b"]).to_dict() == {"a": 1.0, "b": 0.0}
    assert distribution({}).empty


# ------------------------------------------------------------------ properties
finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)
numeric_samples = st.lists(finite, min_size=1, max_size=60)
label_samples = st.lists(st.sampled_from(["Drama", "Comedy", "Western", "Horror"]), min_size=1, max_size=60)
count_dicts = st.dictionaries(st.sampled_from("abcdef"), st.integers(0, 500), min_size=1).filter(
    lambda d: sum(d.values()) > 0)


@settings(max_examples=60, deadline=None)
@given(numeric_samples, st.randoms(use_true_random=False))
def test_identical_numeric_samples_do_not_drift(values, rnd):
    shuffled = list(values)
    rnd.shuffle(shuffled)  # same sample, different order
    for r in run_tests(NUMERIC_TESTS, values, shuffled):
        assert r.score == pytest.approx(0.0, abs=1e-9) and not r.drifted and not r.empty


@settings(max_examples=60, deadline=None)
@given(label_samples)
def test_identical_label_samples_do_not_drift(labels):
    for r in run_tests(CATEGORICAL_TESTS, labels, labels[::-1]):
        assert r.score == pytest.approx(0.0, abs=1e-9) and not r.drifted


@settings(max_examples=60, deadline=None)
@given(count_dicts, st.integers(1, 50))
def test_proportional_counts_do_not_drift(counts, factor):
    # the same shares at a different volume: every categorical score is 0 (Cramér's V does not grow with n)
    scaled = {k: v * factor for k, v in counts.items()}
    for r in run_tests(CATEGORICAL_TESTS, counts, scaled):
        assert r.score == pytest.approx(0.0, abs=1e-9) and not r.drifted


@settings(max_examples=80, deadline=None)
@given(count_dicts, count_dicts)
def test_categorical_scores_ranges_and_symmetry(a, b):
    for name in CATEGORICAL_TESTS:
        ab, ba = run_test(name, a, b).score, run_test(name, b, a).score
        if name != "max_share_gain":   # a surge is one-sided
            assert ab == pytest.approx(ba, abs=1e-9)  # PSI, JS and V are symmetric over the union of categories
        assert ab >= 0
        if name != "psi":
            assert ab <= 1
    # JS distance matches scipy's on the aligned shares
    cats = sorted(set(a) | set(b))
    p = np.array([a.get(c, 0) for c in cats], float)
    q = np.array([b.get(c, 0) for c in cats], float)
    assert run_test("jensen_shannon", a, b).score == pytest.approx(
        jensenshannon(p / p.sum(), q / q.sum(), base=2), abs=1e-7)


@settings(max_examples=60, deadline=None)
@given(numeric_samples, numeric_samples)
def test_numeric_scores_ranges(a, b):
    for r in run_tests(NUMERIC_TESTS, a, b):
        assert r.score >= 0 and (r.test == "psi" or r.score <= 1)
        assert r.drifted == (r.score >= r.threshold)


def test_a_shifted_sample_is_flagged_by_every_test():
    rng = np.random.default_rng(SEED)
    ref = rng.normal(0, 1, 2_000)
    same, shifted = rng.normal(0, 1, 2_000), rng.normal(1, 1, 2_000)
    assert not any(r.drifted for r in run_tests(NUMERIC_TESTS, ref, same))
    assert all(r.drifted for r in run_tests(NUMERIC_TESTS, ref, shifted))
    genres = np.array(["Drama", "Comedy", "Western"])
    before = genres[rng.choice(3, 2_000, p=[0.5, 0.4, 0.1])]
    after = genres[rng.choice(3, 2_000, p=[0.3, 0.3, 0.4])]  # a Western surge
    again = genres[rng.choice(3, 2_000, p=[0.5, 0.4, 0.1])]
    assert not any(r.drifted for r in run_tests(CATEGORICAL_TESTS, before, again))
    assert all(r.drifted for r in run_tests(CATEGORICAL_TESTS, before, after))


# ------------------------------------------------------------------ scale
@pytest.mark.slow   # a million rows / a second process / a world built twice
def test_one_million_rows_numeric():
    rng = np.random.default_rng(SEED)
    n = 1_000_000
    ref, same, shifted = rng.normal(size=n), rng.normal(size=n), rng.normal(0.5, 1, size=n)
    ks_same, psi_same = run_test("ks", ref, same), run_test("psi", ref, same)
    assert ks_same.n_reference == ks_same.n_current == n
    assert ks_same.score < 0.005 and psi_same.score < 0.001 and not ks_same.drifted and not psi_same.drifted
    # N(0,1) vs N(0.5,1): the CDFs differ most at x = 0.25, D = Φ(0.25) − Φ(−0.25) = 0.197413
    ks_shift = run_test("ks", ref, shifted)
    assert ks_shift.score == pytest.approx(norm.cdf(0.25) - norm.cdf(-0.25), abs=0.003)
    assert ks_shift.drifted and run_test("psi", ref, shifted).drifted


@pytest.mark.slow   # a million rows / a second process / a world built twice
def test_one_million_rows_categorical():
    rng = np.random.default_rng(SEED)
    n = 1_000_000
    labels = np.array(["Drama", "Comedy", "Western"], dtype=object)
    p, q = np.array([0.5, 0.3, 0.2]), np.array([0.3, 0.3, 0.4])
    ref, cur = labels[rng.choice(3, n, p=p)], labels[rng.choice(3, n, p=q)]
    results = {r.test: r for r in run_tests(CATEGORICAL_TESTS, ref, list(cur))}
    # PSI = (0.3−0.5)·ln(0.3/0.5) + 0 + (0.4−0.2)·ln(0.4/0.2) = 0.2·0.510826 + 0.2·0.693147 = 0.240795
    assert results["psi"].score == pytest.approx(0.240795, abs=0.005)
    # equal-size windows: V² = ½ Σ (p−q)²/(p+q) = ½ (0.04/0.8 + 0 + 0.04/0.6) = 0.058333 → V = 0.241523
    assert results["chi_square"].score == pytest.approx(0.241523, abs=0.003)
    assert results["jensen_shannon"].score == pytest.approx(jensenshannon(p, q, base=2), abs=0.003)
    assert all(r.drifted and r.n_reference == n for r in results.values())
