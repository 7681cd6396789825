"""The ads (click-through) model: features by hand, no leakage from the future, ECE and expected revenue by hand,
the gate's decisions, and on a synthetic click log with a known click model: beats each campaign's click rate and
is calibrated; registry family 'ads' (rollback, CLI), staleness against CF and churn, model card, SHAP additivity."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from core import cli
from core.ads import features, metrics, pipeline
from core.ads import model as ads_model
from core.constants import GENRES
from core.governance import churn_insights, modelcard
from core.settings import load_settings
from core.training import gate, registry, tracking

BANDS = ("18-24", "25-34", "35-44", "45-54", "55+")
T0 = pd.Timestamp("2026-03-01")


# ------------------------------------------------------------------ a synthetic click log with a known click model
def synthetic(seed: int = 5, users: int = 300, days: int = 20, per_day: int = 3):
    """(rows, campaigns, true p_click of each row): users with genre affinities (z-scores), an age band and a churn
    risk; six campaigns; every day each user is shown `per_day` random campaigns (an untargeted logging policy).
    Truth: logit p = −2.6 + 1.6·interest in the campaign's genres + 0.8·age band targeted − 2·churn risk
    + the campaign's own appeal − 0.06·ads seen in the 7 days before."""
    rng = np.random.default_rng(seed)
    aff = rng.normal(size=(users, len(GENRES)))
    band = rng.choice(BANDS, size=users)
    risk = rng.uniform(0, 0.5, size=users)
    campaigns = pd.DataFrame({
        "campaign_id": [1, 2, 3, 4, 5, 6],
        "bid": [0.8, 1.5, 2.0, 1.0, 3.0, 1.2],
        "target_genres": ["Comedy", "Action|Thriller", "", "Drama|Romance", "Horror", "Sci-Fi"],
        "target_age_bands": ["", "18-24|25-34", "", "45-54|55+", "25-34", ""],
        "active": 1})
    appeal = np.array([0.2, 0.0, -0.4, 0.1, -0.2, 0.3])
    n = users * days * per_day
    user = np.tile(np.repeat(np.arange(users), per_day), days)
    day = np.repeat(np.arange(days), users * per_day)
    camp = rng.integers(0, len(campaigns), size=n)
    shown = T0 + pd.to_timedelta(day, unit="D") + pd.to_timedelta(rng.integers(0, 86_000, size=n), unit="s")
    rows = pd.DataFrame({"impression_id": np.arange(1, n + 1), "user_key": [f"u{u:04d}" for u in user],
                         "campaign_id": campaigns["campaign_id"].to_numpy()[camp], "shown_at": shown,
                         "age_band": band[user], "churn_risk": risk[user]})
    for g, name in enumerate(features.AFFINITY):
        rows[name] = aff[user, g]
    rows = rows.sort_values("shown_at", kind="stable").reset_index(drop=True)
    rows["clicked"], rows["clicked_at"] = 0, pd.NaT
    joined = features.with_campaigns(rows, campaigns)
    match = features.target_match(joined)
    interest = np.where(joined["target_genres"] == "", 0.0, match["genre_interest"])
    age = np.where(joined["target_age_bands"] == "", 0.0, match["age_match"])
    seen = features.exposure(rows)["impressions_7d"].to_numpy()     # impressions need no outcome
    logit = (-2.6 + 1.6 * interest + 0.8 * age - 2.0 * rows["churn_risk"].to_numpy()
             + appeal[rows["campaign_id"].to_numpy() - 1] - 0.06 * seen)
    p = 1 / (1 + np.exp(-logit))
    clicked = rng.random(n) < p
    rows["clicked"] = clicked.astype(int)
    rows.loc[clicked, "clicked_at"] = rows.loc[clicked, "shown_at"] + pd.to_timedelta(
        rng.integers(1, 600, size=int(clicked.sum())), unit="s")
    return rows, campaigns, p


@pytest.fixture(scope="module")
def log():
    return synthetic()


def register_by_hand(s, kind: str, at: str, family_prod: bool = True) -> int:
    """A finished run of `kind` registered (and promoted): stands for a CF or churn version in these tests."""
    run_id = tracking.start_run(s, kind, {"by": "hand"}, 1, "dv-test", at=at)
    tracking.finish_run(s, run_id, {"ndcg@10": None}, {}, {}, None, None, at=at)
    version = registry.register(s, run_id, at=at)
    if family_prod:
        registry.promote(s, version, "test", "by hand", at=at)
    return version


@pytest.fixture(scope="module")
def trained(tmp_path_factory, log):
    """A data folder with a CF and a churn version in production and one ads model trained on the log."""
    s = load_settings(tmp_path_factory.mktemp("ads"))
    cf = register_by_hand(s, "als", "2026-03-01T00:00:00")
    churn = register_by_hand(s, "churn_gb", "2026-03-01T00:00:01")
    rows, campaigns, _ = log
    result = pipeline.train(s, rows, campaigns, seed=7, at="2026-03-21T00:00:00")
    return s, result, {"cf": cf, "churn": churn}


