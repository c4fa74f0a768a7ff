"""Ranking metrics as pure functions of 0-based ranks (rank 0 = the target came first).

Each metric is a mean over users of a per-user value, so a distributed evaluator only
needs to sum the per-user values and the count.
"""

from __future__ import annotations

import numpy as np

HR_KS = (1, 10, 50, 200)
NDCG_KS = (10, 50, 200)


def hit_rate(ranks: np.ndarray, k: int) -> float:
    """Share of users whose target is in the top k."""
    return float(np.mean(ranks < k))


def ndcg(ranks: np.ndarray, k: int) -> float:
    """With one relevant item, DCG is 1 / log2(rank + 2) inside the top k and the ideal
    DCG is 1."""
    gains = np.where(ranks < k, 1.0 / np.log2(ranks + 2.0), 0.0)
    return float(np.mean(gains))


def mrr(ranks: np.ndarray) -> float:
    """Mean reciprocal rank over the full ranking (no cut-off)."""
    return float(np.mean(1.0 / (ranks + 1.0)))


def ranking_metrics(
    ranks: np.ndarray, hr_ks: tuple[int, ...] = HR_KS, ndcg_ks: tuple[int, ...] = NDCG_KS
) -> dict[str, float]:
    ranks = np.asarray(ranks)
    if ranks.size == 0:
        raise ValueError("no ranks to compute metrics from")
    out = {f"hr@{k}": hit_rate(ranks, k) for k in hr_ks}
    out |= {f"ndcg@{k}": ndcg(ranks, k) for k in ndcg_ks}
    out["mrr"] = mrr(ranks)
    return out
