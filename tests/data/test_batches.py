from __future__ import annotations

import numpy as np
import torch

from modrec.config import build_config
from modrec.data import leave_one_out
from modrec.data.batches import (
    TrainingExamples,
    batch_order,
    next_item_batches,
    split_by_length,
    training_examples,
    training_times,
)
from modrec.train.loop import BatchLoss, batch_loss, train_step


def test_every_example_once_per_epoch(ml100k) -> None:
    windows, lengths = training_examples(leave_one_out(ml100k).train, 200)
    order = batch_order(lengths, 128, np.random.default_rng(0))
    assert sorted(np.concatenate(order).tolist()) == list(range(len(windows)))
    assert max(len(b) for b in order) == 128


def test_length_slices_keep_every_position_with_less_padding(ml100k) -> None:
    windows, lengths = training_examples(leave_one_out(ml100k).train, 200)
    batch = next(next_item_batches(windows, lengths, 128, np.random.default_rng(0)))
    slices = split_by_length(batch, 4)
    assert len(slices) == 4 and sum(len(s.lengths) for s in slices) == 128
    # every row's real positions survive, each slice is as wide as its longest row
    assert sum(int((s.targets > 0).sum()) for s in slices) == int((batch.targets > 0).sum())
    assert all(s.inputs.shape[1] == int(s.lengths.max()) for s in slices)
    assert sum(s.inputs.numel() for s in slices) < 0.8 * batch.inputs.numel()

    def real_rows(b):
        return [tuple(r[: int(n)].tolist()) for r, n in zip(b.inputs, b.lengths, strict=True)]

    assert sorted(r for s in slices for r in real_rows(s)) == sorted(real_rows(batch))


def test_length_slices_are_cut_where_they_pad_least() -> None:
    import itertools

    from modrec.data.batches import _cuts

    def padded(lengths, cuts):  # rows x first (longest) length, summed over the runs
        bounds = [0, *cuts, len(lengths)]
        return sum((b - a) * lengths[a] for a, b in itertools.pairwise(bounds))

    rng = np.random.default_rng(0)
    for _ in range(200):
        lengths = sorted(rng.integers(1, 200, rng.integers(1, 9)).tolist(), reverse=True)
        parts = int(rng.integers(1, 5))
        cuts = _cuts(lengths, parts)
        assert len(cuts) == min(parts, len(lengths)) - 1
        assert padded(lengths, cuts) == min(  # against every possible set of cuts
            padded(lengths, list(c)) for k in range(min(parts, len(lengths)))
            for c in itertools.combinations(range(1, len(lengths)), k))


def test_sliced_step_has_the_padded_batch_gradient(ml100k) -> None:
    """A step run as length slices updates the weights exactly as the whole batch."""
    import copy

    from modrec.models import build_model

    for name in ("sasrec", "bert4rec"):
        config = build_config("ml-100k", name, overrides=[
            "loss.name=softmax", "model.dropout=0.0", "model.max_len=50"])
        torch.manual_seed(0)
        model = build_model(config.model, ml100k.num_items)
        examples = TrainingExamples.of(leave_one_out(ml100k).train, 50)
        # next-item windows for SASRec, masked ones (cloze) for BERT4Rec
        batch = next(model.training_batches(examples, 64, np.random.default_rng(1)))
        assert (batch.inputs == ml100k.num_items + 1).any() == (name == "bert4rec")
        stepped = []  # the weights after one SGD step, lr 1: start - gradient
        for slices in (1, 4):
            copy_ = copy.deepcopy(model)
            optimizer = torch.optim.SGD(copy_.parameters(), lr=1.0)
            sliced = build_config("ml-100k", name, overrides=[
                "loss.name=softmax", "model.dropout=0.0", "model.max_len=50",
                f"train.length_slices={slices}"])
            train_step(BatchLoss(copy_, sliced.loss), optimizer, batch,
                       sliced.train.length_slices)
            stepped.append(torch.cat([p.flatten() for p in copy_.parameters()]))
        torch.testing.assert_close(stepped[0], stepped[1], rtol=1e-4, atol=1e-6)


def test_batches_padded_to_their_longest_give_the_padded_loss(ml100k) -> None:
    """Padding a batch to its own longest sequence or to max_len is the same loss."""
    config = build_config("ml-100k", "sasrec",
                          overrides=["loss.name=softmax", "model.dropout=0.0"])
    from modrec.models import build_model

    torch.manual_seed(0)
    model = build_model(config.model, ml100k.num_items).eval()
    windows, lengths = training_examples(leave_one_out(ml100k).train, 200)
    tight = next_item_batches(windows, lengths, 64, np.random.default_rng(1))
    padded = next_item_batches(windows, lengths, 64, np.random.default_rng(1), pad_to=200)
    for a, b in list(zip(tight, padded, strict=True))[:4]:
        assert a.inputs.shape[1] <= 200 == b.inputs.shape[1]
        torch.testing.assert_close(batch_loss(model, a, config), batch_loss(model, b, config))
    # and the sampled loss, with the same negatives drawn
    config = build_config("ml-100k", "sasrec", overrides=["model.dropout=0.0"])
    a, b = (next(next_item_batches(windows, lengths, 64, np.random.default_rng(2), pad_to=w))
            for w in (None, 200))
    losses = [batch_loss(model, x, config, torch.Generator().manual_seed(3)) for x in (a, b)]
    torch.testing.assert_close(losses[0], losses[1])


def test_batches_with_timestamps_padded_to_their_longest_give_the_padded_loss(ml100k) -> None:
    """The same for HSTU with its time bias (ml-100k has timestamps)."""
    from modrec.models import build_model

    config = build_config("ml-100k", "hstu", overrides=["loss.name=softmax", "model.dropout=0.0"])
    torch.manual_seed(0)
    model = build_model(config.model, ml100k.num_items, timestamps=True).eval()
    train = leave_one_out(ml100k).train
    windows, lengths = training_examples(train, 200)
    times = training_times(train, 200)
    assert times is not None and [len(t) for t in times] == [len(w) for w in windows]
    batches = [next(next_item_batches(windows, lengths, 64, np.random.default_rng(1),
                                      pad_to=width, times=times)) for width in (None, 200)]
    assert batches[0].times is not None and batches[0].times.shape == batches[0].inputs.shape
    torch.testing.assert_close(*(batch_loss(model, b, config) for b in batches))