# ------------------------------------------------------------------ features by hand
def hand_frame():
    """Two users, three campaigns, a few impressions on two days."""
    campaigns = pd.DataFrame({"campaign_id": [10, 20, 30], "bid": [1.0, 2.5, 0.5],
                              "target_genres": ["Comedy|Drama", "", "Western"],
                              "target_age_bands": ["18-24", "", "55+|45-54"], "creative_genres": ["Action", "", ""]})
    aff_a = dict.fromkeys(features.AFFINITY, 0.0) | {"aff_Comedy": 2.0, "aff_Drama": 1.0, "aff_Action": 0.5,
                                                      "aff_Western": -1.0}
    aff_b = dict.fromkeys(features.AFFINITY, np.nan)            # no CF version served when B was shown ads
    t = lambda d, h, m=0: T0 + pd.Timedelta(days=d, hours=h, minutes=m)  # noqa: E731
    rows = pd.DataFrame([
        dict(impression_id=1, user_key="A", campaign_id=10, shown_at=t(0, 9), clicked=1, clicked_at=t(0, 9, 1),
             age_band="18-24", churn_risk=0.2, **aff_a),
        dict(impression_id=2, user_key="A", campaign_id=20, shown_at=t(0, 10), clicked=0, clicked_at=pd.NaT,
             age_band="18-24", churn_risk=0.2, **aff_a),
        dict(impression_id=3, user_key="B", campaign_id=30, shown_at=t(0, 10), clicked=1, clicked_at=t(3, 0),
             age_band="55+", churn_risk=np.nan, **aff_b),
        dict(impression_id=4, user_key="A", campaign_id=30, shown_at=t(2, 9), clicked=0, clicked_at=pd.NaT,
             age_band="18-24", churn_risk=0.3, **aff_a),
        dict(impression_id=5, user_key="B", campaign_id=10, shown_at=t(3, 0), clicked=0, clicked_at=pd.NaT,
             age_band="55+", churn_risk=0.1, **aff_b),
        dict(impression_id=6, user_key="A", campaign_id=20, shown_at=t(8, 9, 30), clicked=0, clicked_at=pd.NaT,
             age_band="18-24", churn_risk=0.3, **aff_a),
    ])
    return rows, campaigns


def test_features_of_two_users_by_hand():
    rows, campaigns = hand_frame()
    X, fills = features.build(rows, campaigns, [30, 10, 20])
    f = pd.DataFrame(X, columns=features.feature_names([10, 20, 30]))
    assert list(f.columns[-3:]) == ["campaign_10", "campaign_20", "campaign_30"]
    # one-hot and bid
    assert f[["campaign_10", "campaign_20", "campaign_30"]].values.tolist() == [
        [1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 1], [1, 0, 0], [0, 1, 0]]
    assert f["bid"].tolist() == [1.0, 2.5, 0.5, 0.5, 1.0, 2.5]
    # A's favourites: Comedy 2, Drama 1, Action 0.5. Campaign 10 targets Comedy|Drama → interest (2+1)/2 = 1.5,
    # a favourite is targeted, age 18-24 targeted. Campaign 20 targets nothing → interest 0, both flags 1.
    # Campaign 30 targets Western (A: −1, not a favourite) and 45+ (A is 18-24).
    assert f.loc[0, ["genre_interest", "genre_match", "age_match"]].tolist() == [1.5, 1, 1]
    assert f.loc[1, ["genre_interest", "genre_match", "age_match"]].tolist() == [0, 1, 1]
    assert f.loc[3, ["genre_interest", "genre_match", "age_match"]].tolist() == [-1, 0, 0]
    # B: no affinities known → interest and genre targeting unknown (NaN), age 55+ met by campaign 30, not by 10
    assert np.isnan(f.loc[2, ["genre_interest", "genre_match", "creative_interest"]].to_numpy(float)).all()
    assert f.loc[2, "age_match"] == 1 and f.loc[4, "age_match"] == 0 and np.isnan(f.loc[4, "genre_match"])
    # the creative's own genres: campaign 10 promotes an Action title (A: 0.5); the others fall back on their targets
    assert f.loc[[0, 1, 3], "creative_interest"].tolist() == [0.5, 0, -1]
    # churn risk: B's unknown first risk is the neutral value, counted
    assert f["churn_risk"].tolist() == [0.2, 0.2, features.NEUTRAL_CHURN_RISK, 0.3, 0.1, 0.3]
    assert fills == {"churn_risk_neutral": 1}
    # exposure in [t − 7 d, t): A at day 0 10:00 has seen 1 ad (9:00) and clicked it (9:01);
    # A at day 2 has seen 2 and clicked 1; A at day 8 9:30 — the window starts day 1 9:30: day 2's impression only.
    # B at day 3 0:00 has seen 1; its click at exactly day 3 0:00 is not *before* t, so 0 clicks.
    assert f["impressions_7d"].tolist() == [0, 1, 0, 2, 1, 1]
    assert f["clicks_7d"].tolist() == [0, 1, 0, 1, 0, 0]
    assert f.loc[0, "aff_Comedy"] == 2.0 and np.isnan(f.loc[2, "aff_Comedy"])


