"""The ads model's training rows follow the user through the privacy requests (issue 25.6): the export lists
them, an erasure drops them (its own resumable step, 'ads'), a key rotation re-keys them. Before this, only
core.ads.pipeline's owner functions existed and no request called them."""
import pytest
from ads_testworld import ads_world
from conftest import private_copy

from core.ads import model as ads_model, pipeline as ads_pipeline
from core.privacy import erasure, export, keys
from core.pseudonym import pseudonym, pseudonym_key
from core.store import opsdb

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return ads_world(tmp_path_factory.mktemp("ads-privacy"))


def trained_user(s):
    """(user id, pseudonym, rows held in the ads training sets) of the user with the most training rows."""
    key = pseudonym_key(s)
    held = {}
    for d in ads_pipeline._artifact_dirs(s):
        for k in ads_model.read_rows(d)["user_key"].tolist():
            held[k] = held.get(k, 0) + 1
    with opsdb.session(s) as db:
        ids = [r[0] for r in db.execute("SELECT user_id FROM users").fetchall()]
    by_key = {pseudonym(u, key): u for u in ids}
    user_key = max((k for k in held if k in by_key), key=held.get)
    return by_key[user_key], user_key, held[user_key]


def rows_of(s, user_key):
    return sum(int((ads_model.read_rows(d)["user_key"] == user_key).sum()) for d in ads_pipeline._artifact_dirs(s))


def test_export_lists_the_users_ads_training_rows(world, tmp_path):
    s = private_copy(world, tmp_path / "copy")
    uid, user_key, n = trained_user(s)
    doc = export.export_user(s, uid, actor="operator:test")
    rows = doc["ads_model"]["ads_training_rows"]
    assert n > 0 and len(rows) == n == doc["stores"]["models.ads_training_rows"]
    assert {r["part"] for r in rows} <= {"train", "calibration", "holdout"}


def test_erasure_drops_them_in_its_own_step(world, tmp_path):
    s = private_copy(world, tmp_path / "copy")
    uid, user_key, n = trained_user(s)
    total = sum(len(ads_model.read_rows(d)["user_key"]) for d in ads_pipeline._artifact_dirs(s))
    summary = erasure.forget_user(s, uid, actor="operator:test")
    assert summary["ads"] == {"training_rows_erased": n}
    assert rows_of(s, user_key) == 0
    assert sum(len(ads_model.read_rows(d)["user_key"]) for d in ads_pipeline._artifact_dirs(s)) == total - n
    assert "ads" in erasure.ERASURE_STEPS and erasure.ERASURE_STEPS.index("ads") < erasure.ERASURE_STEPS.index("audit")


def test_key_rotation_rekeys_them(world, tmp_path):
    s = private_copy(world, tmp_path / "copy")
    uid, user_key, n = trained_user(s)
    total = sum(len(ads_model.read_rows(d)["user_key"]) for d in ads_pipeline._artifact_dirs(s))
    out = keys.rotate_key(s, actor="operator:test")
    assert out["ads_training_rows_rekeyed"] == total
    new_key = pseudonym(uid, pseudonym_key(s))
    assert new_key != user_key and rows_of(s, user_key) == 0 and rows_of(s, new_key) == n
