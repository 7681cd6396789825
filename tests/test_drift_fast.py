"""The drift tests' fast paths give the numbers of the plain implementations they replace (to 1e-12, mostly
exactly): KS's D and p-value from sorted samples vs scipy's ks_2samp, decile edges and bin counts from sorted
samples vs quantile + searchsorted + bincount, chance levels resampled block by block vs in one call, and the
per-pair memo vs fresh windows. benchmarks/bench_drift_speed.py times them against Evidently."""
import math
import warnings

import numpy as np
import pytest
from scipy import stats

from core.constants import SEED
from core.monitoring import drift


def _samples(rng, kind: str, n: int) -> np.ndarray:
    if kind == "continuous":
        return rng.lognormal(0, 1, n)
    if kind == "ties":                      # integers: long runs of ties, across the 16,384-value blocks
        return (rng.poisson(3, n) + 1).astype(float)
    x = rng.normal(0, 1, n)                 # special values: ±inf, both zeros, exact repeats
    special = [np.inf, -np.inf, 0.0, -0.0, 1.5, 1.5]
    x[: 6] = special[: min(6, n)]
    return x


@pytest.mark.parametrize("kind", ["continuous", "ties", "special"])
@pytest.mark.parametrize("n_ref, n_cur", [(40_000, 25_000), (12_000, 30), (1, 20_001), (33_000, 33_000)])
def test_ks_from_sorted_samples_is_scipys(kind, n_ref, n_cur):
    rng = np.random.default_rng([SEED, n_ref, n_cur])
    ref, cur = _samples(rng, kind, n_ref), _samples(rng, kind, n_cur) + (0.3 if kind == "continuous" else 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        expected = stats.ks_2samp(ref, cur)
    assert drift._ks_statistic(np.sort(ref), np.sort(cur)) == expected.statistic
    score, detail = drift.ks(drift.window(ref), drift.window(cur))
    assert max(n_ref, n_cur) > drift.KS_EXACT_MAX          # the fast path, not the scipy call
    assert score == expected.statistic and detail == f"p-value = {float(expected.pvalue):.3g}"


def test_ks_statistic_on_identical_and_disjoint_samples():
    a = np.sort(np.random.default_rng(1).normal(size=50_000))
    assert drift._ks_statistic(a, a) == 0.0 == stats.ks_2samp(a, a).statistic
    assert drift._ks_statistic(a, a + 100) == 1.0 == stats.ks_2samp(a, a + 100).statistic


def _plain_edges(samples: np.ndarray) -> np.ndarray:
    """numeric_bins as it was: deciles of the unsorted finite samples."""
    finite = samples[np.isfinite(samples)]
    if finite.size == 0:
        return np.array([-np.inf, np.inf])
    inner = np.unique(np.quantile(finite, np.arange(1, drift.N_BINS) / drift.N_BINS))
    if inner[-1] >= finite.max():
        inner = np.append(inner, np.nextafter(inner[-1], np.inf))
    return np.concatenate([[-np.inf], inner, [np.inf]])


@pytest.mark.parametrize("kind", ["continuous", "ties", "special", "constant", "only-inf"])
def test_edges_and_bin_counts_from_sorted_samples_are_the_plain_ones(kind):
    rng = np.random.default_rng(7)
    if kind == "constant":
        ref, cur = np.full(500, 3.0), np.r_[np.full(300, 3.0), np.full(200, 4.0)]
    elif kind == "only-inf":
        ref, cur = np.array([np.inf, -np.inf, np.inf]), np.array([1.0, -np.inf])
    else:
        ref, cur = _samples(rng, kind, 20_000), _samples(rng, kind, 7_000)
    edges = _plain_edges(ref)
    ref_w, cur_w = drift.window(ref), drift.window(cur)
    assert np.array_equal(drift.numeric_bins(ref_w), edges)
    on_edges = np.r_[cur, edges[1:-1]]                     # values exactly on an edge go to the bin above
    for samples in (ref, cur, on_edges):
        assert np.array_equal(drift._sorted_bin_counts(np.sort(samples), edges), drift._bin_counts(samples, edges))
    assert [a.tolist() for a in drift._aligned(ref_w, cur_w)] == \
        [drift._bin_counts(ref, edges).tolist(), drift._bin_counts(cur, edges).tolist()]


def _plain_resampled_quantile(rows_fn, full: np.ndarray, index: np.ndarray, n_buckets: int, n_cur: int) -> float:
    """_resampled_quantile as it was: every draw in one call, summed per bucket with reduceat, scored at once."""
    rng = np.random.default_rng([SEED, 0])
    draws = drift.NULL_DRAWS
    full_draws = rng.multinomial(int(round(full.sum())), full / full.sum(), size=draws).astype(np.int32)
    order = np.argsort(index, kind="stable")
    sorted_index = index[order]
    starts = np.flatnonzero(np.r_[True, sorted_index[1:] != sorted_index[:-1]])
    ref_draws = np.zeros((draws, n_buckets))
    ref_draws[:, sorted_index[starts]] = np.add.reduceat(full_draws[:, order], starts, axis=1)
    p = np.bincount(index, weights=full, minlength=n_buckets) / full.sum()
    cur_draws = np.random.default_rng([SEED, 1]).multinomial(n_cur, p, size=draws).astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.quantile(rows_fn(ref_draws, cur_draws), drift.NULL_LEVEL))