def test_no_leakage_from_the_future():
    """Rewrite every impression at or after t (new campaigns, outcomes, clicks, even new rows) and every click made
    at or after t: the features of the rows before t are unchanged (only labels could change)."""
    rows, campaigns, _ = synthetic(seed=11, users=60, days=10)
    cut = T0 + pd.Timedelta(days=6, hours=12)
    recent = rows.index[(rows["shown_at"] < cut) & (rows["shown_at"] >= cut - pd.Timedelta(days=1))][:20]
    rows.loc[recent, "clicked"], rows.loc[recent, "clicked_at"] = 1, cut + pd.Timedelta(hours=2)   # clicked after t
    X, _ = features.build(rows, campaigns, campaigns["campaign_id"])
    future = rows.copy()
    after = future["shown_at"] >= cut
    rng = np.random.default_rng(0)
    future.loc[after, "campaign_id"] = rng.choice(campaigns["campaign_id"], size=int(after.sum()))
    future.loc[after, "clicked"] = 1
    future.loc[after, "clicked_at"] = future.loc[after, "shown_at"] + pd.Timedelta(seconds=5)
    late = (future["clicked"] == 1) & (future["clicked_at"] >= cut) & ~after      # clicks made after t on older ads
    future.loc[late, "clicked"] = 0
    extra = future[after].assign(impression_id=lambda d: d["impression_id"] + 10**6)
    future = pd.concat([future, extra], ignore_index=True)
    Y, _ = features.build(future, campaigns, campaigns["campaign_id"])
    before = (rows["shown_at"] < cut).to_numpy()
    np.testing.assert_array_equal(X[before], Y[: len(rows)][before])
    assert before.sum() > 1000 and late.sum() == 20
    # and the opposite direction is visible: rows after t do change
    assert not np.array_equal(X[~before], Y[: len(rows)][~before])


# ------------------------------------------------------------------ metrics by hand
def test_ece_by_hand():
    # bins of width 0.1: [0.05, 0.15] → bins 0 and 1; 0.95 and 1.0 → bin 9 (p = 1 in the last bin)
    y = [0, 1, 0, 1, 1, 0]
    p = [0.05, 0.15, 0.15, 0.95, 1.0, 0.55]
    # bin 0: 1 row, mean p 0.05, rate 0 → gap 0.05; bin 1: 2 rows, mean p 0.15, rate 0.5 → gap 0.35;
    # bin 5: 1 row, p 0.55, rate 0 → 0.55; bin 9: 2 rows, mean p 0.975, rate 1 → 0.025
    expected = (1 * 0.05 + 2 * 0.35 + 1 * 0.55 + 2 * 0.025) / 6
    assert metrics.expected_calibration_error(y, p) == pytest.approx(expected, abs=1e-12)
    bins = metrics.calibration_bins(y, p)
    assert bins["rows"] == [1, 2, 0, 0, 0, 1, 0, 0, 0, 2] and bins["predicted"][2] is None
    assert bins["observed"][1] == 0.5 and bins["predicted"][9] == pytest.approx(0.975)
    assert metrics.expected_calibration_error([1, 0], [0.5, 0.5]) == 0.0
    assert metrics.log_loss([1, 0], [0.5, 0.5]) == pytest.approx(np.log(2))


def test_expected_revenue_by_hand():
    # list 1: bids 1, 2, 3 × p 0.5, 0.2, 0.1 → scores 0.5, 0.4, 0.3 → winner bid 1 earns 1 × 0.5
    # list 2: bid 2 × 0.3 = 0.6 vs 4 × 0.15 = 0.6 (tie: the first candidate) → 2 × 0.3
    lists = [1, 2, 1, 1, 2]
    bids = [1.0, 2.0, 2.0, 3.0, 4.0]
    p = [0.5, 0.3, 0.2, 0.1, 0.15]
    assert metrics.expected_revenue(lists, bids, p) == pytest.approx(0.5 + 0.6)
    # valued with other probabilities (e.g. the truth): same winners, their bids × those p
    assert metrics.expected_revenue(lists, bids, p, p_value=[0.1, 0.2, 0.9, 0.9, 0.9]) == pytest.approx(0.1 + 0.4)
    assert metrics.expected_revenue([], [], []) == 0.0


# ------------------------------------------------------------------ the gate's decisions
def m(ll, ece, rows=1000, clicks=80, **kw):
    return {"log_loss": ll, "calibration_error": ece, "rows": rows, "clicks": clicks, "roc_auc": 0.7} | kw


