"""Each operator action on the Deployment, Churn, Overview and Data pages, with AppTest: after the click the
page shows the state the action made — the release it started, the Score button it enabled, the boxes and
tables it changed — not the state read before it (each test failed on the pages that drew the success
message below a page read before the action). The browser twin is tests/test_browser_ops_actions.py."""
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from conftest import private_copy
from core.privacy import access
from core.store import opsdb
from core.training import churn, churn_pipeline, pipeline, registry
from core.warehouse import churn_data

APP = str(Path(__file__).resolve().parents[1] / "dashboard" / "app.py")
OPERATOR = ("tester", "s3cret-token")

pytestmark = pytest.mark.usefixtures("empty_dashboard_caches")


@pytest.fixture(scope="module")
def candidate_world(cf_world, tmp_path_factory):
    """The CF world (10 days, v1 in production) with a CF candidate beside it and an operator."""
    base = private_copy(cf_world, tmp_path_factory.mktemp("ops-candidate"))
    registry.register(base, pipeline.train(base, params={"factors": 16}, seed=9).run_id)
    access.add_operator(base, *OPERATOR)
    return base


def signed_in(world, tmp_path, monkeypatch, page: str, timeout: int = 120) -> tuple:
    s = private_copy(world, tmp_path)
    monkeypatch.setenv("RETRO_HOME", str(tmp_path))
    if OPERATOR[0] not in access.operators(s):
        access.add_operator(s, *OPERATOR)
    at = AppTest.from_file(APP, default_timeout=timeout)
    at.session_state["operator"] = OPERATOR
    at.run()
    at.switch_page(page).run()
    assert not at.exception, at.exception
    return s, at


def texts(elements) -> str:
    return "\n".join(e.value for e in elements)


