from __future__ import annotations

import pytest
import torch

from modrec.models.layers import Dropout, attention, keep_mask


def test_keep_mask_drops_the_asked_share_and_keeps_the_mean() -> None:
    torch.manual_seed(0)
    mask = keep_mask((1000, 1000), 0.2)
    values = mask.unique()
    assert len(values) == 2 and values[0] == 0.0
    assert values[1] == pytest.approx(1 / (1 - 0.2), rel=1e-4)  # p rounded to 1/65,536
    assert (mask == 0).float().mean().item() == pytest.approx(0.2, abs=2e-3)
    assert mask.mean().item() == pytest.approx(1.0, abs=3e-3)
    torch.manual_seed(0)
    assert torch.equal(keep_mask((1000, 1000), 0.2), mask)  # the default generator's seed


def test_dropout_is_identity_in_eval_and_masks_gradients_in_training() -> None:
    layer = Dropout(0.5)
    x = torch.randn(64, 50, requires_grad=True)
    assert layer.eval()(x) is x
    y = layer.train()(x)
    y.sum().backward()
    assert x.grad is not None
    kept = y != 0
    torch.testing.assert_close(y[kept], 2 * x[kept])  # scaled by 1 / (1 - p)
    torch.testing.assert_close(x.grad, kept.float() * 2)
    with pytest.raises(ValueError, match="dropout"):
        Dropout(1.5)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_attention_with_dropout_is_softmax_attention_with_a_keep_mask(bidirectional: bool) -> None:
    torch.manual_seed(0)
    B, H, L, Dh = 3, 2, 7, 4
    q, k, v = (torch.randn(B, H, L, Dh) for _ in range(3))
    key_mask = torch.arange(L) < torch.tensor([7, 4, 1]).unsqueeze(1) if bidirectional else None
    allowed = (key_mask[:, None, None, :] if bidirectional
               else torch.ones(L, L, dtype=torch.bool).tril())
    # Without dropout: PyTorch's fused attention, and the reference formula.
    weights = torch.softmax((q @ k.transpose(-2, -1) / Dh**0.5).masked_fill(~allowed, -torch.inf),
                            dim=-1)  # (B, H, L, L)
    torch.testing.assert_close(attention(q, k, v, 0.0, key_mask), weights @ v)
    # With dropout: the same weights times the mask that the same seed draws.
    torch.manual_seed(1)
    dropped = attention(q, k, v, 0.3, key_mask)
    torch.manual_seed(1)
    mask = keep_mask((B * H, L, L), 0.3).view(B, H, L, L)
    torch.testing.assert_close(dropped, (weights * mask) @ v)