@pytest.mark.parametrize("name", ["psi", "jensen_shannon", "chi_square", "max_share_gain"])
@pytest.mark.parametrize("n_titles, n_cur", [(400, 200_000), (400, 800), (12, 500)])
def test_block_resampled_chance_levels_are_the_one_shot_ones(name, n_titles, n_cur):
    """400 titles: 4 blocks of draws, nothing merged (only reordered) or most merged into '(other)'; 12: one."""
    rng = np.random.default_rng([SEED, n_titles, n_cur])
    shares = 1.0 / np.arange(1, n_titles + 1) ** 0.8
    titles = [f"t{i:04d}" for i in rng.permutation(n_titles)]           # not in sorted order
    reference = dict(zip(titles, rng.multinomial(800_000, shares / shares.sum()).tolist()))
    current = dict(zip(titles, rng.multinomial(n_cur, shares / shares.sum()).tolist()))
    drift._resampled_quantile.cache_clear()
    drift._reference_draws.cache_clear()
    result = drift.run_test(name, reference, current)
    ref_w, cur_w = drift.window(reference), drift.window(current)
    merged_ref, merged_cur, n_merged = drift.merge_small_buckets(ref_w, cur_w)
    assert (n_merged > 0) == (n_cur == 800)
    buckets = drift._categories(merged_ref, merged_cur)
    index = buckets.get_indexer(list(reference))
    index = np.where(index < 0, buckets.get_loc(drift.OTHER) if n_merged else -1, index)
    rows_fn = {"psi": drift._psi_rows, "jensen_shannon": drift._js_rows, "chi_square": drift._cramers_v_rows,
               "max_share_gain": drift._share_gain_rows}[name]
    expected = _plain_resampled_quantile(rows_fn, np.array(list(reference.values()), dtype=float), index,
                                         len(buckets), n_cur)
    assert result.null_q99 == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_numeric_chance_level_and_scores_match_the_plain_bins():
    rng = np.random.default_rng(3)
    ref, cur = rng.lognormal(0, 1, 30_000), rng.lognormal(0.1, 1, 9_000)
    edges = _plain_edges(ref)
    ref_counts, cur_counts = drift._bin_counts(ref, edges), drift._bin_counts(cur, edges)
    r = drift.run_test("psi", ref, cur)
    assert r.score == drift.psi_from_counts(ref_counts, cur_counts)
    expected = _plain_resampled_quantile(drift._psi_rows, ref_counts, np.arange(len(ref_counts)), len(ref_counts),
                                         cur.size)
    assert r.null_q99 == pytest.approx(expected, rel=1e-12)


def test_a_reference_window_reused_with_other_current_windows():
    """The per-pair memo (aligned counts, categories, merging) is keyed on the current window itself."""
    rng = np.random.default_rng(5)
    labels = np.array(["a", "b", "c", "d"], dtype=object)
    ref = drift.window(labels[rng.choice(4, 5_000, p=[0.4, 0.3, 0.2, 0.1])])
    numeric_ref = drift.window(rng.normal(size=5_000))
    for shift in (0.0, 0.5, 1.0):
        cur_labels = labels[rng.choice(4, 800, p=[0.4 - 0.2 * shift, 0.3, 0.2, 0.1 + 0.2 * shift])]
        cur_numbers = rng.normal(shift, 1, 800)
        for name in ("psi", "chi_square", "max_share_gain"):
            reused = drift._run(drift.get_test(name), ref, drift.window(cur_labels), None)
            fresh = drift.run_test(name, ref.counts.to_dict(), list(cur_labels))
            assert reused.to_dict() == fresh.to_dict()
        for name in ("psi", "jensen_shannon", "ks"):
            reused = drift._run(drift.get_test(name), numeric_ref, drift.window(cur_numbers), None)
            fresh = drift.run_test(name, numeric_ref.samples.copy(), cur_numbers)
            assert reused.to_dict() == fresh.to_dict() and not math.isnan(reused.score)
