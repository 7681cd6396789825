"""Churn monitoring (issue 17.4/17.5): feature and risk drift of stored churn scores, churn rate next to the
recommender's online hit rate, and the closed loop that scores every day.

The fast tests build a churn version by hand (a finished run whose artifact holds only the holdout rows the
drift reference reads) and store hand-made scores against it; the slow ones run on a small world with a trained
churn model in production and 16 closed-loop days.
"""
from __future__ import annotations

import json
import math
import sqlite3

import numpy as np
import pandas as pd
import pytest

from conftest import private_copy
from core.errors import ValidationError
from core.monitoring import churn_monitoring, drift, monitoring
from core.pseudonym import pseudonym, pseudonym_key
from core.settings import load_settings
from core.simulation import loop, simulation
from core.training import churn, churn_pipeline, pipeline, registry, tracking
from core.warehouse import churn_data, warehouse
from core.warehouse.churn_data import FEATURES

AT = "2026-03-01T00:00:00"


# ------------------------------------------------------------------ pure parts
def test_missing_values_are_their_own_bucket():
    """Known values identical, only the share of unknowns moves (a served-share feature when serving stops):
    PSI over {bins…, unknown} sees it; with NaN dropped it would be 0."""
    ref = np.r_[np.full(200, 5.0), np.full(200, np.nan)]
    cur = np.r_[np.full(100, 5.0), np.full(300, np.nan)]
    ref_counts, cur_counts = churn_monitoring.feature_counts(ref, cur)
    assert ref_counts[churn_monitoring.UNKNOWN] == 200 and cur_counts[churn_monitoring.UNKNOWN] == 300
    assert sum(ref_counts.values()) == 400 and sum(cur_counts.values()) == 400
    psi, severity = churn_monitoring.feature_psi(ref, cur)
    # buckets [-inf, 5), [5], (5, inf), unknown: shares .5/.5 → .25/.75; two empty buckets get ε in both windows
    assert psi == pytest.approx(0.25 * math.log(3) / (1 + 2 * drift.EPSILON), rel=1e-9)
    assert severity == "significant"
    dropped = drift.run_test("psi", ref, cur)   # the NaN-dropping numeric test sees nothing
    assert dropped.score == 0.0


def test_without_missing_values_the_score_is_drifts_numeric_psi():
    rng = np.random.default_rng(3)
    ref, cur = rng.normal(0, 1, 500), rng.normal(0.4, 1.2, 400)
    psi, _ = churn_monitoring.feature_psi(ref, cur)
    assert psi == pytest.approx(drift.run_test("psi", ref, cur).score, rel=1e-12)
    assert churn_monitoring.UNKNOWN not in churn_monitoring.feature_counts(ref, cur)[0]


def test_too_few_rows_are_insufficient_not_judged():
    rng = np.random.default_rng(4)
    assert churn_monitoring.feature_psi(rng.normal(size=500), rng.normal(size=99)) == (None, "insufficient")
    assert churn_monitoring.feature_psi(rng.normal(size=500), np.zeros(0)) == (None, "insufficient")
    assert churn_monitoring.risk_psi(np.zeros(0), rng.random(500)) == (None, "insufficient")
    assert churn_monitoring.feature_psi(rng.normal(size=50), rng.normal(size=50), min_n=10)[1] != "insufficient"


def test_a_reference_without_known_values_still_compares_unknown_shares():
    ref = np.full(200, np.nan)
    cur = np.r_[np.full(100, 0.3), np.full(100, np.nan)]
    ref_counts, cur_counts = churn_monitoring.feature_counts(ref, cur)
    assert ref_counts == {"known": 0.0, "unknown": 200.0} and cur_counts == {"known": 100.0, "unknown": 100.0}
    assert churn_monitoring.feature_psi(ref, cur)[1] == "significant"


def test_psi_from_counts_is_psis_formula():
    # shares .5/.5 → .25/.75: (.25 − .5)·ln(.5) + (.75 − .5)·ln(1.5) = .25·ln 3
    assert drift.psi_from_counts([50, 50], [25, 75]) == pytest.approx(0.25 * math.log(3), rel=1e-12)
    assert drift.psi_from_counts([10, 0], [10, 0]) == 0.0


