"""HSTU: Hierarchical Sequential Transduction Units.

Zhai et al., "Actions Speak Louder than Words: Trillion-Parameter Sequential
Transducers for Generative Recommendations" (ICML 2024). Each block is one pointwise
aggregated attention layer and no separate feed-forward:

    U, V, Q, K = split(SiLU(W_uvqk · LayerNorm(x)))
    A          = SiLU(Q Kᵀ + relative bias) / max_len,  causal
    x          = x + W_o · Dropout(LayerNorm(A V) ⊙ U)

The relative bias is a learned scalar per distance in positions plus, when the
sequence comes with timestamps, a learned scalar per bucket of elapsed time. Scores
are normalised by the fixed ``max_len`` rather than by a softmax or by the batch's
padded width, so a batch (or a length slice of one) padded to its own longest
sequence computes exactly what a batch padded to ``max_len`` computes.

Shapes: B batch, L length, D dim, H heads, Dq / Dv per-head query-key / value dims.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import ConfigDict
from pydantic.dataclasses import dataclass
from torch import nn

from modrec.models.item_tower import ItemTower
from modrec.models.layers import Dropout
from modrec.models.registry import ModelConfig, item_tower, register
from modrec.models.retrieval import RetrievalModel

TIME_BUCKETS = 128  # as in the HSTU repository


@dataclass(config=ConfigDict(extra="forbid"))
class HSTUConfig:
    num_blocks: int = 2
    num_heads: int = 1
    head_dim: int | None = None  # query/key and value dims per head (dim / heads when None)
    time_bias: bool = True  # learn from elapsed time when the dataset has timestamps


def time_buckets(times: torch.Tensor, num_buckets: int = TIME_BUCKETS) -> torch.Tensor:
    """``(B, L)`` timestamps in seconds -> ``(B, L, L)`` log-bucket of ``t_i - t_j``.
    Pairs with ``j > i`` (masked by causality anyway) land in bucket 0."""
    elapsed = (times.unsqueeze(2) - times.unsqueeze(1)).clamp(min=1).float()  # (B, L, L)
    return (elapsed.log() / 0.301).long().clamp(max=num_buckets)


class RelativeBias(nn.Module):
    """A learned scalar per relative distance ``j - i`` in ``(-max_len, max_len)`` and,
    given timestamps, one per bucket of the time from event ``j`` to event ``i``.

    Time buckets are logarithmic (each ~1.35x wider than the last, as in the HSTU
    repository: seconds to years in ~60 buckets). The paper measures the gap from the
    *next* event's time, which in training is the target's; we measure it from event
    ``i`` itself, which is known equally in training, evaluation and serving.
    """

    def __init__(self, max_len: int, num_time_buckets: int = 0) -> None:
        super().__init__()
        self.max_len = max_len
        self.weights = nn.Parameter(torch.empty(2 * max_len - 1).normal_(std=0.02))
        self.time_weights = (nn.Parameter(torch.empty(num_time_buckets + 1).normal_(std=0.02))
                             if num_time_buckets else None)
        # Each (i, j)'s index into `weights` (j - i, shifted) and whether j is in i's
        # future, built once for max_len and sliced per call: rebuilt every call, they
        # took about a fifth of a served batch-1 call (torch profiler, ML-1M HSTU).
        # (int32: half the memory of int64 at long max_len, and still an index type.)
        positions = torch.arange(max_len, dtype=torch.int32)
        self.index: torch.Tensor
        self.future: torch.Tensor
        self.register_buffer("index", positions.unsqueeze(0) - positions.unsqueeze(1)
                             + max_len - 1, persistent=False)
        self.register_buffer("future", torch.ones(max_len, max_len, dtype=torch.bool)
                             .triu_(1), persistent=False)

    def forward(self, length: int, buckets: torch.Tensor | None = None,
                rows: torch.Tensor | None = None) -> torch.Tensor:
        """The bias of each query position ``i`` for each key ``j``, with the dtype's most
        negative number where ``j > i`` (the future): ``(L, L)``, or ``(B, L, L)`` with
        time buckets ``(B, L, L)``; given ``rows`` (B,), only query row ``rows[b]`` of
        sequence ``b``: ``(B, L)``."""
        index, future = self.index[:length, :length], self.future[:length, :length]
        if rows is not None:
            index, future = index[rows], future[rows]  # (B, L)
        bias = self.weights[index]
        if buckets is not None and self.time_weights is not None:
            if rows is not None:
                buckets = buckets[torch.arange(len(rows), device=rows.device), rows]
            bias = bias + self.time_weights[buckets]
        return bias.masked_fill(future, torch.finfo(bias.dtype).min)


class HSTUBlock(nn.Module):
    def __init__(
        self, dim: int, num_heads: int, qk_dim: int, v_dim: int, max_len: int,
        dropout: float, num_time_buckets: int = 0,
    ) -> None:
        super().__init__()
        self.num_heads, self.qk_dim, self.v_dim, self.max_len = num_heads, qk_dim, v_dim, max_len
        self.norm_in = nn.LayerNorm(dim)
        self.uvqk = nn.Linear(dim, num_heads * (2 * v_dim + 2 * qk_dim))
        self.bias = RelativeBias(max_len, num_time_buckets)
        self.norm_attn = nn.LayerNorm(num_heads * v_dim)
        self.out = nn.Linear(num_heads * v_dim, dim)
        self.dropout = Dropout(dropout)
        # PyTorch's default initialisation. The HSTU repository's (uvqk N(0, 0.02), no
        # bias; Xavier output) learned faster early on ML-1M but peaked lower on
        # validation (NDCG@10 0.1618 against 0.1642), so it is not used.

    def forward(self, x: torch.Tensor, buckets: torch.Tensor | None = None,
                last: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, L, D) -> (B, L, D)``; ``buckets``: ``(B, L, L)`` from `time_buckets`, or
        None. Given ``last`` (B,) positions, only those rows are computed (every
        position still serves as a key): ``(B, 1, D)``."""
        B, L, _ = x.shape
        H, Dq, Dv = self.num_heads, self.qk_dim, self.v_dim
        projected = F.silu(self.uvqk(self.norm_in(x)))  # (B, L, H * (2 Dv + 2 Dq))
        u, v, q, k = projected.split([H * Dv, H * Dv, H * Dq, H * Dq], dim=-1)
        # Passes over the (B H, L, L) scores dominate a CPU step, so there are as few
        # as possible: the bias, with the dtype's most negative number on future
        # positions, enters as the product's initial value (where SiLU then gives
        # exactly 0, and 0 gradient), and the 1 / max_len scaling is applied to the
        # (B H, M, Dv) result. Without a time bias, one (L, L) bias is broadcast over
        # the batch rather than copied for every sequence.
        if last is None:
            bias = self.bias(L, buckets)  # (L, L), or (B, L, L) with time buckets
            bias = bias if bias.dim() == 2 else bias.unsqueeze(1)  # (B, 1, L, L)
        else:
            rows = torch.arange(B, device=x.device)
            x, u, q = (t[rows, last].unsqueeze(1) for t in (x, u, q))  # (B, 1, ·)
            bias = self.bias(L, buckets, last).view(B, 1, 1, L)
        M = x.shape[1]  # query rows: L, or 1 with `last`
        q = q.reshape(B, M, H, Dq).transpose(1, 2).reshape(B * H, M, Dq)
        k = k.reshape(B, L, H, Dq).transpose(1, 2).reshape(B * H, L, Dq)
        v = v.reshape(B, L, H, Dv).transpose(1, 2).reshape(B * H, L, Dv)
        bias = (bias.unsqueeze(0) if bias.dim() == 2  # (1, L, L)
                else bias.expand(B, H, M, L).reshape(B * H, M, L))
        scores = torch.baddbmm(bias.to(q.dtype), q, k.transpose(1, 2))  # (B H, M, L)
        attended = (F.silu(scores) @ v) / self.max_len  # (B H, M, Dv)
        attended = attended.view(B, H, M, Dv).transpose(1, 2).reshape(B, M, H * Dv)
        return x + self.out(self.dropout(self.norm_attn(attended) * u))


