"""The promotion gate: may a freshly trained candidate replace the production model?

A pure function over metric dicts. Three checks, each with a human-readable
reason carrying the numbers, so the registry event and the dashboard can say
*why* a model was or was not promoted:

1. finite factors — a model with NaN factors scores every item NaN;
2. coverage not collapsed — candidate catalogue coverage ≥ `min_coverage` and
   ≥ `min_coverage_ratio` × production coverage (a model that recommends the
   same few titles to everyone can still score a decent NDCG);
3. quality — no production model yet, or candidate[metric] ≥ production[metric] × (1 + margin).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

DEFAULT_METRIC = "ndcg@10"
COVERAGE = "coverage"


@dataclass
class GateDecision:
    """Outcome of `evaluate_gate`: `promote`, one reason per check, and the numbers per check."""

    promote: bool
    reasons: list[str] = field(default_factory=list)
    checks: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """Plain JSON-able dict (stored with the registry event)."""
        return asdict(self)


def _value(metrics: dict | None, name: str) -> float | None:
    """metrics[name] as a float, None when absent, non-numeric or NaN."""
    if not metrics or name not in metrics:
        return None
    raw = metrics[name]
    if isinstance(raw, bool):
        return None
    try:
        value = float(raw)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value


def _finite_check(has_nan: bool) -> tuple[bool, str, dict]:
    passed = not has_nan
    reason = ("model factors are finite (no NaN)" if passed
              else "model factors contain NaN: every score would be NaN")
    return passed, reason, {"passed": passed, "has_nan": bool(has_nan)}


def _coverage_check(candidate: dict, production: dict | None, min_coverage: float,
                    min_coverage_ratio: float) -> tuple[bool, str, dict]:
    cand, prod = _value(candidate, COVERAGE), _value(production, COVERAGE)
    required = min_coverage if prod is None else max(min_coverage, min_coverage_ratio * prod)
    numbers = {"candidate": cand, "production": prod, "minimum": min_coverage, "ratio": min_coverage_ratio,
               "required": required}
    if cand is None:
        return False, f"candidate has no {COVERAGE} metric (or it is NaN)", {"passed": False, **numbers}
    passed = cand >= required
    sign, verdict = ("≥", "coverage") if passed else ("<", "coverage collapsed:")
    if prod is None:
        basis = f"minimum {min_coverage:.4f}; no production coverage to compare"
    else:
        basis = (f"minimum {min_coverage:.4f}; {min_coverage_ratio:.2f} × production {prod:.4f}"
                 f" = {min_coverage_ratio * prod:.4f}")
    return passed, f"{verdict} {cand:.4f} {sign} {required:.4f} ({basis})", {"passed": passed, **numbers}


def _quality_check(candidate: dict, production: dict | None, metric: str, margin: float) -> tuple[bool, str, dict]:
    cand, prod = _value(candidate, metric), _value(production, metric)
    numbers = {"metric": metric, "candidate": cand, "production": prod, "margin": margin}
    if cand is None:
        return False, f"candidate has no {metric} (or it is NaN)", {"passed": False, "threshold": None, **numbers}
    if production is None:
        return True, f"{metric} {cand:.4f}: no production model yet, nothing to beat", \
            {"passed": True, "threshold": None, **numbers}
    if prod is None:
        return True, f"{metric} {cand:.4f}: production has no {metric} recorded, not compared", \
            {"passed": True, "threshold": None, **numbers}
    threshold = prod * (1.0 + margin)
    # Tolerance for float noise: 0.2 × 1.1 is 0.22000000000000003, and 0.22 should pass.
    passed = cand >= threshold or math.isclose(cand, threshold, rel_tol=1e-9, abs_tol=1e-12)
    sign = "≥" if passed else "<"
    reason = f"{metric} {cand:.4f} {sign} {threshold:.4f} (production {prod:.4f} × {1.0 + margin:.2f})"
    return passed, reason, {"passed": passed, "threshold": threshold, **numbers}


def evaluate_gate(candidate_metrics: dict, production_metrics: dict | None, *, has_nan: bool,
                  metric: str = DEFAULT_METRIC, margin: float = 0.0, min_coverage_ratio: float = 0.5,
                  min_coverage: float = 0.01) -> GateDecision:
    """Decide whether `candidate_metrics` may replace `production_metrics` (None: no production model).

    Promote only when all three checks pass: finite factors (`has_nan` False);
    candidate coverage ≥ max(`min_coverage`, `min_coverage_ratio` × production
    coverage); and candidate[`metric`] ≥ production[`metric`] × (1 + `margin`).
    `margin` is relative (0.02 = must beat production by 2 %). Every check
    contributes one reason, in that order, to `reasons`, and its numbers to
    `checks` under 'finite', 'coverage' and 'quality'.
    """
    if margin <= -1.0:
        raise ValueError(f"margin must be greater than -1 (a relative improvement), got {margin}")
    if min_coverage_ratio < 0.0:
        raise ValueError(f"min_coverage_ratio must be ≥ 0, got {min_coverage_ratio}")
    results = {
        "finite": _finite_check(has_nan),
        "coverage": _coverage_check(candidate_metrics, production_metrics, min_coverage, min_coverage_ratio),
        "quality": _quality_check(candidate_metrics, production_metrics, metric, margin),
    }
    return GateDecision(
        promote=all(passed for passed, _, _ in results.values()),
        reasons=[reason for _, reason, _ in results.values()],
        checks={name: numbers for name, (_, _, numbers) in results.items()},
    )
