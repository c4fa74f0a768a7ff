"""Evaluation: metrics as pure functions of ranks, and the batched full-ranking evaluator."""

from modrec.eval.evaluator import (
    NonFiniteScores,
    evaluate,
    mask_seen,
    rank_targets,
    user_vectors,
)
from modrec.eval.metrics import hit_rate, mrr, ndcg, ranking_metrics

__all__ = ["NonFiniteScores", "evaluate", "hit_rate", "mask_seen", "mrr", "ndcg", "rank_targets",
           "ranking_metrics", "user_vectors"]