def test_every_day_at_once_equals_one_day_at_a_time():
    """The history scores all days in one bincount; each day's score is the one-window score."""
    rng = np.random.default_rng(5)
    ref = np.where(rng.random(800) < 0.2, np.nan, rng.gamma(2.0, 1.0, 800))
    days = [rng.gamma(2.0, 1.0, 300), np.where(rng.random(250) < 0.6, np.nan, rng.gamma(3.0, 1.0, 250)),
            rng.gamma(2.0, 1.0, 40), rng.normal(9.0, 1.0, 200)]
    values = np.concatenate(days)
    groups = np.repeat(np.arange(len(days)), [len(d) for d in days])
    order = rng.permutation(len(values))            # rows of different days interleaved, as stored
    together = churn_monitoring.psi_by_group(ref, values[order], groups[order], len(days))
    assert together == [churn_monitoring.feature_psi(ref, d) for d in days]
    assert together[2] == (None, "insufficient") and together[3][1] == "significant"


def test_risk_shares_in_fixed_tenths():
    shares = churn_monitoring.risk_shares([0.05, 0.15, 0.15, 1.0])
    assert shares == [0.25, 0.5, 0, 0, 0, 0, 0, 0, 0, 0.25]
    assert churn_monitoring.risk_shares([]) == [0.0] * 10


