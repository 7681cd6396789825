"""Model registry (register, promote, rollback, history, production at time T) and the promotion gate."""
import json
import math
import sqlite3
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.store import mlopsdb
from core.training import registry, tracking
from core.errors import ValidationError
from core.training.gate import GateDecision, evaluate_gate
from core.settings import load_settings

T = {d: f"2026-01-{d:02d}T12:00:00" for d in range(1, 21)}


pytestmark = pytest.mark.both_backends     # the ML metadata store's contracts, on SQLite and on PostgreSQL


@pytest.fixture
def settings(backend_settings):
    return backend_settings


def trained(settings, kind="als", ndcg=0.2, coverage=0.3, at=T[1], finish=True) -> int:
    run_id = tracking.start_run(settings, kind, {"factors": 8, "kind": kind}, 42, "dv-1", at=at)
    if finish:
        tracking.finish_run(settings, run_id, {"ndcg@10": ndcg, "coverage": coverage}, {"popularity": {}},
                            {"fit": 0.1}, f"/models/{kind}-{run_id}.npz", f"hash-{run_id}", at=at)
    return run_id


def new_version(settings, kind="als", at=T[1], **kwargs) -> int:
    return registry.register(settings, trained(settings, kind, at=at, **kwargs), at=at)


def stages(settings) -> dict:
    frame = registry.list_versions(settings)
    return dict(zip(frame["version"], frame["stage"]))


# --- register ----------------------------------------------------------------

def test_register_copies_the_run_as_a_candidate(settings):
    run_id = trained(settings, "bpr", ndcg=0.25, coverage=0.4)
    version = registry.register(settings, run_id, at=T[2])
    v = registry.get_version(settings, version)
    assert (v["run_id"], v["model_kind"], v["family"], v["stage"], v["created_at"]) == (
        run_id, "bpr", "cf", "candidate", T[2])
    assert v["metrics"] == {"ndcg@10": 0.25, "coverage": 0.4} and v["params"] == {"factors": 8, "kind": "bpr"}
    assert (v["artifact_path"], v["artifact_hash"], v["data_version"]) == (
        f"/models/bpr-{run_id}.npz", f"hash-{run_id}", "dv-1")
    events = registry.history(settings, version)
    assert events[["from_stage", "to_stage", "actor", "at"]].values.tolist() == [[None, "candidate", "pipeline", T[2]]]
    assert registry.production(settings) is None


def test_register_refuses_unfinished_duplicate_and_unknown_runs(settings):
    running = trained(settings, finish=False)
    with pytest.raises(ValidationError, match="run 1 is running; only a finished run"):
        registry.register(settings, running)
    tracking.fail_run(settings, running, "boom")
    with pytest.raises(ValidationError, match="run 1 is failed"):
        registry.register(settings, running)
    ok = trained(settings)
    version = registry.register(settings, ok, at=T[1])
    with pytest.raises(ValidationError, match=f"run {ok} is already registered as version {version}"):
        registry.register(settings, ok)
    with pytest.raises(tracking.UnknownRun):
        registry.register(settings, 42)
    with pytest.raises(registry.UnknownVersion, match="no model version 7"):
        registry.register(settings, trained(settings), depends_on=7)
    with pytest.raises(ValidationError, match="has no family"):
        registry.register(settings, trained(settings, kind="svd"))
    assert len(registry.list_versions(settings)) == 1


# --- promote / rollback / history --------------------------------------------

