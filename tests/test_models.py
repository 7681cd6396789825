"""Recommenders: one checkerboard with a known answer, shared by every model, plus behaviour tests.

The checkerboard: users 0..44 (group A) interacted with about half of items 0..19,
users 45..59 (group B) with about half of items 20..39, nobody across groups. A
personalised model must recommend a user only their own group's unseen items;
the most-popular baseline gives everyone group A's items (group A is larger).
"""
import json

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.errors import RetroError, ValidationError
from core.training.models import (ALSRecommender, BlendRecommender, BPRRecommender, EASERecommender, ModelNotTrained,
    PopularityRecommender, WeightedRatingRecommender, load_model)

N_A, N_B, GROUP = 45, 15, 20
N_USERS, N_ITEMS = N_A + N_B, 2 * GROUP
K = 5
RANKED = [25, 3, 39, 0, 10, 21, 7, 33, 14]  # a curated list of item columns, best first

# Small settings that fit the checkerboard; the MovieLens-tuned defaults are for real data sizes.
FACTORIES = {
    "als": lambda **kw: ALSRecommender(**{"factors": 32, "regularization": 5.0, "alpha": 2.0, **kw}),
    "bpr": lambda **kw: BPRRecommender(**{"factors": 16, "learning_rate": 0.05, "regularization": 0.01,
                                          "iterations": 100, **kw}),
    "ease": lambda **kw: EASERecommender(**{"regularization": 5.0, **kw}),
    "blend": lambda **kw: BlendRecommender(**{"factors": 16, "regularization": 5.0, "alpha": 2.0, "iterations": 10,
                                              "ease_regularization": 5.0, **kw}),
    "popularity": lambda **kw: PopularityRecommender(),
    "weighted_rating": lambda **kw: WeightedRatingRecommender(RANKED),
}
PERSONALISED = ["als", "bpr", "ease", "blend"]
FACTORISED = ["als", "bpr"]                     # models with user and item factors
SMALL = {"als": {"factors": 3, "iterations": 5}, "bpr": {"factors": 3, "iterations": 5}, "ease": {},
         "blend": {"factors": 3, "iterations": 5}}


def make_checkerboard(seed: int = 0) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    dense = np.zeros((N_USERS, N_ITEMS), dtype=np.float32)
    for u in range(N_USERS):
        g = 0 if u < N_A else 1
        dense[u, g * GROUP:(g + 1) * GROUP] = rng.random(GROUP) < 0.5
    return sp.csr_matrix(dense)


def group_of_user(u: int) -> range:
    return range(0, GROUP) if u < N_A else range(GROUP, N_ITEMS)


@pytest.fixture(scope="module")
def checkerboard() -> sp.csr_matrix:
    return make_checkerboard()


@pytest.fixture(scope="module", params=list(FACTORIES))
def fitted(request, checkerboard):
    """(name, model fitted on the checkerboard, matrix): the mixin every model's tests share."""
    return request.param, FACTORIES[request.param]().fit(checkerboard), checkerboard


def all_recs(model, m, k=K, **kw):
    return model.recommend(np.arange(m.shape[0]), m, k=k, **kw)


# --- the known answer ------------------------------------------------------------------------

def test_checkerboard_known_answer(fitted):
    name, model, m = fitted
    ids, _ = all_recs(model, m)
    dense = m.toarray()
    if name in PERSONALISED:
        for u in range(N_USERS):
            unseen_in_group = {i for i in group_of_user(u) if dense[u, i] == 0}
            assert set(ids[u]) <= unseen_in_group, f"user {u} got {ids[u]}"
    elif name == "popularity":
        counts = dense.sum(axis=0)
        assert counts[:GROUP].min() > counts[GROUP:].max()  # precondition: group A is more popular
        expected_b = sorted(range(GROUP), key=lambda i: (-counts[i], i))[:K]
        for u in range(N_A, N_USERS):  # group B users get group A's most popular items: no taste
            assert ids[u].tolist() == expected_b
    else:  # weighted rating: the list in order, minus what the user has seen
        for u in range(N_USERS):
            expected = [i for i in RANKED if dense[u, i] == 0][:K]
            assert ids[u].tolist() == expected + [-1] * (K - len(expected))


