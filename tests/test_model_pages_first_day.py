"""The operator's first day on the model pages: what a page says after an action is what the stores say now
(the registry and the releases re-read), hints are steps that work at that moment, the CLI and the server
agree on limits, tables show comparable numbers and say which clock a time is on. Fast tests (AppTest and
core); the browser checks of the same pages after each action are in test_browser_model_actions.py."""
import contextlib
import io
import re
from pathlib import Path

import pandas as pd
import pytest
from conftest import private_copy
from streamlit.testing.v1 import AppTest

from core import bounds, cli
from core.monitoring import release
from core.privacy import access
from core.serving import serving
from core.settings import load_settings
from core.simulation import loop, simulation
from core.store import opsdb
from core.training import churn, churn_pipeline, pipeline, registry

APP = str(Path(__file__).resolve().parents[1] / "dashboard" / "app.py")


def run_cli(s, *argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["--home", str(s.home), *argv])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def world(cf_world, tmp_path):
    return private_copy(cf_world, tmp_path / "w")


# --- 1. what became of a version, re-read after the action ----------------------------------------------------
def test_fate_follows_the_version_through_its_release(world):
    prod = int(registry.production(world)["version"])
    assert release.fate(world, prod)["state"] == "promoted"
    candidate = registry.register(world, pipeline.train(world, seed=11).run_id)
    assert release.fate(world, candidate) | {} == release.fate(world, candidate)
    assert release.fate(world, candidate)["state"] == "refused"
    release.start(world, candidate, "canary", actor="tester", reason="try it", share=0.5)
    now = release.fate(world, candidate)
    assert now["state"] == "canary" and "canary release #" in now["text"] and "50%" in now["text"]
    release.decide_now(world, "promote", actor="tester", reason="looks better")
    assert release.fate(world, candidate)["state"] == "promoted"
    assert release.fate(world, prod)["state"] == "replaced"


def test_drift_narrative_says_promoted_when_the_retrained_version_serves(world):
    """The narrative read the retrain action's `promoted` flag (False for a canary start) and said "kept as
    candidate" while `models list` showed the version promoted by the release policy."""
    import json

    from core.monitoring import monitoring
    candidate = registry.register(world, pipeline.train(world, seed=11).run_id)
    action = {"at": "2026-01-20T00:00:00", "actor": "policy:on-alert",
              "result": json.dumps({"version": candidate, "promoted": False, "gate_passed": True})}
    release.start(world, candidate, "canary", actor="policy:on-alert", reason="retrain passed the gate", share=0.5)
    assert "in canary release #" in monitoring.retrain_sentence(world, action)
    release.decide_now(world, "promote", actor="policy:release", reason="the canary won")
    text = monitoring.retrain_sentence(world, action)
    assert "kept as candidate" not in text and f"v{candidate} promoted to production by policy:release" in text


# --- 2. the churn hint names the missing days and the one step that fixes them --------------------------------
def test_the_churn_hint_counts_the_missing_days_and_names_a_working_command(world):
    h = churn_pipeline.history_needed(world)
    assert h["need"] == churn.MIN_HISTORY_DAYS + 2 * churn.HORIZON_DAYS == 56
    assert 0 < h["have"] < 56 and h["missing"] == 56 - h["have"]
    hint = churn_pipeline.next_step(world)
    assert f"{h['missing']} days are missing" in hint
    assert f"`python -m core simulate --days {h['missing']}`" in hint and "churn train`" in hint
    with pytest.raises(Exception) as err:
        churn_pipeline.production_model(world)
    assert str(err.value) == "no churn model in production; " + hint
    # the arithmetic the hint relies on: exactly `need` days is enough, one fewer is not
    start = pd.Timestamp("2026-01-01")
    churn.snapshot_plan(start, start + pd.Timedelta(days=h["need"]))
    with pytest.raises(churn.NotEnoughHistory):
        churn.snapshot_plan(start, start + pd.Timedelta(days=h["need"] - 1))


def test_the_explanations_page_shows_the_working_churn_hint(world, monkeypatch, empty_dashboard_caches):
    monkeypatch.setenv("RETRO_HOME", str(world.home))
    at = AppTest.from_file(APP, default_timeout=60).run()
    at.switch_page("views/governance.py").run()
    assert not at.exception
    shown = " ".join(i.value for i in at.info)
    missing = churn_pipeline.history_needed(world)["missing"]
    assert f"{missing} days are missing" in shown and f"simulate --days {missing}" in shown
    assert "train one with `python -m core churn train`" not in shown


