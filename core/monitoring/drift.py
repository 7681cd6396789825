"""Statistical drift tests: a registry of small named tests → a typed `DriftResult`.

Evidently's older compute/result split: this module only *computes*; chart
builders (``dashboard/charts.py``) draw the results and `distribution`.

Every score here **grows with drift** and a window is ``drifted`` when
``score >= threshold`` (the change is *material*):

==================  ===========  ==========  ==============================================
test                data         range       default threshold
==================  ===========  ==========  ==============================================
``psi``             both         0 .. ∞      0.1  (0.25 = significant, `PSI_SIGNIFICANT`)
``jensen_shannon``  both         0 .. 1      0.1  (JS *distance*, base 2)
``ks``              numeric      0 .. 1      0.1  (KS statistic D, an effect size)
``chi_square``      categorical  0 .. 1      0.1  (Cramér's V, an effect size)
``max_share_gain``  categorical  0 .. 1      0.03 (the largest rise of one category's share)
==================  ===========  ==========  ==============================================

Inputs — a *window* (reference or current) is one of

- numeric samples: a 1-D list / tuple / ndarray of numbers, or a pandas Series of
  numbers with a numeric (or default) index. NaN is ignored;
- categorical labels: a 1-D sequence or Series of strings / booleans / objects
  (missing labels are ignored);
- categorical counts: a dict ``{category: count}``, or a pandas Series of counts
  whose index holds the labels (a non-numeric index; use a dict for counts keyed
  by numbers). Counts, not shares: the chi-square test needs real counts.

``kind="categorical"`` reads numeric samples (e.g. ratings 1..10) as labels.
``None`` and a window with no rows (``{}``, ``[]``, all-zero counts) are *empty*:
`run_test` then returns ``empty=True, drifted=False, score=nan`` — no exception,
no false alarm.

Chance level. A fixed threshold ignores how much a score moves by chance: PSI over B buckets averages about
(1/n_ref + 1/n_cur)·(B − 1) when nothing changed, 0.09 for 10 rating buckets at 850 + 120 rows. Every result
therefore also carries ``null_q99``, the 99th percentile of the test's score under the null hypothesis (the
current window drawn from the reference's distribution) at the two window sizes, and ``beyond_chance =
score > null_q99``. Monitoring alerts only on a change that is both material and beyond chance
(`core.monitoring.monitoring.drift_confirmed`). How each test's quantile is computed: `null_quantile`.
"""
from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from scipy import stats
from scipy.special import rel_entr

from core.constants import SEED
from core.errors import ValidationError

NUMERIC, CATEGORICAL, BOTH = "numeric", "categorical", "both"
N_BINS = 10                  # numeric data: decile bins of the reference
EPSILON = 1e-4               # share given to an empty bin before renormalising (PSI)
PSI_MODERATE = 0.1           # PSI < 0.1: no significant change
PSI_SIGNIFICANT = 0.25       # 0.1 ≤ PSI < 0.25: moderate; PSI ≥ 0.25: significant
MIN_NUMERIC = 100            # observations a window needs before any test judges it (numeric or categorical)
MIN_EXPECTED_PER_BUCKET = 5  # categorical: current rows per bucket on average (buckets merged to get there)
OTHER = "(other)"            # the bucket small categories are merged into
NULL_LEVEL = 0.99            # chance level: this quantile of a score when nothing changed (`null_quantile`)
KS_EXACT_MAX = 10_000        # scipy's ks_2samp: exact p-value up to this many rows per sample, asymptotic above
NULL_DRAWS = 2000            # resampled (reference, current) pairs per chance level: q99 = about the 20th largest
BLOCK_CELLS = 2 ** 18        # numbers per block when resampling or merging large arrays (`_row_blocks`)


class UnknownDriftTest(ValidationError):
    """A drift test name that is not in the registry."""


# ------------------------------------------------------------------ typed result and registry entry
@dataclass(frozen=True)
class DriftResult:
    """One test on one (reference, current) pair. ``drifted`` is ``score >= threshold`` (a material change).

    ``empty`` marks a window with no rows: ``score`` is nan and ``drifted`` False.
    ``insufficient`` marks a window too small to judge (fewer than ``min_n`` rows in either window, or,
    for categories, fewer than 5 current rows per bucket on average even with small buckets merged): ``score``
    is nan and ``drifted`` False — monitoring neither opens nor confirms an alert on it.
    ``n_reference`` / ``n_current``: rows (samples, or the sum of the counts).
    ``null_q99``: the chance level — the 99th percentile of this test's score at these two window sizes when the
    current window is drawn from the reference's distribution (`null_quantile`; nan when empty or insufficient).
    ``beyond_chance``: ``score > null_q99``. An alert needs ``drifted and beyond_chance``.
    """

    test: str
    score: float
    drifted: bool
    threshold: float
    n_reference: int
    n_current: int
    empty: bool = False
    detail: str = ""
    insufficient: bool = False
    null_q99: float = float("nan")
    beyond_chance: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Window:
    """One prepared window: numeric ``samples`` (NaN dropped) or categorical ``counts`` per label."""

    kind: str
    samples: np.ndarray | None = None
    counts: pd.Series | None = None

    @property
    def n(self) -> int:
        if self.kind == NUMERIC:
            return int(self.samples.size)
        return int(round(float(self.counts.sum())))

    @property
    def is_empty(self) -> bool:
        return self.samples.size == 0 if self.kind == NUMERIC else not float(self.counts.sum()) > 0

    # Derived once per window and shared by every test on it (a window is immutable): the sort serves the
    # decile edges, the bin counts and KS; ``_memo`` holds what depends on the other window of a pair.
    @functools.cached_property
    def sorted_samples(self) -> np.ndarray:
        """The numeric samples sorted ascending (read-only)."""
        out = np.sort(self.samples)
        out.flags.writeable = False
        return out

    @functools.cached_property
    def label_counts(self) -> pd.Series:
        """Categorical counts with each label once (a label given twice is summed; missing labels dropped)."""
        counts = self.counts
        if counts.index.is_unique and not counts.index.hasnans:
            return counts
        return counts.groupby(level=0, sort=False).sum()

    @functools.cached_property
    def _memo(self) -> dict:
        return {}