# ------------------------------------------------------------------ a hand-made churn version
def _holdout(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({f: rng.gamma(2.0, 3.0, n).round(3) for f in FEATURES})
    frame.loc[rng.random(n) < 0.3, "served_watch_share_28d"] = np.nan     # users shown no list
    frame["risk"] = rng.beta(1.5, 8.0, n).round(6)
    return frame


def _hand_version(settings, holdout: pd.DataFrame, promote: bool = True) -> int:
    """A finished churn run whose artifact holds holdout rows only (what `churn_pipeline.reference` reads)."""
    run_id = tracking.start_run(settings, churn.MODEL_KIND, {}, 0, None, at=AT)
    path = settings.models_dir / f"churn-run-{run_id}"
    path.mkdir(parents=True)
    n = len(holdout)
    churn.write_rows(path, {"user_key": np.array([f"k{i}" for i in range(n)]), "as_of": np.full(n, "2026-02-01"),
                            "X": holdout[list(FEATURES)].to_numpy(float), "label": np.zeros(n),
                            "part": np.full(n, churn_pipeline.PART_CODES["holdout"], dtype=np.int8),
                            "risk": holdout["risk"].to_numpy(float)})
    tracking.finish_run(settings, run_id, {}, None, None, f"models/churn-run-{run_id}", "hand-made", at=AT)
    version = registry.register(settings, run_id, at=AT, family=churn.FAMILY)
    if promote:
        registry.promote(settings, version, "test", "hand-made churn version", at=AT)
    return version


def _store(settings, version: int, rows: pd.DataFrame, as_of: str, prefix: str = "u") -> None:
    frame = rows.reset_index(drop=True).assign(user_key=[f"{prefix}{i}" for i in range(len(rows))],
                                               as_of=pd.Timestamp(as_of))
    churn_pipeline.store_predictions(settings, version, frame, at=AT)


@pytest.fixture
def hand(tmp_path):
    settings = load_settings(tmp_path)
    holdout = _holdout(600, seed=1)
    return settings, holdout, _hand_version(settings, holdout)


def test_stored_features_read_back_with_missing_values_as_nan(hand):
    settings, holdout, version = hand
    _store(settings, version, holdout.iloc[:50], "2026-03-02")
    back = churn_pipeline.predictions(settings, with_features=True).sort_values("user_key", key=lambda k: k.str[1:]
                                                                                .astype(int))
    assert list(back.columns[-len(FEATURES):]) == list(FEATURES)
    np.testing.assert_allclose(back[list(FEATURES)].to_numpy(float), holdout.iloc[:50][list(FEATURES)].to_numpy(float))
    assert back["served_watch_share_28d"].isna().sum() == holdout.iloc[:50]["served_watch_share_28d"].isna().sum() > 0


def test_drift_is_zero_when_the_scores_are_the_reference_rows(hand):
    settings, holdout, version = hand
    _store(settings, version, holdout, "2026-03-02")
    result = churn_monitoring.drift(settings)
    assert result["version"] == version and result["as_of"] == "2026-03-02"
    assert result["reference_rows"] == result["current_rows"] == 600
    assert [f["feature"] for f in result["features"]] == list(FEATURES)
    assert all(f["psi"] == pytest.approx(0.0, abs=1e-12) and f["severity"] == "none" for f in result["features"])
    assert result["risk"]["psi"] == pytest.approx(0.0, abs=1e-12) and result["risk"]["severity"] == "none"
    assert len(result["risk"]["bins"]) == 11 and result["risk"]["bins"][0] == 0 and result["risk"]["bins"][-1] == 1
    assert result["risk"]["reference"] == result["risk"]["current"] == churn_monitoring.risk_shares(holdout["risk"])
    assert pytest.approx(sum(result["risk"]["current"])) == 1.0
    [day] = result["history"]
    assert day["as_of"] == "2026-03-02" and day["users"] == 600
    assert day["mean_risk"] == pytest.approx(holdout["risk"].mean())
    assert day["risk_psi"] == pytest.approx(0.0, abs=1e-12) and day["max_feature_psi"] == pytest.approx(0.0, abs=1e-12)
    json.dumps(result)      # the dashboard and a --json CLI can serialise it as is


def test_a_shifted_feature_and_a_shifted_risk_are_significant(hand):
    settings, holdout, version = hand
    shifted = holdout.assign(watches_7d=holdout["watches_7d"] + 10.0, risk=(holdout["risk"] * 3).clip(0, 1))
    _store(settings, version, shifted, "2026-03-02")
    result = churn_monitoring.drift(settings)
    by = {f["feature"]: f for f in result["features"]}
    assert by["watches_7d"]["psi"] > drift.PSI_SIGNIFICANT and by["watches_7d"]["severity"] == "significant"
    assert by["watches_7d"]["label"] == churn_data.FEATURE_LABELS["watches_7d"]
    assert all(by[f]["psi"] == pytest.approx(0.0, abs=1e-12) for f in FEATURES if f != "watches_7d")
    assert result["risk"]["psi"] > drift.PSI_SIGNIFICANT and result["risk"]["severity"] == "significant"
    assert result["history"][0]["max_feature_psi"] == pytest.approx(by["watches_7d"]["psi"])
    assert result["risk"]["current"] != result["risk"]["reference"]


def test_unknown_served_share_counts_as_drift(hand):
    """A recommender that stops serving leaves the served share unknown for everyone: drift, not silence."""
    settings, holdout, version = hand
    _store(settings, version, holdout.assign(served_watch_share_28d=np.nan), "2026-03-02")
    by = {f["feature"]: f for f in churn_monitoring.drift(settings)["features"]}
    assert by["served_watch_share_28d"]["severity"] == "significant"


def test_history_has_one_row_per_scored_day_and_as_of_selects_a_day(hand):
    settings, holdout, version = hand
    _store(settings, version, holdout.iloc[:300], "2026-03-01")
    _store(settings, version, holdout.assign(tenure_days=holdout["tenure_days"] * 4), "2026-03-02")
    _store(settings, version, holdout.iloc[:450], "2026-03-03")
    result = churn_monitoring.drift(settings)
    assert [h["as_of"] for h in result["history"]] == ["2026-03-01", "2026-03-02", "2026-03-03"]
    assert [h["users"] for h in result["history"]] == [300, 600, 450]
    assert result["as_of"] == "2026-03-03" and result["current_rows"] == 450
    assert result["history"][1]["max_feature_psi"] > drift.PSI_SIGNIFICANT > result["history"][2]["max_feature_psi"]
    for form in ("2026-03-02", "2026-03-02T00:00:00", pd.Timestamp("2026-03-02")):
        picked = churn_monitoring.drift(settings, as_of=form)
        assert picked["as_of"] == "2026-03-02" and picked["current_rows"] == 600
        assert {f["feature"]: f["severity"] for f in picked["features"]}["tenure_days"] == "significant"
    with pytest.raises(ValidationError, match="no churn scores are stored for 2026-02-20"):
        churn_monitoring.drift(settings, as_of="2026-02-20")
    with pytest.raises(ValidationError, match="as_of must be a date"):
        churn_monitoring.drift(settings, as_of="next tuesday")


def test_a_day_scored_by_two_versions_counts_production_once(hand):
    settings, holdout, version = hand
    other = _hand_version(settings, holdout, promote=False)
    _store(settings, version, holdout.iloc[:400], "2026-03-02")
    _store(settings, other, holdout.assign(risk=0.9), "2026-03-02")       # a candidate's re-score: 600 rows
    _store(settings, other, holdout.iloc[:200], "2026-03-03")             # only the candidate scored this day
    result = churn_monitoring.drift(settings, as_of="2026-03-02")
    assert result["current_rows"] == 400 and result["risk"]["psi"] == pytest.approx(0.0, abs=0.05)
    assert [h["users"] for h in result["history"]] == [400, 200]


def test_too_few_scores_are_insufficient_and_the_minimum_is_the_settings(hand, tmp_path, monkeypatch):
    settings, holdout, version = hand
    _store(settings, version, holdout.iloc[:60], "2026-03-02")
    result = churn_monitoring.drift(settings)
    assert {f["severity"] for f in result["features"]} == {"insufficient"}
    assert all(f["psi"] is None for f in result["features"]) and result["risk"]["psi"] is None
    assert result["history"][0]["risk_psi"] is None and result["history"][0]["max_feature_psi"] is None
    monkeypatch.setenv("RETRO_DRIFT_MIN_OBSERVATIONS", "50")
    judged = churn_monitoring.drift(load_settings(settings.home))
    assert "insufficient" not in {f["severity"] for f in judged["features"]}


def test_nothing_in_production_and_nothing_scored(tmp_path):
    settings = load_settings(tmp_path)
    result = churn_monitoring.drift(settings)
    assert result["version"] is None and result["as_of"] is None
    assert result["reference_rows"] == result["current_rows"] == 0 and result["history"] == []
    assert {f["severity"] for f in result["features"]} == {"insufficient"}
    assert result["risk"] | {"bins": None} == {"psi": None, "severity": "insufficient", "bins": None,
                                               "reference": [0.0] * 10, "current": [0.0] * 10}
    with pytest.raises(ValidationError, match="nothing is scored yet"):
        churn_monitoring.drift(settings, as_of="2026-03-01")
    frame = churn_monitoring.churn_and_quality(settings)
    assert list(frame.columns) == ["day", "active_users", "churn_rate", "hit_rate_model", "hit_rate_top50"]
    assert frame.empty


# ------------------------------------------------------------------ a world with a churn model and 16 loop days
LOOP_DAYS = 16


@pytest.fixture(scope="module")
def looped(tmp_path_factory):
    """A 56-day world (400 users) with a CF model and a churn model in production (promoted by hand when the
    small holdout does not let it beat the recency rule), then LOOP_DAYS closed-loop days that score every day."""
    s = load_settings(tmp_path_factory.mktemp("churn-loop"))
    simulation.init_world(s, seed=11, users=400, movies=200, days=56)
    pipeline.retrain(s, with_ranker=False)
    trained = churn_pipeline.train(s)
    if not trained["promoted"]:
        registry.promote(s, trained["version"], "test", "a churn model to monitor (tiny holdout)")
    assert churn_pipeline.scored_days(s) == []
    summary = loop.run(s, LOOP_DAYS, policy_mode="manual")
    return s, summary


def _watches(settings) -> pd.DataFrame:
    """Every watch in the warehouse (user_key, occurred_at), read directly for hand computations."""
    with warehouse.session(settings) as con:
        return con.execute("SELECT user_key, occurred_at FROM fact_interaction WHERE kind = 'watch'").df()


@pytest.mark.slow
def test_the_loop_stores_scores_every_day(looped):
    s, summary = looped
    days = churn_pipeline.scored_days(s)
    ends = [str(pd.Timestamp(r["date"]) + pd.Timedelta(days=1))[:10] for r in summary["log"]]
    assert [d[:10] for d in days] == ends                           # as_of = the end of each simulated day
    stored = churn_pipeline.predictions(s)
    per_day = stored.groupby("as_of").agg(users=("risk", "size"), mean=("risk", "mean"))
    for r, day in zip(summary["log"], days):
        assert r["churn_error"] is None
        assert r["churn_scored"] == per_day.loc[day, "users"] > 100
        assert r["churn_mean_risk"] == pytest.approx(per_day.loc[day, "mean"])
    assert set(stored["model_version"]) == {int(registry.production(s, family=churn.FAMILY)["version"])}
    # The stored users of a day are the warehouse's active users at that instant (a watch in the 28 days before).
    watches = _watches(s)
    t = pd.Timestamp(days[5])
    active = set(watches.loc[(watches["occurred_at"] >= t - pd.Timedelta(days=28)) & (watches["occurred_at"] < t),
                             "user_key"])
    assert set(stored.loc[stored["as_of"] == days[5], "user_key"]) <= active
    assert len(active) - summary["log"][5]["churn_scored"] <= 0.05 * len(active)   # only opted-out users missing


@pytest.mark.slow
def test_online_check_after_the_loop_matches_a_hand_computation(looped):
    s, _ = looped
    check = churn_pipeline.online_check(s)
    assert check["rows"] > 0 and len(check["days"]) >= 1
    end = churn_data.data_bounds(s)[1]
    day = check["days"][0]
    t = pd.Timestamp(day["as_of"])
    assert t + pd.Timedelta(days=14) <= end                          # only outcomes that are known
    # Observed churn of the day's scored users, by hand from the operational database's events.
    stored = churn_pipeline.predictions(s, as_of=t.strftime("%Y-%m-%dT%H:%M:%S"))
    conn = sqlite3.connect(s.ops_db)
    try:
        watched = {u for (u,) in conn.execute(
            "SELECT DISTINCT user_id FROM events WHERE kind = 'watch' AND occurred_at >= ? AND occurred_at < ?",
            [t.strftime("%Y-%m-%dT%H:%M:%S"), (t + pd.Timedelta(days=14)).strftime("%Y-%m-%dT%H:%M:%S")])}
    finally:
        conn.close()
    key = pseudonym_key(s)
    watched_keys = {pseudonym(u, key) for u in watched}
    churned = ~stored["user_key"].isin(watched_keys)
    assert day["users"] == len(stored)
    assert day["observed"] == pytest.approx(churned.mean())
    assert day["predicted"] == pytest.approx(stored["risk"].mean())
    assert 0 < day["observed"] < 1


@pytest.mark.slow
def test_churn_and_quality_joins_the_days(looped):
    s, summary = looped
    frame = churn_monitoring.churn_and_quality(s)
    assert list(frame.columns) == ["day", "active_users", "churn_rate", "hit_rate_model", "hit_rate_top50"]
    assert frame["day"].dtype == "datetime64[ns]" and frame["day"].is_monotonic_increasing and frame["day"].is_unique
    # A loop day early enough for its 14-day outcome has both numbers in one row.
    first = summary["log"][1]
    row = frame[frame["day"] == pd.Timestamp(first["date"])].iloc[0]
    assert row["hit_rate_model"] == pytest.approx(first["hit_rate_model"])
    assert row["hit_rate_top50"] == pytest.approx(first["hit_rate_top50"])
    watches = _watches(s)
    t = pd.Timestamp(first["date"])
    active = set(watches.loc[(watches["occurred_at"] >= t - pd.Timedelta(days=28)) & (watches["occurred_at"] < t),
                             "user_key"])
    later = set(watches.loc[(watches["occurred_at"] >= t) & (watches["occurred_at"] < t + pd.Timedelta(days=14)),
                            "user_key"])
    assert row["active_users"] == len(active)
    assert row["churn_rate"] == pytest.approx(len(active - later) / len(active))
    # The last loop days have no known outcome yet; the days before the loop no hit rate.
    last = frame[frame["day"] == pd.Timestamp(summary["log"][-1]["date"])].iloc[0]
    assert np.isnan(last["churn_rate"]) and not np.isnan(last["hit_rate_model"])
    assert frame["hit_rate_model"].notna().sum() == LOOP_DAYS
    assert frame.loc[frame["day"] < pd.Timestamp(summary["log"][0]["date"]), "hit_rate_model"].isna().all()


@pytest.mark.slow
def test_drift_of_the_loops_scores(looped):
    s, summary = looped
    result = churn_monitoring.drift(s)
    assert len(result["history"]) == LOOP_DAYS
    assert result["current_rows"] == summary["log"][-1]["churn_scored"] and result["reference_rows"] > 100
    assert all(f["severity"] in ("none", "moderate", "significant") for f in result["features"])
    assert result["risk"]["psi"] is not None
    # The holdout itself, stored as one day's scores, does not drift.
    ref = churn_pipeline.reference(s)
    version = int(registry.production(s, family=churn.FAMILY)["version"])
    frame = ref.assign(user_key=[f"h{i}" for i in range(len(ref))], as_of=pd.Timestamp("2030-01-01"))
    copy = private_copy(s, s.home.parent / "drift-copy")
    churn_pipeline.store_predictions(copy, version, frame, at="2030-01-01T00:00:00")
    same = churn_monitoring.drift(copy, as_of="2030-01-01")
    assert max(f["psi"] for f in same["features"]) == pytest.approx(0.0, abs=1e-9)
    assert same["risk"]["psi"] == pytest.approx(0.0, abs=1e-9)


@pytest.mark.slow
def test_no_churn_model_no_scores(cf_world, tmp_path):
    s = private_copy(cf_world, tmp_path)
    summary = loop.run(s, 1, policy_mode="manual")
    assert [(r["churn_scored"], r["churn_mean_risk"], r["churn_error"]) for r in summary["log"]] == [(0, None, None)]
    assert churn_pipeline.scored_days(s) == []
    assert monitoring.latest(s)["churn_model"]["version"] is None


@pytest.mark.slow
def test_a_broken_churn_artifact_does_not_stop_the_day(looped, tmp_path):
    s = private_copy(looped[0], tmp_path)
    prod = registry.production(s, family=churn.FAMILY)
    target = s.home / prod["artifact_path"] / churn.CHURN_FILES[1]
    target.write_text(target.read_text() + " ")
    before = len(churn_pipeline.scored_days(s))
    summary = loop.run(s, 1, policy_mode="manual")
    [day] = summary["log"]
    assert day["churn_scored"] == 0 and "does not match its registered hash" in day["churn_error"]
    assert day["hit_rate_model"] is not None and len(churn_pipeline.scored_days(s)) == before


@pytest.mark.slow
def test_a_recommender_promotion_opens_the_churn_staleness_alert(looped, tmp_path, capsys):
    from core import cli
    s = private_copy(looped[0], tmp_path)
    assert not monitoring.latest(s)["churn_model"]["stale"]
    retrained = pipeline.retrain(s, with_ranker=False)
    if not retrained["promoted"]:
        registry.promote(s, retrained["version"], "test", "a new recommender", force=True)
    day1 = loop.run(s, 1, policy_mode="manual")["log"][0]
    assert "model-staleness:churn" in day1["opened"]
    assert "model-staleness" in set(monitoring.open_alerts(s)["kind"])
    assert day1["classification"] in ("stable", "taste shift")       # the staleness alert classifies nothing
    latest = monitoring.latest(s)["churn_model"]
    assert latest["stale"] and "after churn" in latest["reasons"][0]
    assert "churn model is possibly stale" in monitoring.narrative(s)
    assert cli.main(["--home", str(s.home), "monitor"]) == 0
    assert "POSSIBLY STALE" in capsys.readouterr().out
    day2 = loop.run(s, 1, policy_mode="manual")["log"][0]
    assert "model-staleness:churn" not in day2["opened"]             # updated while open, not opened again
    assert (monitoring.open_alerts(s)["kind"] == "model-staleness").sum() == 1
    # Back to the recommender the churn model knows, and a churn model trained after that: up to date again.
    registry.rollback(s, "test", "back to the first recommender")
    again = churn_pipeline.train(s)
    if not again["promoted"]:
        registry.promote(s, again["version"], "test", "churn retrained after the rollback")
    assert not churn_pipeline.status(s)["stale"]
    day3 = loop.run(s, 1, policy_mode="manual")["log"][0]
    assert "model-staleness:churn" in day3["closed"]
    assert "model-staleness" not in set(monitoring.open_alerts(s).get("kind", pd.Series(dtype=object)))
    assert cli.main(["--home", str(s.home), "monitor"]) == 0
    assert "up to date" in capsys.readouterr().out
