from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from modrec.train.losses import full_softmax, sampled_softmax


def _inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    users = torch.randn(4, 9, 8, requires_grad=True)  # (B, L, D)
    items = torch.randn(31, 8, requires_grad=True)  # (N + 1, D)
    targets = torch.randint(1, 31, (4, 9))
    targets[:, 6:] = 0  # padding carries no loss
    return users, items, targets


@pytest.mark.parametrize("normalized", [False, True])
def test_sampled_softmax_is_cross_entropy_against_the_drawn_negatives(normalized: bool) -> None:
    users, items, targets = _inputs()
    if normalized:  # bounded logits: the shifted product path; else torch.logsumexp's
        users, items = F.normalize(users, dim=-1), F.normalize(items, dim=-1)
    loss = sampled_softmax(users, targets, items, 0.05, 12, torch.Generator().manual_seed(1))
    # The textbook form: logits [positive, negatives] / T, class 0, drawn targets masked.
    negatives = torch.randint(1, 31, (4, 12), generator=torch.Generator().manual_seed(1))
    positive = (users * items[targets]).sum(-1, keepdim=True)
    negative = torch.bmm(users, items[negatives].transpose(1, 2))
    negative = negative.masked_fill(negatives.unsqueeze(1) == targets.unsqueeze(2), -torch.inf)
    logits = (torch.cat([positive, negative], dim=2) / 0.05)[targets > 0]
    reference = F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long))
    torch.testing.assert_close(loss, reference)
    for a, b in zip(torch.autograd.grad(loss, (users, items), retain_graph=True),
                    torch.autograd.grad(reference, (users, items), retain_graph=True),
                    strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_sampled_softmax_leaves_out_repeated_hits_of_the_target() -> None:
    users = F.normalize(torch.randn(1, 1, 4), dim=-1).requires_grad_()
    items = F.normalize(torch.randn(3, 4), dim=-1)
    generator = torch.Generator().manual_seed(0)
    negatives = torch.randint(1, 3, (1, 50), generator=torch.Generator().manual_seed(0))
    target = int(negatives[0, 0])  # drawn many times among 50 draws from 2 items
    loss = sampled_softmax(users, torch.tensor([[target]]), items, 0.05, 50, generator)
    other = 3 - target
    others = int((negatives == other).sum())
    logits = (users[0, 0] @ items.T) / 0.05
    expected = torch.logaddexp(logits[target], logits[other] + math.log(others)) - logits[target]
    torch.testing.assert_close(loss, expected)


def test_sampled_softmax_stays_finite_when_every_draw_is_the_target() -> None:
    users = torch.randn(1, 2, 4, requires_grad=True)
    items = torch.randn(2, 4, requires_grad=True)  # one real item: every negative is it
    loss = sampled_softmax(users, torch.ones(1, 2, dtype=torch.long), items, 0.05, 3)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(users.grad).all()


def test_full_softmax_is_cross_entropy_over_every_item() -> None:
    users, items, targets = _inputs()
    loss = full_softmax(users, targets, items, 0.05)
    supervised = targets > 0
    reference = F.cross_entropy(users[supervised] @ items[1:].T / 0.05, targets[supervised] - 1)
    torch.testing.assert_close(loss, reference)


def test_per_position_sampling_draws_fresh_negatives_for_each_supervised_position() -> None:
    users, items, targets = _inputs()
    loss = sampled_softmax(users, targets, items, 0.05, 12, torch.Generator().manual_seed(1),
                           per_position=True)
    supervised = targets > 0
    negatives = torch.randint(1, 31, (int(supervised.sum()), 12),
                              generator=torch.Generator().manual_seed(1))  # (P, K)
    u, t = users[supervised], targets[supervised]
    negative = torch.einsum("pd,pkd->pk", u, items[negatives])
    negative = negative.masked_fill(negatives == t.unsqueeze(1), -torch.inf)
    logits = torch.cat([(u * items[t]).sum(-1, keepdim=True), negative], dim=1) / 0.05
    reference = F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long))
    torch.testing.assert_close(loss, reference)
    for a, b in zip(torch.autograd.grad(loss, (users, items)),
                    torch.autograd.grad(reference, (users, items)), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
