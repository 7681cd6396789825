"""Alarms that know their noise: a drift alert needs a change that is material (the test's threshold) AND beyond
chance at the two window sizes (above the 99th percentile of the score when the current window is drawn from the
reference's own distribution).

Found: on a stable 600-user world (seed 7, 300 movies, 40 days) the fixed thresholds opened data-drift alerts on
chance — `user_activity` PSI 0.10–0.12 and `rating` PSI 0.11–0.19 on days of 100–140 rows, where PSI averages
(1/n_ref + 1/n_cur)·(B − 1) ≈ 0.09 with nothing changed.
"""
import math

import numpy as np
import pytest
from scipy import stats

from core.monitoring import drift, monitoring
from core.monitoring.drift import NULL_LEVEL, run_test
from core.pseudonym import KEY_ENV

RATING_SHARES = np.array([0.02, 0.02, 0.04, 0.06, 0.10, 0.14, 0.20, 0.20, 0.14, 0.08])   # ratings 1..10
RATINGS = [str(r) for r in range(1, 11)]


def _counts(rng, n, p=RATING_SHARES):
    return dict(zip(RATINGS, rng.multinomial(n, p).tolist()))


def _alert_worthy(r: dict) -> bool:
    """What `monitor_day` remembers of a day for tomorrow's persistence rule (old results had no chance field)."""
    return bool(r["drifted"]) and bool(r.get("beyond_chance", True))


# ------------------------------------------------------------------ fails on the fixed-threshold rule
def test_small_days_from_the_reference_rarely_confirm_an_alert():
    """600-user-world sizes: 7 reference days of ~120 ratings, then days of 120 drawn from the same shares.

    With the fixed threshold PSI ≥ 0.1 a third of these days "drift" and a moderate score on two days in a row
    confirms an alert: ~10 % of days alerted. The chance level at these sizes is ~0.2, so now ≤ 1 % may."""
    rng = np.random.default_rng([22, 6])
    reference = _counts(rng, 7 * 120)
    days, alerts, yesterday = 400, 0, False
    for _ in range(days):
        r = run_test("psi", reference, _counts(rng, 120)).to_dict()
        alerts += monitoring.drift_confirmed(r, drifted_yesterday=yesterday)
        yesterday = _alert_worthy(r)
    assert alerts <= days // 100, f"{alerts} of {days} days drawn from the reference opened an alert"


@pytest.mark.slow   # builds a 600-user world, retrains and runs 10 closed-loop days (~40 s)
def test_a_stable_small_world_opens_no_drift_alert(tmp_path, monkeypatch):
    """The issue's world: before, two data-drift alerts (user_activity, rating) opened within 10 stable days."""
    from core.settings import load_settings
    from core.simulation import loop, simulation
    from core.training import pipeline
    monkeypatch.setenv(KEY_ENV, "drift-noise-fixed-key")   # training order (and so the days) reproducible
    s = load_settings(tmp_path / "w600")
    # Built without ads, as the world was (with ads, bench_drift --stable-small runs it for 30 days: a
    # rating alert there led to the rating chance level's design effect, tests/test_drift_clusters.py).
    simulation.init_world(s, seed=7, users=600, movies=300, days=40, ads=False)
    pipeline.retrain(s)
    log = loop.run(s, 10, policy_mode="on-alert")["log"]
    opened = [(r["date"], a) for r in log for a in r["opened"]]
    assert not opened, opened
    scores = monitoring.history(s)["scores"]
    primary = scores[[t == monitoring.FEATURES[f][1][0] for f, t in zip(scores["feature"], scores["test"])]]
    # the threshold alone still fires on these days (user_activity; rating too before its chance level counted a
    # user's ratings of a day as one cluster — monitoring.design_effect): the chance level held the alerts back
    material = primary[(primary["drifted"] == 1) & primary["feature"].isin(["rating", "user_activity"])]
    assert "user_activity" in set(material["feature"]) and len(material) >= 2
    # Most of them are within chance (a single beyond-chance day is not confirmed without a second one; ALS's
    # threads make the exact days vary between runs, so the test asks for the share, not for every day).
    within = material["beyond_chance"] == 0
    assert within.sum() >= 2 * (~within).sum(), material[["day", "feature", "score", "null_q99"]]
    assert (material.loc[within, "score"] < material.loc[within, "null_q99"]).all()
    judged = scores[scores["insufficient"] == 0]
    assert (judged["null_q99"] >= 0).all() and judged["beyond_chance"].isin([0, 1]).all()


