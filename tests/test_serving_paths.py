"""One decision path for `recommend` and `recommend_many` (issue 14): they gave different reasons for a user
whose factors were erased ("factors were erased" vs "no history … (cold start)")."""
import pytest
from conftest import private_copy

from core.training import registry
from core.serving import serving
from core.pseudonym import pseudonym, pseudonym_key


@pytest.fixture(scope="module")
def trained(cf_world):
    return cf_world


def test_single_and_batch_serving_decide_alike(trained, tmp_path):
    s = private_copy(trained, tmp_path / "w")
    bundle = serving.bundle_for(registry.production(s))
    key = pseudonym_key(s)
    known = [u for u in range(1, 60) if bundle.user_row.get(pseudonym(u, key)) is not None]
    erased, normal = known[0], known[1]
    bundle.model.user_factors_[bundle.user_row[pseudonym(erased, key)]] = 0.0     # as an erasure leaves them
    single = {u: serving.recommend(s, u, log=False) for u in (erased, normal)}
    batch = serving.recommend_many(s, [erased, normal], log=False)
    for u in (erased, normal):
        assert (single[u].path, single[u].reason) == (batch[u].path, batch[u].reason)
        assert single[u].movie_ids == batch[u].movie_ids
    assert single[erased].path == "top50:cold-start" and "erased" in single[erased].reason
    assert single[normal].path == "model"
    serving.clear_caches()


def test_fallback_reasons_by_hand():
    assert serving.fallback_reason(False, None, None)[0] == "top50:no-consent"
    assert serving.fallback_reason(True, None, None)[0] == "top50:no-model"