def test_gate_decisions():
    ok = gate.evaluate_ads_gate(m(0.20, 0.010), m(0.22, 0.020), None, finite=True)
    assert ok.promote and ok.checks["production"]["passed"] and "no ads model in production yet" in ok.reasons[-1]
    # strictly better on both: a tie on calibration error fails; better log loss with worse ECE fails
    assert not gate.evaluate_ads_gate(m(0.20, 0.020), m(0.22, 0.020), None, finite=True).promote
    worse_ece = gate.evaluate_ads_gate(m(0.20, 0.030), m(0.22, 0.020), None, finite=True)
    assert not worse_ece.promote and not worse_ece.checks["baseline"]["passed"]
    # not worse than production: log loss within 0.001, ECE within 0.005
    prod = m(0.199, 0.008, version=3)
    assert gate.evaluate_ads_gate(m(0.2, 0.010), m(0.22, 0.02), prod, finite=True).promote
    worse = gate.evaluate_ads_gate(m(0.2005, 0.010), m(0.22, 0.02), m(0.199, 0.008, version=3), finite=True)
    assert not worse.promote and worse.checks["production"]["production"]["log_loss"] == 0.199
    assert not gate.evaluate_ads_gate(m(0.2, 0.014), m(0.22, 0.02), prod, finite=True).promote
    # too small a holdout, NaN probabilities, a production model that could not be scored
    assert not gate.evaluate_ads_gate(m(0.2, 0.01, clicks=10), m(0.22, 0.02), None, finite=True).promote
    assert not gate.evaluate_ads_gate(m(0.2, 0.01), m(0.22, 0.02), None, finite=False).promote
    assert not gate.evaluate_ads_gate(m(0.2, 0.01), m(0.22, 0.02), {"error": "gone", "version": 2}, finite=True).promote


def test_the_population_starts_when_a_cf_version_served():
    rows, _ = hand_frame()
    assert pipeline.population(rows)[1] == {"from": None, "rows_left_out": 0}          # no cf_version column
    day = rows["shown_at"].dt.normalize()
    # served from day 2 on: days 2, 3, 8 remain (3 days): the two impressions of day 0 are left out
    kept, note = pipeline.population(rows.assign(cf_version=np.where(day >= T0 + pd.Timedelta(days=2), 1.0, np.nan)))
    assert note == {"from": str(T0 + pd.Timedelta(days=2, hours=9)), "rows_left_out": 3}
    assert kept["impression_id"].tolist() == [4, 5, 6]
    # served from day 3 on: 2 days would be left, too few for a time split: everything stays
    late = rows.assign(cf_version=np.where(day >= T0 + pd.Timedelta(days=3), 1.0, np.nan))
    assert pipeline.population(late) == (late, {"from": None, "rows_left_out": 0})


# ------------------------------------------------------------------ the model on the synthetic log
def test_time_split_is_by_day_and_in_order(log):
    rows, _, _ = log
    parts = ads_model.time_split(rows)
    days = {k: pd.to_datetime(v["shown_at"]).dt.normalize() for k, v in parts.items()}
    assert days["train"].max() < days["calibration"].min() <= days["calibration"].max() < days["holdout"].min()
    assert [days[k].nunique() for k in ("train", "calibration", "holdout")] == [12, 4, 4]
    assert sum(len(v) for v in parts.values()) == len(rows)
    with pytest.raises(ads_model.NotEnoughAdsData, match="at least 3"):
        ads_model.time_split(rows[pd.to_datetime(rows["shown_at"]) < T0 + pd.Timedelta(days=2)])


def test_the_model_beats_the_campaign_rates_and_is_calibrated(trained, log):
    s, result, _ = trained
    model_m, base = result["metrics"], result["baselines"]["campaign_rate"]
    assert model_m["log_loss"] < base["log_loss"] and model_m["roc_auc"] > base["roc_auc"] + 0.05
    assert model_m["calibration_error"] < 0.02 and model_m["calibration_error"] < base["calibration_error"]
    assert abs(model_m["mean_predicted"] - model_m["click_rate"]) < 0.01
    assert model_m["rows"] == base["rows"] == 4 * 300 * 3 and model_m["lists"] == model_m["rows"]
    assert result["promoted"] and result["gate"]["promote"] and result["gate"]["checks"]["baseline"]["passed"]
    # the selection it drives earns more under the *true* click model than the campaign rates' selection
    rows, campaigns, _ = log
    hold = ads_model.time_split(rows)["holdout"]
    pairs = features.candidates(hold, campaigns)
    truth = true_p(pairs, rows, campaigns)
    _, model = pipeline.production_model(s)
    p_model = model.p_click(model.matrix(pairs, campaigns, rows)[0])
    p_rate = ads_model.CampaignRate.fit(rows[pd.to_datetime(rows["shown_at"]) < hold["shown_at"].min()]).p_click(
        pairs["campaign_id"])
    ids, bids = pairs["list_id"].to_numpy(), pairs["bid"].to_numpy()
    assert (metrics.expected_revenue(ids, bids, p_model, truth)
            > 1.05 * metrics.expected_revenue(ids, bids, p_rate, truth))
    assert model_m["expected_revenue"] > 0 and base["expected_revenue"] > 0


def true_p(pairs, history, campaigns):
    appeal = np.array([0.2, 0.0, -0.4, 0.1, -0.2, 0.3])
    joined = features.with_campaigns(pairs, campaigns)
    match = features.target_match(joined)
    interest = np.where(joined["target_genres"] == "", 0.0, match["genre_interest"])
    age = np.where(joined["target_age_bands"] == "", 0.0, match["age_match"])
    seen = features.exposure(pairs, history)["impressions_7d"].to_numpy()
    logit = (-2.6 + 1.6 * interest + 0.8 * age - 2.0 * pairs["churn_risk"].to_numpy()
             + appeal[pairs["campaign_id"].to_numpy() - 1] - 0.06 * seen)
    return 1 / (1 + np.exp(-logit))


