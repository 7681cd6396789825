"""The promotion gate: may a freshly trained candidate replace the production model?

A pure function over metric dicts. Three checks, each with a human-readable
reason carrying the numbers, so the registry event and the dashboard can say
*why* a model was or was not promoted:

1. finite factors — a model with NaN factors scores every item NaN;
2. coverage not collapsed — candidate catalogue coverage ≥ `min_coverage` and
   ≥ `min_coverage_ratio` × production coverage (a model that recommends the
   same few titles to everyone can still score a decent NDCG);
3. quality — no production model yet, or candidate[metric] ≥ production[metric] × (1 + margin).

The pipeline adds four more (issue 12), so a retrain can never promote a model worse than the
simple baselines, on a tie, on a holdout too small to judge, or with nothing new in it:

4. holdout size — at least `min_users` evaluable holdout users, else no decision (production kept);
5. baselines — candidate nDCG@10 strictly above the popularity and the Top 50 baselines on the same holdout;
6. evidence — a paired bootstrap over holdout users of the per-user nDCG@10 difference (candidate −
   production): promote when the point estimate is > 0 and the 90 % interval's lower bound > −margin, or
   when production is stale (trained on data older than the newest by more than the staleness) and the
   candidate is not significantly worse (the interval's upper bound ≥ 0); this replaces check 3;
7. novelty — a candidate with the same data version and parameters as production is "nothing new".

And the yardstick (issue 22): when the exploration log of the holdout days gives an effective sample size of at
least `min_ess`, checks 5 and 6 are decided on the counterfactual estimate instead (`core.training.offpolicy`:
doubly robust watches per list of each policy replayed on the logged lists, unbiased whatever production
served) — strictly above both baselines' estimates, and the paired candidate − production interval judged as
in check 6, except that "not significantly worse" also needs the candidate's point estimate no more than
`NON_INFERIORITY` (3 %) of production's value below production's (the
log measures today's lists, so freshness is already in the estimate; a consent withdrawal still needs only
"not significantly worse"); and a candidate headed for a canary release (`online_check`, the retraining policy's
and the Training page's default) passes when it is not significantly worse (upper bound ≥ 0, no floor) even
against a fresh production — the canary proves or refutes it on live traffic. Below `min_ess` the holdout decides and the `yardstick` check says so. Either way the decision
records which estimate decided, its interval and the effective sample size.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from core.text import plural

DEFAULT_METRIC = "ndcg@10"
COVERAGE = "coverage"
BASELINES = ("popularity", "top50")
INTERVAL = 0.90


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


def _users(metrics: dict | None) -> int | None:
    value = _value(metrics, "users_evaluated")
    return None if value is None else int(value)


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


def paired_bootstrap(candidate: np.ndarray, reference: np.ndarray, *, resamples: int = 1000, seed: int = 42,
                     level: float = INTERVAL) -> dict:
    """Percentile bootstrap of the mean per-user difference (candidate − reference) over the same users.

    Users are resampled with replacement `resamples` times (seeded, so a decision is reproducible); the
    interval is the central `level` share of the resampled means. Pairing (each user scored by both
    models) removes the between-user variance that makes two separate averages hard to compare.
    Returns {point, lo, hi, level, n_users, resamples, seed}.
    """
    cand, ref = np.asarray(candidate, dtype=float), np.asarray(reference, dtype=float)
    if cand.shape != ref.shape or cand.ndim != 1:
        raise ValueError(f"paired scores must be two 1-D arrays of the same users, got {cand.shape} and {ref.shape}")
    if resamples < 1:
        raise ValueError(f"resamples must be ≥ 1, got {resamples}")
    diff, n = cand - ref, cand.size
    if n == 0:
        return {"point": float("nan"), "lo": float("nan"), "hi": float("nan"), "level": level, "n_users": 0,
                "resamples": resamples, "seed": seed}
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    chunk = max(1, 2_000_000 // n)           # bounded memory: at most ~2M indices at a time
    for start in range(0, resamples, chunk):
        stop = min(resamples, start + chunk)
        means[start:stop] = diff[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return {"point": float(diff.mean()), "lo": float(lo), "hi": float(hi), "level": level, "n_users": int(n),
            "resamples": int(resamples), "seed": int(seed)}


def _size_check(users: int | None, min_users: int) -> tuple[bool, str, dict]:
    passed = users is not None and users >= min_users
    reason = (f"holdout: {users:,} evaluable users ≥ {min_users:,}" if passed else
              f"holdout too small to judge: {users or 0:,} evaluable users, at least {min_users:,} needed — "
              "no decision, production kept")
    return passed, reason, {"passed": passed, "users": users, "minimum": min_users}


def _baseline_check(candidate: dict, baselines: dict, metric: str) -> tuple[bool, str, dict]:
    cand = _value(candidate, metric)
    scores = {name: _value(baselines.get(name), metric) for name in BASELINES}
    known = {k: v for k, v in scores.items() if v is not None}
    numbers = {"metric": metric, "candidate": cand, **{name: v for name, v in scores.items()}}
    if cand is None:
        return False, f"candidate has no {metric} (or it is NaN)", {"passed": False, **numbers}
    floor = max(known.values()) if known else None
    passed = floor is not None and cand > floor
    listed = ", ".join(f"{'Top 50' if k == 'top50' else k} {v:.4f}" for k, v in known.items()) or "none measured"
    reason = (f"beats the baselines: {metric} {cand:.4f} > {listed}" if passed else
              f"under its baselines: {metric} {cand:.4f} ≤ {listed} on the same holdout")
    return passed, reason, {"passed": passed, "floor": floor, **numbers}


# On the exploration log "not worse than a stale production" also needs the point estimate at most this share of
# production's value below production's (3 % of watches/list) when the candidate would be promoted outright:
# bench_yardstick's fresh retrains sit at −0.3 … +12 %, its weak models at −21 … −47 %. A candidate headed for a
# canary needs only the upper bound ≥ 0: in bench_drift's closed loop the estimate put retrains the truth found
# better by 0.02–0.12 watches/list at −0.04 … −0.19 (9 wrong refusals with the floor), and the canary judges online.
NON_INFERIORITY = 0.03


def _evidence_check(comparison: dict, margin: float, stale: dict | None, candidate: dict, production: dict,
                    metric: str, *, stale_point_floor: float | None = None,
                    online_check: bool = False) -> tuple[bool, str, dict]:
    """Better with confidence, or production stale and the candidate not significantly worse. With
    `stale_point_floor` "not worse" also asks for a point estimate ≥ −floor: where the estimate is measured on
    today's lists (the exploration log) freshness is already in it, so it is no excuse for a candidate that looks
    materially worse. `online_check` (the candidate goes to a canary release, which proves or refutes it on live
    traffic) lets a candidate that is not significantly worse (upper bound ≥ 0) pass even against a fresh
    production, without the floor: offline, an improvement of a few hundredths of a watch per list is never
    significant on a 5 % exploration log."""
    point, lo, hi = comparison["point"], comparison["lo"], comparison["hi"]
    interval = (f"Δ{comparison.get('metric', DEFAULT_METRIC)} {point:+.4f}, {comparison['level']:.0%} interval "
                f"[{lo:+.4f}, {hi:+.4f}] over {comparison['n_users']:,} users ({comparison['resamples']:,} paired "
                f"bootstrap resamples) vs {comparison.get('reference', 'production')}")
    better = point > 0 and lo > -margin
    is_stale = bool(stale and stale.get("stale"))
    not_worse = hi >= 0 and (stale_point_floor is None or point >= -stale_point_floor)
    numbers = {"passed": False, **comparison, "margin": margin, "better": better, "stale": is_stale,
               "not_significantly_worse": not_worse, "staleness": stale, "stale_point_floor": stale_point_floor,
               "candidate": _value(candidate, metric), "production": _value(production, metric)}
    if better:
        numbers["passed"] = True
        return True, f"better than production: {interval}; lower bound > −{margin:g}", numbers
    if is_stale and not_worse:
        numbers["passed"] = True
        if stale.get("withdrawn_consent"):
            why = f"still holds {plural(stale['withdrawn_consent'], 'user')} who withdrew personalization consent"
        elif stale.get("days_behind") is None:
            why = stale.get("reason", "cannot be evaluated")
        else:
            why = f"{plural(stale['days_behind'], 'day')} behind the newest data, more than {stale['staleness_days']}"
        return True, f"production is stale ({why}) and the candidate is not significantly worse: {interval}", numbers
    if online_check and hi >= 0:
        numbers["passed"] = numbers["online_check"] = True
        return True, f"not significantly worse than production; a canary release judges it online: {interval}", numbers
    why = ("significantly worse" if hi < 0
           else f"worse (point estimate < −{stale_point_floor:.4f}; a stale production is no excuse on today's lists)"
           if is_stale and not not_worse
           else "not better (point estimate ≤ 0)" if point <= 0
           else f"not better with confidence (lower bound ≤ −{margin:g})")
    fresh = "" if is_stale else "; production is not stale, so evidence of improvement is needed"
    return False, f"{why}: {interval}{fresh}", numbers


def yardstick_checks(yardstick: dict | None, min_ess: float, margin: float, stale: dict | None, *,
                     online_check: bool = False):
    """(yardstick check, counterfactual baselines check or None, counterfactual quality check or None)."""
    if yardstick is None or "error" in (yardstick or {}):
        why = (yardstick or {}).get("error", "no exploration log with propensities in the holdout window")
        return (True, f"decided on the holdout: {why}", {"passed": True, "decided_by": "holdout", "reason": why,
                                                          "min_ess": min_ess}), None, None
    ess = float(yardstick["ess"])
    numbers = {"passed": True, "decided_by": "counterfactual" if ess >= min_ess else "holdout", "min_ess": min_ess,
               **{k: yardstick[k] for k in ("estimator", "ess", "point", "lo", "hi", "level", "values", "window",
                                            "log", "all_estimators") if k in yardstick}}
    est = {"switch": "SWITCH-DR"}.get(yardstick.get("estimator", "dr"), yardstick.get("estimator", "dr").upper())
    interval = (f"{est} Δwatches/list {yardstick['point']:+.4f}, {yardstick['level']:.0%} interval "
                f"[{yardstick['lo']:+.4f}, {yardstick['hi']:+.4f}], ESS {ess:,.0f}")
    if ess < min_ess:
        return (True, f"decided on the holdout: the exploration log's effective sample size {ess:,.0f} < {min_ess:,.0f}"
                      f" ({interval})", numbers), None, None
    values = yardstick["values"]
    cand = values[yardstick.get("candidate", "candidate")]
    floor = {b: values[b] for b in yardstick.get("baselines", ()) if b in values}
    beats = all(cand > v for v in floor.values())
    listed = ", ".join(f"{'Top 50' if b == 'top50' else b} {v:.4f}" for b, v in floor.items()) or "none"
    base = (beats, (f"beats the baselines on the exploration log: {est} watches/list {cand:.4f} > {listed}" if beats
                    else f"under its baselines on the exploration log: {est} watches/list {cand:.4f} ≤ {listed}"),
            {"passed": beats, "decided_by": "counterfactual", "candidate": cand, **floor})
    comparison = {"point": yardstick["point"], "lo": yardstick["lo"], "hi": yardstick["hi"],
                  "level": yardstick["level"], "n_users": int(yardstick.get("log", {}).get("lists", 0)),
                  "resamples": yardstick.get("resamples", 1000), "metric": "watches/list (" + est + ")",
                  "reference": "production replayed on the holdout days' exploration log"}
    consent = bool(stale and stale.get("withdrawn_consent"))   # production must go: not worse with confidence is enough
    floor = None if consent else NON_INFERIORITY * abs(float(values.get(yardstick.get("reference", "production"), 0)))
    passed, reason, q = _evidence_check(comparison, margin, stale, {}, {}, DEFAULT_METRIC, stale_point_floor=floor,
                                        online_check=online_check)
    q = q | {"decided_by": "counterfactual", "candidate": values.get(yardstick.get("candidate", "candidate")),
             "production": values.get(yardstick.get("reference", "production"))}
    reason = reason.replace("paired bootstrap resamples) vs", "paired bootstrap resamples over lists) vs") \
        .replace(" users (", " lists (")
    return (True, f"decided on the exploration log ({interval} ≥ {min_ess:,.0f})", numbers), base, \
        (passed, reason, q)


def evaluate_gate(candidate_metrics: dict, production_metrics: dict | None, *, has_nan: bool,
                  metric: str = DEFAULT_METRIC, margin: float = 0.0, min_coverage_ratio: float = 0.5,
                  min_coverage: float = 0.01, baselines: dict | None = None, comparison: dict | None = None,
                  min_users: int | None = None, stale: dict | None = None,
                  same_as_production: str | None = None, yardstick: dict | None = None,
                  min_ess: float | None = None, online_check: bool = False) -> GateDecision:
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
    }
    if min_users is not None:
        results["holdout"] = _size_check(_users(candidate_metrics), min_users)
    if baselines is not None:
        results["baselines"] = _baseline_check(candidate_metrics, baselines, metric)
    if comparison is not None and production_metrics is not None:
        if margin < 0:
            raise ValueError(f"margin must be ≥ 0 (a tolerance on the interval's lower bound), got {margin}")
        results["quality"] = _evidence_check(comparison, margin, stale, candidate_metrics, production_metrics, metric)
    else:
        results["quality"] = _quality_check(candidate_metrics, production_metrics, metric, margin)
    if min_ess is not None and production_metrics is not None:
        results["yardstick"], cf_base, cf_quality = yardstick_checks(yardstick, min_ess, max(margin, 0.0), stale,
                                                                     online_check=online_check)
        if cf_base is not None:
            if baselines is not None:
                results["holdout_baselines"] = (True, "(not deciding) " + results["baselines"][1],
                                                results["baselines"][2] | {"passed": True, "decided": False})
            results["baselines"] = cf_base
            results["holdout_quality"] = (True, "(not deciding) " + results["quality"][1],
                                          results["quality"][2] | {"passed": True, "decided": False})
            results["quality"] = cf_quality
    if same_as_production:
        results["novelty"] = (False, f"nothing new: {same_as_production}", {"passed": False})
    return GateDecision(
        promote=all(passed for passed, _, _ in results.values()),
        reasons=[reason for _, reason, _ in results.values()],
        checks={name: numbers for name, (_, _, numbers) in results.items()},
    )


# ------------------------------------------------------------------ the churn model's gate (issue 17)
CHURN_MIN_ROWS, CHURN_MIN_CLASS = 200, 20
CHURN_AUC_MARGIN, CHURN_BRIER_MARGIN = 0.01, 0.005


def evaluate_churn_gate(candidate: dict, baseline: dict, production: dict | None, *, finite: bool) -> GateDecision:
    """May a churn candidate replace production? All on the same holdout snapshot:
    finite risks; a holdout big enough to judge (rows, churned and retained users); strictly better than the
    recency rule on ROC AUC, PR AUC and Brier score; and, when a production model exists (re-scored on this
    holdout), ROC AUC not lower by more than CHURN_AUC_MARGIN and Brier not higher by more than CHURN_BRIER_MARGIN."""
    checks, reasons = {}, []

    def check(name: str, passed: bool, reason: str, numbers: dict) -> None:
        checks[name] = {"passed": bool(passed), **numbers}
        reasons.append(("✓ " if passed else "✗ ") + reason)

    check("finite", finite, "risks are finite" if finite else "some risks are NaN or infinite", {})
    rows, churned = candidate.get("rows") or 0, candidate.get("churned") or 0
    size_ok = rows >= CHURN_MIN_ROWS and min(churned, rows - churned) >= CHURN_MIN_CLASS
    check("holdout_size", size_ok, f"holdout of {rows:,} users ({churned:,} churned); needs ≥ {CHURN_MIN_ROWS} "
          f"with ≥ {CHURN_MIN_CLASS} of each outcome", {"rows": rows, "churned": churned})
    c = {k: candidate.get(k) for k in ("roc_auc", "pr_auc", "brier")}
    b = {k: baseline.get(k) for k in ("roc_auc", "pr_auc", "brier")}
    known = all(isinstance(v, (int, float)) and math.isfinite(v) for v in (*c.values(), *b.values()))
    beats = known and c["roc_auc"] > b["roc_auc"] and c["pr_auc"] > b["pr_auc"] and c["brier"] < b["brier"]
    check("baseline", beats, (f"vs the recency rule: ROC AUC {c['roc_auc']:.4f} vs {b['roc_auc']:.4f}, PR AUC "
                              f"{c['pr_auc']:.4f} vs {b['pr_auc']:.4f}, Brier {c['brier']:.4f} vs {b['brier']:.4f}")
          if known else "metrics missing: cannot compare with the recency rule", {"candidate": c, "baseline": b})
    if production is not None:
        p = {k: production.get(k) for k in ("roc_auc", "brier")}
        numeric = all(isinstance(v, (int, float)) and math.isfinite(v) for v in (*p.values(), c["roc_auc"], c["brier"]))
        ok = numeric and c["roc_auc"] >= p["roc_auc"] - CHURN_AUC_MARGIN and c["brier"] <= p["brier"] + CHURN_BRIER_MARGIN
        check("production", ok, (f"vs production on the same holdout: ROC AUC {c['roc_auc']:.4f} vs {p['roc_auc']:.4f} "
                                 f"(margin {CHURN_AUC_MARGIN}), Brier {c['brier']:.4f} vs {p['brier']:.4f} "
                                 f"(margin {CHURN_BRIER_MARGIN})") if numeric else "metrics missing: cannot compare "
              "with production", {"candidate": c, "production": p})
    else:
        check("production", True, "no churn model in production yet", {})
    return GateDecision(all(v["passed"] for v in checks.values()), reasons, checks)


# ------------------------------------------------------------------ the ads (click-through) model's gate (issue 25)
ADS_MIN_ROWS, ADS_MIN_CLASS = 200, 20
ADS_LOG_LOSS_MARGIN, ADS_ECE_MARGIN = 0.001, 0.005


def evaluate_ads_gate(candidate: dict, baseline: dict, production: dict | None, *, finite: bool) -> GateDecision:
    """May an ads candidate replace production? All on the same holdout days: finite probabilities; a holdout big
    enough to judge (impressions, with and without a click); strictly better than each campaign's historical click
    rate on log loss and on calibration error (ECE); and, when an ads model is in production (re-scored on this
    holdout), log loss not higher by more than ADS_LOG_LOSS_MARGIN and ECE not higher by more than ADS_ECE_MARGIN
    (the same data and seed retrained must pass: the margins absorb nothing else)."""
    checks, reasons = {}, []

    def check(name: str, passed: bool, reason: str, numbers: dict) -> None:
        checks[name] = {"passed": bool(passed), **numbers}
        reasons.append(("✓ " if passed else "✗ ") + reason)

    def known(*values) -> bool:
        return all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)

    check("finite", finite, "click probabilities are finite" if finite else "some click probabilities are NaN or "
          "infinite", {})
    rows, clicks = candidate.get("rows") or 0, candidate.get("clicks") or 0
    size_ok = rows >= ADS_MIN_ROWS and min(clicks, rows - clicks) >= ADS_MIN_CLASS
    check("holdout_size", size_ok, f"holdout of {rows:,} impressions ({clicks:,} clicked); needs ≥ {ADS_MIN_ROWS} "
          f"with ≥ {ADS_MIN_CLASS} of each outcome", {"rows": rows, "clicks": clicks})
    keys = ("log_loss", "calibration_error", "roc_auc", "expected_revenue")
    c, b = {k: candidate.get(k) for k in keys}, {k: baseline.get(k) for k in keys}
    both = known(c["log_loss"], c["calibration_error"], b["log_loss"], b["calibration_error"])
    beats = both and c["log_loss"] < b["log_loss"] and c["calibration_error"] < b["calibration_error"]
    check("baseline", beats, (f"vs each campaign's click rate: log loss {c['log_loss']:.4f} vs {b['log_loss']:.4f}, "
                              f"calibration error {c['calibration_error']:.4f} vs {b['calibration_error']:.4f} "
                              "(both must be lower)") if both
          else "metrics missing: cannot compare with the campaigns' click rates", {"candidate": c, "baseline": b})
    if production is not None:
        p = {k: production.get(k) for k in keys}
        numeric = known(p["log_loss"], p["calibration_error"], c["log_loss"], c["calibration_error"])
        ok = (numeric and c["log_loss"] <= p["log_loss"] + ADS_LOG_LOSS_MARGIN
              and c["calibration_error"] <= p["calibration_error"] + ADS_ECE_MARGIN)
        check("production", ok, (f"vs production v{production.get('version')} on the same holdout: log loss "
                                 f"{c['log_loss']:.4f} vs {p['log_loss']:.4f} (margin {ADS_LOG_LOSS_MARGIN}), "
                                 f"calibration error {c['calibration_error']:.4f} vs {p['calibration_error']:.4f} "
                                 f"(margin {ADS_ECE_MARGIN})") if numeric
              else "metrics missing: cannot compare with production", {"candidate": c, "production": p})
    else:
        check("production", True, "no ads model in production yet", {})
    return GateDecision(all(v["passed"] for v in checks.values()), reasons, checks)