class HSTU(nn.Module):
    """Sequence in, one user vector per position out: ``(B, L) -> (B, L, D)``. With
    ``time_bias`` (for datasets with timestamps), attention also learns from elapsed
    time and ``forward`` needs ``times``."""

    def __init__(
        self, item_tower: ItemTower, max_len: int, num_blocks: int, num_heads: int,
        dropout: float, head_dim: int | None = None, time_bias: bool = False,
    ) -> None:
        super().__init__()
        dim = item_tower.dim
        head_dim = head_dim or dim // num_heads
        self.item_tower = item_tower
        self.time_bias = time_bias
        self.positions = nn.Embedding(max_len, dim)
        nn.init.normal_(self.positions.weight, std=0.02)
        self.dropout = Dropout(dropout)
        self.blocks = nn.ModuleList(
            HSTUBlock(dim, num_heads, head_dim, head_dim, max_len, dropout,
                      TIME_BUCKETS if time_bias else 0)
            for _ in range(num_blocks)
        )

    def forward(self, inputs: torch.Tensor, lengths: torch.Tensor,
                times: torch.Tensor | None = None) -> torch.Tensor:
        x, buckets = self._embed(inputs, times)
        for block in self.blocks:
            x = block(x, buckets)
        return x  # (B, L, D); the model's L2 normalisation follows

    def forward_last(self, inputs: torch.Tensor, lengths: torch.Tensor,
                     times: torch.Tensor | None = None) -> torch.Tensor:
        """``forward(...)[b, lengths[b] - 1]``, ``(B, D)``: what evaluation and serving
        read. The last block computes only that row (with 2 blocks, about 40% less
        work than `forward`)."""
        x, buckets = self._embed(inputs, times)
        for block in self.blocks[:-1]:
            x = block(x, buckets)
        return self.blocks[-1](x, buckets, last=lengths - 1).squeeze(1)  # (B, D)

    def _embed(self, inputs: torch.Tensor,
               times: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Item and position embeddings ``(B, L, D)``, and the time buckets shared by
        the blocks (None without a time bias)."""
        L = inputs.shape[1]
        x = self.item_tower(inputs) * math.sqrt(self.item_tower.dim)  # (B, L, D)
        x = self.dropout(x + self.positions(torch.arange(L, device=inputs.device)))
        if not self.time_bias:
            return x, None
        if times is None:
            raise ValueError("this HSTU was built with a time bias: pass the timestamps "
                             "of the input items")
        return x, time_buckets(times)  # (B, L, L)


@register("hstu", HSTUConfig)
def build_hstu(config: ModelConfig, num_items: int, content: torch.Tensor | None,
               timestamps: bool) -> RetrievalModel:
    options: HSTUConfig = config.options
    tower = item_tower(config, num_items, content)
    encoder = HSTU(tower, config.max_len, options.num_blocks, options.num_heads,
                   config.dropout, options.head_dim, options.time_bias and timestamps)
    return RetrievalModel(encoder, tower, config.normalize)