def test_the_run_records_data_version_params_seed_code_and_dependencies(trained):
    s, result, deps = trained
    run = tracking.get_run(s, result["run_id"])
    assert run["model_kind"] == "ads_gb" and run["seed"] == 7 and run["code_version"]
    assert run["data_version"].startswith("frames:") and run["data_version"] == result["data_version"]
    p = run["params"]
    assert p["calibration"] == "platt" and p["campaigns"] == [1, 2, 3, 4, 5, 6] and p["max_iter"] == 100
    assert p["population"] == {"from": None, "rows_left_out": 0}
    assert p["depends_on"]["at_training"] == {"cf": deps["cf"], "churn": deps["churn"]}
    assert p["depends_on"]["churn_neutral"]["rows"] == 0 and p["depends_on"]["churn_neutral"]["note"] is None
    version = registry.get_version(s, result["version"])
    assert (version["family"], version["depends_on"], version["stage"]) == ("ads", deps["cf"], "production")
    assert set(run["baselines"]) == {"campaign_rate"}
    rows = ads_model.read_rows(s.home / version["artifact_path"])
    assert len(rows["user_key"]) == 300 * 20 * 3 and set(np.unique(rows["part"])) == {0, 1, 2}


def test_the_same_data_and_seed_give_the_same_model(trained, log):
    s, result, _ = trained
    rows, campaigns, _ = log
    again = pipeline.train(s, rows, campaigns, seed=7, at="2026-03-21T00:00:01", promote=False)
    assert again["metrics"]["log_loss"] == result["metrics"]["log_loss"]
    assert again["baselines"]["production"]["log_loss"] == result["metrics"]["log_loss"]
    assert again["gate"]["promote"] and not again["promoted"]       # passes the gate, kept a candidate on request


def test_no_churn_model_is_said_and_the_neutral_value_recorded(tmp_path, log):
    s = load_settings(tmp_path)
    rows, campaigns, _ = log
    rows = rows.assign(churn_risk=np.nan)
    result = pipeline.train(s, rows, campaigns, seed=7, at="2026-03-21T00:00:00")
    neutral = result["depends_on"]["churn_neutral"]
    assert neutral["rows"] == len(rows) and "no churn model in production" in neutral["note"]
    assert result["depends_on"]["at_training"] == {"cf": None, "churn": None}
    assert registry.get_version(s, result["version"])["depends_on"] is None
    _, model = pipeline.production_model(s)
    X, _ = model.matrix(rows.head(50), campaigns, rows)
    assert (X[:, list(model.features).index("churn_risk")] == features.NEUTRAL_CHURN_RISK).all()


def test_shap_values_sum_to_the_model_output(trained, log):
    s, _, _ = trained
    rows, campaigns, _ = log
    _, model = pipeline.production_model(s)
    sample = rows.tail(40)
    X, _ = model.matrix(sample, campaigns, rows)
    values, base, logit = model.contributions(X)
    np.testing.assert_allclose(base + values.sum(axis=1), logit, atol=1e-9)
    np.testing.assert_allclose(1 / (1 + np.exp(-logit)), model.p_click(X), atol=1e-12)
    explained = pipeline.explain(model, sample.head(3), campaigns, rows)
    for e in explained:
        assert e["base_logit"] + sum(c["contribution"] for c in e["contributions"]) == pytest.approx(e["logit"], abs=1e-9)
        assert len(e["reasons"]) == 3 and "log-odds" in e["reasons"][0]
        assert abs(e["contributions"][0]["contribution"]) >= abs(e["contributions"][-1]["contribution"])


# ------------------------------------------------------------------ registry, rollback, staleness, card, graph
def test_family_ads_is_known_everywhere_families_are_enumerated():
    assert registry.ADS in registry.FAMILIES and registry.family_of("ads_gb") == "ads"
    parser_family = next(a for a in cli.COMMANDS["models"].args if "--family" in a[0])
    assert "ads" in parser_family[1]["choices"]


def test_rollback_of_the_ads_family_from_the_cli(tmp_path, log, capsys):
    s = load_settings(tmp_path)
    rows, campaigns, _ = log
    first = pipeline.train(s, rows, campaigns, seed=7, at="2026-03-21T00:00:00")
    second = pipeline.train(s, rows, campaigns, seed=8, at="2026-03-22T00:00:00")
    assert first["promoted"] and second["promoted"], second["gate"]["reasons"]
    assert registry.production(s, family="ads")["version"] == second["version"]
    assert registry.production(s)["version"] if registry.production(s) else True    # cf untouched (none here)
    cli.main(["--home", str(tmp_path), "models", "rollback", "--family", "ads", "--reason", "test", "--json"])
    assert json.loads(capsys.readouterr().out) == {"production": first["version"]}
    assert registry.production(s, family="ads")["version"] == first["version"]
    assert registry.get_version(s, second["version"])["stage"] == "archived"


