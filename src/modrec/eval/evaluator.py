"""Batched full-ranking evaluation: every item is a candidate, the user's history is
masked out, and the target's rank is counted in one pass per block of users.

Shapes: B users in a block, L history length read by the model, N items (+1 padding).
"""

from __future__ import annotations

import numpy as np
import torch

from modrec.data.batches import last_items, last_times, pad_right
from modrec.data.dataset import Sequences
from modrec.data.splits import EvalSet
from modrec.eval.metrics import ranking_metrics
from modrec.models.retrieval import Scorer


@torch.no_grad()
def user_vectors(
    model: Scorer, histories: list[np.ndarray], device: torch.device | str = "cpu",
    times: list[np.ndarray] | None = None,
) -> torch.Tensor:
    """The model's vector after the newest item of each history: ``(B, D)``; ``times``
    (when each history item happened) for datasets with timestamps."""
    inputs = pad_right(histories).to(device)  # (B, L)
    lengths = torch.tensor([len(h) for h in histories], device=device)
    input_times = None if times is None else pad_right(times).to(device)  # (B, L)
    return model.encode_last(inputs, lengths, input_times)  # (B, D)


def mask_seen(scores: torch.Tensor, histories: Sequences, index: np.ndarray) -> None:
    """In place: -inf for the padding item and every item in each listed history."""
    scores[:, 0] = -torch.inf
    lengths = histories.lengths()[index]
    rows = np.repeat(np.arange(len(index)), lengths)
    cols = np.concatenate([histories[int(i)] for i in index]).astype(np.int64)
    device = scores.device
    scores[torch.from_numpy(rows).to(device), torch.from_numpy(cols).to(device)] = -torch.inf


@torch.no_grad()
def rank_targets(
    model: Scorer, evalset: EvalSet, max_len: int, batch_size: int = 128,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """0-based rank of each target among all items not in the user's history.

    Ties count against the target (an item scoring exactly as high is ranked above
    it), so a model that scores everything alike gets no credit. If the target itself
    appears in the history (a repeat consumption), it stays rankable: only the other
    history items are removed.
    """
    if isinstance(model, torch.nn.Module):
        model.eval()  # dropout off; the caller switches back to train()
    items = model.item_vectors().to(device)  # (N + 1, D)
    # Blocks of similar history lengths: each is padded only to its own longest.
    by_length = np.argsort(np.minimum(evalset.histories.lengths(), max_len), kind="stable")
    ranks = np.empty(len(evalset), dtype=np.int64)
    for start in range(0, len(evalset), batch_size):
        index = by_length[start : start + batch_size]
        rows = torch.arange(len(index), device=device)
        targets = torch.from_numpy(evalset.targets[index]).to(device)  # (B,)
        users = user_vectors(model, last_items(evalset.histories, index, max_len), device,
                             last_times(evalset.histories, index, max_len))
        scores = users @ items.T  # (B, N + 1)
        target_scores = scores[rows, targets].unsqueeze(1)  # (B, 1)
        mask_seen(scores, evalset.histories, index)
        scores[rows, targets] = -torch.inf  # the target is not its own rival
        ranks[index] = (scores >= target_scores).sum(-1).cpu().numpy()
    return ranks


def evaluate(
    model: Scorer, evalset: EvalSet, max_len: int, batch_size: int = 128,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """Full-ranking HR@{1,10,50,200}, NDCG@{10,50,200} and MRR on ``evalset``."""
    return ranking_metrics(rank_targets(model, evalset, max_len, batch_size, device))
