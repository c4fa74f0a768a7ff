"""GRU4Rec: a recurrent network over the item sequence.

Hidasi et al., "Session-based Recommendations with Recurrent Neural Networks"
(ICLR 2016), as a sequence encoder: item embeddings -> GRU -> projection. A GRU is
causal by construction and right padding never reaches a real position. The GRU's
state may be wider than the item vectors (``hidden``); the projection maps it back.

Shapes: B batch, L length, D dim, Hd hidden.
"""

from __future__ import annotations

import torch
from pydantic import ConfigDict
from pydantic.dataclasses import dataclass
from torch import nn

from modrec.models.item_tower import ItemTower
from modrec.models.layers import Dropout
from modrec.models.registry import ModelConfig, item_tower, register
from modrec.models.retrieval import RetrievalModel


@dataclass(config=ConfigDict(extra="forbid"))
class GRU4RecConfig:
    num_layers: int = 1
    hidden_dim: int | None = None  # the GRU's state width (the model dim when None)


class GRU4Rec(nn.Module):
    """Sequence in, one user vector per position out: ``(B, L) -> (B, L, D)``."""

    def __init__(self, item_tower: ItemTower, num_layers: int, dropout: float,
                 hidden: int | None = None) -> None:
        super().__init__()
        dim = item_tower.dim
        hidden = hidden or dim
        self.item_tower = item_tower
        self.dropout = Dropout(dropout)
        self.gru = nn.GRU(dim, hidden, num_layers=num_layers, batch_first=True,
                          dropout=dropout if num_layers > 1 else 0.0)
        self.project = nn.Linear(hidden, dim)

    def forward(self, inputs: torch.Tensor, lengths: torch.Tensor,
                times: torch.Tensor | None = None) -> torch.Tensor:
        x = self.dropout(self.item_tower(inputs))  # (B, L, D)
        h, _ = self.gru(x)  # (B, L, Hd)
        return self.project(self.dropout(h))  # (B, L, D)


@register("gru4rec", GRU4RecConfig)
def build_gru4rec(config: ModelConfig, num_items: int, content: torch.Tensor | None,
                  timestamps: bool) -> RetrievalModel:
    options: GRU4RecConfig = config.options
    tower = item_tower(config, num_items, content)
    encoder = GRU4Rec(tower, options.num_layers, config.dropout, options.hidden_dim)
    return RetrievalModel(encoder, tower, config.normalize)
