"""Pieces the sequence models share: dropout with a cheap random mask on a CPU, and
scaled dot-product attention that may drop attention weights.

Why not ``nn.Dropout``: on a CPU, ``torch.bernoulli_`` draws each keep/drop decision
from the single-threaded generator at about 66 million a second here, and SASRec's
attention dropout alone needs B x L x L of them per block: the random mask was 28% of
a SASRec training step. `Dropout` takes 16 random bits per element from 64-bit draws
instead (about 6x faster) and keeps each element with probability ``1 - p`` rounded
to a multiple of 1/65,536, scaling by the exact inverse so expectations are unchanged.
On a GPU it is ``F.dropout`` (fused, already cheap).

Shapes: B batch, H heads, L length, Dh per-head dim.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

_LEVELS = 1 << 16  # keep/drop decisions are made from 16 random bits


def keep_mask(shape: torch.Size | tuple[int, ...], p: float,
              device: torch.device | str = "cpu",
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``shape`` of 0 (dropped, probability ``p`` rounded to 1/65,536) and
    ``1 / (1 - p)`` (kept), drawn from the default generator of ``device``."""
    dropped = round(p * _LEVELS)  # of the 65,536 values a 16-bit draw can take
    n = math.prod(shape)
    # randint over the full int64 range fills all 64 bits; each 16-bit quarter is a
    # uniform draw in [-32768, 32767], of which `dropped` values mean "drop".
    words = torch.randint(-(1 << 63), (1 << 63) - 1, ((n + 3) // 4,), device=device)
    halves = words.view(torch.int16)[:n].view(shape)
    scale = _LEVELS / (_LEVELS - dropped)
    return (halves >= dropped - _LEVELS // 2).to(dtype).mul_(scale)


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """``F.dropout(x, p, training)`` with `keep_mask`'s cheaper mask on a CPU."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or not 0.0 < p < 1.0:
        return F.dropout(x, p, training)
    return x * keep_mask(x.shape, p, x.device, x.dtype)


class Dropout(nn.Module):
    """``nn.Dropout`` with `dropout`'s cheaper mask on a CPU."""

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability must be in [0, 1], got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0,
              key_mask: torch.Tensor | None = None) -> torch.Tensor:
    """``softmax(q kᵀ / sqrt(Dh)) v`` over ``(B, H, L, Dh)`` inputs: causal when
    ``key_mask`` is None, otherwise each query sees the keys where ``key_mask`` (B, L)
    is True. ``dropout_p`` drops attention weights (pass 0 when not training).

    Without dropout this is ``F.scaled_dot_product_attention`` (a fused kernel that
    never stores the L x L weights). With dropout on a CPU that function falls back to
    its unfused path and draws the mask with ``bernoulli_``; here the same product
    is written out so that `keep_mask` draws it.
    """
    mask = None if key_mask is None else key_mask[:, None, None, :]  # (B, 1, 1, L)
    if dropout_p == 0.0 or q.device.type != "cpu":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p,
                                              is_causal=mask is None)
    B, H, L, Dh = q.shape
    # The mask enters as the product's initial value (0 or -inf), not as a pass of its
    # own over the (B H, L, L) scores, and needs no masking in the backward pass.
    if mask is None:
        bias = torch.full((1, L, L), -torch.inf, device=q.device).triu_(1)  # (1, L, L)
    else:
        bias = torch.zeros(mask.shape, device=q.device).masked_fill_(~mask, -torch.inf)
        bias = bias.repeat_interleave(H, dim=0).view(B * H, 1, L)  # (B H, 1, L)
    scores = torch.baddbmm(bias.to(q.dtype), q.flatten(0, 1), k.flatten(0, 1).transpose(1, 2),
                           alpha=Dh ** -0.5)  # (B H, L, L)
    weights = dropout(torch.softmax(scores, dim=-1), dropout_p)
    return (weights @ v.flatten(0, 1)).view(B, H, L, -1)  # (B, H, L, Dh)
