from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from modrec.config import build_config
from modrec.data.batches import SequenceBatch
from modrec.models import build_model
from modrec.train.loop import BatchLoss
from modrec.train.losses import full_softmax, next_item_loss, sampled_softmax


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


def test_an_id_table_is_looked_up_with_the_whole_tables_loss_and_gradients() -> None:
    """Training reads only the targets' and negatives' rows of an ID table when they are
    fewer than the catalog (the whole table's pass costs O(catalog) a step): the same
    draws, loss and gradients as scoring against every item's vector. A content tower
    and the full softmax keep the whole pass."""
    config = build_config("ml-100k", "sasrec", overrides=[
        "model.max_len=10", "model.num_blocks=1", "model.dropout=0.0",
        "loss.num_negatives=16"])
    torch.manual_seed(0)
    model = build_model(config.model, 300)
    known = torch.rand(301) > 0.2
    known[0] = False
    model.set_known(known)
    g = torch.Generator().manual_seed(1)
    targets = torch.randint(1, 301, (8, 10), generator=g)
    targets[:3, :4] = 0  # padded positions
    batch = SequenceBatch(torch.randint(1, 301, (8, 10), generator=g),
                          torch.full((8,), 10), targets)
    params = [p for p in model.parameters() if p.requires_grad]

    loss = BatchLoss(model, config.loss)
    assert loss.looks_up(batch.targets)  # 80 targets + 8 x 16 draws < 300 items
    assert not loss.looks_up(torch.ones(8, 40, dtype=torch.long))  # 448 rows: the whole
    looked_up = loss(batch, torch.Generator().manual_seed(7))
    whole = next_item_loss(config.loss, model.encode_train(batch), batch.targets,
                           model.item_vectors(), torch.Generator().manual_seed(7))
    assert torch.allclose(looked_up, whole, rtol=0, atol=1e-6)
    for a, b in zip(torch.autograd.grad(looked_up, params),
                    torch.autograd.grad(whole, params), strict=True):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)  # float sums in another order

    content = build_model(dataclasses.replace(config.model, item_tower="id+content"), 300,
                          content=torch.randn(301, 8))
    assert not BatchLoss(content, config.loss).looks_up(batch.targets)
    full = dataclasses.replace(config.loss, name="softmax")
    assert not BatchLoss(model, full).looks_up(batch.targets)