def test_staleness_against_the_cf_and_churn_versions_it_was_trained_with(tmp_path, log):
    s = load_settings(tmp_path)
    cf = register_by_hand(s, "als", "2026-03-01T00:00:00")
    churn = register_by_hand(s, "churn_gb", "2026-03-01T00:00:00")
    rows, campaigns, _ = log
    result = pipeline.train(s, rows, campaigns, seed=7, at="2026-03-21T00:00:00")
    fresh = pipeline.status(s)
    assert fresh["version"] == result["version"] and not fresh["stale"]
    assert churn_insights.dependencies(s)["ads"]["stale"] is False
    # a new churn version in production, the same simulated second: the event order says it came after
    churn2 = register_by_hand(s, "churn_gb", "2026-03-21T00:00:00")
    st = pipeline.status(s)
    assert st["stale"] and len(st["reasons"]) == 1 and f"churn v{churn2} went into production" in st["reasons"][0]
    # and a CF promotion: both reasons
    cf2 = register_by_hand(s, "als", "2026-03-22T00:00:00")
    st = pipeline.status(s)
    assert [r.split()[0] for r in st["reasons"]] == ["cf", "churn"] and f"cf v{cf2}" in st["reasons"][0]
    # rolling both back brings back what it was trained with … but they went into production after it: still stale
    registry.rollback(s, "test", "back", at="2026-03-23T00:00:00", family="cf")
    assert registry.production(s)["version"] == cf and pipeline.status(s)["stale"]
    # retraining clears it (now trained with what serves)
    registry.rollback(s, "test", "back", at="2026-03-23T00:00:00", family="churn")
    retrained = pipeline.train(s, rows, campaigns, seed=7, at="2026-03-24T00:00:00")
    assert retrained["depends_on"]["at_training"] == {"cf": cf, "churn": churn}
    assert not pipeline.status(s)["stale"]
    deps = churn_insights.dependencies(s)
    assert set(deps) == {"cf", "ranker", "churn", "ads"} and deps["ads"]["version"] == retrained["version"]


def test_dependency_graph_draws_four_families_and_marks_a_stale_ads_model():
    from dashboard import charts
    deps = {"cf": {"version": 7, "model_kind": "als"},
            "ranker": {"version": None, "depends_on": None, "stale": False, "reason": None},
            "churn": {"version": 9, "stale": False, "created_at": "2026-03-01T00:00:00", "depends_on": {}},
            "ads": {"version": 11, "stale": True, "created_at": "2026-03-02T00:00:00",
                    "depends_on": {"at_training": {"cf": 5, "churn": 9}}}}
    dot = charts.dependency_dot(deps)
    nodes = [line.strip().split(" [")[0] for line in dot.splitlines() if "[label=" in line and "->" not in line]
    assert nodes == ["cf", "ranker", "churn", "ads"]
    ads_line = next(line for line in dot.splitlines() if line.strip().startswith("ads [label="))
    assert "v11 in production" in ads_line and "STALE" in ads_line
    assert {"cf -> ads", "churn -> ads"} <= {line.split(" [")[0].strip() for line in dot.splitlines()}
    assert "trained with v5" in dot
    older = charts.dependency_dot({k: v for k, v in deps.items() if k != "ads"})     # a caller without ads
    assert 'ads [label="Ads targeting\\nno production version"' in older


def test_the_model_card_of_an_ads_version(trained):
    s, result, deps = trained
    card = modelcard.model_card(s, result["version"])
    assert card["model"]["family"] == "ads" and card["seed"] == 7 and card["code_version"]
    assert card["training_data"]["data_version"] == result["data_version"]
    assert card["metrics"]["model"]["log_loss"] < card["metrics"]["campaign_rate"]["log_loss"]
    assert card["dependencies"]["at_training"] == {"cf": deps["cf"], "churn": deps["churn"]}
    assert card["calibration"]["method"] == "platt" and len(card["features"]) == len(features.BASE_FEATURES) + 6
    assert card["gate"]["promote"] is True
    text = modelcard.model_card_markdown(card)
    assert f"# Model card: ads_gb v{result['version']}" in text and "campaign's click rate" in text
    assert "| log_loss |" in text and "calibration_error" in text


# ------------------------------------------------------------------ a real small world (the warehouse's ad facts)
@pytest.fixture(scope="module")
def ad_world(tmp_path_factory):
    """A small world with ads (seed 21, 300 users, 200 movies, 10 days), a CF version promoted after them, 6 more
    closed-loop days (ads chosen by campaign rate), every day loaded by the ETL."""
    from core.simulation import loop, simulation
    from core.training import pipeline as cf_pipeline
    s = load_settings(tmp_path_factory.mktemp("ad-world"))
    simulation.init_world(s, seed=21, users=300, movies=200, days=10)
    result = cf_pipeline.retrain(s, with_ranker=False)
    if not result["promoted"]:       # a holdout this small leaves the decision open: promote it by hand
        registry.promote(s, result["version"], "test", "small world: promoted by hand")
    loop.run(s, 6)
    return s