@dataclass(frozen=True)
class StatTest:
    """A registered drift test.

    ``kind``: the data it accepts ("numeric", "categorical" or "both").
    ``fn(reference: Window, current: Window) -> (score, detail)``; every score
    grows with drift, so ``drifted = score >= threshold``.
    ``null(full_reference: Window, reference: Window, current: Window) -> float``: the score's `NULL_LEVEL`
    quantile when the current window is drawn from the reference's distribution (`null_quantile`);
    ``reference`` and ``current`` as ``fn`` gets them (categories merged), ``full_reference`` before merging.
    """

    name: str
    kind: str
    default_threshold: float
    description: str
    fn: Callable[[Window, Window], tuple[float, str]]
    null: Callable[[Window, Window, Window], float]


# ------------------------------------------------------------------ reading inputs
def _bad_input(values) -> ValidationError:
    return ValidationError(
        f"cannot read a drift window from {type(values).__name__}: pass a 1-D sequence of samples or labels, "
        "a dict of counts per category, or a pandas Series")


def _counts_from_mapping(keys, values) -> pd.Series:
    try:
        arr = np.asarray(values, dtype=float)
    except (TypeError, ValueError):
        raise ValidationError("counts per category must be numbers") from None
    bad = ~np.isfinite(arr) | (arr < 0)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValidationError(f"counts per category must be non-negative numbers; got {arr[i]} for {list(keys)[i]!r}")
    return pd.Series(arr, index=pd.Index(list(keys)), dtype=float)


def _label_counts(labels: pd.Series) -> pd.Series:
    """Counts per label (missing labels dropped), as floats; hashing via value_counts, no row loop."""
    try:
        counts = labels.value_counts(dropna=True, sort=False)
    except TypeError:
        raise ValidationError("labels must be hashable values (strings, numbers, booleans)") from None
    return pd.Series(counts.to_numpy(dtype=float), index=counts.index)


_NUMBER_KINDS = ("integer", "floating", "mixed-integer-float", "decimal")


def window(values, kind: str | None = None) -> Window:
    """Read raw samples, labels or counts (see the module docstring) into a `Window`.

    ``kind`` forces "numeric" or "categorical"; ``None`` infers it from the data.
    """
    if kind not in (None, NUMERIC, CATEGORICAL):
        raise ValidationError(f"kind must be 'numeric' or 'categorical', got {kind!r}")
    empty = Window(kind or CATEGORICAL, np.empty(0), pd.Series(dtype=float))
    if values is None:
        return empty
    if isinstance(values, Mapping):
        if kind == NUMERIC:
            raise ValidationError("a dict of counts per category cannot be read as numeric samples")
        return Window(CATEGORICAL, counts=_counts_from_mapping(values.keys(), list(values.values())))
    if isinstance(values, pd.DataFrame):
        raise ValidationError("a drift window is one column: pass a Series, not a DataFrame")
    if isinstance(values, pd.Series):
        dtype = values.dtype
        if pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype):
            if not (isinstance(values.index, pd.RangeIndex) or pd.api.types.is_numeric_dtype(values.index.dtype)):
                # labels in the index, numbers as values: counts per category
                if kind == NUMERIC:
                    raise ValidationError("a Series of counts per category cannot be read as numeric samples")
                return Window(CATEGORICAL, counts=_counts_from_mapping(values.index, values.to_numpy()))
            arr = values.to_numpy(dtype=float, na_value=np.nan)
        elif dtype == object:
            arr = values.to_numpy()
        else:  # str, category, bool, ...: labels
            if kind == NUMERIC:
                raise ValidationError(f"labels of dtype {dtype} cannot be read as numeric samples")
            return Window(CATEGORICAL, counts=_label_counts(values))
    elif isinstance(values, np.ndarray):
        arr = values
    else:
        if isinstance(values, (str, bytes, set, frozenset)) or not isinstance(values, Iterable):
            raise _bad_input(values)
        # object first: cheaper than numpy's fixed-width strings for a list of labels
        arr = np.asarray(values if isinstance(values, (list, tuple)) else list(values), dtype=object)
    if arr.ndim != 1:
        if arr.size:
            raise _bad_input(values)
        arr = arr.reshape(0)
    if arr.size == 0:
        return Window(kind or (NUMERIC if arr.dtype.kind in "iuf" else CATEGORICAL), np.empty(0),
                      pd.Series(dtype=float))
    if arr.dtype.kind == "O":
        inferred = pd.api.types.infer_dtype(arr, skipna=True)
        if inferred in _NUMBER_KINDS:
            arr = pd.to_numeric(pd.Series(arr, dtype=object), errors="coerce").to_numpy(dtype=float, na_value=np.nan)
        elif inferred == "empty":  # only missing values
            return empty
    is_number = arr.dtype.kind in "iuf"
    if is_number and kind != CATEGORICAL:
        samples = arr.astype(float, copy=False)
        missing = np.isnan(samples)
        return Window(NUMERIC, samples=samples[~missing] if missing.any() else samples)
    if not is_number and arr.dtype.kind not in "bOUS":
        raise ValidationError(f"unsupported dtype {arr.dtype} for a drift window; pass numbers or labels")
    if kind == NUMERIC:
        raise ValidationError(f"labels of dtype {arr.dtype} cannot be read as numeric samples")
    return Window(CATEGORICAL, counts=_label_counts(pd.Series(arr, dtype=object if arr.dtype.kind in "OUS" else None)))


