"""Next-item losses over P supervised positions.

Both take user vectors ``(B, L, D)``, their target items ``(B, L)`` (0 where the
position is padding and carries no loss) and the item table ``(N + 1, D)``; row 0
(padding) is never a candidate.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import ConfigDict
from pydantic.dataclasses import dataclass


@dataclass(config=ConfigDict(extra="forbid"))
class LossConfig:
    name: Literal["softmax", "sampled_softmax"] = "sampled_softmax"
    num_negatives: int = 128  # sampled_softmax only
    # sampled_softmax: draw the negatives once per sequence (shared by its positions; one
    # batched product, cheap on a CPU) or afresh for every position (the HSTU
    # repository's sampler; a B x L x K gather of item vectors, cheap on a GPU)
    negatives_per: Literal["sequence", "position"] = "sequence"
    temperature: float = 0.05  # logits are divided by this (matters with cosine scores)


def full_softmax(
    users: torch.Tensor, targets: torch.Tensor, items: torch.Tensor, temperature: float,
    pool: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross-entropy over every item (or every item in ``pool``), at the positions whose
    target is not padding."""
    supervised = targets > 0  # (B, L)
    # Leave the padding row out rather than masking it: no (P, N + 1) in-place write.
    logits = users[supervised] @ items[1:].T / temperature  # (P, N)
    if pool is not None:
        outside = torch.ones(items.shape[0] - 1, dtype=torch.bool, device=items.device)
        outside[pool - 1] = False
        logits = logits.masked_fill(outside, -torch.inf)
    return F.cross_entropy(logits, targets[supervised] - 1)


def sampled_softmax(
    users: torch.Tensor, targets: torch.Tensor, items: torch.Tensor, temperature: float,
    num_negatives: int, generator: torch.Generator | None = None,
    pool: torch.Tensor | None = None, per_position: bool = False,
) -> torch.Tensor:
    """Cross-entropy of each target against ``num_negatives`` uniformly drawn items.

    By default negatives are drawn per sequence and shared by its positions: the logits are one
    batched matrix product ``(B, L, D) x (B, D, K)`` with the FLOPs of per-position
    sampling but without gathering B x L x K item vectors (on a CPU that gather costs
    about 15x more), while the batch still sees B x K distinct draws. A negative that
    equals the position's target is masked out.

    ``pool`` (item indices) restricts the negatives, e.g. to the items that occur in
    training when some are withheld for cold-start evaluation: a model must not learn
    that withheld items are never the answer.
    """
    if per_position:
        return _per_position_sampled_softmax(users, targets, items, temperature,
                                             num_negatives, generator, pool)
    B = users.shape[0]
    high = items.shape[0] if pool is None else len(pool) + 1
    negatives = torch.randint(
        1, high, (B, num_negatives), device=items.device, generator=generator
    )  # (B, K)
    if pool is not None:
        negatives = pool[negatives - 1]
    # Cross-entropy with the positive in class 0, written as
    # logaddexp(positive, logsumexp(negatives)) - positive: no (B, L, 1 + K) logits are
    # concatenated, scaled or gathered (each such pass over B x L x K floats cost as
    # much as the product itself on a CPU), and the temperature scales the small
    # (B, L, D) user tensor instead.
    users = users / temperature
    positive = (users * items[targets]).sum(-1)  # (B, L)
    negative = torch.bmm(users, items[negatives].transpose(1, 2))  # (B, L, K)
    # A negative that is the target is ruled out with the lowest finite value, not -inf:
    # if every draw hit the target, -inf would make the gradient NaN.
    hit = negatives.unsqueeze(1) == targets.unsqueeze(2)  # (B, L, K)
    negative = negative.masked_fill(hit, torch.finfo(negative.dtype).min)
    loss = torch.logaddexp(positive, torch.logsumexp(negative, dim=-1)) - positive  # (B, L)
    return loss[targets > 0].mean()


def _per_position_sampled_softmax(
    users: torch.Tensor, targets: torch.Tensor, items: torch.Tensor, temperature: float,
    num_negatives: int, generator: torch.Generator | None, pool: torch.Tensor | None,
) -> torch.Tensor:
    """``sampled_softmax`` with fresh negatives for each supervised position."""
    supervised = targets > 0
    users = users[supervised] / temperature  # (P, D)
    targets = targets[supervised]  # (P,)
    high = items.shape[0] if pool is None else len(pool) + 1
    negatives = torch.randint(
        1, high, (len(targets), num_negatives), device=items.device, generator=generator
    )  # (P, K)
    if pool is not None:
        negatives = pool[negatives - 1]
    positive = (users * items[targets]).sum(-1)  # (P,)
    negative = torch.bmm(items[negatives], users.unsqueeze(-1)).squeeze(-1)  # (P, K)
    negative = negative.masked_fill(negatives == targets.unsqueeze(1),
                                    torch.finfo(negative.dtype).min)
    return (torch.logaddexp(positive, torch.logsumexp(negative, dim=-1)) - positive).mean()


def next_item_loss(
    config: LossConfig, users: torch.Tensor, targets: torch.Tensor, items: torch.Tensor,
    generator: torch.Generator | None = None, pool: torch.Tensor | None = None,
) -> torch.Tensor:
    """``users (B, L, D)``, ``targets (B, L)`` with 0 at padded positions; ``pool``
    the candidate items (all when None)."""
    if config.name == "softmax":
        return full_softmax(users, targets, items, config.temperature, pool)
    return sampled_softmax(users, targets, items, config.temperature, config.num_negatives,
                           generator, pool, per_position=config.negatives_per == "position")
