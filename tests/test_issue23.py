"""Reproduced bugs of issue 23 (findings 4–9, 11): each test failed on the code before its fix."""
from __future__ import annotations

import pytest

from core import bounds, errors
from core.settings import load_settings
from core.simulation import simulation
from core.store import opsdb, writes


# ---------------------------------------------------------------- 4: ids leave room for growth
@pytest.mark.parametrize("add", [
    lambda db, i: writes.add_user(db, user_id=i),
    lambda db, i: writes.add_movie(db, "Far Away", 1970, "Drama", movie_id=i),
], ids=["user", "movie"])
def test_a_new_row_cannot_take_an_id_that_leaves_no_room_for_fresh_ones(small_db, add):
    with pytest.raises(errors.ValidationError, match="leaves no room") as caught:
        add(small_db, bounds.MAX_ID)
    assert caught.value.code == "no_room"
    assert add(small_db, bounds.MAX_GIVEN_ID) == bounds.MAX_GIVEN_ID     # the largest a new row may name


def test_the_largest_id_the_write_api_accepts_does_not_wedge_the_simulation(tmp_path):
    s = load_settings(tmp_path / "w")
    simulation.init_world(s, seed=5, users=1500, movies=40, days=1)
    db = opsdb.connect(s)
    try:
        for add in (lambda i: writes.add_user(db, user_id=i),
                    lambda i: writes.add_movie(db, "Far Away", 1970, "Drama", movie_id=i)):
            for given in (bounds.MAX_ID, getattr(bounds, "MAX_GIVEN_ID", bounds.MAX_ID)):
                try:
                    add(given)
                    break
                except errors.ValidationError:
                    continue
    finally:
        db.conn.close()
    summary = simulation.simulate(s, days=2, shift="new-releases", strength=0.1)   # sign-ups and new titles
    assert summary["new_users"] > 0
    db = opsdb.connect(s)
    try:
        for table, col in (("users", "user_id"), ("movies", "movie_id")):
            top = db.execute(f"SELECT max({col}) FROM {table}").fetchone()[0]
            assert bounds.MAX_ID - 2**31 < top <= bounds.MAX_ID
            bounds.check_id(top)
    finally:
        db.conn.close()