# ------------------------------------------------------------------ bins and shares
def numeric_bins(reference) -> np.ndarray:
    """Bin edges for numeric data: the reference's deciles, deduplicated, with -inf / +inf outer edges.

    Returns a sorted float array ``[-inf, q10, ..., q90, +inf]`` (fewer inner edges
    when deciles coincide). Bins are left-closed ``[a, b)``, so a current value
    outside the reference range falls in the first or last bin.
    """
    w = reference if isinstance(reference, Window) else window(reference, NUMERIC)
    if w.kind != NUMERIC:
        raise ValidationError("numeric_bins needs numeric samples")
    if w.samples.size == 0:
        raise ValidationError("cannot bin an empty reference window")
    return _edges(w).copy()


def _edges(w: Window) -> np.ndarray:
    """`numeric_bins` of a non-empty numeric window, computed once per window from its sorted samples
    (``np.quantile`` picks the same order statistics from a sorted array, only faster)."""
    edges = w._memo.get("edges")
    if edges is not None:
        return edges
    s = w.sorted_samples
    finite = s[np.searchsorted(s, -np.inf, side="right"):np.searchsorted(s, np.inf, side="left")]
    if finite.size == 0:  # only ±inf: one bin
        edges = np.array([-np.inf, np.inf])
    else:
        inner = np.unique(np.quantile(finite, np.arange(1, N_BINS) / N_BINS))
        if inner[-1] >= finite[-1]:
            # The top decile is the reference's maximum (a constant or near-constant reference): without an
            # edge just above it, [top, inf) would hold the reference's top value *and* every larger current
            # value, so 3.0 → 4.0 would not drift while 3.0 → 2.0 would. Values above the reference now get
            # their own bucket.
            inner = np.append(inner, np.nextafter(inner[-1], np.inf))
        edges = np.concatenate([[-np.inf], inner, [np.inf]])
    edges.flags.writeable = False
    w._memo["edges"] = edges
    return edges


def bin_labels(edges: np.ndarray) -> list[str]:
    """'[a, b)' per bin; the one-value bin at a constant reference's top reads '[a]', the bin above it '(a, b)'."""
    labels = []
    for i, (a, b) in enumerate(zip(edges[:-1], edges[1:])):
        if b == np.nextafter(a, np.inf):
            labels.append(f"[{a:.6g}]")
        elif i > 0 and a == np.nextafter(edges[i - 1], np.inf):
            labels.append(f"({edges[i - 1]:.6g}, {b:.6g})")
        else:
            labels.append(f"[{a:.6g}, {b:.6g})")
    return labels