def test_popularity_scores_are_user_counts():
    # 3 users × 4 items: item 0 by 3 users, item 1 by 1, item 2 by 2 (a weight of 5 still counts once), item 3 by 0
    m = sp.csr_matrix(np.array([[1, 0, 5, 0], [1, 0, 1, 0], [1, 1, 0, 0]], dtype=np.float32))
    model = PopularityRecommender().fit(m)
    np.testing.assert_array_equal(model.item_scores_, [3, 1, 2, 0])
    ids, scores = model.recommend([0, 1, 2], m, k=2)
    # user 0 saw 0 and 2 → 1 then 3; user 1 saw 0, 2 → 1, 3; user 2 saw 0, 1 → 2, 3
    assert ids.tolist() == [[1, 3], [1, 3], [2, 3]]
    assert scores.tolist() == [[1, 0], [1, 0], [2, 0]]


# --- behaviour shared by every model ---------------------------------------------------------

def test_output_shapes_dtypes_and_padding(fitted):
    _, model, m = fitted
    ids, scores = all_recs(model, m, k=N_ITEMS + 3)  # longer than the catalog → padding
    assert ids.shape == scores.shape == (N_USERS, N_ITEMS + 3)
    assert ids.dtype == np.int64 and scores.dtype == np.float32
    pad = ids == -1
    assert pad[:, -3:].all()
    assert np.isneginf(scores[pad]).all() and np.isfinite(scores[~pad]).all()
    assert (np.diff(pad.astype(int), axis=1) >= 0).all()  # padding only at the end
    assert (np.diff(np.where(pad, -1e30, scores), axis=1) <= 1e-6).all()  # best first


def test_seen_items_never_recommended_on_checkerboard(fitted):
    _, model, m = fitted
    ids, _ = all_recs(model, m, k=N_ITEMS)
    for u in range(N_USERS):
        assert not set(ids[u].tolist()) & set(m[u].indices.tolist())


def test_filter_seen_false_may_return_seen_items(fitted):
    name, model, m = fitted
    ids, _ = all_recs(model, m, k=N_ITEMS, filter_seen=False)
    n_listed = len(RANKED) if name == "weighted_rating" else N_ITEMS
    assert ((ids >= 0).sum(axis=1) == n_listed).all()


def test_score_items_matches_recommend(fitted):
    _, model, m = fitted
    ids, scores = model.recommend([3, N_USERS - 1], m, k=K)
    for row, user in enumerate([3, N_USERS - 1]):
        keep = ids[row] >= 0
        np.testing.assert_allclose(model.score_items(user, ids[row][keep], m), scores[row][keep], rtol=1e-5)


def test_save_load_round_trip_identical(fitted, tmp_path):
    name, model, m = fitted
    meta = model.save(tmp_path / name)
    assert sorted(p.name for p in (tmp_path / name).iterdir()) == ["model.json", "model.npz"]
    assert json.loads((tmp_path / name / "model.json").read_text()) == meta
    assert meta["name"] == name and meta["params"] == model.params()
    loaded = load_model(tmp_path / name)
    assert type(loaded) is type(model) and loaded.params() == model.params()
    a, b = all_recs(model, m), all_recs(loaded, m)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    with np.load(tmp_path / name / "model.npz", allow_pickle=False) as arrays:  # no pickled objects inside
        assert all(arrays[key].dtype != object for key in arrays.files)


@pytest.mark.parametrize("name", list(FACTORIES))
def test_model_not_trained(name, checkerboard, tmp_path):
    model = FACTORIES[name]()
    with pytest.raises(ModelNotTrained, match="not trained"):
        model.recommend([0], checkerboard)
    with pytest.raises(ModelNotTrained):
        model.save(tmp_path)
    with pytest.raises(ModelNotTrained):
        model.score_items(0, [1], checkerboard)
    assert issubclass(ModelNotTrained, RetroError)


def test_load_model_from_empty_folder_is_model_not_trained(tmp_path):
    with pytest.raises(ModelNotTrained, match="no saved model"):
        load_model(tmp_path)


@pytest.mark.parametrize("name", list(FACTORIES))
def test_estimator_conventions(name):
    model = FACTORIES[name]()
    params = model.params()
    assert set(vars(model)) == set(params)  # __init__ only stores parameters
    assert type(model)(**params).params() == params
    assert not [a for a in vars(model) if a.endswith("_")]


def test_fit_returns_self_and_learned_attributes_end_in_underscore(checkerboard):
    model = ALSRecommender(factors=4, iterations=2)
    assert model.fit(checkerboard) is model
    assert model.user_factors_.shape == (N_USERS, 4) and model.item_factors_.shape == (N_ITEMS, 4)


