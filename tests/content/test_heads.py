"""Temporal heads (issue 36, item 3): on a task only order decides, every temporal head
learns it and mean pooling stays at chance; padding never changes an answer."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch

from modrec.content.video.heads import (
    HEADS,
    HeadSettings,
    SequenceHead,
    grouped_validation,
    select_head,
    train_head,
)
from modrec.errors import UsageError

DIM, STEPS = 16, 10


def order_task(count: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sequences of 5-10 random steps holding two fixed patterns, A and B, at random
    places; the label is whether A comes before B. Both classes hold the same multiset
    of vectors, so the mean of the steps says nothing about the label. Padding rows are
    large noise: a head that reads them fails."""
    rng = np.random.default_rng(seed)
    a, b = np.random.default_rng(99).normal(0, 1.5, (2, DIM))
    x = rng.normal(0, 5, (count, STEPS, DIM)).astype(np.float32)  # padding: loud noise
    lengths = rng.integers(5, STEPS + 1, count)
    y = np.zeros(count, np.int64)
    for i, length in enumerate(lengths):
        x[i, :length] = rng.normal(0, 1, (length, DIM))
        first, second = rng.choice(length, 2, replace=False)
        x[i, first], x[i, second] = a, b
        y[i] = int(first < second)
    return x, lengths, y


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny batches: one thread is fastest, and on a shared machine several threads
    wait on each other (modrec.threads) and cost more than the test itself."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def task() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return order_task(800, seed=0)


@pytest.mark.parametrize("head", HEADS)
def test_temporal_heads_learn_order_and_mean_pooling_cannot(
        task: tuple[np.ndarray, np.ndarray, np.ndarray], head: str) -> None:
    x, lengths, y = task
    train, valid, test = np.arange(500), np.arange(500, 600), np.arange(600, 800)
    settings = HeadSettings(head=head, hidden=64 if head == "transformer" else 32,  # type: ignore[arg-type]
                            dropout=0.0, lr=3e-3 if head == "transformer" else 1e-2,
                            batch_size=100, epochs=60, patience=20)
    trained = train_head(x, lengths, y, train, valid, settings)
    accuracy = float((trained.probabilities(x[test], lengths[test]).argmax(1)
                      == y[test]).mean())
    if head == "mean":
        assert accuracy <= 0.65, accuracy
    else:
        assert accuracy >= 0.90, (head, accuracy)


@pytest.mark.parametrize("head", HEADS)
def test_padding_never_changes_the_answer(head: str) -> None:
    torch.manual_seed(0)
    model = SequenceHead(HeadSettings(head=head, hidden=32), DIM, 2, STEPS + 4)  # type: ignore[arg-type]
    model.eval()
    x = torch.randn(3, 6, DIM)
    lengths = torch.tensor([6, 3, 1])
    padded = torch.cat([x, 100 * torch.randn(3, 4, DIM)], dim=1)
    padded[1, 3:6] = -100.0
    with torch.no_grad():
        short, long = model(x, lengths), model(padded, lengths)
        alone = model(x[1:2, :3], lengths[1:2])
    torch.testing.assert_close(short, long, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(short[1:2], alone, atol=1e-5, rtol=1e-5)


def test_empty_sequences_and_unknown_heads_are_refused() -> None:
    x, lengths, y = order_task(20, seed=1)
    lengths[3] = 0
    with pytest.raises(UsageError, match=r"rows \[3\] have no steps"):
        train_head(x, lengths, y, np.arange(10), np.arange(10, 20))
    with pytest.raises(UsageError, match="unknown sequence head 'lstm'; choose from mean"):
        HeadSettings(head="lstm")  # type: ignore[arg-type]


def test_validation_is_grouped_and_selection_sees_only_validation() -> None:
    x, lengths, y = order_task(120, seed=2)
    groups = np.repeat(np.arange(24), 5)
    rows = np.arange(120)
    train, valid = grouped_validation(y, groups, rows, parts=4)
    assert not set(groups[train]) & set(groups[valid])
    assert len(train) + len(valid) == 120 and 20 <= len(valid) <= 40
    best = select_head(x, lengths, y, train, valid,
                       [HeadSettings(head="gru", hidden=16, epochs=3, lr=lr)
                        for lr in (1e-4, 3e-3)])
    assert best.valid_accuracy == max(
        train_head(x, lengths, y, train, valid, HeadSettings(head="gru", hidden=16, epochs=3,
                                                             lr=lr)).valid_accuracy
        for lr in (1e-4, 3e-3))
