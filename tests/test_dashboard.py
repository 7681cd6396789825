"""Dashboard smoke tests with Streamlit's AppTest on tiny worlds (no browser)."""
from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from core import opsdb, simulation
from core.settings import load_settings

APP = str(Path(__file__).resolve().parents[1] / "dashboard" / "app.py")


@pytest.fixture(autouse=True)
def clear_caches():
    st.cache_data.clear()
    st.cache_resource.clear()
    yield


def test_first_start_builds_demo_world_then_shows_top50(tmp_path, monkeypatch):
    monkeypatch.setenv("RETRO_HOME", str(tmp_path))
    monkeypatch.setenv("RETRO_DEMO_USERS", "300")
    monkeypatch.setenv("RETRO_DEMO_MOVIES", "600")
    monkeypatch.setenv("RETRO_DEMO_DAYS", "6")
    at = AppTest.from_file(APP, default_timeout=120).run()
    assert not at.exception
    assert simulation.has_world(load_settings(tmp_path))
    table = at.dataframe[0].value
    with opsdb.session(load_settings(tmp_path)) as db:
        from core.top50 import top50
        expected = top50(db).table
    assert list(table["movie_id"]) == list(expected["movie_id"]) and 0 < len(table) <= 50
    # A second start reuses the world: same clock, no rebuild.
    at2 = AppTest.from_file(APP, default_timeout=30).run()
    assert not at2.exception and not [i for i in at2.info if "First start" in i.value]


def test_changing_m_moves_the_top50(tmp_path, monkeypatch):
    monkeypatch.setenv("RETRO_HOME", str(tmp_path))
    simulation.init_world(load_settings(tmp_path), seed=5, users=300, movies=600, days=6)
    at = AppTest.from_file(APP, default_timeout=30).run()
    default_ids = list(at.dataframe[0].value["movie_id"])
    at.number_input[0].set_value(1).run()
    assert not at.exception
    loose = at.dataframe[0].value
    assert len(loose) == 50 and list(loose["movie_id"]) != default_ids
    assert any("m = 1 votes" in c.value for c in at.caption)