def test_bad_inputs_raise_validation_errors(fitted):
    _, model, m = fitted
    with pytest.raises(ValidationError, match="item columns"):
        model.recommend([0], m[:, :-1].tocsr())
    with pytest.raises(ValidationError, match="user rows"):
        model.recommend([N_USERS], m)
    with pytest.raises(ValidationError, match="k must"):
        model.recommend([0], m, k=0)


@pytest.mark.parametrize("name", ["als", "bpr", "ease", "blend", "popularity"])
def test_fit_on_empty_matrix_says_nothing_to_train_on(name):
    with pytest.raises(ValidationError, match="nothing to train on"):
        FACTORIES[name]().fit(sp.csr_matrix((3, 4), dtype=np.float32))


def test_weighted_rating_rejects_bad_lists(checkerboard):
    with pytest.raises(ValidationError, match="item columns"):
        WeightedRatingRecommender([0, N_ITEMS]).fit(checkerboard)
    with pytest.raises(ValidationError, match="repeat"):
        WeightedRatingRecommender([1, 1]).fit(checkerboard)


@st.composite
def interaction_matrix(draw):
    n_users, n_items = draw(st.integers(1, 8)), draw(st.integers(1, 12))
    cells = draw(st.sets(st.tuples(st.integers(0, n_users - 1), st.integers(0, n_items - 1)), min_size=1))
    rows, cols = zip(*cells)
    m = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(n_users, n_items))
    k = draw(st.integers(1, n_items + 2))
    ranked = draw(st.permutations(range(n_items)))[: draw(st.integers(0, n_items))]
    return m, k, ranked


@pytest.mark.parametrize("name", list(FACTORIES))
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(problem=interaction_matrix())
def test_seen_items_never_recommended_property(name, problem):
    m, k, ranked = problem
    model = WeightedRatingRecommender(ranked) if name == "weighted_rating" else \
        FACTORIES[name](**SMALL.get(name, {}))
    ids, scores = model.fit(m).recommend(np.arange(m.shape[0]), m, k=k)
    assert ids.shape == (m.shape[0], k)
    for u in range(m.shape[0]):
        got = ids[u][ids[u] >= 0].tolist()
        assert not set(got) & set(m[u].indices.tolist())
        assert len(got) == len(set(got))  # no repeats
        assert (ids[u][len(got):] == -1).all()  # padding at the end


# --- reproducibility --------------------------------------------------------------------------

@pytest.mark.parametrize("name", FACTORISED)
def test_same_seed_same_factors(name, checkerboard):
    a = FACTORIES[name](random_state=7).fit(checkerboard)
    b = FACTORIES[name](random_state=7).fit(checkerboard)
    c = FACTORIES[name](random_state=8).fit(checkerboard)
    assert np.array_equal(a.user_factors_, b.user_factors_)
    assert np.array_equal(a.item_factors_, b.item_factors_)
    assert not np.array_equal(a.item_factors_, c.item_factors_)


def test_als_alpha_is_applied_once_by_implicit(checkerboard):
    # implicit multiplies the raw matrix by alpha: alpha=3 on X must equal alpha=1 on 3·X.
    # A second scaling in the wrapper would break this equality.
    a = FACTORIES["als"](alpha=3.0).fit(checkerboard)
    b = FACTORIES["als"](alpha=1.0).fit((checkerboard * 3).tocsr())
    np.testing.assert_allclose(a.item_factors_, b.item_factors_, rtol=1e-4, atol=1e-6)


# --- ALS explanations and erasure -------------------------------------------------------------

@pytest.fixture(scope="module")
def als(checkerboard):
    return FACTORIES["als"]().fit(checkerboard)


def test_als_explain_uses_only_the_users_items(als, checkerboard):
    user = N_A + 2  # a group B user
    item = int(als.recommend([user], checkerboard, k=1)[0][0, 0])
    row_items = set(checkerboard[user].indices.tolist())
    contributions = als.explain(user, checkerboard, item, n=3)
    assert len(contributions) == 3
    assert {i for i, _ in contributions} <= row_items
    values = [c for _, c in contributions]
    assert values == sorted(values, reverse=True)
    # with n ≥ the row length, the contributions add up to the explained score
    total, everything = als.explain_score(user, checkerboard, item, n=len(row_items))
    assert len(everything) == len(row_items)
    assert sum(c for _, c in everything) == pytest.approx(total, rel=1e-4)


def test_als_explain_is_faithful_removing_top_contributor_lowers_the_score(als, checkerboard):
    for user in (1, N_A + 2):
        item = int(als.recommend([user], checkerboard, k=1)[0][0, 0])
        before, top = als.explain_score(user, checkerboard, item, n=1)
        lil = checkerboard.tolil()
        lil[user, top[0][0]] = 0
        without = lil.tocsr()
        without.eliminate_zeros()
        after, _ = als.explain_score(user, without, item, n=1)
        assert after < before, f"user {user}: removing item {top[0][0]} did not lower item {item}'s score"


