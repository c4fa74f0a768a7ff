"""BERT4Rec: a bidirectional transformer trained to fill in masked items (cloze).

Sun et al., "BERT4Rec: Sequential Recommendation with Bidirectional Encoder
Representations from Transformer" (CIKM 2019). Training hides a random share of each
sequence behind a mask token and predicts the hidden items from both sides; to
recommend, a mask is appended after the newest item and its output is the user vector.

The mask token is item index ``num_items + 1``: it has its own learned vector here and
is never a candidate item.

Shapes: B batch, L length, D dim.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from modrec.models.item_tower import ItemTower
from modrec.models.sasrec import Block


class BERT4Rec(nn.Module):
    objective = "cloze"  # the training loop masks inputs instead of shifting them

    def __init__(
        self, item_tower: ItemTower, max_len: int, num_blocks: int, num_heads: int,
        dropout: float,
    ) -> None:
        super().__init__()
        dim = item_tower.dim
        self.item_tower = item_tower
        self.max_len = max_len
        self.mask_token = item_tower.num_items + 1
        self.mask_vector = nn.Parameter(torch.empty(dim).normal_(std=0.02))
        self.positions = nn.Embedding(max_len, dim)
        nn.init.normal_(self.positions.weight, std=0.02)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(dim, num_heads, dropout) for _ in range(num_blocks))
        self.norm = nn.LayerNorm(dim)

    def bidirectional(self, inputs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Every position sees every real position: ``(B, L) -> (B, L, D)``; inputs may
        hold the mask token."""
        B, L = inputs.shape
        is_mask = inputs == self.mask_token  # (B, L)
        x = self.item_tower(inputs.masked_fill(is_mask, 0))  # (B, L, D)
        x = torch.where(is_mask.unsqueeze(-1), self.mask_vector, x)
        x = x * math.sqrt(self.item_tower.dim)
        x = self.dropout(x + self.positions(torch.arange(L, device=inputs.device)))
        key_mask = torch.arange(L, device=inputs.device) < lengths.unsqueeze(1)  # (B, L)
        for block in self.blocks:
            x = block(x, key_mask)
        return self.norm(x)  # (B, L, D)

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
