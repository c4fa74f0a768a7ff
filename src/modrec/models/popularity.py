"""The most-popular baseline: every user gets the items most frequent in training.

It speaks the same interface as the learned models (user vectors and item vectors
whose dot product is the score), with D = 1: the user vector is 1 and an item's vector
is its training count, so evaluation and serving need no special case.
"""

from __future__ import annotations

import numpy as np
import torch
from pydantic import ConfigDict
from pydantic.dataclasses import dataclass
from torch import nn

from modrec.data.dataset import Sequences
from modrec.models.registry import ModelConfig, register


@dataclass(config=ConfigDict(extra="forbid"))
class PopularityConfig:
    """No settings: the counts are the model."""


class Popularity(nn.Module):
    """Fitted by counting (`fit`), not trained by gradient: the training loop asks for
    ``fit`` and skips the epochs."""

    counts: torch.Tensor  # (N + 1, 1) training frequency per item

    def __init__(self, num_items: int) -> None:
        super().__init__()
        self.register_buffer("counts", torch.zeros(num_items + 1, 1))

    def fit(self, train: Sequences) -> Popularity:
        counts = np.bincount(train.items, minlength=self.counts.shape[0]).astype(np.float32)
        counts[0] = 0.0
        self.counts.copy_(torch.from_numpy(counts).unsqueeze(1))
        return self

    def encode_last(self, inputs: torch.Tensor, lengths: torch.Tensor,
                    times: torch.Tensor | None = None) -> torch.Tensor:
        return torch.ones(inputs.shape[0], 1, device=inputs.device)  # (B, 1)

    def item_vectors(self) -> torch.Tensor:
        return self.counts  # (N + 1, 1)


@register("popularity", PopularityConfig)
def build_popularity(config: ModelConfig, num_items: int, content: torch.Tensor | None,
                     timestamps: bool) -> Popularity:
    return Popularity(num_items)
