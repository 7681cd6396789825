"""Ranking metrics: exact hand-computed values, edge cases and Hypothesis properties."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.training.metrics import (catalog_coverage, evaluate_lists, hit_rate_at_k, map_at_k, ndcg_at_k, novelty,
    precision_at_k, recall_at_k)

L3 = 1 / math.log2(3)  # discount at rank 2: 1/log2(3) ≈ 0.6309

# Two users, k = 3.
#   user 0: [1, 2, 3] vs {1, 3, 9} → hits at ranks 1 and 3
#   user 1: [4, 5, -1] vs {5}      → hit at rank 2; -1 is padding
REC = [[1, 2, 3], [4, 5, -1]]
REL = [{1, 3, 9}, {5}]


@pytest.mark.parametrize("rec", [REC, np.array(REC)], ids=["lists", "array"])
class TestHandComputed:
    def test_precision(self, rec):
        # user 0: 2/3; user 1: 1/3 (padding counts as a miss) → mean 1/2
        assert precision_at_k(rec, REL, k=3) == pytest.approx(0.5)

    def test_recall(self, rec):
        # user 0: 2/|{1,3,9}| = 2/3; user 1: 1/1 → mean (2/3 + 1)/2 = 5/6
        assert recall_at_k(rec, REL, k=3) == pytest.approx(5 / 6)

    def test_ndcg(self, rec):
        # user 0: DCG = 1/log2(2) + 1/log2(4) = 1.5; IDCG (3 relevant) = 1 + 1/log2(3) + 1/2
        # user 1: DCG = 1/log2(3); IDCG (1 relevant) = 1
        u0 = 1.5 / (1.5 + L3)
        u1 = L3
        assert ndcg_at_k(rec, REL, k=3) == pytest.approx((u0 + u1) / 2)
        assert (u0 + u1) / 2 == pytest.approx(0.66742, abs=1e-5)

    def test_map(self, rec):
        # user 0: (P@1·1 + P@3·1) / min(3, 3) = (1 + 2/3) / 3 = 5/9
        # user 1: (P@2·1) / min(1, 3) = 1/2 → MAP = (5/9 + 1/2)/2 = 19/36
        assert map_at_k(rec, REL, k=3) == pytest.approx(19 / 36)

    def test_hit_rate(self, rec):
        # both users have at least one hit
        assert hit_rate_at_k(rec, REL, k=3) == 1.0

    def test_coverage(self, rec):
        # distinct non-padding items {1, 2, 3, 4, 5} out of 10
        assert catalog_coverage(rec, n_items=10, k=3) == pytest.approx(0.5)


def test_recall_denominator_is_relevant_count_not_k():
    # 2 hits out of 4 relevant at k = 2: recall 2/4 (not 2/min(4, 2) = 1), precision 2/2
    rec, rel = [[1, 2]], [{1, 2, 3, 4}]
    assert recall_at_k(rec, rel, k=2) == pytest.approx(0.5)
    assert precision_at_k(rec, rel, k=2) == 1.0
    # ideal DCG and AP normaliser use min(|rel|, k) = 2, so a perfect top-2 scores 1
    assert ndcg_at_k(rec, rel, k=2) == pytest.approx(1.0)
    assert map_at_k(rec, rel, k=2) == pytest.approx(1.0)


def test_three_users_one_without_relevant_items_is_skipped():
    # user 0: [10, 20] vs {20}: P 1/2, R 1, nDCG 1/log2(3), AP (1/2)/1 = 1/2
    # user 1: [30, 40] vs {}: skipped
    # user 2: [50, 60] vs {70}: all zero
    rec, rel = [[10, 20], [30, 40], [50, 60]], [{20}, set(), {70}]
    out = evaluate_lists(rec, rel, n_items=100, item_popularity=np.ones(100), n_users=3, k=2)
    assert out["users_evaluated"] == 2
    assert out["precision@2"] == pytest.approx((1 / 2 + 0) / 2)
    assert out["recall@2"] == pytest.approx((1 + 0) / 2)
    assert out["ndcg@2"] == pytest.approx(L3 / 2)
    assert out["map@2"] == pytest.approx(0.25)
    assert out["hit_rate@2"] == pytest.approx(0.5)
    # coverage uses every list, including the skipped user's: 6 distinct / 100
    assert out["coverage"] == pytest.approx(0.06)


def test_four_users_map_and_ndcg():
    # k = 4
    # u0 [1,2,3,4] vs {2,4}: AP = (1/2 + 2/4)/2 = 1/2; DCG = 1/log2 3 + 1/log2 5; IDCG = 1 + 1/log2 3
    # u1 [5,6,7,8] vs {5}:   AP = 1; nDCG = 1
    # u2 [9,10,11,12] vs {13}: 0
    # u3 [1,2,3,4] vs {1,2,3,4,5,6}: AP = (1+1+1+1)/min(6,4) = 1; nDCG = 1; recall 4/6
    rec = [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12], [1, 2, 3, 4]]
    rel = [{2, 4}, {5}, {13}, {1, 2, 3, 4, 5, 6}]
    u0_ndcg = (L3 + 1 / math.log2(5)) / (1 + L3)
    assert map_at_k(rec, rel, k=4) == pytest.approx((0.5 + 1 + 0 + 1) / 4)
    assert ndcg_at_k(rec, rel, k=4) == pytest.approx((u0_ndcg + 1 + 0 + 1) / 4)
    assert recall_at_k(rec, rel, k=4) == pytest.approx((1 + 1 + 0 + 4 / 6) / 4)
    assert precision_at_k(rec, rel, k=4) == pytest.approx((2 / 4 + 1 / 4 + 0 + 1) / 4)
    assert hit_rate_at_k(rec, rel, k=4) == pytest.approx(3 / 4)


def test_all_users_without_relevant_items_gives_nan():
    out = evaluate_lists([[1, 2]], [set()], n_items=5, item_popularity=np.ones(5), n_users=1, k=2)
    assert out["users_evaluated"] == 0
    assert math.isnan(out["ndcg@2"]) and math.isnan(precision_at_k([[1, 2]], [set()], k=2))
    assert out["coverage"] == pytest.approx(2 / 5)


def test_padding_is_ignored_and_short_lists_equal_padded_ones():
    # [7, -1, -1] vs {7}: P = 1/3, R = 1, nDCG = 1, AP = 1
    for rec in ([[7, -1, -1]], [[7]], np.array([[7, -1, -1]])):
        assert precision_at_k(rec, [{7}], k=3) == pytest.approx(1 / 3)
        assert recall_at_k(rec, [{7}], k=3) == 1.0
        assert ndcg_at_k(rec, [{7}], k=3) == pytest.approx(1.0)
        assert map_at_k(rec, [{7}], k=3) == pytest.approx(1.0)
    assert catalog_coverage([[7, -1, -1]], n_items=4, k=3) == pytest.approx(1 / 4)


def test_only_the_first_k_items_count():
    # the relevant item sits at rank 4, outside the top 3
    assert hit_rate_at_k([[0, 1, 2, 3]], [{3}], k=3) == 0.0
    assert hit_rate_at_k([[0, 1, 2, 3]], [{3}], k=4) == 1.0


def test_repeated_item_counts_once():
    # [1, 1] vs {1}: only rank 1 is a hit → precision 1/2
    assert precision_at_k([[1, 1]], [{1}], k=2) == pytest.approx(0.5)


def test_perfect_ranking_scores_one():
    rel = [{3, 1, 4}, {9}]
    rec = [[3, 1, 4], [9, -1, -1]]
    assert ndcg_at_k(rec, rel, k=3) == pytest.approx(1.0)
    assert map_at_k(rec, rel, k=3) == pytest.approx(1.0)
    assert recall_at_k(rec, rel, k=3) == pytest.approx(1.0)
    assert hit_rate_at_k(rec, rel, k=3) == 1.0


def test_novelty_hand_computed_and_zero_popularity_clipped_to_one():
    # 8 users; popularity of items 0..3 = 0, 8, 4, 2
    # -log2(8/8) = 0, -log2(4/8) = 1, -log2(2/8) = 2, item 0: 0 → clipped to 1 → -log2(1/8) = 3
    pop = np.array([0, 8, 4, 2])
    assert novelty([[1, 2], [3, 0]], pop, n_users=8, k=2) == pytest.approx((0 + 1 + 2 + 3) / 4)
    # padding ignored: only item 2 counts
    assert novelty([[2, -1]], pop, n_users=8, k=2) == pytest.approx(1.0)
    assert math.isnan(novelty([[-1, -1]], pop, n_users=8, k=2))


def test_evaluate_lists_keys_and_agreement_with_single_functions():
    rng = np.random.default_rng(0)
    rec = np.stack([rng.permutation(50)[:12] for _ in range(30)])
    rel = [set(rng.choice(50, size=rng.integers(0, 6), replace=False).tolist()) for _ in range(30)]
    pop = rng.integers(0, 30, size=50)
    out = evaluate_lists(rec, rel, n_items=50, item_popularity=pop, n_users=30)
    assert set(out) == {"precision@10", "recall@10", "ndcg@10", "map@10", "hit_rate@10", "coverage", "novelty",
                        "users_evaluated"}
    assert out["precision@10"] == pytest.approx(precision_at_k(rec, rel))
    assert out["recall@10"] == pytest.approx(recall_at_k(rec, rel))
    assert out["ndcg@10"] == pytest.approx(ndcg_at_k(rec, rel))
    assert out["map@10"] == pytest.approx(map_at_k(rec, rel))
    assert out["hit_rate@10"] == pytest.approx(hit_rate_at_k(rec, rel))
    assert out["coverage"] == pytest.approx(catalog_coverage(rec, 50))
    assert out["novelty"] == pytest.approx(novelty(rec, pop, 30))
    assert out["users_evaluated"] == sum(1 for r in rel if r)


def test_mismatched_lengths_rejected():
    with pytest.raises(ValueError, match="relevant"):
        precision_at_k([[1], [2]], [{1}], k=1)


def test_three_thousand_users_match_a_plain_loop():
    """The vectorized metrics on 3,000 users equal a per-user loop (their speed is benchmarks/bench_scale.py's)."""
    rng = np.random.default_rng(1)
    n = 3000
    rec = np.array([rng.choice(5000, size=10, replace=False) for _ in range(n)])
    rel = [set(rng.integers(0, 5000, size=30).tolist()) | ({int(rec[u, u % 10])} if u % 3 == 0 else set())
           for u in range(n)]
    out = evaluate_lists(rec, rel, n_items=5000, item_popularity=rng.integers(0, n, 5000), n_users=n)
    hits = [sum(int(i) in r for i in row) for row, r in zip(rec, rel)]
    assert out["precision@10"] == pytest.approx(np.mean(hits) / 10)
    assert out["hit_rate@10"] == pytest.approx(np.mean([h > 0 for h in hits]))
    assert out["recall@10"] == pytest.approx(np.mean([h / len(r) for h, r in zip(hits, rel)]))
    assert out["users_evaluated"] == n and out["hit_rate@10"] >= 1 / 3


@st.composite
def ranking_problem(draw):
    n_items = draw(st.integers(1, 30))
    k = draw(st.integers(1, 10))
    n_users = draw(st.integers(1, 8))
    items = st.integers(0, n_items - 1)
    rec = [draw(st.lists(items, max_size=k, unique=True)) for _ in range(n_users)]
    rel = [draw(st.sets(items, max_size=n_items)) for _ in range(n_users)]
    return rec, rel, n_items, k


@settings(max_examples=200, deadline=None)
@given(ranking_problem())
def test_properties_range_and_hit_rate_at_least_precision(problem):
    rec, rel, n_items, k = problem
    out = evaluate_lists(rec, rel, n_items, np.arange(n_items), n_users=max(1, n_items), k=k)
    if not any(rel):
        assert out["users_evaluated"] == 0 and math.isnan(out[f"ndcg@{k}"])
        return
    for name in ("precision", "recall", "ndcg", "map", "hit_rate"):
        assert 0.0 <= out[f"{name}@{k}"] <= 1.0 + 1e-12, name
    assert 0.0 <= out["coverage"] <= 1.0
    assert out[f"hit_rate@{k}"] >= out[f"precision@{k}"]
    # nDCG and MAP are 1 exactly when the list starts with min(|rel|, k) relevant items
    perfect = [sorted(r)[:k] for r in rel]
    assert ndcg_at_k(perfect, rel, k) == pytest.approx(1.0)
    assert map_at_k(perfect, rel, k) == pytest.approx(1.0)