def test_promote_promote_rollback_history_and_production_at(settings):
    v1, v2, v3 = (new_version(settings, kind, at=T[1]) for kind in ("als", "bpr", "als"))
    gate = evaluate_gate({"ndcg@10": 0.2, "coverage": 0.3}, None, has_nan=False)
    assert registry.promote(settings, v1, "pipeline", "gate passed", gate=gate, at=T[3]) is None
    assert registry.promote(settings, v2, "pipeline", "bpr beats als", at=T[5]) == v1
    assert registry.promote(settings, v3, "alice", "manual: fresher data", at=T[7]) == v2
    assert registry.rollback(settings, "bob", "v3 broke recommendations", at=T[9]) == v2

    assert stages(settings) == {v1: "archived", v2: "production", v3: "archived"}
    assert registry.production(settings)["version"] == v2
    assert registry.production(settings, model_kind="bpr")["version"] == v2
    assert registry.production(settings, model_kind="als") is None

    events = registry.history(settings)
    moves = events[events["from_stage"].notna()]
    assert moves[["version", "from_stage", "to_stage", "actor", "reason", "at"]].values.tolist() == [
        [v1, "candidate", "production", "pipeline", "gate passed", T[3]],
        [v1, "production", "archived", "pipeline", "bpr beats als", T[5]],
        [v2, "candidate", "production", "pipeline", "bpr beats als", T[5]],
        [v2, "production", "archived", "alice", "manual: fresher data", T[7]],
        [v3, "candidate", "production", "alice", "manual: fresher data", T[7]],
        [v3, "production", "archived", "bob", "v3 broke recommendations", T[9]],
        [v2, "archived", "production", "bob", "v3 broke recommendations", T[9]],
    ]
    stored_gate = json.loads(moves["gate"].iloc[0])
    assert stored_gate["promote"] is True and stored_gate == gate.to_dict()
    assert moves["gate"].iloc[1:].isna().all()  # only the first promotion went through the gate
    assert registry.history(settings, v3)["to_stage"].tolist() == ["candidate", "production", "archived"]

    expected = {"2026-01-01T00:00:00": None, T[2]: None, T[3]: v1, T[4]: v1, T[5]: v2, T[6]: v2,
                T[7]: v3, "2026-01-08T23:59:59": v3, T[9]: v2, T[20]: v2}
    assert {t: registry.production_at(settings, t) for t in expected} == expected


def test_second_rollback_undoes_the_first(settings):
    v1, v2 = new_version(settings), new_version(settings)
    registry.promote(settings, v1, "pipeline", "first", at=T[2])
    registry.promote(settings, v2, "pipeline", "better", at=T[3])
    assert registry.rollback(settings, "ops", "bad", at=T[4]) == v1
    assert registry.rollback(settings, "ops", "v2 was fine after all", at=T[5]) == v2
    assert stages(settings) == {v1: "archived", v2: "production"}


def test_promoting_an_archived_version_is_a_manual_re_promotion(settings):
    v1, v2, v3 = new_version(settings), new_version(settings), new_version(settings)
    for version, day in ((v1, 2), (v2, 3), (v3, 4)):
        registry.promote(settings, version, "pipeline", "gate passed", at=T[day])
    assert registry.promote(settings, v1, "carol", "back to the oldest model", at=T[5]) == v3
    assert stages(settings) == {v1: "production", v2: "archived", v3: "archived"}
    assert registry.history(settings, v1)["to_stage"].tolist() == ["candidate", "production", "archived", "production"]
    assert registry.production_at(settings, T[4]) == v3 and registry.production_at(settings, T[5]) == v1
    # the production model before v1's re-promotion was v3
    assert registry.rollback(settings, "carol", "undo", at=T[6]) == v3


def test_promote_refuses_the_current_production_and_unknown_versions(settings):
    v1 = new_version(settings)
    registry.promote(settings, v1, "pipeline", "first", at=T[2])
    before = len(registry.history(settings))
    with pytest.raises(registry.InvalidTransition, match="version 1 is already the production model"):
        registry.promote(settings, v1, "alice", "again", at=T[3])
    with pytest.raises(registry.UnknownVersion, match=r"no model version 9 .*versions are numbered 1..1"):
        registry.promote(settings, 9, "alice", "typo", at=T[3])
    assert len(registry.history(settings)) == before


@pytest.mark.parametrize("actor,reason,missing", [("", "why", "actor"), ("alice", "  ", "reason"),
                                                  (None, "why", "actor")])
def test_promote_and_rollback_need_an_actor_and_a_reason(settings, actor, reason, missing):
    v1, v2 = new_version(settings), new_version(settings)
    registry.promote(settings, v1, "pipeline", "first", at=T[2])
    registry.promote(settings, v2, "pipeline", "second", at=T[3])
    before = registry.history(settings)
    with pytest.raises(ValidationError, match=f"{missing} must be a non-empty text"):
        registry.promote(settings, v1, actor, reason)
    with pytest.raises(ValidationError, match=f"{missing} must be a non-empty text"):
        registry.rollback(settings, actor, reason)
    assert registry.history(settings).equals(before) and registry.production(settings)["version"] == v2


def test_rollback_without_an_earlier_production_version_raises(settings):
    with pytest.raises(registry.NothingToRollBack, match="family 'cf' has no production model"):
        registry.rollback(settings, "ops", "panic", at=T[2])
    v1, v2 = new_version(settings), new_version(settings)
    registry.promote(settings, v1, "pipeline", "first", at=T[2])
    with pytest.raises(registry.NothingToRollBack, match="version 1 is the first production model"):
        registry.rollback(settings, "ops", "panic", at=T[3])
    assert stages(settings) == {v1: "production", v2: "candidate"}  # a candidate is not a rollback target


