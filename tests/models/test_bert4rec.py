from __future__ import annotations

import numpy as np
import pytest
import torch

from modrec.data import leave_one_out
from modrec.data.batches import cloze_batches, training_examples
from modrec.models import ModelConfig, build_model


def test_cloze_masking(ml100k) -> None:
    windows, _ = training_examples(leave_one_out(ml100k).train, 50)
    mask = ml100k.num_items + 1
    batches = list(cloze_batches(windows, 50, 64, np.random.default_rng(0), 0.2, mask))
    hidden_share = []
    for batch in batches:
        real = torch.arange(batch.inputs.shape[1]) < batch.lengths.unsqueeze(1)
        hidden = batch.inputs == mask
        assert not (hidden & ~real).any()  # padding is never masked
        assert hidden.any(1).all()  # every sequence has something to predict
        assert torch.equal(hidden, batch.targets > 0)  # targets exactly at the masks
        assert (batch.inputs[real & ~hidden] > 0).all()
        hidden_share.append(hidden.sum().item() / real.sum().item())
    assert 0.17 < np.mean(hidden_share) < 0.23
    # the hidden items are the real ones: every target is an item of that user
    first = batches[0]
    assert set(first.targets[first.targets > 0].tolist()) <= set(np.concatenate(windows).tolist())


@pytest.mark.parametrize("block", ["pre-ln", "bert"])
def test_inference_appends_a_mask(block: str) -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="bert4rec", dim=16, max_len=8, num_heads=2,
                                    block=block), num_items=30).eval()
    encoder = model.encoder
    history = torch.tensor([[5, 6, 7, 0, 0, 0, 0, 0], [1, 2, 3, 4, 5, 6, 7, 8]])
    lengths = torch.tensor([3, 8])
    out = encoder(history, lengths)  # (B, L, D)
    # short history: [5, 6, 7, MASK]; full history: drop the oldest, [2..8, MASK]
    short = encoder.bidirectional(torch.tensor([[5, 6, 7, 31]]), torch.tensor([4]))[0, 3]
    full = encoder.bidirectional(torch.tensor([[2, 3, 4, 5, 6, 7, 8, 31]]),
                                 torch.tensor([8]))[0, 7]
    torch.testing.assert_close(out[0, 2], short)
    torch.testing.assert_close(out[1, 7], full)
    # bidirectional: a later item changes an earlier position's output
    a = encoder.bidirectional(torch.tensor([[5, 6, 7, 31]]), torch.tensor([4]))
    b = encoder.bidirectional(torch.tensor([[5, 6, 9, 31]]), torch.tensor([4]))
    assert not torch.allclose(a[0, 0], b[0, 0])


@pytest.mark.parametrize("block", ["pre-ln", "bert"])
def test_padding_never_changes_real_positions(block: str) -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="bert4rec", dim=16, max_len=8,
                                    block=block), num_items=30).eval()
    short = model.encoder.bidirectional(torch.tensor([[5, 6, 7, 31]]), torch.tensor([4]))
    padded = model.encoder.bidirectional(torch.tensor([[5, 6, 7, 31, 0, 0]]),
                                         torch.tensor([4]))
    torch.testing.assert_close(padded[:, :4], short)
