from __future__ import annotations

import numpy as np
import pytest
import torch

from modrec.data.dataset import Sequences
from modrec.data.splits import EvalSet
from modrec.eval import NonFiniteScores, rank_targets
from modrec.eval.evaluator import rank_targets_blockwise
from modrec.models import ModelConfig, build_model


class FixedScores(torch.nn.Module):
    """A scorer whose user vector is one-hot on the user's last item, so its scores
    are a fixed row of a given matrix: easy to rank by hand."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = table  # (N + 1, N + 1): row = last item, column = score per item

    def encode_last(self, inputs: torch.Tensor, lengths: torch.Tensor,
                    times: torch.Tensor | None = None) -> torch.Tensor:
        last = inputs[torch.arange(len(lengths)), lengths - 1]
        return torch.nn.functional.one_hot(last, self.table.shape[0]).float()

    def item_vectors(self) -> torch.Tensor:
        return self.table.T

    def item_vectors_of(self, items: torch.Tensor) -> torch.Tensor:
        return self.table.T[items]


def test_history_is_masked_and_ties_count_against_target() -> None:
    # 5 items; whatever the last item, scores are item 5 > 4 > 3 > 2 > 1.
    table = torch.tensor([[0.0, 1, 2, 3, 4, 5]]).repeat(6, 1)
    histories = Sequences.from_lists([np.array([5, 4]), np.array([1]), np.array([2])])
    evalset = EvalSet(np.arange(3), histories, np.array([3, 3, 5]))
    ranks = rank_targets(FixedScores(table), evalset, max_len=10)
    # user 0: items 5 and 4 are history, so 3 comes first; user 1: 5 and 4 beat 3
    assert ranks.tolist() == [0, 2, 0]
    tied = torch.zeros(6, 6)
    assert rank_targets(FixedScores(tied), evalset, max_len=10).tolist() == [2, 3, 3]


def test_matches_a_plain_per_user_loop(ml100k) -> None:
    from modrec.data import leave_one_out

    split = leave_one_out(ml100k)
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="sasrec", dim=16, max_len=50), ml100k.num_items)
    fast = rank_targets(model, split.test, max_len=50, batch_size=97)
    model.eval()
    items = model.item_vectors()
    for row in range(0, len(split.test), 50):  # the reference: one user at a time
        history = torch.from_numpy(split.test.histories[row].astype(np.int64))
        inputs = history[-50:].unsqueeze(0)
        user = model.encode(inputs, torch.tensor([inputs.shape[1]]))[0, -1]
        scores = items @ user
        target = int(split.test.targets[row])
        candidates = [i for i in range(1, len(scores)) if i != target
                      and i not in set(history.tolist())]
        expected = sum(bool(scores[i] >= scores[target]) for i in candidates)
        assert fast[row] == expected


def test_ranking_the_catalog_in_blocks_gives_the_same_ranks() -> None:
    # What a sharded table's evaluation does: items read 2 at a time, ties and history
    # masking as in one pass, and extra (throw-away) user blocks change nothing.
    histories = Sequences.from_lists([np.array([5, 4]), np.array([1]), np.array([2, 3]),
                                      np.array([3])])
    evalset = EvalSet(np.arange(4), histories, np.array([3, 3, 5, 3]))
    for table in (torch.tensor([[0.0, 1, 2, 3, 4, 5]]).repeat(6, 1), torch.zeros(6, 6),
                  torch.randn(6, 6, generator=torch.Generator().manual_seed(0))):
        whole = rank_targets(FixedScores(table), evalset, max_len=10, batch_size=3)
        for block, user_blocks in ((2, 0), (5, 3), (100, 0)):
            blocks = rank_targets_blockwise(FixedScores(table), evalset, 5, max_len=10,
                                            batch_size=3, block=block,
                                            user_blocks=user_blocks)
            assert blocks.tolist() == whole.tolist()


def test_nan_scores_are_refused_not_ranked_first() -> None:
    """A NaN compares false with every rival, so counting the rivals scoring at least
    as high gave every target rank 0: HR@1 = 1.0 for a diverged model (issue 40)."""
    histories = Sequences.from_lists([np.array([1]), np.array([2])])
    evalset = EvalSet(np.arange(2), histories, np.array([3, 4]))
    table = torch.tensor([[0.0, 1, 2, 3, 4, 5]]).repeat(6, 1)
    table[2] = float("nan")  # the item vectors hold NaN
    with pytest.raises(NonFiniteScores, match="scores are NaN or infinite"):
        rank_targets(FixedScores(table), evalset, max_len=10)
    with pytest.raises(NonFiniteScores):
        rank_targets_blockwise(FixedScores(table), evalset, num_items=5, max_len=10, block=2)
    table[2] = torch.inf
    with pytest.raises(NonFiniteScores):
        rank_targets(FixedScores(table), evalset, max_len=10)