def test_training_rows_from_the_warehouse_are_point_in_time(ad_world, tmp_path):
    from conftest import private_copy
    from core.ads import data
    from core.training import churn_pipeline
    from core.training.artifacts import load_bundle
    from core.warehouse import warehouse
    s = ad_world
    rows, campaigns, version = data.training_rows(s)
    with warehouse.session(s) as con:
        facts = warehouse.ad_impressions(con)
    assert len(rows) == len(facts) > 1000 and rows["impression_id"].is_unique and "user_id" not in rows
    assert version == tracking_version(s) and set(features.ROW_COLUMNS) <= set(rows.columns)
    assert set(rows["campaign_id"]) <= set(campaigns["campaign_id"]) and rows["clicked"].sum() > 30
    # the CF version in force at each impression: none before its promotion, then it (the registry's history)
    cf = registry.production(s)
    promoted_at = pd.Timestamp(registry.promotions(s, cf["version"])[0]["at"])
    before = rows["shown_at"] < promoted_at
    assert before.sum() > 500 and (~before).sum() > 300
    assert rows.loc[before, "cf_version"].isna().all() and (rows.loc[~before, "cf_version"] == cf["version"]).all()
    assert rows.loc[before, list(features.AFFINITY)].isna().all().all()
    for t in rows["shown_at"].sample(20, random_state=1):
        expected = registry.production_at(s, str(t)[:19].replace(" ", "T"))
        assert (rows.loc[rows["shown_at"] == t, "cf_version"].fillna(-1) == (expected or -1)).all()
    # one user's affinities by hand: mean predicted score over each genre's titles, z-scored across genres
    bundle = load_bundle(s.home / cf["artifact_path"])
    row = rows[~before & rows["aff_Drama"].notna()].iloc[0]
    u = list(bundle.matrix.user_keys).index(row["user_key"])
    with warehouse.session(s) as con:
        genres = data.dataset.movie_attributes(con)["genres"].reindex(bundle.matrix.movie_ids).fillna("")
    scores = bundle.model.item_factors_.astype(float) @ bundle.model.user_factors_[u].astype(float)
    raw = np.array([scores[[g in t.split("|") for t in genres]].mean() if any(g in t.split("|") for t in genres)
                    else np.nan for g in GENRES])
    z = (raw - np.nanmean(raw)) / np.nanstd(raw)
    np.testing.assert_allclose(row[list(features.AFFINITY)].to_numpy(float), z, atol=1e-5)
    # no churn model: every churn risk unknown; a stored score counts only for impressions shown after it was made
    assert rows["churn_risk"].isna().all()
    key, t = row["user_key"], row["shown_at"]
    frame = pd.DataFrame({"user_key": [key], "as_of": [t.normalize()], "risk": [0.37]})
    for f in churn_pipeline.FEATURES:
        frame[f] = 0.0
    s = private_copy(ad_world, tmp_path / "copy")          # the world stays as it was for the next test
    churn_version = register_by_hand(s, "churn_gb", "2026-01-11T00:00:00", family_prod=False)
    churn_pipeline.store_predictions(s, churn_version, frame, at=str(t)[:19].replace(" ", "T"))
    again, _, _ = data.training_rows(s)
    mine = again[again["user_key"] == key]
    assert (mine.loc[mine["shown_at"] >= t, "churn_risk"] == 0.37).all()
    assert (mine.loc[mine["shown_at"] >= t, "churn_version"] == churn_version).all()
    assert mine.loc[mine["shown_at"] < t, "churn_risk"].isna().all() and (mine["shown_at"] < t).any()
    assert again.loc[again["user_key"] != key, "churn_risk"].isna().all()


def tracking_version(s) -> str:
    from core.training.evaluation import current_data_version
    return current_data_version(s)


def test_training_on_the_real_world(ad_world, tmp_path):
    from core.ads import data
    from conftest import private_copy
    s = private_copy(ad_world, tmp_path / "copy")
    result = pipeline.train(s, at="2026-01-17T00:00:00")
    run = tracking.get_run(s, result["run_id"])
    assert run["data_version"] == tracking_version(s) and run["seed"] == s.seed and run["code_version"]
    deps = result["depends_on"]
    cf = registry.production(s)["version"]
    assert deps["at_training"] == {"cf": cf, "churn": None} and deps["used"]["cf"] == [cf]
    # trained on the impressions since the CF version served (before it no affinity exists for anyone)
    rows = data.training_rows(s)[0]
    since = rows["cf_version"].notna()
    population = run["params"]["population"]
    assert population["rows_left_out"] == int((~since).sum()) > 500
    assert pd.Timestamp(population["from"]) == rows.loc[since, "shown_at"].min()
    assert deps["churn_neutral"]["rows"] == int(since.sum())
    assert "no churn model in production" in deps["churn_neutral"]["note"]
    m, b = result["metrics"], result["baselines"]["campaign_rate"]
    assert m["rows"] == b["rows"] > 50 and np.isfinite(m["log_loss"]) and np.isfinite(b["log_loss"])
    assert m["training_rows"] + m["calibration_rows"] + m["rows"] == int(since.sum())
    # the decision is recorded with every check, whatever it is on a world this small
    assert set(result["gate"]["checks"]) == {"finite", "holdout_size", "baseline", "production"}
    assert registry.get_version(s, result["version"])["stage"] == ("production" if result["promoted"] else "candidate")
    # explanations of real impressions add up
    _, model = pipeline.production_model(s) if result["promoted"] else (None, pipeline.load_version(
        s, registry.get_version(s, result["version"])))
    rows, campaigns, _ = data.training_rows(s)
    for e in pipeline.explain(model, rows.tail(5), campaigns, rows):
        assert e["base_logit"] + sum(c["contribution"] for c in e["contributions"]) == pytest.approx(e["logit"], abs=1e-9)