# ------------------------------------------------------------------ chance levels by hand
def test_every_registered_test_has_a_chance_level():
    rng = np.random.default_rng(1)
    labels, numbers = _counts(rng, 5000), rng.lognormal(0, 1, 5000)
    for name, test in drift.TESTS.items():
        cur = numbers[:500] if test.kind == "numeric" else _counts(rng, 500)
        r = run_test(name, numbers if test.kind == "numeric" else labels, cur)
        assert 0 < r.null_q99 < 1 and r.beyond_chance == (r.score > r.null_q99), name
        assert r.null_q99 == drift.null_quantile(name, numbers if test.kind == "numeric" else labels, cur)


def test_same_distribution_at_50_rows_is_within_chance_and_never_alerts():
    # 5 equal categories, 50 + 50 rows: PSI's chance level ≈ (1/50 + 1/50)·χ²₄(0.99) = 0.04 · 13.28 = 0.53,
    # far above the threshold 0.1: a day at PSI 0.2 is material but nothing chance would not do.
    reference = {g: 10 for g in "abcde"}
    current = {"a": 15, "b": 12, "c": 9, "d": 8, "e": 6}
    r = run_test("psi", reference, current, min_n=0)
    # PSI = .1 ln 1.5 + .04 ln 1.2 − .02 ln .9 − .04 ln .8 − .08 ln .6 = .04055 + .00729 + .00211 + .00893 + .04087
    assert r.score == pytest.approx(0.09974, abs=1e-4)
    assert r.null_q99 > 0.4 and not r.beyond_chance
    # 36/24/16/14/10 %: .16 ln 1.8 + .04 ln 1.2 − .04 ln .8 − .06 ln .7 − .1 ln .5 = 0.20098, twice the threshold
    day = run_test("psi", reference, {"a": 18, "b": 12, "c": 8, "d": 7, "e": 5}, min_n=0).to_dict()
    assert day["score"] == pytest.approx(0.20098, abs=1e-4)
    assert day["drifted"] and day["score"] < day["null_q99"] and not day["beyond_chance"]
    assert not monitoring.drift_confirmed(day, drifted_yesterday=True)       # material two days running: still noise


def test_a_large_real_shift_at_5000_rows_is_beyond_chance_and_alerts():
    # 50/50 → 70/30: PSI = 0.2·ln(1.4) + 0.2·ln(5/3) = 0.06729 + 0.10217 = 0.16946; chance level at 5,000 + 5,000
    # rows ≈ (2/5000)·χ²₁(0.99) = 0.0004 · 6.635 = 0.00265
    r = run_test("psi", {"a": 2500, "b": 2500}, {"a": 3500, "b": 1500})
    assert r.score == pytest.approx(0.16946, abs=1e-4)
    assert r.null_q99 == pytest.approx(0.00265, rel=0.15) and r.beyond_chance and r.drifted
    assert monitoring.drift_confirmed(r.to_dict(), drifted_yesterday=False)   # moderate, but 5,000 rows: at once
    # a tiny real change at these sizes is beyond chance but not material: no alert either
    # (54/46: PSI = 0.04·ln(1.08) + 0.04·ln(1/0.92) = 0.00641, above 0.0027 but far below 0.1)
    tiny = run_test("psi", {"a": 2500, "b": 2500}, {"a": 2700, "b": 2300})
    assert tiny.score == pytest.approx(0.00641, abs=1e-4)
    assert tiny.beyond_chance and not tiny.drifted and not monitoring.drift_confirmed(tiny.to_dict(), True)


def test_ks_chance_level_by_hand():
    # n = m = 100: nₑ = 50, c = 1.62762 (Kolmogorov's 0.99 quantile): 1.62762 / (7.07107 + 0.12 + 0.01556) = 0.22585
    assert stats.kstwobign.ppf(NULL_LEVEL) == pytest.approx(1.62762, abs=1e-5)
    assert drift.ks_null_quantile(100, 100) == pytest.approx(0.22585, abs=1e-4)
    # large windows: the asymptotic c·sqrt((n + m)/(n·m))
    assert drift.ks_null_quantile(10**6, 10**6) == pytest.approx(1.62762 * math.sqrt(2e-6), rel=1e-3)
    assert math.isnan(drift.ks_null_quantile(0, 10))


