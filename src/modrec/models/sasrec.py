"""SASRec: causal self-attention over the item sequence.

Kang & McAuley, "Self-Attentive Sequential Recommendation" (ICDM 2018): learned
absolute positions, causal attention, a point-wise feed-forward of width D. Two block
forms: ``pre-ln`` (pre-LayerNorm residual blocks and a final LayerNorm, as most
libraries write it) and ``original`` (the authors' block, which the HSTU repository
reproduces; see `OriginalBlock`). On ML-1M the original form validated better.

Shapes: B batch, L length, D dim, H heads.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import ConfigDict
from pydantic.dataclasses import dataclass
from torch import nn

from modrec.errors import ConfigError
from modrec.models.item_tower import ItemTower
from modrec.models.layers import Dropout, attention
from modrec.models.registry import ModelConfig, item_tower, register
from modrec.models.retrieval import RetrievalModel


@dataclass(config=ConfigDict(extra="forbid"))
class SASRecConfig:
    num_blocks: int = 2
    num_heads: int = 1
    # "pre-ln" (pre-LayerNorm blocks, a final LayerNorm) or "original" (the authors'
    # block, as the HSTU repository reproduces it; see `OriginalBlock`)
    block: Literal["pre-ln", "original"] = "pre-ln"


class SelfAttention(nn.Module):
    """Multi-head self-attention. With ``key_mask`` None it is causal; otherwise it is
    bidirectional over the keys where ``key_mask`` (B, L) is True (BERT4Rec)."""

    def __init__(self, dim: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        if dim % num_heads:
            raise ConfigError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        B, L, D = x.shape
        q, k, v = self.qkv(x).split(D, dim=-1)  # 3 x (B, L, D)
        q, k, v = (t.view(B, L, self.num_heads, D // self.num_heads).transpose(1, 2)
                   for t in (q, k, v))  # (B, H, L, D/H)
        # Right-padded batches need only the causal mask: real positions never see
        # the padding that follows them.
        y = attention(q, k, v, self.dropout if self.training else 0.0,
                      key_mask)  # (B, H, L, D/H)
        return self.out(y.transpose(1, 2).reshape(B, L, D))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: attention, then a point-wise feed-forward."""

    def __init__(self, dim: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attention = SelfAttention(dim, num_heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.feed_forward = nn.Sequential(
            nn.Linear(dim, dim), nn.ReLU(), Dropout(dropout), nn.Linear(dim, dim)
        )
        self.dropout = Dropout(dropout)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.dropout(self.attention(self.norm1(x), key_mask))
        return x + self.dropout(self.feed_forward(self.norm2(x)))


class OriginalBlock(nn.Module):
    """The block as SASRec's authors wrote it (and the HSTU repository reproduces it):
    queries are layer-normalised but keys and values are not; the attention output is
    added to the normalised queries, normalised again and passed through a residual
    point-wise feed-forward. Weights start Xavier-normal, as there."""

    def __init__(self, dim: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        if dim % num_heads:
            raise ConfigError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads, self.attention_dropout = num_heads, dropout
        self.norm_query = nn.LayerNorm(dim, eps=1e-8)
        self.query = nn.Linear(dim, dim)
        self.key_value = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)
        self.norm_ff = nn.LayerNorm(dim, eps=1e-8)
        self.feed_forward = nn.Sequential(
            nn.Linear(dim, dim), nn.ReLU(), Dropout(dropout), nn.Linear(dim, dim),
            Dropout(dropout),
        )
        for layer in (self.query, self.key_value, self.out, *self.feed_forward):
            if isinstance(layer, nn.Linear):
                nn.init.xavier_normal_(layer.weight)
        for layer in (self.query, self.key_value, self.out):
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, D = x.shape
        queries = self.norm_query(x)  # (B, L, D)
        k, v = self.key_value(x).split(D, dim=-1)  # 2 x (B, L, D)
        q, k, v = (t.view(B, L, self.num_heads, D // self.num_heads).transpose(1, 2)
                   for t in (self.query(queries), k, v))  # (B, H, L, D/H)
        y = attention(q, k, v, self.attention_dropout if self.training else 0.0)  # (B, H, L, D/H)
        h = self.norm_ff(queries + self.out(y.transpose(1, 2).reshape(B, L, D)))
        return h + self.feed_forward(h)  # (B, L, D)


class SASRec(nn.Module):
    """Sequence in, one user vector per position out: ``(B, L) -> (B, L, D)``."""

    def __init__(
        self, item_tower: ItemTower, max_len: int, num_blocks: int, num_heads: int,
        dropout: float, block_form: Literal["pre-ln", "original"] = "pre-ln",
    ) -> None:
        super().__init__()
        dim = item_tower.dim
        self.item_tower = item_tower
        self.positions = nn.Embedding(max_len, dim)
        nn.init.normal_(self.positions.weight, std=0.02)
        self.dropout = Dropout(dropout)
        self.blocks = nn.ModuleList(
            (OriginalBlock if block_form == "original" else Block)(dim, num_heads, dropout)
            for _ in range(num_blocks))
        # The pre-LayerNorm form ends with a LayerNorm; the original form's blocks
        # already end normalised-plus-residual and it has none.
        self.norm = nn.LayerNorm(dim) if block_form == "pre-ln" else nn.Identity()

    def forward(self, inputs: torch.Tensor, lengths: torch.Tensor,
                times: torch.Tensor | None = None) -> torch.Tensor:
        B, L = inputs.shape
        # Scaling by sqrt(D) keeps item and position signals on a similar footing.
        x = self.item_tower(inputs) * math.sqrt(self.item_tower.dim)  # (B, L, D)
        x = x + self.positions(torch.arange(L, device=inputs.device))  # (B, L, D)
        x = self.dropout(x)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)  # (B, L, D)


@register("sasrec", SASRecConfig)
def build_sasrec(config: ModelConfig, num_items: int, content: torch.Tensor | None,
                 timestamps: bool) -> RetrievalModel:
    options: SASRecConfig = config.options
    tower = item_tower(config, num_items, content)
    encoder = SASRec(tower, config.max_len, options.num_blocks, options.num_heads,
                     config.dropout, options.block)
    return RetrievalModel(encoder, tower, config.normalize)
