from __future__ import annotations

import numpy as np
import torch

from modrec.data import leave_one_out
from modrec.data.batches import (
    batch_order,
    next_item_batches,
    training_examples,
    training_times,
)
from modrec.train.config import build_config
from modrec.train.loop import batch_loss


def test_every_example_once_per_epoch(ml100k) -> None:
    windows, lengths = training_examples(leave_one_out(ml100k).train, 200)
    order = batch_order(lengths, 128, np.random.default_rng(0), bucket=True)
    assert sorted(np.concatenate(order).tolist()) == list(range(len(windows)))
    # bucketing keeps lengths inside a batch close together
    spread = np.mean([lengths[b].max() - lengths[b].min() for b in order])
    plain = batch_order(lengths, 128, np.random.default_rng(0), bucket=False)
    assert spread < 0.5 * np.mean([lengths[b].max() - lengths[b].min() for b in plain])


def test_bucketed_batches_give_the_padded_loss(ml100k) -> None:
    """Padding a batch to its own longest sequence or to max_len is the same loss."""
    config = build_config("ml-100k", "sasrec",
                          overrides=["loss.name=softmax", "model.dropout=0.0"])
    from modrec.models import build_model

    torch.manual_seed(0)
    model = build_model(config.model, ml100k.num_items).eval()
    windows, lengths = training_examples(leave_one_out(ml100k).train, 200)
    tight = next_item_batches(windows, lengths, 64, np.random.default_rng(1), bucket=True)
    padded = next_item_batches(windows, lengths, 64, np.random.default_rng(1), bucket=True,
                               pad_to=200)
    for a, b in list(zip(tight, padded, strict=True))[:4]:
        assert a.inputs.shape[1] <= 200 == b.inputs.shape[1]
        torch.testing.assert_close(batch_loss(model, a, config), batch_loss(model, b, config))
    # and the sampled loss, with the same negatives drawn
    config = build_config("ml-100k", "sasrec", overrides=["model.dropout=0.0"])
    a, b = (next(next_item_batches(windows, lengths, 64, np.random.default_rng(2), pad_to=w))
            for w in (None, 200))
    losses = [batch_loss(model, x, config, torch.Generator().manual_seed(3)) for x in (a, b)]
    torch.testing.assert_close(losses[0], losses[1])


def test_bucketed_batches_with_timestamps_give_the_padded_loss(ml100k) -> None:
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
