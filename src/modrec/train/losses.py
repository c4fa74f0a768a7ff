"""Next-item losses over P supervised positions.

Both take user vectors ``(B, L, D)``, their target items ``(B, L)`` (0 where the
position is padding and carries no loss) and the item table ``(N + 1, D)``; row 0
(padding) is never a candidate.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from modrec.config import LossConfig

# Item indices (...) -> their vectors (..., D): an item table that is looked up, never
# read whole (a sharded one).
Lookup = Callable[[torch.Tensor], torch.Tensor]


def full_softmax(
    users: torch.Tensor, targets: torch.Tensor, items: torch.Tensor, temperature: float,
    pool: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross-entropy over every item (or every item in ``pool``), at the positions whose
    target is not padding."""
    supervised = targets > 0  # (B, L)
    # Leave the padding row out rather than masking it: no (P, N + 1) in-place write;
    # and scale the (P, D) users rather than the (P, N) logits (as `sampled_softmax`).
    logits = (users[supervised] / temperature) @ items[1:].T  # (P, N)
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
    equals the position's target is left out.

    ``pool`` (item indices) restricts the negatives, e.g. to the items that occur in
    training when some are withheld for cold-start evaluation: a model must not learn
    that withheld items are never the answer.
    """
    return sampled_softmax_by_lookup(users, targets, items.__getitem__, items.shape[0] - 1,
                                     temperature, num_negatives, generator, pool,
                                     per_position)


def sampled_softmax_by_lookup(
    users: torch.Tensor, targets: torch.Tensor, lookup: Lookup, num_items: int,
    temperature: float, num_negatives: int, generator: torch.Generator | None = None,
    pool: torch.Tensor | None = None, per_position: bool = False,
) -> torch.Tensor:
    """`sampled_softmax` over a table of ``num_items`` items (+ padding) that is only
    looked up: the targets' and the drawn negatives' vectors are all it reads, so a
    sharded table is never gathered whole."""
    if per_position:
        return _per_position_sampled_softmax(users, targets, lookup, num_items, temperature,
                                             num_negatives, generator, pool)
    negatives = _draw((users.shape[0], num_negatives), num_items, users.device, generator,
                      pool)  # (B, K)
    # The temperature scales the small (B, L, D) user tensor, not the (B, L, K) logits:
    # on a CPU every pass over B x L x K floats costs about as much as the product.
    users = users / temperature
    positive = (users * lookup(targets)).sum(-1)  # (B, L)
    everything = _logsumexp_of_products(users, lookup(negatives))  # (B, L), hits included
    # Cross-entropy with the positive in class 0 and the draws that equal the target
    # left out: log(exp(positive) + sum of the other draws) - positive. A draw that hits
    # the target has exactly the positive's logit, so subtracting `hits` copies of it
    # from `everything` is exact, and needs no (B, L, K) mask. Shifted by the larger of
    # the two terms; the argument of the log stays >= 1 / max(hits, 1).
    hits = _occurrences(negatives, targets).to(users.dtype)  # (B, L)
    shift = torch.maximum(positive, everything).detach()
    loss = shift - positive + torch.log(
        torch.exp(everything - shift) + (1 - hits) * torch.exp(positive - shift))
    return loss[targets > 0].mean()


def _draw(shape: tuple[int, int], num_items: int, device: torch.device,
          generator: torch.Generator | None, pool: torch.Tensor | None) -> torch.Tensor:
    """Uniform item indices (never 0, the padding row), from ``pool`` when given."""
    high = num_items + 1 if pool is None else len(pool) + 1
    negatives = torch.randint(1, high, shape, device=device, generator=generator)
    return negatives if pool is None else pool[negatives - 1]


def _logsumexp_of_products(users: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    """``logsumexp(users (B, L, D) @ vectors (B, K, D)^T, -1)`` in the fewest passes
    over the (B, L, K) logits: one product that subtracts a bound on every logit (the
    product of the largest norms, so no per-row maximum pass), one exp, one sum; the
    backward is one multiply and the product's two. Falls back to ``torch.logsumexp``
    when the bound is so loose that small logits could underflow."""
    bound = users.detach().norm(dim=-1).amax() * vectors.detach().norm(dim=-1).amax()
    if bound > 40:  # exp(-2 * 40) is still a normal float32; beyond that, be careful
        return torch.logsumexp(torch.bmm(users, vectors.transpose(1, 2)), dim=-1)
    shifted = torch.baddbmm(-bound.view(1, 1, 1), users, vectors.transpose(1, 2))
    return bound + shifted.exp().sum(-1).log()


def _occurrences(negatives: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``(B, L)``: how often each target occurs among its sequence's draws (B, K)."""
    ordered = negatives.sort(dim=1).values
    return (torch.searchsorted(ordered, targets, right=True)
            - torch.searchsorted(ordered, targets))


def _per_position_sampled_softmax(
    users: torch.Tensor, targets: torch.Tensor, lookup: Lookup, num_items: int,
    temperature: float, num_negatives: int, generator: torch.Generator | None,
    pool: torch.Tensor | None,
) -> torch.Tensor:
    """``sampled_softmax`` with fresh negatives for each supervised position."""
    supervised = targets > 0
    users = users[supervised] / temperature  # (P, D)
    targets = targets[supervised]  # (P,)
    negatives = _draw((len(targets), num_negatives), num_items, users.device, generator,
                      pool)  # (P, K)
    positive = (users * lookup(targets)).sum(-1)  # (P,)
    negative = torch.bmm(lookup(negatives), users.unsqueeze(-1)).squeeze(-1)  # (P, K)
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