def test_als_explain_before_fit():
    with pytest.raises(ModelNotTrained):
        ALSRecommender().explain(0, sp.csr_matrix((1, 1), dtype=np.float32), 0)


@pytest.mark.parametrize("name", FACTORISED)
def test_drop_user_erases_factors_and_personal_list(name, checkerboard, tmp_path):
    model = FACTORIES[name]().fit(checkerboard)
    before = all_recs(model, checkerboard)[0]
    model.drop_user(4)
    assert not model.user_factors_[4].any()
    after = all_recs(model, checkerboard)[0]
    assert (after[4] == -1).all()
    np.testing.assert_array_equal(np.delete(after, 4, axis=0), np.delete(before, 4, axis=0))
    model.save(tmp_path)
    assert not load_model(tmp_path).user_factors_[4].any()


# --- speed ----------------------------------------------------------------------------------

def test_batch_recommend_for_3000_users_gives_full_unseen_lists():
    """Every user of a batch gets k distinct titles they have not seen (the speed is benchmarks/bench_scale.py's)."""
    rng = np.random.default_rng(0)
    n_users, n_items, nnz = 3000, 1500, 60_000
    m = sp.csr_matrix((np.ones(nnz, np.float32), (rng.integers(0, n_users, nnz), rng.integers(0, n_items, nnz))),
                      shape=(n_users, n_items))
    m.data[:] = 1
    for model in (ALSRecommender(iterations=3), EASERecommender(), PopularityRecommender()):
        model.fit(m)
        ids, _ = model.recommend(np.arange(n_users), m, k=10)
        assert ids.shape == (n_users, 10) and (ids >= 0).all(), model.name
        assert all(len(set(row)) == 10 for row in ids.tolist()), model.name
        seen = m.tolil().rows
        assert not any(set(row) & set(seen[u]) for u, row in enumerate(ids.tolist())), model.name


BLAS_PROBE = """
import warnings
import numpy as np, scipy.sparse as sp, threadpoolctl
from core.training import models

def blas_threads():
    return sorted({i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"})

before = blas_threads()
matrix = sp.csr_matrix((np.random.default_rng(0).random((60, 40)) < 0.3).astype(np.float32))
with warnings.catch_warnings():
    warnings.simplefilter("error", RuntimeWarning)      # implicit warns when BLAS runs more than one thread
    model = models.ALSRecommender(factors=8, iterations=3).fit(matrix)
after_fit = blas_threads()
discoveries = []
original = threadpoolctl.ThreadpoolController._load_libraries
threadpoolctl.ThreadpoolController._load_libraries = lambda self: (discoveries.append(1), original(self))[1]
for user in range(60):
    model.recommend([user], matrix, 5)
threadpoolctl.ThreadpoolController._load_libraries = original
print(before, after_fit, blas_threads(), len(discoveries))
"""


def test_blas_is_pinned_to_one_thread_once_per_process():
    """A fresh process (BLAS at two threads) fits implicit ALS without implicit's multi-thread warning;
    afterwards every BLAS runs one thread, and 60 recommendations never re-discover the loaded libraries
    (issue 16: the per-call `threadpool_limits` read /proc/self/maps on every request)."""
    import os
    import subprocess
    import sys
    from pathlib import Path
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")} | {"OPENBLAS_NUM_THREADS": "2"}
    out = subprocess.run([sys.executable, "-c", BLAS_PROBE], capture_output=True, text=True, env=env, timeout=120,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0, out.stderr
    # BLAS threads before any model work, after the fit, after serving; library discoveries while serving.
    assert out.stdout.split() == ["[2]", "[1]", "[1]", "0"], out.stdout


def test_ranker_predictions_run_single_threaded_openmp_and_restore_it():
    """The ranker scores 50 candidates on one OpenMP thread (a thread team per tree cost more than the work)
    and leaves the calling thread's OpenMP setting as it was (training still uses every core)."""
    from threadpoolctl import threadpool_info
    from core.training.ranker import single_threaded_openmp

    def openmp_threads():
        return {i["num_threads"] for i in threadpool_info() if i["user_api"] == "openmp"}
    outside = openmp_threads()
    with single_threaded_openmp():
        assert openmp_threads() == {1}
    assert openmp_threads() == outside