def test_the_vectorised_scores_are_the_real_scores():
    rng = np.random.default_rng(3)
    for _ in range(20):
        a, b = rng.integers(0, 40, 7).astype(float), rng.integers(0, 40, 7).astype(float)
        a[0] += 1
        b[1] += 1
        ra, rb = dict(zip("abcdefg", a)), dict(zip("abcdefg", b))
        rows = np.vstack([a, a]), np.vstack([b, b])
        for name, fn in (("psi", drift._psi_rows), ("jensen_shannon", drift._js_rows),
                         ("chi_square", drift._cramers_v_rows), ("max_share_gain", drift._share_gain_rows)):
            real = run_test(name, ra, rb, min_n=0, min_expected=0).score
            assert fn(*rows) == pytest.approx([real, real], abs=1e-12), name
        if (a > 0).sum() > 1 or (b > 0).sum() > 1:   # Cramér's V from scipy's χ² on the same table
            table = np.vstack([a, b])[:, (a + b) > 0]
            chi2 = stats.chi2_contingency(table, correction=False)[0]
            assert run_test("chi_square", ra, rb, min_n=0, min_expected=0).score == pytest.approx(
                math.sqrt(chi2 / table.sum()), abs=1e-12)


# ------------------------------------------------------------------ chance levels against Monte Carlo
CHI2_9 = stats.chi2.ppf(NULL_LEVEL, 9)


@pytest.mark.slow   # 2,000 Monte Carlo pairs per case (~3 s each)
@pytest.mark.parametrize("name, n_ref, n_cur, approx", [
    # where every bucket expects many rows the χ² approximations hold (docstring of drift.null_quantile) ...
    ("psi", 20_000, 2_000, (1 / 20_000 + 1 / 2_000) * CHI2_9),
    ("jensen_shannon", 20_000, 2_000, math.sqrt((1 / 20_000 + 1 / 2_000) * CHI2_9 / (8 * math.log(2)))),
    ("chi_square", 20_000, 2_000, math.sqrt(CHI2_9 / 22_000)),
    ("max_share_gain", 20_000, 2_000, None),
    # ... on monitoring's small days they do not (PSI: 0.21 by χ², 0.30 in truth); resampling follows the truth
    ("psi", 800, 120, None),
    ("jensen_shannon", 800, 120, None),
    ("chi_square", 800, 120, None),
    ("max_share_gain", 800, 120, None),
])
def test_resampled_chance_level_matches_monte_carlo(name, n_ref, n_cur, approx):
    """Monte Carlo: 2,000 pairs of windows drawn from the same true shares, scored by the real test; its 99th
    percentile against the chance level computed from one reference (which only knows its own shares)."""
    rng = np.random.default_rng([22, n_ref])
    test = drift.get_test(name)
    scores = [test.fn(drift.window(_counts(rng, n_ref)), drift.window(_counts(rng, n_cur)))[0] for _ in range(2000)]
    monte_carlo = np.quantile(scores, NULL_LEVEL)
    levels = [run_test(name, _counts(rng, n_ref), _counts(rng, n_cur)).null_q99 for _ in range(5)]
    assert np.median(levels) == pytest.approx(monte_carlo, rel=0.12)
    if approx is not None:
        assert np.median(levels) == pytest.approx(approx, rel=0.1)
    elif name == "psi":
        assert monte_carlo > 1.3 * (1 / n_ref + 1 / n_cur) * CHI2_9


@pytest.mark.slow   # 2,000 Monte Carlo pairs of numeric windows per case (~2–6 s each)
@pytest.mark.parametrize("name", ["psi", "jensen_shannon", "ks"])
@pytest.mark.parametrize("n_ref, n_cur", [(900, 130), (20_000, 2_000)])
def test_numeric_chance_level_matches_monte_carlo(name, n_ref, n_cur):
    """Decile bins (psi, jensen_shannon: resampled) and KS (analytic) on continuous data."""
    rng = np.random.default_rng([23, n_ref])
    test = drift.get_test(name)
    scores = [test.fn(drift.window(rng.lognormal(0, 1, n_ref)), drift.window(rng.lognormal(0, 1, n_cur)))[0]
              for _ in range(2000)]
    level = run_test(name, rng.lognormal(0, 1, n_ref), rng.lognormal(0, 1, n_cur)).null_q99
    assert level == pytest.approx(np.quantile(scores, NULL_LEVEL), rel=0.12)
    assert 0.003 <= np.mean(np.array(scores) > level) <= 0.025     # chance alarms: about 1 %