def test_families_have_independent_production_models(settings):
    cf = new_version(settings, "als")
    ranker = registry.register(settings, trained(settings, "ranker"), at=T[1], depends_on=cf)
    registry.promote(settings, cf, "pipeline", "cf ok", at=T[2])
    registry.promote(settings, ranker, "pipeline", "ranker ok", at=T[3])
    assert stages(settings) == {cf: "production", ranker: "production"}
    assert registry.production(settings)["version"] == cf
    assert registry.production(settings, family="ranker")["depends_on"] == cf
    assert registry.production_at(settings, T[2], family="ranker") is None
    assert registry.production_at(settings, T[3], family="ranker") == ranker
    with pytest.raises(registry.NothingToRollBack):
        registry.rollback(settings, "ops", "no earlier ranker", family="ranker")


def test_the_database_allows_one_production_model_per_family(settings):
    v1, v2 = new_version(settings), new_version(settings)
    registry.promote(settings, v1, "pipeline", "first", at=T[2])
    # the same sqlite3.IntegrityError on both backends (PostgreSQL's message: "violates unique constraint")
    with mlopsdb.session(settings) as db, pytest.raises(sqlite3.IntegrityError, match="(?i)unique"):
        db.execute("UPDATE model_versions SET stage = 'production' WHERE version = ?", [v2])