def _bin_counts(samples: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Counts per left-closed bin [edges[i], edges[i+1]) (vectorised: searchsorted + bincount)."""
    idx = np.searchsorted(edges[1:-1], samples, side="right")
    return np.bincount(idx, minlength=len(edges) - 1).astype(float)


def _sorted_bin_counts(sorted_samples: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """`_bin_counts` of samples sorted ascending over sorted edges: bin i holds the samples in [e_i, e_i+1), so
    its count is #(x < e_i+1) − #(x < e_i) — one binary search per edge instead of one per sample."""
    cuts = np.searchsorted(sorted_samples, edges[1:-1], side="left")
    return np.diff(cuts, prepend=0, append=sorted_samples.size).astype(float)


def _try_sort(index: pd.Index) -> pd.Index:
    try:
        return index.sort_values()
    except TypeError:  # mixed label types: keep the given order
        return index


def _categories(reference: Window, current: Window) -> pd.Index:
    """The union of both windows' categories, sorted when the labels compare (computed once per pair)."""
    key = ("categories", id(current))
    hit = reference._memo.get(key)
    if hit is not None and hit[0] is current:
        return hit[1]
    cats = _try_sort(reference.counts.index.union(current.counts.index, sort=False))
    reference._memo[key] = (current, cats)
    return cats


def _aligned(reference: Window, current: Window) -> tuple[np.ndarray, np.ndarray]:
    """Counts of both windows over the same buckets: reference deciles, or the union of categories.

    Computed once per pair (remembered by the reference window; the arrays are read-only): the score, its
    chance level and, for categories, the merging of small buckets all read the same counts."""
    key = ("aligned", id(current))
    hit = reference._memo.get(key)
    if hit is not None and hit[0] is current:
        return hit[1]
    if reference.kind == NUMERIC:
        edges = _edges(reference)
        out = (_sorted_bin_counts(reference.sorted_samples, edges),
               _sorted_bin_counts(current.sorted_samples, edges))
    else:
        cats = _categories(reference, current)
        out = (reference.label_counts.reindex(cats, fill_value=0.0).to_numpy(dtype=float),
               current.label_counts.reindex(cats, fill_value=0.0).to_numpy(dtype=float))
    for arr in out:
        arr.flags.writeable = False
    reference._memo[key] = (current, out)
    return out


def _shares_with_epsilon(counts: np.ndarray) -> np.ndarray:
    """Proportions along the last axis where an empty bucket gets EPSILON, then renormalised to sum to 1."""
    p = counts / counts.sum(axis=-1, keepdims=True)
    p = np.where(p == 0, EPSILON, p)
    return p / p.sum(axis=-1, keepdims=True)


def distribution(values, bins=None, *, kind: str | None = None) -> pd.Series:
    """Share of rows per category or per numeric bin — what a chart draws as reference vs current bars.

    Numeric data: ``bins`` are edges (e.g. ``numeric_bins(reference)``, so both
    windows share buckets; default: this window's own deciles; values beyond the
    outer edges count in the outer bins); the index labels the left-closed bins in
    order, e.g. ``"[-inf, 1.9)"``, ``"[1.9, 2.8)"``. Categorical data: ``bins``
    optionally lists the categories to show (missing ones get 0); the index holds
    the labels, sorted when comparable. Shares are raw (no epsilon) and sum to 1;
    an empty window gives zeros over the given bins, or an empty Series.
    """
    w = window(values, kind)
    if kind is None and w.is_empty and isinstance(bins, np.ndarray) and bins.dtype.kind == "f":
        w = Window(NUMERIC, np.empty(0), pd.Series(dtype=float))  # an empty window over numeric edges
    if w.kind == NUMERIC and not (w.is_empty and bins is None):
        edges = numeric_bins(w) if bins is None else np.asarray(bins, dtype=float)
        counts = _bin_counts(w.samples, edges)
        index = pd.Index(bin_labels(edges), dtype=object)
    else:
        counts_s = w.counts.groupby(level=0, sort=False).sum() if w.kind == CATEGORICAL else pd.Series(dtype=float)
        index = _try_sort(counts_s.index) if bins is None else pd.Index(list(bins))
        counts = counts_s.reindex(index, fill_value=0.0).to_numpy(dtype=float)
    total = counts.sum()
    shares = counts / total if total > 0 else np.zeros_like(counts)
    return pd.Series(shares, index=index, name="share")


# ------------------------------------------------------------------ the tests
# Each count-based score is one function over count arrays of shape (..., B) → (...): the score of one pair of
# windows and of thousands of resampled pairs (`null_quantile`) is the same code, epsilon and all.
def _psi_rows(ref_counts: np.ndarray, cur_counts: np.ndarray) -> np.ndarray:
    p_ref, p_cur = _shares_with_epsilon(ref_counts), _shares_with_epsilon(cur_counts)
    return np.maximum(np.sum((p_cur - p_ref) * np.log(p_cur / p_ref), axis=-1), 0.0)


def _js_rows(ref_counts: np.ndarray, cur_counts: np.ndarray) -> np.ndarray:
    p = ref_counts / ref_counts.sum(axis=-1, keepdims=True)
    q = cur_counts / cur_counts.sum(axis=-1, keepdims=True)
    m = (p + q) / 2
    jsd = (rel_entr(p, m).sum(axis=-1) + rel_entr(q, m).sum(axis=-1)) / (2 * math.log(2))
    return np.minimum(np.sqrt(np.maximum(jsd, 0.0)), 1.0)


def _chi2_rows(ref_counts: np.ndarray, cur_counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pearson's χ² of the 2 × B table per row (no Yates' correction) and k, the buckets seen in either window;
    a bucket absent from both has expected count 0 and is left out, as `scipy.stats.chi2_contingency` requires."""
    table = np.stack([ref_counts, cur_counts], axis=-2)                    # (..., 2, B)
    cols = table.sum(axis=-2, keepdims=True)
    total = cols.sum(axis=-1, keepdims=True)
    expected = table.sum(axis=-1, keepdims=True) * cols / total
    seen = cols > 0
    terms = np.where(seen, (table - expected) ** 2 / np.where(seen, expected, 1.0), 0.0)
    return terms.sum(axis=(-2, -1)), seen.sum(axis=(-2, -1))


def _cramers_v_rows(ref_counts: np.ndarray, cur_counts: np.ndarray) -> np.ndarray:
    chi2, k = _chi2_rows(ref_counts, cur_counts)
    n = ref_counts.sum(axis=-1) + cur_counts.sum(axis=-1)
    v = np.sqrt(chi2 / (n * np.maximum(np.minimum(2, k) - 1, 1)))
    return np.where(k < 2, 0.0, np.minimum(v, 1.0))


def _share_gain_rows(ref_counts: np.ndarray, cur_counts: np.ndarray) -> np.ndarray:
    gain = cur_counts / cur_counts.sum(axis=-1, keepdims=True) - ref_counts / ref_counts.sum(axis=-1, keepdims=True)
    return np.maximum(gain.max(axis=-1), 0.0)


def psi(reference: Window, current: Window) -> tuple[float, str]:
    """Population Stability Index.

    PSI = Σ_b (p_cur,b − p_ref,b) · ln(p_cur,b / p_ref,b) over buckets b: the union
    of categories, or the reference's decile bins for numeric data. An empty bucket
    gets share EPSILON = 1e-4 and the shares are renormalised. Range 0 .. ∞ (every
    term is ≥ 0; symmetric in the two shares). Convention: < 0.1 no significant
    change, 0.1–0.25 moderate, ≥ 0.25 significant (`psi_severity`).
    """
    ref_counts, cur_counts = _aligned(reference, current)
    score = psi_from_counts(ref_counts, cur_counts)
    return score, f"{psi_severity(score)} change over {len(ref_counts)} buckets"


def psi_from_counts(reference_counts, current_counts) -> float:
    """`psi`'s formula on two count vectors over the same buckets (each with a positive total): empty buckets
    get EPSILON, shares renormalised, Σ (p_cur − p_ref) · ln(p_cur / p_ref), clipped at 0. For callers that
    bucket many windows at once (numpy, no per-window pandas work), e.g. one churn feature over many days."""
    return float(_psi_rows(np.asarray(reference_counts, dtype=float), np.asarray(current_counts, dtype=float)))


def jensen_shannon(reference: Window, current: Window) -> tuple[float, str]:
    """Jensen–Shannon distance, base 2: sqrt(JSD), with JSD = ½ KL(p‖m) + ½ KL(q‖m), m = (p + q)/2.

    p, q: raw shares per bucket (categories, or the reference's decile bins for
    numeric data; no epsilon needed, JSD is finite with zeros). Range 0 .. 1:
    0 for identical distributions, 1 for disjoint ones. Symmetric.
    Same value as ``scipy.spatial.distance.jensenshannon(p, q, base=2)``, but the
    divergence is clipped at 0 so rounding never yields nan.
    """
    ref_counts, cur_counts = _aligned(reference, current)
    return float(_js_rows(ref_counts, cur_counts)), f"{len(ref_counts)} buckets"


def ks(reference: Window, current: Window) -> tuple[float, str]:
    """Two-sample Kolmogorov–Smirnov statistic D = sup_x |F_ref(x) − F_cur(x)|, numeric only. Range 0 .. 1.

    The statistic, not the p-value, is thresholded: with thousands of rows a day
    the p-value of a trivially small shift is already ~0, so a p-value rule would
    alarm every day. D is an effect size (the largest gap between the two CDFs)
    that does not shrink with sample size. The p-value goes into ``detail``.
    """
    n1, n2 = reference.samples.size, current.samples.size
    if max(n1, n2) > KS_EXACT_MAX:   # scipy would take the asymptotic p-value: the same, from the sorted samples
        d = _ks_statistic(reference.sorted_samples, current.sorted_samples)
        m, n = sorted([float(n1), float(n2)], reverse=True)
        pvalue = np.clip(stats.kstwo.sf(d, np.round(m * n / (m + n))), 0, 1)
        return float(d), f"p-value = {float(pvalue):.3g}"
    with warnings.catch_warnings():  # exact p-value impossible for some ties/sizes: scipy falls back to asymp
        warnings.filterwarnings("ignore", "ks_2samp: Exact calculation unsuccessful", RuntimeWarning)
        res = stats.ks_2samp(reference.samples, current.samples)
    return float(res.statistic), f"p-value = {float(res.pvalue):.3g}"


def _ks_statistic(a: np.ndarray, b: np.ndarray) -> np.float64:
    """``scipy.stats.ks_2samp``'s D from two samples sorted ascending, without its 2 × (n1 + n2) temporaries.

    scipy evaluates F1 − F2 at every data point (``searchsorted(side="right")``); it takes the same values at
    each distinct value, so here it is evaluated at the last element of each run of ties in either sample,
    where that sample's own count is the position + 1 and the other's comes from a binary search within the
    slice of the other sample that the block spans — block by block (16,384 values: the slice stays in cache),
    with the same float operations (count / n), so D is the same number."""
    n1, n2 = a.size, b.size
    lo, hi = np.inf, -np.inf
    block = BLOCK_CELLS // 16
    for own, other, first in ((a, b, True), (b, a, False)):
        n = own.size
        for start in range(0, n, block):
            stop = min(start + block, n)
            x = own[start:stop]
            last = np.ones(x.size, dtype=bool)
            np.not_equal(x[:-1], own[start + 1:stop], out=last[:-1])
            if stop < n:
                last[-1] = own[stop - 1] != own[stop]
            at = np.flatnonzero(last)
            at_own = at + (start + 1)
            left, right = np.searchsorted(other, (x[0], x[-1]), side="right")
            at_other = left + np.searchsorted(other[left:right], x[at], side="right")
            diffs = at_own / n1 - at_other / n2 if first else at_other / n1 - at_own / n2
            if diffs.size:
                lo, hi = min(lo, diffs.min()), max(hi, diffs.max())
    min_s, max_s = np.clip(-np.float64(lo), 0, 1), np.float64(hi)
    return min_s if min_s > max_s else max_s


def chi_square(reference: Window, current: Window) -> tuple[float, str]:
    """Chi-square test of homogeneity on the 2 × k table of category counts, scored as Cramér's V.

    V = sqrt(χ² / (n · (min(2, k) − 1))), n = all rows of both windows, k = categories
    seen in either window; χ² without Yates' correction. Range 0 .. 1 (a single
    category scores 0). Like KS, the effect size V is thresholded, not the p-value:
    at thousands of rows a day the p-value flags trivially small differences, V does
    not grow with n. χ², degrees of freedom and the p-value go into ``detail``.
    """
    ref_counts, cur_counts = _aligned(reference, current)
    chi2, k = (float(x) for x in _chi2_rows(ref_counts, cur_counts))
    if k < 2:
        return 0.0, "a single category in both windows: nothing to compare"
    dof = int(k) - 1
    p = float(stats.chi2.sf(chi2, dof))
    return float(_cramers_v_rows(ref_counts, cur_counts)), f"chi2 = {chi2:.4g}, dof = {dof}, p-value = {p:.3g}"


def max_share_gain(reference: Window, current: Window) -> tuple[float, str]:
    """The largest rise of a single category's share: max_c (p_cur,c − p_ref,c), raw shares. Range 0 .. 1.

    A surge detector for one category among many (one title going viral among
    1,500): spread over a decile bucket, a single title taking 7 % of a day's
    watches barely moves PSI, but its share gain is 0.07. Only rises count (a
    title losing share is not a surge); 0 for identical distributions.
    """
    ref_counts, cur_counts = _aligned(reference, current)
    gain = cur_counts / cur_counts.sum() - ref_counts / ref_counts.sum()
    i = int(np.argmax(gain))
    cats = _categories(reference, current)     # the order _aligned used
    score = float(_share_gain_rows(ref_counts, cur_counts))
    return score, (f"{cats[i]}: {ref_counts[i] / ref_counts.sum():.2%} → {cur_counts[i] / cur_counts.sum():.2%}"
                   if score > 0 else "no category gained share")


# ------------------------------------------------------------------ chance levels
def null_quantile(name: str, reference, current, *, kind: str | None = None,
                  min_expected: float = MIN_EXPECTED_PER_BUCKET) -> float:
    """The `NULL_LEVEL` (99th) percentile of test ``name``'s score when nothing changed: the chance level.

    The null hypothesis: the current window is drawn from the same distribution as the reference, at the
    two windows' sizes (n_ref, n_cur). Only the reference's distribution, the bucketing and the two sizes
    matter; the current window's values do not (beyond which buckets `merge_small_buckets` keeps).

    - **psi, jensen_shannon, chi_square, max_share_gain** (scores of two count vectors): resampled.
      `NULL_DRAWS` pairs of multinomial draws, Mult(n_ref, p) and Mult(n_cur, p) with p the reference's
      shares over the *same* buckets the real score uses (decile bins, or categories after merging), scored by
      the same function (epsilon included), seeded (`core.constants.SEED`); the reference's draws are cached
      per reference (`_reference_draws`), the quantile per (test, reference, buckets, n_cur). Why not the χ²
      approximations — PSI ≈ (1/n_ref + 1/n_cur)·χ²(B − 1) (PSI is Jeffreys' symmetric divergence,
      ≈ Σ (q − p)²/p for small changes; Yurdakul, *Statistical properties of the population stability
      index*, 2018), JS distance ≈ sqrt((1/n_ref + 1/n_cur)·χ²(B − 1) / (8 ln 2)) (½ KL(p‖m) ≈ Σ (p − q)²/(16 m)),
      Cramér's V ≈ sqrt(χ²(B − 1) / (n_ref + n_cur)): they hold when every bucket expects many rows.
      Monitoring's small days are exactly where they don't: a rating given 2 % of the time expects 2.4 of a
      day's 120 ratings and is absent with probability e^−2.4 ≈ 9 %, and epsilon then adds p·ln(p/ε) =
      0.02·ln 200 ≈ 0.1 to PSI by itself (PSI's q99 at 800 + 120 rows: 0.21 by χ², 0.30 in truth); a title
      surge is the maximum of hundreds of Poisson-like gains, whose tail no normal bound gets right. tests/test_drift_noise.py checks both the agreement with the χ²
      approximation where it holds and the rate of chance alarms (≈ 1 %) by Monte Carlo where it doesn't.
    - **ks**: analytic, `ks_null_quantile` — for continuous data D's null distribution depends on nothing but
      (n_ref, n_cur), so nothing needs resampling.

    Returns nan for an empty pair, or categories too few to fill two buckets (`run_test`'s ``null_q99``, with
    no minimum window size).
    """
    return run_test(name, reference, current, kind=kind, min_n=0, min_expected=min_expected).null_q99


def ks_null_quantile(n_reference: int, n_current: int, level: float = NULL_LEVEL) -> float:
    """The `level` quantile of the two-sample KS statistic D under the null, for continuous data.

    D_q = c / (√nₑ + 0.12 + 0.11/√nₑ), nₑ = n·m/(n + m), c = the Kolmogorov distribution's `level` quantile
    (1.628 at 0.99; ``scipy.stats.kstwobign``): the asymptotic c·sqrt((n + m)/(n·m)) with Stephens' small-sample
    correction (Stephens 1970; Press et al., *Numerical Recipes*, 3rd ed., §14.3.3). Range 0 .. 1; n = m = 100
    gives 0.226. With ties (integer data such as signals per user) D is stochastically smaller, so this errs
    high — towards no alarm.
    """
    n, m = int(n_reference), int(n_current)
    if n < 1 or m < 1:
        return float("nan")
    root = math.sqrt(n * m / (n + m))
    return float(min(stats.kstwobign.ppf(level) / (root + 0.12 + 0.11 / root), 1.0))


def _ks_null(full_reference: Window, reference: Window, current: Window) -> float:
    return ks_null_quantile(reference.n, current.n)


def _row_blocks(draws: int, n_buckets: int):
    """Slices of about 2**18 cells (2 MB of floats) over ``draws`` rows: the resampled draws are made and scored
    a block at a time, so the temporaries stay small and are reused instead of touching fresh memory (on these
    machines first-touch page faults cost more than the arithmetic). A generator's draws come out the same in
    blocks as in one call: the stream is consumed row by row either way."""
    step = max(1, BLOCK_CELLS // max(n_buckets, 1))
    return [slice(i, min(i + step, draws)) for i in range(0, draws, step)]


@functools.lru_cache(maxsize=16)
def _reference_draws(counts_bytes: bytes, draws: int) -> np.ndarray:
    """``draws`` × B multinomial draws of the reference window, Mult(n_ref, counts / n_ref), B = len(counts).

    Cached per reference (its counts over its *own* categories, before a day's merging): the reference is the
    same every day until a retrain moves it, so only the current window's draws are new each day — on the
    default world's 1,500 titles this half was 0.26 of title_share's 0.4 s."""
    counts = np.frombuffer(counts_bytes, dtype=float)
    rng = np.random.default_rng([SEED, 0])
    n, shares = int(round(float(counts.sum()))), counts / counts.sum()
    out = np.empty((draws, counts.size), dtype=np.int32)
    for rows in _row_blocks(draws, counts.size):
        out[rows] = rng.multinomial(n, shares, size=rows.stop - rows.start)
    out.flags.writeable = False
    return out


@functools.lru_cache(maxsize=512)
def _resampled_quantile(rows_fn: Callable, full_bytes: bytes, bucket_of: bytes, n_buckets: int, n_cur: int,
                        level: float, draws: int) -> float:
    """`level` quantile of rows_fn over ``draws`` null pairs: the reference's draws (`_reference_draws`) summed
    into the day's buckets (``bucket_of[i]``: the bucket of reference category i), and the current window's,
    Mult(n_cur, the reference's shares over those buckets)."""
    index = np.frombuffer(bucket_of, dtype=np.int64)
    full_counts = np.frombuffer(full_bytes, dtype=float)
    p = np.bincount(index, weights=full_counts, minlength=n_buckets) / full_counts.sum()
    blocks = _row_blocks(draws, n_buckets)
    full = _reference_draws(full_bytes, draws)
    rng = np.random.default_rng([SEED, 1])
    reordered = n_buckets == full.shape[1] and np.array_equal(np.sort(index), np.arange(n_buckets))
    if not reordered:   # small categories merged: sum the reference's draws per bucket
        order = np.argsort(index, kind="stable")
        sorted_index = index[order]
        starts = np.flatnonzero(np.r_[True, sorted_index[1:] != sorted_index[:-1]])
    scores = np.empty(draws)
    for rows in blocks:
        ref_draws = np.zeros((rows.stop - rows.start, n_buckets))
        if reordered:   # one bucket per category (nothing merged): only their order changes
            ref_draws[:, index] = full[rows]
        else:
            ref_draws[:, sorted_index[starts]] = np.add.reduceat(full[rows][:, order], starts, axis=1)
        cur_draws = rng.multinomial(n_cur, p, size=rows.stop - rows.start).astype(float)
        with np.errstate(divide="ignore", invalid="ignore"):
            scores[rows] = rows_fn(ref_draws, cur_draws)
    return float(np.quantile(scores, level))


def _resampled(rows_fn: Callable) -> Callable[[Window, Window, Window], float]:
    """The chance level of a count-based score (`null_quantile`): resampled over the buckets the score used."""
    def null(full_reference: Window, reference: Window, current: Window) -> float:
        n_cur = int(round(float(current.n)))
        if reference.kind == NUMERIC:   # the reference's own decile bins: one bucket per bin
            full, _ = _aligned(reference, current)
            bucket_of = np.arange(len(full))
        else:                           # its categories, each mapped to its bucket after the day's merging
            counts = full_reference.label_counts
            full = counts.to_numpy(dtype=float)
            buckets = _categories(reference, current)   # the order _aligned uses
            bucket_of = buckets.get_indexer(counts.index)
            if (bucket_of < 0).any():                   # merged into OTHER by merge_small_buckets
                bucket_of = np.where(bucket_of < 0, buckets.get_loc(OTHER), bucket_of)
        if n_cur < 1 or not full.sum() > 0:
            return float("nan")
        n_buckets = len(full) if reference.kind == NUMERIC else len(buckets)
        return _resampled_quantile(rows_fn, np.ascontiguousarray(full, dtype=float).tobytes(),
                                   np.ascontiguousarray(bucket_of, dtype=np.int64).tobytes(), n_buckets, n_cur,
                                   NULL_LEVEL, NULL_DRAWS)
    return null


TESTS: dict[str, StatTest] = {
    t.name: t for t in (
        StatTest("psi", BOTH, 0.1, "Population Stability Index over categories or reference deciles", psi,
                 _resampled(_psi_rows)),
        StatTest("jensen_shannon", BOTH, 0.1, "Jensen–Shannon distance (base 2) between the two distributions",
                 jensen_shannon, _resampled(_js_rows)),
        StatTest("ks", NUMERIC, 0.1, "Kolmogorov–Smirnov statistic D between the two samples", ks, _ks_null),
        StatTest("chi_square", CATEGORICAL, 0.1, "Cramér's V of the chi-square test on category counts", chi_square,
                 _resampled(_cramers_v_rows)),
        StatTest("max_share_gain", CATEGORICAL, 0.03, "largest rise of one category's share (a surge)", max_share_gain,
                 _resampled(_share_gain_rows)),
    )
}


def psi_severity(score: float) -> str:
    """'none' (< 0.1 or nan), 'moderate' (0.1 ≤ PSI < 0.25) or 'significant' (≥ PSI_SIGNIFICANT)."""
    if score is None or math.isnan(score) or score < PSI_MODERATE:
        return "none"
    return "significant" if score >= PSI_SIGNIFICANT else "moderate"


def get_test(name: str) -> StatTest:
    """The registered test called ``name``; raises `UnknownDriftTest` listing the available names."""
    try:
        return TESTS[name]
    except (KeyError, TypeError):
        raise UnknownDriftTest(f"unknown drift test {name!r}; available: {', '.join(sorted(TESTS))}") from None


# ------------------------------------------------------------------ running
def _check_threshold(threshold) -> float:
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        raise ValidationError(f"threshold must be a number, got {threshold!r}") from None
    if not math.isfinite(value) or value < 0:
        raise ValidationError(f"threshold must be a finite number ≥ 0, got {threshold!r}")
    return value


def merge_small_buckets(reference: Window, current: Window,
                        min_expected: float = MIN_EXPECTED_PER_BUCKET) -> tuple[Window, Window, int] | None:
    """Categorical windows over at most n_current / `min_expected` buckets; None when fewer than 2 are possible.

    The buckets that are small in *both* windows (by max(reference share, current share)) are merged
    into one `OTHER` bucket: a surging category keeps its own bucket because its current share is large.
    Returns (reference, current, number of categories merged).
    """
    if min_expected <= 0:
        return reference, current, 0
    key = ("merged", id(current), min_expected)
    hit = reference._memo.get(key)
    if hit is not None and hit[0] is current:   # the pair's other tests: the same merged windows
        return hit[1]
    out = _merge_small_buckets(reference, current, min_expected)
    reference._memo[key] = (current, out)
    return out


def _merge_small_buckets(reference: Window, current: Window, min_expected: float):
    cats = _categories(reference, current)
    ref, cur = _aligned(reference, current)
    keep_at_most = int(cur.sum() // min_expected)
    if keep_at_most < 2:
        return None
    if len(cats) <= keep_at_most:
        return reference, current, 0
    size = np.maximum(ref / ref.sum(), cur / cur.sum())
    order = np.argsort(-size, kind="stable")
    kept, merged = order[: keep_at_most - 1], order[keep_at_most - 1:]
    index = pd.Index(list(cats[kept]) + [OTHER], dtype=object)

    def collapse(counts: np.ndarray) -> pd.Series:
        return pd.Series(np.append(counts[kept], counts[merged].sum()), index=index)
    return (Window(CATEGORICAL, counts=collapse(ref)), Window(CATEGORICAL, counts=collapse(cur)), len(merged))


def _run(test: StatTest, ref: Window, cur: Window, threshold: float | None,
         min_n: int = MIN_NUMERIC, min_expected: float = MIN_EXPECTED_PER_BUCKET,
         design_effects: tuple[float, float] = (1.0, 1.0)) -> DriftResult:
    limit = test.default_threshold if threshold is None else _check_threshold(threshold)
    n_ref, n_cur = (0 if ref.is_empty else ref.n), (0 if cur.is_empty else cur.n)
    if ref.is_empty or cur.is_empty:  # reported before any kind check: there is nothing to test
        which = "reference" if ref.is_empty else "current"
        return DriftResult(test.name, float("nan"), False, limit, n_ref, n_cur, empty=True,
                           detail=f"empty {which} window")
    if ref.kind != cur.kind:
        raise ValidationError(f"the reference window is {ref.kind} but the current window is {cur.kind}; "
                              "pass both in the same form (or set kind=)")
    if test.kind != BOTH and test.kind != ref.kind:
        others = ", ".join(sorted(n for n, t in TESTS.items() if t.kind in (BOTH, ref.kind)))
        hint = " (pass kind='categorical' to read numbers as labels)" if ref.kind == NUMERIC else ""
        raise ValidationError(f"drift test {test.name!r} needs {test.kind} data but got {ref.kind} data{hint}; "
                              f"tests for {ref.kind} data: {others}")
    note, full_ref = "", ref
    if min(n_ref, n_cur) < min_n:
        return DriftResult(test.name, float("nan"), False, limit, n_ref, n_cur, insufficient=True,
                           detail=f"not enough data: {min(n_ref, n_cur)} observations, at least {min_n} needed")
    if ref.kind == CATEGORICAL:
        merged = merge_small_buckets(ref, cur, min_expected)
        if merged is None:
            return DriftResult(test.name, float("nan"), False, limit, n_ref, n_cur, insufficient=True,
                               detail=f"not enough data: {n_cur} observations cannot fill two buckets with "
                                      f"{MIN_EXPECTED_PER_BUCKET} each")
        ref, cur, n_merged = merged
        note = f" ({n_merged} small categories merged into {OTHER!r})" if n_merged else ""
    score, detail = test.fn(ref, cur)
    ref_effect, cur_effect = design_effects
    if ref.kind == CATEGORICAL and (ref_effect > 1 or cur_effect > 1):
        chance = test.null(_scaled(full_ref, ref_effect), _scaled(ref, ref_effect), _scaled(cur, cur_effect))
        note += f" (chance level on {n_cur / max(cur_effect, 1):.0f} effective observations: design effect " \
                f"{cur_effect:.2f})"
    else:
        chance = test.null(full_ref, ref, cur)
    return DriftResult(test.name, score, bool(score >= limit), limit, n_ref, n_cur, detail=detail + note,
                       null_q99=chance, beyond_chance=bool(score > chance))


def _scaled(w: Window, effect: float) -> Window:
    """A categorical window's counts divided by its design effect (≥ 1): its effective sample size."""
    return w if effect <= 1 else Window(CATEGORICAL, counts=w.label_counts / effect)


def run_test(name: str, reference, current, threshold: float | None = None, *,
             kind: str | None = None, min_n: int = MIN_NUMERIC,
             min_expected: float = MIN_EXPECTED_PER_BUCKET,
             design_effects: tuple[float, float] = (1.0, 1.0)) -> DriftResult:
    """Run one registered test on a reference and a current window (samples, labels or counts).

    ``threshold`` defaults to the test's ``default_threshold``. An empty window gives
    ``empty=True, drifted=False, score=nan``; a window too small to judge (``min_n`` numeric
    observations; ``min_expected`` current rows per categorical bucket on average, small buckets
    merged first) gives ``insufficient=True, drifted=False, score=nan``. ``min_n=0, min_expected=0``
    turn both limits off (hand-computed examples on a few rows). Every judged result carries its chance
    level ``null_q99`` and ``beyond_chance`` (`null_quantile`). ``design_effects`` (reference, current): rows that
    come in clusters (a user's ratings or watches of a day) are worth fewer independent observations; for
    categorical windows the chance level is drawn at the counts ÷ their design effect, while the score, the
    bucket merging and the ``min_n`` check stay on the rows themselves. Raises `UnknownDriftTest` for an unknown
    name and `ValidationError` when the data kind does not fit the test (e.g. ``ks``
    on categories) or the windows differ in kind.
    """
    test = get_test(name)
    return _run(test, window(reference, kind), window(current, kind), threshold, min_n, min_expected,
                design_effects)


def run_tests(names: Iterable[str], reference, current, *, thresholds: Mapping[str, float] | None = None,
              kind: str | None = None, min_n: int = MIN_NUMERIC,
              min_expected: float = MIN_EXPECTED_PER_BUCKET) -> list[DriftResult]:
    """Run several tests on the same pair of windows (read once); one result per name, in order.

    ``thresholds`` optionally overrides the default threshold per test name.
    """
    names = [names] if isinstance(names, str) else list(names)
    tests = [get_test(n) for n in names]  # fail on an unknown name before any work
    thresholds = thresholds or {}
    ref, cur = window(reference, kind), window(current, kind)
    return [_run(t, ref, cur, thresholds.get(t.name), min_n, min_expected) for t in tests]