def test_the_scorer_serves_the_features_it_was_trained_on(ad_world, tmp_path):
    """No training/serving skew: the scorer's P(click) of a user and campaign at an impression's instant equals the
    model's on that impression's training row (same affinities, churn risk, age band and exposure)."""
    from conftest import private_copy
    from core.ads import data, scoring
    from core.governance.churn_insights import user_ids
    s = private_copy(ad_world, tmp_path / "copy")
    result = pipeline.train(s, at="2026-01-17T00:00:00", promote=False)
    version = registry.get_version(s, result["version"])
    model = pipeline.load_version(s, version)
    rows, campaigns, _ = data.training_rows(s)
    sample = rows[rows["cf_version"].notna()].sample(5, random_state=3)
    ids = user_ids(s, sample["user_key"])
    score = scoring.scorer(s, version)
    assert score.model_version == result["version"]
    for _, row in sample.iterrows():
        p = score(np.array([ids[row["user_key"]]]), campaigns, str(row["shown_at"]))
        assert p.shape == (1, len(campaigns)) and ((p > 0) & (p < 1)).all()
        X, _ = model.matrix(rows[rows["impression_id"] == row["impression_id"]], campaigns, rows)
        column = list(campaigns["campaign_id"]).index(row["campaign_id"])
        assert p[0, column] == pytest.approx(float(model.p_click(X)[0]), abs=1e-12)
    users = np.array(sorted(ids.values()))
    assert score(users, campaigns, "2026-01-17T00:00:00").shape == (len(users), len(campaigns))


def test_a_users_training_rows_are_exported_erased_and_rekeyed(tmp_path, log):
    s = load_settings(tmp_path)
    rows, campaigns, _ = log
    result = pipeline.train(s, rows, campaigns, seed=7, at="2026-03-21T00:00:00")
    path = s.home / registry.get_version(s, result["version"])["artifact_path"]
    mine = rows[rows["user_key"] == "u0007"]
    exported = pipeline.export_user(s, "u0007")
    assert len(exported) == len(mine) == 60 and {e["impression_id"] for e in exported} == set(mine["impression_id"])
    assert exported[0]["aff_Comedy"] == pytest.approx(mine.sort_values("shown_at")["aff_Comedy"].iloc[0])
    assert {e["part"] for e in exported} == {"train", "calibration", "holdout"}
    assert pipeline.rekey(s, lambda keys: {"u0007": "k0007"} if "u0007" in keys else {}) == {
        "ads_training_rows": 60, "ads_training_files": 1}
    assert pipeline.export_user(s, "u0007") == [] and len(pipeline.export_user(s, "k0007")) == 60
    assert pipeline.erase_user(s, "k0007") == 60 and pipeline.erase_user(s, "k0007") == 0
    kept = ads_model.read_rows(path)["user_key"]
    assert "k0007" not in kept and "u0007" not in kept and len(kept) == len(rows) - 60
    pipeline.load_version(s, registry.get_version(s, result["version"]))       # the hash still matches


def test_no_leakage_through_the_warehouse_reader(ad_world):
    """The rows of impressions before t, read from a warehouse cut at t, give the same features as read from the
    whole warehouse: nothing shown, clicked or trained after t reaches them (only their labels may differ)."""
    from core.ads import data
    s = ad_world
    rows, campaigns, _ = data.training_rows(s)
    t = rows["shown_at"].quantile(0.8).floor("h")
    cut, _, _ = data.training_rows(s, end=t)
    assert len(cut) == int((rows["shown_at"] < t).sum()) > 500 and (rows["shown_at"] >= t).sum() > 100
    ids = sorted(campaigns["campaign_id"])
    X_cut, _ = features.build(cut, campaigns, ids)
    X_all, _ = features.build(rows, campaigns, ids)
    np.testing.assert_array_equal(X_cut, X_all[: len(cut)])
    assert cut["impression_id"].tolist() == rows["impression_id"].head(len(cut)).tolist()


def test_the_gate_evidence_is_recorded_with_the_promotion(trained):
    s, result, _ = trained
    promotion = registry.promotions(s, result["version"])[0]
    checks = promotion["gate"]["checks"]
    assert promotion["actor"] == "pipeline" and promotion["gate"]["promote"] is True
    assert checks["baseline"]["candidate"]["log_loss"] == result["metrics"]["log_loss"]
    assert checks["baseline"]["baseline"]["calibration_error"] == result["baselines"]["campaign_rate"]["calibration_error"]
    assert checks["holdout_size"] == {"passed": True, "rows": 3600, "clicks": result["metrics"]["clicks"]}
    run = tracking.get_run(s, result["run_id"])
    assert run["metrics"]["gate_passed"] is True and run["baselines"]["campaign_rate"]["rows"] == 3600