def test_concurrent_promotions_leave_exactly_one_production_model(settings):
    versions = [new_version(settings) for _ in range(6)]
    errors = []

    def promote(version):
        try:
            registry.promote(settings, version, "pipeline", f"race {version}", at=T[2])
        except Exception as exc:  # pragma: no cover - the assertion below reports it
            errors.append(exc)

    threads = [threading.Thread(target=promote, args=(v,)) for v in versions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(stages(settings).values()) == ["archived"] * 5 + ["production"]
    moves = registry.history(settings).query("to_stage == 'production'")
    assert len(moves) == 6 and moves["version"].iloc[-1] == registry.production(settings)["version"]


def test_archive_retires_candidates_but_not_the_production_model(settings):
    v1, v2 = new_version(settings), new_version(settings)
    registry.promote(settings, v1, "pipeline", "first", at=T[2])
    registry.archive(settings, v2, "alice", "never needed", at=T[3])
    assert stages(settings) == {v1: "production", v2: "archived"}
    with pytest.raises(registry.InvalidTransition, match="version 1 is in production"):
        registry.archive(settings, v1, "alice", "oops")
    with pytest.raises(registry.InvalidTransition, match="already archived"):
        registry.archive(settings, v2, "alice", "twice")


def test_list_versions_newest_first_with_metric_columns(settings):
    assert list(registry.list_versions(settings).columns) == registry.VERSION_COLUMNS
    v1 = registry.register(settings, trained(settings, ndcg=0.1), at=T[1])
    v2 = registry.register(settings, trained(settings, "bpr", ndcg=0.3), at=T[2])
    frame = registry.list_versions(settings)
    assert frame["version"].tolist() == [v2, v1] and frame["ndcg@10"].tolist() == [0.3, 0.1]
    with pytest.raises(registry.UnknownVersion):
        registry.history(settings, 5)


# --- gate --------------------------------------------------------------------

PROD = {"ndcg@10": 0.2051, "coverage": 0.30}


def test_gate_accepts_a_better_candidate_with_numbers_in_every_reason():
    decision = evaluate_gate({"ndcg@10": 0.2140, "coverage": 0.28}, PROD, has_nan=False)
    assert decision.promote is True
    assert decision.reasons == [
        "model factors are finite (no NaN)",
        "coverage 0.2800 ≥ 0.1500 (minimum 0.0100; 0.50 × production 0.3000 = 0.1500)",
        "ndcg@10 0.2140 ≥ 0.2051 (production 0.2051 × 1.00)",
    ]
    assert decision.checks["quality"]["threshold"] == pytest.approx(0.2051)
    assert json.loads(json.dumps(decision.to_dict())) == decision.to_dict()


def test_gate_refuses_a_worse_candidate():
    decision = evaluate_gate({"ndcg@10": 0.19, "coverage": 0.30}, PROD, has_nan=False)
    assert decision.promote is False
    assert decision.reasons[2] == "ndcg@10 0.1900 < 0.2051 (production 0.2051 × 1.00)"
    assert [c["passed"] for c in decision.checks.values()] == [True, True, False]


def test_gate_refuses_nan_factors_even_when_metrics_look_better():
    decision = evaluate_gate({"ndcg@10": 0.9, "coverage": 0.9}, PROD, has_nan=True)
    assert decision.promote is False and "contain NaN" in decision.reasons[0]
    assert decision.checks["finite"] == {"passed": False, "has_nan": True}


def test_gate_refuses_collapsed_coverage_relative_and_absolute():
    relative = evaluate_gate({"ndcg@10": 0.3, "coverage": 0.149}, PROD, has_nan=False)
    assert relative.promote is False
    assert relative.reasons[1] == ("coverage collapsed: 0.1490 < 0.1500 "
                                   "(minimum 0.0100; 0.50 × production 0.3000 = 0.1500)")
    absolute = evaluate_gate({"ndcg@10": 0.3, "coverage": 0.005}, None, has_nan=False)
    assert absolute.promote is False
    assert absolute.reasons[1] == "coverage collapsed: 0.0050 < 0.0100 (minimum 0.0100; no production coverage to compare)"
    missing = evaluate_gate({"ndcg@10": 0.3}, None, has_nan=False)
    assert missing.promote is False and "no coverage metric" in missing.reasons[1]


def test_gate_without_production_only_needs_a_sane_model():
    decision = evaluate_gate({"ndcg@10": 0.01, "coverage": 0.2}, None, has_nan=False)
    assert decision.promote is True and "no production model yet" in decision.reasons[2]
    no_metric = evaluate_gate({"coverage": 0.2, "ndcg@10": float("nan")}, None, has_nan=False)
    assert no_metric.promote is False and no_metric.reasons[2] == "candidate has no ndcg@10 (or it is NaN)"


def test_gate_margin_arithmetic():
    prod = {"ndcg@10": 0.2, "coverage": 0.3}
    # 0.2 × (1 + 0.10) = 0.22: equal passes (despite 0.2 * 1.1 == 0.22000000000000003), just below fails
    at_threshold = evaluate_gate({"ndcg@10": 0.22, "coverage": 0.3}, prod, has_nan=False, margin=0.10)
    assert at_threshold.promote is True
    assert at_threshold.reasons[2] == "ndcg@10 0.2200 ≥ 0.2200 (production 0.2000 × 1.10)"
    below = evaluate_gate({"ndcg@10": 0.2199, "coverage": 0.3}, prod, has_nan=False, margin=0.10)
    assert below.promote is False and below.checks["quality"]["threshold"] == pytest.approx(0.22)
    # the same candidate passes with no margin, and another metric can be gated on
    assert evaluate_gate({"ndcg@10": 0.2199, "coverage": 0.3}, prod, has_nan=False).promote is True
    recall = evaluate_gate({"recall@10": 0.5, "coverage": 0.3}, {"recall@10": 0.4, "coverage": 0.3},
                           has_nan=False, metric="recall@10", margin=0.25)
    assert recall.promote is True and recall.reasons[2] == "recall@10 0.5000 ≥ 0.5000 (production 0.4000 × 1.25)"
    with pytest.raises(ValueError, match="margin"):
        evaluate_gate(prod, prod, has_nan=False, margin=-1.0)


unit = st.floats(0.0, 1.0, allow_nan=False)


@given(cand=unit, prod=st.floats(0.001, 1.0), cov=unit, prod_cov=unit, margin=st.floats(0.0, 0.5), bump=unit)
def test_gate_promotes_iff_every_check_passes_and_is_monotone_in_the_metric(cand, prod, cov, prod_cov, margin, bump):
    production = {"ndcg@10": prod, "coverage": prod_cov}
    decision = evaluate_gate({"ndcg@10": cand, "coverage": cov}, production, has_nan=False, margin=margin)
    assert isinstance(decision, GateDecision) and len(decision.reasons) == 3
    assert decision.promote == all(check["passed"] for check in decision.checks.values())
    if decision.promote:  # a better candidate never fails where a worse one passed
        assert evaluate_gate({"ndcg@10": cand + bump, "coverage": cov}, production, has_nan=False,
                             margin=margin).promote
    if cand < prod * (1 + margin) and not math.isclose(cand, prod * (1 + margin), rel_tol=1e-9):
        assert not decision.promote
