"""Batched full-ranking evaluation: every item is a candidate, the user's history is
masked out, and the target's rank is counted in one pass per block of users.

Shapes: B users in a block, L history length read by the model, N items (+1 padding).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

from modrec.data.batches import last_items, last_times, pad_right
from modrec.data.dataset import Sequences
from modrec.data.splits import EvalSet
from modrec.errors import ModrecError
from modrec.eval.metrics import ranking_metrics
from modrec.models.retrieval import Scorer


class NonFiniteScores(ModrecError, ValueError):
    """The model scored items NaN or infinite: its weights hold such values (a training
    run that diverged) or its products overflow. A NaN compares false with everything,
    so it would rank every target first; the evaluation stops instead."""

    def __init__(self) -> None:
        super().__init__("the model's scores are NaN or infinite (its weights hold NaN or "
                         "infinite values, or their products overflow)")


def check_finite(scores: torch.Tensor) -> None:
    """Raise `NonFiniteScores` unless every score of the ``(B, K)`` block is finite (call
    it before masking, which writes -inf)."""
    if not bool(torch.isfinite(scores).all()):
        raise NonFiniteScores


class LookupScorer(Protocol):
    """A model whose item vectors are looked up by index (`RetrievalModel`)."""

    def encode_last(self, inputs: torch.Tensor, lengths: torch.Tensor,
                    times: torch.Tensor | None = None) -> torch.Tensor: ...

    def item_vectors_of(self, items: torch.Tensor) -> torch.Tensor: ...


@torch.no_grad()
def user_vectors(
    model: Scorer | LookupScorer, histories: list[np.ndarray],
    device: torch.device | str = "cpu",
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
        check_finite(scores)  # a NaN target would rank first: no rival compares above it
        target_scores = scores[rows, targets].unsqueeze(1)  # (B, 1)
        mask_seen(scores, evalset.histories, index)
        scores[rows, targets] = -torch.inf  # the target is not its own rival
        ranks[index] = (scores >= target_scores).sum(-1).cpu().numpy()
    return ranks


@torch.no_grad()
def rank_targets_blockwise(
    model: LookupScorer, evalset: EvalSet, num_items: int, max_len: int,
    batch_size: int = 128, device: torch.device | str = "cpu", block: int = 65536,
    user_blocks: int = 0,
) -> np.ndarray:
    """`rank_targets` reading the catalog ``block`` items at a time through
    ``model.item_vectors_of``, for an item table no process holds whole (a sharded
    one): the users' vectors are computed once, then every block of items adds, for
    each user, the unmasked items that score at least as high as the target. The same
    ranks, with the same ties and masking, as `rank_targets`.

    A sharded table's lookups are collective, so every rank must make as many: the
    catalog's blocks are alike everywhere, and ``user_blocks`` (the most blocks of
    users any rank has) pads this rank's user blocks with a throw-away one."""
    if isinstance(model, torch.nn.Module):
        model.eval()
    count = len(evalset)
    by_length = np.argsort(np.minimum(evalset.histories.lengths(), max_len), kind="stable")
    users = torch.empty(count, 0, device=device)
    starts = range(0, count, batch_size)
    for i in range(max(len(starts), user_blocks)):
        if i >= len(starts):  # a lookup the other ranks make too; its answer is unused
            user_vectors(model, [np.ones(1, dtype=np.int64)], device)
            continue
        index = by_length[starts[i] : starts[i] + batch_size]
        vectors = user_vectors(model, last_items(evalset.histories, index, max_len), device,
                               last_times(evalset.histories, index, max_len))  # (B, D)
        if users.shape[1] == 0:
            users = torch.empty(count, vectors.shape[1], device=device)
        users[torch.from_numpy(index).to(device)] = vectors
    targets = torch.from_numpy(evalset.targets).to(device)  # (U,)
    target_scores = (users * model.item_vectors_of(targets)).sum(-1, keepdim=True)  # (U, 1)
    check_finite(target_scores)
    # What is never a rival, as (user, item) pairs ordered by item: the history (as
    # `mask_seen`) and the target itself; padding (item 0) is in no block.
    lengths = evalset.histories.lengths()
    rows = np.concatenate([np.repeat(np.arange(count), lengths), np.arange(count)])
    cols = np.concatenate([*(evalset.histories[i] for i in range(count)),
                           evalset.targets]).astype(np.int64)
    order = np.argsort(cols, kind="stable")
    rows, cols = rows[order], cols[order]
    ranks = torch.zeros(count, dtype=torch.int64, device=device)
    for start in range(1, num_items + 1, block):
        stop = min(start + block, num_items + 1)
        vectors = model.item_vectors_of(torch.arange(start, stop, device=device))  # (K, D)
        lo, hi = np.searchsorted(cols, [start, stop])
        for first in range(0, count, batch_size):
            last = min(first + batch_size, count)
            scores = users[first:last] @ vectors.T  # (B, K)
            check_finite(scores)
            mine = (rows[lo:hi] >= first) & (rows[lo:hi] < last)
            r = torch.from_numpy(rows[lo:hi][mine] - first).to(device)
            c = torch.from_numpy(cols[lo:hi][mine] - start).to(device)
            scores[r, c] = -torch.inf
            ranks[first:last] += (scores >= target_scores[first:last]).sum(-1)
    return ranks.cpu().numpy()


def evaluate(
    model: Scorer, evalset: EvalSet, max_len: int, batch_size: int = 128,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """Full-ranking HR@{1,10,50,200}, NDCG@{10,50,200} and MRR on ``evalset``."""
    return ranking_metrics(rank_targets(model, evalset, max_len, batch_size, device))