def test_chance_levels_are_cached_per_reference():
    rng = np.random.default_rng(4)
    reference = _counts(rng, 2_000)
    drift._resampled_quantile.cache_clear()
    drift._reference_draws.cache_clear()
    first = [run_test("psi", reference, _counts(rng, 300)).null_q99 for _ in range(3)]
    info = drift._resampled_quantile.cache_info()
    assert len(set(first)) == 1 and (info.misses, info.hits) == (1, 2)   # same reference buckets and size
    assert run_test("psi", reference, _counts(rng, 150)).null_q99 > first[0]   # fewer rows: more noise
    # another day's size and another test: new current draws, the reference's own draws are reused
    run_test("jensen_shannon", reference, _counts(rng, 200))
    assert drift._reference_draws.cache_info().misses == 1


def test_merged_categories_resample_like_unmerged_counts():
    """A day whose small categories were merged into '(other)' gets the chance level of the merged buckets,
    whether the reference arrives per category or already merged (the cached draws are summed per bucket)."""
    rng = np.random.default_rng(8)
    shares = rng.dirichlet(np.ones(300))
    titles = [f"t{i:03d}" for i in range(300)]
    reference = dict(zip(titles, rng.multinomial(15_000, shares).tolist()))
    current = dict(zip(titles, rng.multinomial(400, shares).tolist()))
    r = run_test("max_share_gain", reference, current)
    assert "merged" in r.detail
    merged_ref, merged_cur, _ = drift.merge_small_buckets(drift.window(reference), drift.window(current))
    again = run_test("max_share_gain", merged_ref.counts, merged_cur.counts, min_expected=0)
    assert "merged" not in again.detail and r.null_q99 == pytest.approx(again.null_q99, rel=0.05)


# ------------------------------------------------------------------ the alert rules
def test_alert_level_and_recovery_follow_the_chance_level():
    r = {"score": 0.2, "threshold": 0.1, "drifted": True, "n_current": 120, "empty": False,
         "null_q99": 0.28, "beyond_chance": False}
    assert monitoring.alert_level(r) == 0.28
    assert not monitoring.drift_confirmed(r, drifted_yesterday=True)
    # an open alert closes below 0.8 × the alert level: 0.2 < 0.224 — noise at this size, not a shift any more
    assert monitoring.drift_recovered(r) and not monitoring.drift_recovered({**r, "score": 0.23})
    big = {**r, "n_current": 5000, "null_q99": 0.01, "score": 0.09, "drifted": False}
    assert monitoring.alert_level(big) == 0.1 and not monitoring.drift_recovered(big)   # 0.09 ≥ 0.08: stays open
    assert monitoring.alert_level({**r, "null_q99": float("nan")}) == 0.1


def test_concept_drift_needs_a_drop_beyond_chance_for_the_users_served():
    # b = 0.8, 130 users today, 900 in the baseline: 0.8 − 2.32635·sqrt(0.16·(1/130 + 1/900)) = 0.8 − 0.08731
    assert monitoring.hit_rate_chance_level(0.8, 130, 900) == pytest.approx(0.71269, abs=1e-4)
    assert monitoring.concept_drift_level(0.8, 130, 900) == pytest.approx(0.64)     # the material 80 % is lower
    # 20 users today, 140 in the baseline: 0.8 − 2.32635·sqrt(0.16·(1/20 + 1/140)) = 0.8 − 0.22244 = 0.57756
    assert monitoring.concept_drift_level(0.8, 20, 140) == pytest.approx(0.57756, abs=1e-4)
    # a day at 0.62 (77 % of the baseline) alerts on 130 users, not on 20 (12 of 20 hits happen by chance)
    assert 0.62 < monitoring.concept_drift_level(0.8, 130, 900)
    assert not 0.62 < monitoring.concept_drift_level(0.8, 20, 140)
    assert monitoring.concept_drift_level(0.8, 0, 900) == pytest.approx(0.64)     # no user counts: material only


def test_the_store_keeps_the_chance_level(tmp_path):
    from core.settings import load_settings
    from core.store import mlopsdb
    with mlopsdb.session(load_settings(tmp_path)) as db:
        assert {"null_q99", "beyond_chance"} <= {c.name for c in db["drift_scores"].columns}
        assert "chance_level" in {c.name for c in db["alerts"].columns}
        assert monitoring._open_or_update(db, "data-drift", "rating", "psi", 0.31, 0.1, "warning", ("a", "b"), "t",
                                          "taste shift", chance_level=0.28)
        assert monitoring._open_or_update(db, "concept-drift", "hit_rate_model", None, 0.5, 0.64, "warning",
                                          ("a", "b"), "t", "taste shift", chance_level=float("nan"))
        assert db.execute("SELECT metric, chance_level FROM alerts ORDER BY alert_id").fetchall() == [
            ("rating", 0.28), ("hit_rate_model", None)]
