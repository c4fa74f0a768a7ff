"""BERT4Rec: a bidirectional transformer trained to fill in masked items (cloze).

Sun et al., "BERT4Rec: Sequential Recommendation with Bidirectional Encoder
Representations from Transformer" (CIKM 2019). Training hides a random share of each
sequence behind a mask token and predicts the hidden items from both sides; to
recommend, a mask is appended after the newest item and its output is the user vector.

The mask token is item index ``num_items + 1``: it has its own learned vector here and
is never a candidate item.

Two encoder forms: ``pre-ln`` (the pre-LayerNorm block SASRec uses here, feed-forward of
width D) and ``bert`` (BERT's own block, which the BERT4Rec authors and Klenitskiy &
Vasilev's reproduction both use: the embedding sum is layer-normalised, every residual
is followed by a LayerNorm, the feed-forward is 4D wide with GELU; weights start at
N(0, 0.02) as BERT's do).

Shapes: B batch, L length, D dim.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Literal

import numpy as np
import torch
from pydantic import ConfigDict
from pydantic.dataclasses import dataclass
from torch import nn

from modrec.data.batches import SequenceBatch, Shard, TrainingExamples, cloze_batches
from modrec.models.item_tower import ItemTower
from modrec.models.layers import Dropout
from modrec.models.registry import ModelConfig, item_tower, register
from modrec.models.retrieval import RetrievalModel
from modrec.models.sasrec import Block, SelfAttention


@dataclass(config=ConfigDict(extra="forbid"))
class BERT4RecConfig:
    num_blocks: int = 2
    num_heads: int = 1
    mask_rate: float = 0.2  # share of items hidden in training
    # "pre-ln" (SASRec's pre-LayerNorm block) or "bert" (BERT's post-LayerNorm block with
    # a 4D GELU feed-forward, as the BERT4Rec authors)
    block: Literal["pre-ln", "bert"] = "pre-ln"


class BertBlock(nn.Module):
    """BERT's block: post-LayerNorm residuals around attention and a 4D-wide GELU
    feed-forward."""

    def __init__(self, dim: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.attention = SelfAttention(dim, num_heads, dropout)
        self.norm1 = nn.LayerNorm(dim, eps=1e-12)
        self.feed_forward = nn.Sequential(
            nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim)
        )
        self.norm2 = nn.LayerNorm(dim, eps=1e-12)
        self.dropout = Dropout(dropout)
        for layer in self.modules():
            if isinstance(layer, nn.Linear):
                nn.init.normal_(layer.weight, std=0.02)
                nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.dropout(self.attention(x, key_mask)))
        return self.norm2(x + self.dropout(self.feed_forward(x)))


class BERT4Rec(nn.Module):
    """Trained by cloze: it brings its own `training_batches` (masked windows) and
    `forward_train` (every position sees both sides), which the loop asks for."""

    def __init__(
        self, item_tower: ItemTower, max_len: int, num_blocks: int, num_heads: int,
        dropout: float, block: Literal["pre-ln", "bert"] = "pre-ln", mask_rate: float = 0.2,
    ) -> None:
        super().__init__()
        if block not in ("pre-ln", "bert"):
            raise ValueError(f"unknown BERT4Rec block {block!r}; choose 'pre-ln' or 'bert'")
        dim = item_tower.dim
        self.bert = block == "bert"
        self.item_tower = item_tower
        self.max_len, self.mask_rate = max_len, mask_rate
        self.mask_token = item_tower.num_items + 1
        self.mask_vector = nn.Parameter(torch.empty(dim).normal_(std=0.02))
        self.positions = nn.Embedding(max_len, dim)
        nn.init.normal_(self.positions.weight, std=0.02)
        self.dropout = Dropout(dropout)
        block_type = BertBlock if self.bert else Block
        self.blocks = nn.ModuleList(
            block_type(dim, num_heads, dropout) for _ in range(num_blocks)
        )
        # BERT normalises the embedding sum and ends on a block's LayerNorm; the
        # pre-LN stack needs a final LayerNorm instead.
        self.embedding_norm = nn.LayerNorm(dim, eps=1e-12) if self.bert else nn.Identity()
        self.norm = nn.Identity() if self.bert else nn.LayerNorm(dim)

    def bidirectional(self, inputs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Every position sees every real position: ``(B, L) -> (B, L, D)``; inputs may
        hold the mask token."""
        B, L = inputs.shape
        is_mask = inputs == self.mask_token  # (B, L)
        x = self.item_tower(inputs.masked_fill(is_mask, 0))  # (B, L, D)
        x = torch.where(is_mask.unsqueeze(-1), self.mask_vector, x)
        if not self.bert:  # the embedding LayerNorm sets the scale in the BERT form
            x = x * math.sqrt(self.item_tower.dim)
        x = x + self.positions(torch.arange(L, device=inputs.device))
        x = self.dropout(self.embedding_norm(x))
        key_mask = torch.arange(L, device=inputs.device) < lengths.unsqueeze(1)  # (B, L)
        for block in self.blocks:
            x = block(x, key_mask)
        return self.norm(x)  # (B, L, D)

    def training_batches(self, examples: TrainingExamples, batch_size: int,
                         rng: np.random.Generator,
                         shard: Shard | None = None) -> Iterator[SequenceBatch]:
        """Each window's newest ``max_len`` items with ``mask_rate`` of them masked."""
        return cloze_batches(examples.windows, self.max_len, batch_size, rng, self.mask_rate,
                             self.mask_token, shard)

    def forward_train(self, inputs: torch.Tensor, lengths: torch.Tensor,
                      times: torch.Tensor | None = None) -> torch.Tensor:
        """Vectors at every position of inputs holding mask tokens ``(B, L, D)``."""
        return self.bidirectional(inputs, lengths)

    def forward(self, inputs: torch.Tensor, lengths: torch.Tensor,
                times: torch.Tensor | None = None) -> torch.Tensor:
        """The next-item vector after each history, at every position ``(B, L, D)``.

        Only the vector after the newest item is defined for a bidirectional model: it
        is the output at a mask appended to the history (the oldest item is dropped
        when the history already fills ``max_len``), repeated along L so that callers
        reading position ``lengths - 1`` get it.
        """
        B, L = inputs.shape
        keep = lengths.clamp(max=self.max_len - 1)  # (B,) items kept before the mask
        width = int(keep.max()) + 1
        position = torch.arange(width, device=inputs.device)  # (W,)
        source = (lengths - keep).unsqueeze(1) + position  # (B, W) index into inputs
        seq = inputs.gather(1, source.clamp(max=L - 1))  # (B, W)
        seq = seq.masked_fill(position >= keep.unsqueeze(1), 0)
        seq = seq.masked_fill(position == keep.unsqueeze(1), self.mask_token)
        hidden = self.bidirectional(seq, keep + 1)  # (B, W, D)
        user = hidden[torch.arange(B, device=inputs.device), keep]  # (B, D)
        return user.unsqueeze(1).expand(B, L, user.shape[-1])  # (B, L, D)


@register("bert4rec", BERT4RecConfig)
def build_bert4rec(config: ModelConfig, num_items: int, content: torch.Tensor | None,
                   timestamps: bool) -> RetrievalModel:
    options: BERT4RecConfig = config.options
    tower = item_tower(config, num_items, content)
    encoder = BERT4Rec(tower, config.max_len, options.num_blocks, options.num_heads,
                       config.dropout, options.block, options.mask_rate)
    return RetrievalModel(encoder, tower, config.normalize)
