"""How items become vectors. Shapes: N items (index 0 = padding), D dim.

Today the tower is an ID embedding; content features (text, image, audio vectors from
the embedding store) join here later, so every sequence model gets them for free.
"""

from __future__ import annotations

import torch
from torch import nn


class ItemTower(nn.Module):
    """Item index -> vector. Row 0 is the padding item and stays zero."""

    def __init__(self, num_items: int, dim: int) -> None:
        super().__init__()
        self.num_items = num_items
        self.dim = dim
        self.embedding = nn.Embedding(num_items + 1, dim, padding_idx=0)
        # Small init as in SASRec/HSTU: large item norms slow early training.
        nn.init.normal_(self.embedding.weight, std=0.02)
        with torch.no_grad():
            self.embedding.weight[0].zero_()

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        return self.embedding(items)  # (..., D)

    def all_items(self) -> torch.Tensor:
        """Every item's vector, padding included, so row i is item i."""
        return self.embedding.weight  # (N + 1, D)
