"""Governance: the audit trail of a user, generated model cards, and diagnosis of injected faults."""
import json

import numpy as np
import pandas as pd
import pytest
from conftest import legacy_insert, private_copy

from core.governance import audit, diagnose, modelcard
from core.warehouse import etl
from core.store import opsdb, writes
from core.training import pipeline, registry, tracking
from core.serving import serving
from core.simulation import simulation
from core.training.artifacts import load_bundle
from core.errors import UnknownUser, ValidationError
from core.pseudonym import pseudonym, pseudonym_key
from core.training.registry import UnknownVersion
from core.settings import load_settings

pytestmark = pytest.mark.slow   # the module fixture retrains with the ranker and serves lists on two days

DAY1, DAY2 = "2026-01-11T09:00:00", "2026-01-12T09:00:00"
UNDERFIT = {"factors": 2, "iterations": 1, "regularization": 50.0}
OVERFIT = {"factors": 256, "regularization": 0.01, "alpha": 40.0, "iterations": 30}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A small world with v1 in production (a default 'manual' retrain) and lists served on two days.

    Attributes on the returned settings' `extra`: typical / other (users known to the model with a
    median-sized history), newcomer (a user without history), v1.
    """
    s = load_settings(tmp_path_factory.mktemp("governance-base"))
    simulation.init_world(s, seed=21, users=300, movies=200, days=10)
    v1 = pipeline.retrain(s)["version"]
    bundle = load_bundle(registry.production(s)["artifact_path"])
    key = pseudonym_key(s)
    counts = np.diff(bundle.matrix.user_items.indptr)
    with opsdb.session(s) as db:
        users = [u for (u,) in db.execute("SELECT user_id FROM users ORDER BY user_id")]
        known = {u: int(counts[bundle.user_row[pseudonym(u, key)]]) for u in users if pseudonym(u, key) in bundle.user_row}
        newcomer = writes.add_user(db)
    median = float(np.median(list(known.values())))
    typical, other = sorted(known, key=lambda u: (abs(known[u] - median), u))[:2]
    serving.clear_caches()
    first = serving.recommend(s, typical, at=DAY1)
    serving.recommend(s, typical, at=DAY2)
    serving.recommend(s, other, at=DAY1)
    serving.recommend(s, newcomer, at=DAY1)
    s.extra.update(typical=typical, other=other, newcomer=newcomer, v1=v1, first=first)
    return s


@pytest.fixture
def world(base, tmp_path):
    """A private copy of the base world, artifact paths repointed (tests here mutate it)."""
    s = private_copy(base, tmp_path)
    s.extra.update(base.extra)
    return s


def promote_new(settings, params=None, actor="alice", reason="manual promotion", at="2026-01-12T12:00:00",
                force=False):
    """Train, register and promote a version outside the pipeline (no job, so its trigger is unknown).
    `force`: a deliberately bad model under its baselines (issue 12: hand promotions of those are forced)."""
    trained = pipeline.train(settings, params=params, seed=5, at=at)
    version = registry.register(settings, trained.run_id, at=at)
    registry.promote(settings, version, actor, reason, at=at, force=force)
    return version


def check(result, name):
    matches = [c for c in result["checks"] if c["name"] == name]
    assert len(matches) == 1, f"expected one check named {name!r}, got {[c['name'] for c in result['checks']]}"
    return matches[0]


# ------------------------------------------------------------------ audit
def test_audit_of_one_day_names_the_list_the_model_and_why(base):
    uid, v1 = base.extra["typical"], base.extra["v1"]
    records = audit.audit(base, uid, day="2026-01-11")
    assert len(records) == 1
    r = records[0]
    served = base.extra["first"]
    assert (r["serve_id"], r["served_at"], r["user_id"]) == (served.serve_id, DAY1, uid)
    assert r["path"] == "model" and r["personalised"] and "production model" in r["path_reason"]
    assert [m["position"] for m in r["movies"]] == list(range(1, 11))
    assert [m["movie_id"] for m in r["movies"]] == served.movie_ids
    assert [m["score"] for m in r["movies"]] == pytest.approx(served.scores, abs=1e-6)
    assert all(m["title"] and 1950 <= m["year"] <= 1999 for m in r["movies"])
    run = tracking.get_run(base, registry.get_version(base, v1)["run_id"])
    assert r["model_version"] == v1 and r["data_version"] == "dv1" and r["model_kind"] == "als"
    assert r["params"] == run["params"] and r["seed"] == run["seed"] == base.seed
    assert r["code_version"] == run["code_version"] and r["run_id"] == run["run_id"]
    assert r["trigger"] == "manual" and r["job_id"] == run["job_id"]
    p = r["promotion"]
    assert p["actor"] == "pipeline" and p["reason"] == "gate passed (manual retrain)" and p["at"] <= DAY1
    assert p["gate"]["promote"] and any(reason.startswith("ndcg@10") for reason in p["gate"]["reasons"])
    assert r["was_production"] and r["production_at_served"] == v1 and not r["notes"]
    assert (r["ranker"] or {}).get("version") == served.ranker_version
    json.loads(audit.audit_json(records))          # plain, JSON-ready dicts
    assert json.loads(json.dumps(records)) == records


def test_audit_lists_every_day_newest_first_and_filters_by_day(base):
    uid = base.extra["typical"]
    records = audit.audit(base, uid)
    assert [r["served_at"] for r in records] == [DAY2, DAY1]
    assert [r["served_at"] for r in audit.audit(base, uid, day="2026-01-12")] == [DAY2]
    assert audit.audit(base, uid, day="2026-01-13") == []
    assert len(audit.audit(base, uid, limit=1)) == 1
    md = audit.audit_markdown(records)
    assert md.startswith(f"# Audit: user {uid}") and md.count("## List") == 2
    assert "gate passed (manual retrain)" in md and "manual" in md and records[0]["movies"][0]["title"] in md
    assert "No list was served" in audit.audit_markdown([])


def test_audit_of_a_fallback_says_why(base):
    [r] = audit.audit(base, base.extra["newcomer"])
    assert r["path"] == "top50:cold-start" and not r["personalised"] and "cold start" in r["path_reason"]
    assert r["model_version"] is None and r["trigger"] is None and r["promotion"] is None
    assert len(r["movies"]) == 10 and r["production_at_served"] == base.extra["v1"]
    assert "Top 50 fallback" in audit.audit_markdown([r])


def test_audit_rejects_unknown_users_and_bad_days(base):
    with pytest.raises(UnknownUser, match="unknown user 999999"):
        audit.audit(base, 999999)
    for bad in ("2026-13-01", "11/01/2026", "yesterday", "2026-01-11T09:00:00", 20260111):
        with pytest.raises(ValidationError, match="YYYY-MM-DD"):
            audit.audit(base, base.extra["typical"], day=bad)
    with pytest.raises(ValidationError, match="limit"):
        audit.audit(base, base.extra["typical"], limit=0)


def test_audit_follows_promotions_and_flags_a_log_that_disagrees_with_the_registry(world):
    uid, v1 = world.extra["typical"], world.extra["v1"]
    v2 = promote_new(world, actor="alice", reason="A/B winner", at="2026-01-12T12:00:00")
    serving.recommend(world, uid, at="2026-01-12T13:00:00")
    newest, *older = audit.audit(world, uid)
    assert newest["model_version"] == v2 and newest["was_production"]
    assert (newest["promotion"]["actor"], newest["promotion"]["reason"]) == ("alice", "A/B winner")
    assert newest["promotion"]["gate"] is None
    assert newest["trigger"] == "unknown" and newest["job_id"] is None      # trained outside a pipeline job
    assert [r["model_version"] for r in older] == [v1, v1] and all(r["was_production"] for r in older)
    # A list logged as v2 before v2 was ever promoted: the audit shows the contradiction.
    with opsdb.session(world) as db:
        db.execute("INSERT INTO served_recommendations(user_id, served_at, path, model_version, data_version, "
                   "movie_ids, scores) VALUES (?, ?, 'model', ?, 'dv1', '[1, 2]', '[0.5, 0.4]')",
                   [uid, "2026-01-11T10:00:00", v2])
    [wrong] = audit.audit(world, uid, day="2026-01-11")[:1]
    assert wrong["served_at"] == "2026-01-11T10:00:00" and not wrong["was_production"]
    assert wrong["production_at_served"] == v1
    assert any("disagree" in n for n in wrong["notes"]) and any("only after" in n for n in wrong["notes"])


# ------------------------------------------------------------------ model card
def test_model_card_reports_the_run_and_measures_bias_and_groups(world):
    base = world
    # The quality breakdown scores the bundle only on days after its training window (issue 12): add two.
    simulation.simulate(base, 2)
    etl.run_etl(base)
    v1 = base.extra["v1"]
    entry = registry.get_version(base, v1)
    run = tracking.get_run(base, entry["run_id"])
    card = modelcard.model_card(base, v1)
    assert card["model"]["version"] == v1 and card["model"]["stage"] == "production"
    assert [e["to_stage"] for e in card["lifecycle"]][:2] == ["candidate", "production"]
    assert "cold-start" in card["out_of_scope"] and "top-10" in card["intended_use"]
    for name in modelcard.CARD_METRICS:
        assert card["metrics"]["model"][name] == run["metrics"][name]
        assert card["metrics"]["popularity"][name] == run["baselines"]["popularity"][name]
        assert card["metrics"]["top50"][name] == run["baselines"]["top50"][name]
    meta = load_bundle(entry["artifact_path"]).meta
    td = card["training_data"]
    assert (td["trained_until"], td["holdout_cutoff"], td["data_version"]) == (
        meta["trained_until"], meta["holdout_cutoff"], "dv1")
    assert td["train_pairs"] == run["metrics"]["train_pairs"] and td["users"] == run["metrics"]["users"]
    assert card["parameters"] == run["params"] and card["seed"] == run["seed"] and card["trigger"] == "manual"

    cold = card["limitations"]["cold_start"]
    assert cold["lists"] == 4 and cold["by_path"] == {"model": 3, "top50:cold-start": 1}
    assert cold["cold_start_share"] == pytest.approx(0.25) and 0 < cold["unknown_users_share"] < 1
    bias = card["limitations"]["popularity_bias"]
    assert 50 < bias["mean_percentile"] <= 100 and 0.1 < bias["top_share"] <= 1    # ALS leans popular here

    fair = card["fairness"]
    assert fair["holdout"]["start"] == str(pd.Timestamp(meta["trained_until"]).normalize() + pd.Timedelta(days=1))
    assert not fair["holdout"]["overlaps_holdout"]
    assert [row["tier"] for row in fair["by_activity"]] == ["light", "medium", "heavy"]
    assert sum(row["users"] for row in fair["by_activity"]) == fair["holdout"]["users_scored"] > 0
    rows = fair["by_activity"] + fair["by_genre"]
    assert len(fair["by_genre"]) >= 2
    for row in rows:
        assert row["users"] > 0
        for name in ("ndcg@10", "hit_rate@10", "top_share"):
            assert 0.0 <= row[name] <= 1.0, (row, name)
    assert 0.0 <= fair["popularity_of_lists"]["top_share_overall"] <= 1.0
    json.dumps(card)

    md = modelcard.model_card_markdown(card)
    for heading in ("# Model card: als v", "## Intended use", "## Training data", "## Parameters and reproducibility",
                    "## Metrics at promotion", "## Lifecycle", "## Known limitations", "## Quality across user groups",
                    "### By activity tier", "### By favourite genre"):
        assert heading in md, heading
    assert f"{run['metrics']['ndcg@10']:.4f}" in md


def test_model_card_of_an_unknown_version(base):
    with pytest.raises(UnknownVersion):
        modelcard.model_card(base, 999)


def test_activity_tiers_and_favourite_genre_by_hand():
    tiers, (q1, q2) = modelcard.activity_tiers(np.array([1, 2, 3, 4, 5, 6, 0]))
    assert (q1, q2) == (pytest.approx(8 / 3), pytest.approx(13 / 3))
    assert tiers[:6].tolist() == [0, 0, 1, 1, 2, 2]
    import scipy.sparse as sp
    ui = sp.csr_matrix(np.array([[1, 1, 0], [0, 0, 2], [0, 0, 0]], dtype=np.float32))
    genres = sp.csr_matrix(np.array([[1, 0], [1, 1], [0, 1]], dtype=np.float32))   # items × genres
    assert modelcard.favourite_genres(ui, genres).tolist() == [0, 1, -1]
    pct = modelcard.popularity_percentiles(np.array([0, 10, 10, 30]))
    assert pct.tolist() == [12.5, 50.0, 50.0, 87.5]
    assert modelcard.top_items(np.array([5, 9, 1, 9, 0, 0, 0, 0, 0, 0])).tolist() == [False, True] + [False] * 8


# ------------------------------------------------------------------ diagnose
def test_a_healthy_system_passes_every_check(base):
    system = diagnose.diagnose(base)
    assert system["scope"] == "system" and system["failed_places"] == []
    assert {c["place"] for c in system["checks"]} == set(diagnose.PLACES)
    assert all(c["ok"] for c in system["checks"]), [c for c in system["checks"] if not c["ok"]]
    for name in ("validation report", "empty columns", "finite factors", "underfitting", "overfitting",
                 "artifact hash", "served version", "bundle loads"):
        assert check(system, name)["ok"]
    user = diagnose.diagnose(base, base.extra["typical"])
    assert user["scope"] == f"user {base.extra['typical']}" and user["failed_places"] == []
    for name in ("user quarantined rows", "user known to the model", "user interactions in range",
                 "user confidence in range", "user serving path"):
        assert check(user, name)["ok"]
    assert "All checks pass" in diagnose.diagnose_markdown(user)


def test_diagnose_a_cold_start_user_and_an_unknown_one(base):
    result = diagnose.diagnose(base, base.extra["newcomer"])
    known = check(result, "user known to the model")
    assert not known["ok"] and known["detail"].startswith("cold start: served by the Top 50 fallback")
    assert not check(result, "user serving path")["ok"]
    assert result["failed_places"] == ["features", "deployment"]
    with pytest.raises(UnknownUser):
        diagnose.diagnose(base, 999999)


def test_a_corrupted_artifact_fails_the_hash_check(world):
    prod = registry.production(world)
    with open(f"{prod['artifact_path']}/model.npz", "ab") as fh:
        fh.write(b"\x00corrupted")
    result = diagnose.diagnose(world)
    assert not check(result, "artifact hash")["ok"] and "≠ registry" in check(result, "artifact hash")["detail"]
    assert "deployment" in result["failed_places"]
    assert "✗ **artifact hash**" in diagnose.diagnose_markdown(result)


def test_serving_and_registry_disagreeing_fails_the_served_version_check(world):
    v1 = world.extra["v1"]
    v2 = promote_new(world)                       # promoted, but nothing served since: information, not a failure
    result = diagnose.diagnose(world)
    served = check(result, "served version")
    assert served["ok"] and served["level"] == "info"
    assert served["detail"].startswith(f"not served since v{v2}: ") and f"from v{v1}, production then" in served["detail"]
    assert result["failed_places"] == [] and result["info_places"] == ["deployment"]
    md = diagnose.diagnose_markdown(result)
    assert "All checks pass. For information: served version." in md and "i **served version**" in md
    # A list served after the promotion by the old version: serving and the registry really disagree.
    with opsdb.session(world) as db:
        db.execute("INSERT INTO served_recommendations(user_id, served_at, path, model_version, data_version, "
                   "movie_ids, scores) VALUES (?, '2026-01-12T12:30:00', 'model', ?, 'dv1', '[1]', '[0.1]')",
                   [world.extra["other"], v1])
    stale = check(diagnose.diagnose(world), "served version")
    assert not stale["ok"] and stale["level"] == "fail" and f"production is v{v2}" in stale["detail"]
    serving.recommend(world, world.extra["other"], at="2026-01-12T13:00:00")
    assert check(diagnose.diagnose(world), "served version")["level"] == "pass"
    # A list logged with a version the registry never put in production.
    with opsdb.session(world) as db:
        db.execute("INSERT INTO served_recommendations(user_id, served_at, path, model_version, data_version, "
                   "movie_ids, scores) VALUES (?, '2026-01-12T14:00:00', 'model', 99, 'dv1', '[1]', '[0.1]')",
                   [world.extra["other"]])
    assert not check(diagnose.diagnose(world), "served version")["ok"]


def test_a_user_not_served_since_the_promotion_is_information_not_a_failure(world):
    """Issue 13: 'Failing: model, deployment' for a healthy user only because the retrain came after their list."""
    uid, v1 = world.extra["typical"], world.extra["v1"]
    before = diagnose.diagnose(world, uid)
    assert check(before, "user serving path")["level"] == "pass"
    v2 = promote_new(world)
    result = diagnose.diagnose(world, uid)
    path = check(result, "user serving path")
    assert path["ok"] and path["level"] == "info" and path["detail"].startswith(f"not served since v{v2}: ")
    assert f"personalised by v{v1}, production then" in path["detail"]
    assert "deployment" not in result["failed_places"] and "deployment" in result["info_places"]
    assert set(result) >= {"scope", "checks", "failed_places", "production_version", "notes"}   # JSON keys kept
    serving.recommend(world, uid, at="2026-01-12T13:00:00")
    assert check(diagnose.diagnose(world, uid), "user serving path")["level"] == "pass"


def test_bad_input_data_for_a_user_fails_their_data_check(world):
    uid, other = world.extra["typical"], world.extra["other"]
    ev = "INSERT INTO events(event_id, user_id, movie_id, kind, value, occurred_at) VALUES (?,?,?,?,?,?)"
    legacy_insert(world, ev, ["bad-1", uid, 1, "watch", -30, "2026-01-10T12:00:00"])       # negative watch
    legacy_insert(world, ev, ["bad-2", uid, 99999, "click", 1, "2026-01-10T12:01:00"])     # orphan movie
    legacy_insert(world, "INSERT INTO rating_history(user_id, movie_id, rating, rated_at) VALUES (?,?,?,?)",
                  [uid, 3, 11, "2026-01-10T12:02:00"])                                     # rating out of range
    assert etl.run_etl(world).rows_quarantined == 3
    result = diagnose.diagnose(world, uid)
    rows = check(result, "user quarantined rows")
    assert not rows["ok"] and rows["detail"].startswith(f"3 row(s) of user {uid} quarantined")
    assert "rating out of range" in rows["detail"] and "negative value" in rows["detail"]
    assert not check(result, "validation report")["ok"]        # the batch was 100 % quarantined
    assert result["failed_places"] == ["data"]
    assert check(diagnose.diagnose(world, other), "user quarantined rows")["ok"]


@pytest.mark.parametrize("params, failing", [(UNDERFIT, "underfitting"), (OVERFIT, "overfitting")])
def test_under_and_overfitting_models_are_flagged(world, params, failing):
    promote_new(world, params=params, force=True)
    result = diagnose.diagnose(world)
    flagged = check(result, failing)
    assert not flagged["ok"] and f"— {failing}" in flagged["detail"]
    assert "model" in result["failed_places"]
    assert check(result, "finite factors")["ok"]


def test_fit_rules_by_hand():
    healthy = diagnose.fit_diagnosis(1.0, 0.74, 0.37, 0.90, 0.66)       # lifts 2.0 and 1.36: gap 1.47
    assert not healthy["underfitting"] and not healthy["overfitting"] and healthy["gap"] == pytest.approx(2 / (0.9 / 0.66))
    assert diagnose.fit_diagnosis(0.75, 0.38, 0.37, 0.66, 0.66)["underfitting"]           # lift 1.03 < 1.1
    assert diagnose.fit_diagnosis(0.50, 0.60, 0.30, 0.60, 0.30)["underfitting"]           # train hit < holdout hit
    over = diagnose.fit_diagnosis(1.0, 1.0, 0.37, 0.68, 0.66)                               # 2.70 / 1.03 = 2.6
    assert over["overfitting"] and not over["underfitting"]
    assert diagnose.fit_diagnosis(1.0, 1.0, 0.37, None, None)["gap"] is None


def ranker_version(settings):
    """The ranker version the base retrain registered next to v1 or, when it registered none (the pipeline
    trains one only when the data allows), one trained now on the production CF model: never a skip."""
    versions = registry.list_versions(settings)
    rankers = versions[versions["family"] == registry.RANKER]
    if rankers.empty:
        return int(pipeline.train_ranker(settings, at="2026-01-11T07:00:00")["version"])
    return int(rankers["version"].iloc[0])


def test_the_optional_ranker_is_audited_carded_and_checked(world):
    rk, v1 = ranker_version(world), world.extra["v1"]
    assert registry.get_version(world, rk)["depends_on"] == v1
    if registry.get_version(world, rk)["stage"] != "production":
        registry.promote(world, rk, "alice", "try the two-stage list", at="2026-01-11T08:00:00")
    assert check(diagnose.diagnose(world), "ranker depends on production")["ok"]
    with opsdb.session(world) as db:
        db.execute("INSERT INTO served_recommendations(user_id, served_at, path, model_version, data_version, movie_ids, "
                   "scores, ranker_version) VALUES (?, '2026-01-11T10:00:00', 'model', ?, 'dv1', '[1]', '[0.3]', ?)",
                   [world.extra["other"], v1, rk])
    newest, cf_order = audit.audit(world, world.extra["other"])
    assert newest["ranker"]["version"] == rk and newest["ranker"]["depends_on"] == v1
    assert cf_order["ranker"] is None                 # logged before the ranker served: CF order
    assert f"Ranker:** v{rk}" in audit.audit_markdown([newest])
    card = modelcard.model_card(world, v1)
    assert card["ranker"]["version"] == rk
    ranker_card = modelcard.model_card(world, rk)
    assert ranker_card["fairness"] == {} and "not a collaborative-filtering model" in ranker_card["notes"][0]
    assert "## Intended use" in modelcard.model_card_markdown(ranker_card)
    promote_new(world)                                # a new CF model: the ranker is now stale
    stale = check(diagnose.diagnose(world), "ranker depends on production")
    assert not stale["ok"] and f"CF v{v1}" in stale["detail"]
