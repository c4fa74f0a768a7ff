from __future__ import annotations

import math

import numpy as np
import pytest

from modrec.eval import hit_rate, mrr, ndcg, ranking_metrics


def test_hand_computed_values() -> None:
    ranks = np.array([0, 1, 9, 10, 100])
    assert hit_rate(ranks, 1) == pytest.approx(1 / 5)
    assert hit_rate(ranks, 10) == pytest.approx(3 / 5)
    expected_ndcg10 = (1 + 1 / math.log2(3) + 1 / math.log2(11)) / 5
    assert ndcg(ranks, 10) == pytest.approx(expected_ndcg10)
    assert mrr(ranks) == pytest.approx((1 + 1 / 2 + 1 / 10 + 1 / 11 + 1 / 101) / 5)


def test_perfect_and_hopeless() -> None:
    assert ranking_metrics(np.zeros(4, dtype=int))["ndcg@200"] == pytest.approx(1.0)
    worst = ranking_metrics(np.full(4, 5000))
    assert worst["hr@200"] == 0.0 and worst["ndcg@10"] == 0.0
    assert set(worst) == {"hr@1", "hr@10", "hr@50", "hr@200", "ndcg@10", "ndcg@50",
                          "ndcg@200", "mrr"}


def test_empty_ranks_rejected() -> None:
    with pytest.raises(ValueError):
        ranking_metrics(np.array([]))