def metric(at, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def test_starting_a_release_shows_it_and_the_decide_form_at_once(candidate_world, tmp_path, monkeypatch):
    s, at = signed_in(candidate_world, tmp_path, monkeypatch, "views/deployment.py")
    assert metric(at, "Release") == "none"
    at.radio(key="release_mode").set_value("shadow")
    at.button(key="FormSubmitter:start_release-Start").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    candidate = int(registry.list_versions(s).query("stage != 'production'")["version"].max())
    assert f"shadow of v{candidate} started" in texts(at.success)
    assert metric(at, "Release") == f"shadow v{candidate}"                 # was still "none"
    assert "Every user is served production." not in texts(at.caption)
    assert at.radio(key="release_decision") is not None                    # the decide form replaced the start form
    assert not [r for r in at.radio if r.key == "release_mode"]

    at.radio(key="release_decision").set_value("stop")
    at.checkbox(key="release_confirm").check()
    at.button(key="FormSubmitter:decide_release-Decide").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert "stop recorded" in texts(at.success)
    assert metric(at, "Release") == "none"                                 # was still the shadow release
    assert at.radio(key="release_mode") is not None


@pytest.mark.slow   # trains or grows a world in the test: 6-13 s
def test_training_a_churn_model_enables_score_now_at_once(tmp_path, monkeypatch, long_world):
    """A promoted churn model: 'Score now' is enabled and the model's caption shows without another click."""
    from dashboard import cache

    def train_and_promote(progress, **kwargs):      # a world this small rarely beats the rule: promote by hand
        result = churn_pipeline.train(cache.settings(), progress=progress, promote=False)
        registry.promote(cache.settings(), result["version"], "tester", "test: a churn model in production")
        cache.clear()
        return result | {"promoted": True}
    monkeypatch.setattr(cache, "churn_train", train_and_promote)
    s, at = signed_in(long_world, tmp_path, monkeypatch, "views/churn.py")
    assert at.button(key="churn_score").disabled
    at.button(key="churn_train").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert "is in production and scored" in texts(at.success)
    assert not at.button(key="churn_score").disabled                     # was still disabled
    assert at.button(key="churn_train").proto.type == "secondary"
    assert "Production churn model **v" in texts(at.caption)
    latest = churn_pipeline.scored_days(s)[-1][:10]
    at.button(key="churn_score").click().run()
    assert f"as of {latest}" in texts(at.success) and "Scored " in texts(at.success)


@pytest.mark.slow   # trains or grows a world in the test: 6-13 s
def test_growing_from_the_churn_page_adds_exactly_the_missing_days(cf_world, tmp_path, monkeypatch):
    """10 days: the page names the missing days and its one button grows the world by them and runs the ETL, so
    the page at once says the warehouse is long enough and offers training."""
    s, at = signed_in(cf_world, tmp_path, monkeypatch, "views/churn.py", timeout=240)
    need = churn.MIN_HISTORY_DAYS + 2 * churn.HORIZON_DAYS
    assert f"{need - 10} days missing" in texts(at.warning) and at.button(key="churn_train").disabled
    at.button(key="churn_grow").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert f"Simulated {need - 10} more days" in texts(at.success) and "The ETL loaded" in texts(at.success)
    start, end = churn_data.data_bounds(s)
    assert (end - start).days == need
    assert not at.warning and f"holds {need} days of watch data" in texts(at.info)   # was still "10 days"
    assert not at.button(key="churn_train").disabled


def test_growing_the_world_updates_the_overview_boxes_and_loads_the_warehouse(cf_world, tmp_path, monkeypatch):
    s, at = signed_in(cf_world, tmp_path, monkeypatch, "views/overview.py")
    at.number_input(key="grow_days").set_value(2).run()
    at.button(key="grow_world").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    with opsdb.session(s) as db:
        events = opsdb.counts(db)["events"]
    captions = texts(at.caption)
    assert f"{events:,} events" in captions                                 # was the count before the two days
    assert "The ETL loaded" in texts(at.success)
    start, end = churn_data.data_bounds(s)
    assert (end - start).days == 12                                         # the warehouse has the new days


def test_running_the_etl_updates_the_data_page(cf_world, tmp_path, monkeypatch):
    from core.simulation import simulation
    s = private_copy(cf_world, tmp_path)
    simulation.simulate(s, 1)                                               # one day the warehouse lacks
    s, at = signed_in(s, tmp_path / "copy", monkeypatch, "views/data.py")
    before = metric(at, "Data version")
    at.button(key="run_etl").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert "loaded" in texts(at.success)
    assert metric(at, "Data version") == f"dv{int(before[2:]) + 1}"        # was the version before the run
    assert at.selectbox(key="dv").value == f"dv{int(before[2:]) + 1}"      # the validation report of the new one


@pytest.fixture(scope="module")
def long_world(tmp_path_factory):
    """56 days (the churn model's minimum), CF trained, no churn model yet."""
    from core.settings import load_settings
    from core.simulation import simulation
    s = load_settings(tmp_path_factory.mktemp("ops-long"))
    simulation.init_world(s, seed=5, users=400, movies=200, days=56)
    pipeline.retrain(s)
    access.add_operator(s, *OPERATOR)
    return s


def test_the_light_first_start_box_reads_the_status_file_core_writes():
    from core import bootstrap
    from dashboard import first_box
    assert first_box.STATUS_FILE == bootstrap.STATUS_FILE


@pytest.mark.slow       # a fresh process importing the dashboard's modules: 2-12 s (12 s in a clean clone)
def test_the_first_start_box_imports_the_pages_modules_in_the_background_once():
    """Importing the box stays light (no pandas: it draws before anything heavy loads); its warm-up imports what the
    pages need in one background thread, however often a rerun asks, so the Overview does not wait for it."""
    import subprocess
    import sys
    from pathlib import Path
    code = (
        "import sys\n"
        "from dashboard import first_box\n"
        "assert 'pandas' not in sys.modules and 'dashboard.cache' not in sys.modules\n"
        "first_box.wait_for_warm_up()\n"                      # none started: returns at once
        "assert 'dashboard.cache' not in sys.modules\n"
        "a = first_box.warm_up(); b = first_box.warm_up()\n"
        "assert a is b and a.daemon and a.name == 'dashboard-warm-up'\n"
        "first_box.wait_for_warm_up()\n"                      # the script waits for it before its own imports
        "assert not a.is_alive()\n"
        "missing = [m for m in first_box.WARM_UP_MODULES if m not in sys.modules]\n"
        "assert not missing and 'pandas' in sys.modules, missing\n"
        "print('ok')\n")
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


# --- charts: no empty panel, ticks that differ ----------------------------------------------------------------

def test_percent_ticks_carry_enough_decimals_to_differ():
    from dashboard.charts import percent_axis
    assert percent_axis([0.102, 0.105, 0.109]) == ".1%"       # was '.0%': '10%, 10%, 11%'
    assert percent_axis([0.10, 0.14]) == ".1%"
    assert percent_axis([0.0, 0.5]) == ".0%"
    assert percent_axis([0.001, 0.002]) == ".2%"
    labels = {f"{v:.1%}" for v in (0.102, 0.104, 0.106, 0.108)}
    assert len(labels) == 4


def test_churn_and_quality_leaves_out_a_panel_without_data():
    import pandas as pd

    from dashboard import charts
    days = pd.date_range("2026-01-01", periods=4)
    frame = pd.DataFrame({"day": days, "churn_rate": [0.10, 0.11, None, None], "active_users": [9, 9, 9, 9],
                          "hit_rate_model": [None] * 4, "hit_rate_top50": [None] * 4})
    fig = charts.churn_and_quality(frame)
    assert [t.name for t in fig.data] == ["churn rate"]
    assert [a.text for a in fig.layout.annotations] == ["Churn rate of active users (no watch in the next 14 days)"]
    assert "yaxis2" not in fig.layout.to_plotly_json()          # no empty hit-rate axis (it drew −100 %…400 %)
    both = frame.assign(hit_rate_model=[0.102, 0.104, 0.106, 0.109], hit_rate_top50=[0.103, 0.104, 0.105, 0.107])
    fig = charts.churn_and_quality(both)
    assert len(fig.data) == 3 and fig.layout.yaxis2.tickformat == ".1%"
    assert charts.churn_quality_panels(frame.iloc[:0]) == (False, False)


@pytest.mark.slow   # trains or grows a world in the test: 6-13 s
def test_the_churn_page_offers_the_etl_when_the_world_already_holds_the_days(cf_world, tmp_path, monkeypatch):
    """Days simulated without the ETL (the CLI's `simulate --open-loop`): the page counts them and its one button
    is the ETL, not growing the world again."""
    from core.simulation import simulation
    need = churn.MIN_HISTORY_DAYS + 2 * churn.HORIZON_DAYS
    base = private_copy(cf_world, tmp_path / "base")
    simulation.simulate(base, need - 10)
    s, at = signed_in(base, tmp_path / "copy", monkeypatch, "views/churn.py", timeout=240)
    assert f"{need - 10} days missing" in texts(at.warning)
    assert f"The world already holds {need - 10} days the warehouse has not loaded" in texts(at.markdown)
    assert not [b for b in at.button if b.key == "churn_grow"]
    at.button(key="churn_etl").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert "Train the churn model now" in texts(at.success)
    assert f"holds {need} days of watch data" in texts(at.info) and not at.button(key="churn_train").disabled