# --- 5. comparisons: like with like, one precision, no None, a legend -----------------------------------------
def test_compare_runs_defaults_to_one_model_kind_and_one_precision(world, monkeypatch, empty_dashboard_caches):
    pipeline.train(world, seed=3)                      # a second ALS run
    pipeline.retrain(world)                            # ALS and a ranker run, the ranker newest
    monkeypatch.setenv("RETRO_HOME", str(world.home))
    at = AppTest.from_file(APP, default_timeout=120).run()
    at.switch_page("views/training.py").run()
    assert not at.exception
    runs = next(d.value for d in at.dataframe if {"run_id", "model_kind", "ndcg@10"} <= set(d.value.columns))
    assert len(set(runs["model_kind"])) == 2                    # ALS and ranker runs in one table
    kinds = dict(zip(runs["run_id"], runs["model_kind"]))
    a, b = at.selectbox(key="run_a").value, at.selectbox(key="run_b").value
    assert kinds[a] == kinds[b] == at.selectbox(key="compare_kind").value
    table = next(d.value for d in at.dataframe if "Δ % of A" in d.value.columns)
    assert list(table.columns) == ["metric", "run A", "run B", "Δ (B − A)", "Δ % of A"]
    cells = [str(v) for col in ("run A", "run B", "Δ (B − A)") for v in table[col]]
    assert "None" not in cells and "nan" not in " ".join(cells)
    decimals = {len(c.split(".")[1]) for c in cells if "." in c}
    assert decimals == {4}
    assert any("Δ % of A" in c.value and "relative to run A" in c.value for c in at.caption)


def test_audit_rows_say_which_clock_and_sort_on_the_real_one(tmp_path):
    s = load_settings(tmp_path)
    access.log_action(s, "operator:admin", "first", None, "ok")                  # no world yet: real clock
    db = opsdb.connect(s)                                                         # a world starts its clock
    opsdb.set_meta(db, "clock", "2026-01-10T00:00:00")
    db.conn.close()
    access.log_action(s, "operator:admin", "second", None, "ok")                 # the world's clock
    access.add_operator(s, "ann", "ann-token-123")
    access.sign_in(s, "ann", "ann-token-123")          # sign-ins stamp the throttle's real clock, even in a world
    log = access.audit_log(s)
    by_action = log.set_index("action")
    first, second = by_action.loc["first"], by_action.loc["second"]
    assert (first["clock"], second["clock"], by_action.loc["sign-in", "clock"]) == ("real", "simulated", "real")
    assert first["recorded_at"] <= second["recorded_at"]
    assert list(log["recorded_at"]) == sorted(log["recorded_at"], reverse=True)    # newest first on one clock


# --- 7. long actions name their stage and the days done --------------------------------------------------------
def test_the_closed_loop_reports_stage_and_days_simulated(world):
    seen = []
    loop.run(world, 2, progress=lambda f, m: seen.append((f, m)))
    messages = [m for _, m in seen]
    assert any(re.fullmatch(r"day \d+ \(0 of 2 days simulated\): serving lists and simulating users", m)
               for m in messages)
    assert any("(1 of 2 days simulated): ETL into the warehouse" in m for m in messages)
    assert any("monitoring drift" in m for m in messages)
    assert messages[-1] == "done: 2 of 2 days simulated"
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions)


# --- 8. the CLI and the server agree on limits; no stray output ------------------------------------------------
def test_cli_and_server_share_the_k_limit(world):
    assert bounds.limit("k") == (1, serving.MAX_K) == (1, 100)
    code, out, err = run_cli(world, "recommend", "--user", "1", "--k", "101")
    assert code != 0 and "1..100" in err and out == ""
    code, out, _ = run_cli(world, "recommend", "--user", "1", "--k", "100")
    assert code == 0
    with pytest.raises(KeyError, match="known: k"):
        bounds.limit("K")


def test_etl_human_output_has_no_stray_braces(world):
    simulation.simulate(world, 1)
    code, out, err = run_cli(world, "etl")
    assert code == 0 and out.startswith("ETL run ") and not out.rstrip().endswith("{}"), out
    from core.cli.training import etl_line
    base = {"run_id": 3, "status": "loaded", "data_version": 4, "rows_loaded": 1200, "rows_served": 10,
            "rows_quarantined": 3, "report": {"by_reason": {"unknown movie": 1, "future timestamp": 2}}}
    assert etl_line(base).endswith("3 quarantined (2 future timestamp, 1 unknown movie)")
    assert etl_line(base | {"rows_quarantined": 0, "report": {"by_reason": {}}}).endswith("0 quarantined")


# --- 7. opening a page: an audited view is no change, so the caches stay warm ----------------------------------
def test_an_audited_view_keeps_the_dashboard_cache_key_and_real_writes_change_it(world):
    from core.governance import insights
    before = insights.state_token(world)
    access.log_action(world, "operator:admin", "view For You list", "abc", "ok")      # what each new session writes
    assert insights.state_token(world) == before
    candidate = registry.register(world, pipeline.train(world, seed=5).run_id)          # a real write
    assert insights.state_token(world) != before
    after = insights.state_token(world)
    registry.archive(world, candidate, "tester", "not needed")                          # an UPDATE counts too
    assert insights.state_token(world) != after


def test_every_ml_metadata_table_but_the_audit_counts_its_writes(world):
    """A table added later without `install_change_triggers` would leave the dashboard's caches stale."""
    from core.store import mlopsdb
    with mlopsdb.session(world) as db:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
                  if not r[0].startswith(("sqlite_", "_"))}
        triggers = {r[0] for r in db.execute("SELECT tbl_name FROM sqlite_master WHERE type = 'trigger' "
                                             "AND name LIKE 'count_%'")}
    assert tables - set(mlopsdb.CHANGE_EXEMPT) == triggers
