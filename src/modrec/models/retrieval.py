"""What every model is to the rest of modrec: user vectors and item vectors whose dot
product is the score.

Two interfaces, both asked of a model by attribute, never by type:

`Scorer` (evaluation and serving rely on it alone)::

    encode_last(inputs (B, L), lengths (B,), times=None) -> (B, D)   the user vector
                                                                     after the newest item
    item_vectors() -> (N + 1, D)                                     row i is item i

`SequenceEncoder` (what a sequence model file provides; `RetrievalModel` wraps it with
an item tower and the optional normalisation)::

    forward(inputs (B, L), lengths (B,), times=None) -> (B, L, D)    a user vector at
                                                                     every position

and, optionally:

* ``forward_last(inputs, lengths, times) -> (B, D)``: computes only the newest
  position (HSTU skips most of its last block this way);
* ``training_batches(examples, batch_size, rng, shard)`` and ``forward_train(inputs,
  lengths, times)``: a training objective other than next-item prediction (BERT4Rec's
  cloze).

Shapes: B batch, L length, D dim, N items (row 0 = padding).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from modrec.data.batches import SequenceBatch, Shard, TrainingExamples, next_item_batches
from modrec.models.item_tower import ItemTower


class Scorer(Protocol):
    def encode_last(self, inputs: torch.Tensor, lengths: torch.Tensor,
                    times: torch.Tensor | None = None) -> torch.Tensor: ...

    def item_vectors(self) -> torch.Tensor: ...


class Trainable(Scorer, Protocol):
    """What the training loop asks of a model trained by gradient (`RetrievalModel`)."""

    def training_batches(self, examples: TrainingExamples, batch_size: int,
                         rng: np.random.Generator,
                         shard: Shard | None = None) -> Iterator[SequenceBatch]: ...

    def encode_train(self, batch: SequenceBatch) -> torch.Tensor: ...


class SequenceEncoder(Protocol):
    item_tower: ItemTower

    def __call__(self, inputs: torch.Tensor, lengths: torch.Tensor,
                 times: torch.Tensor | None = None) -> torch.Tensor: ...


class RetrievalModel(nn.Module):
    """A sequence encoder and an item tower, scored by dot product (by cosine when
    ``normalize``)."""

    def __init__(self, encoder: nn.Module, item_tower: ItemTower, normalize: bool) -> None:
        super().__init__()
        self.encoder = encoder
        self.item_tower = item_tower
        self.normalize = normalize

    def _out(self, vectors: torch.Tensor) -> torch.Tensor:
        return F.normalize(vectors, dim=-1) if self.normalize else vectors

    def encode(self, inputs: torch.Tensor, lengths: torch.Tensor,
               times: torch.Tensor | None = None) -> torch.Tensor:
        """User vectors ``(B, L, D)``; ``times`` ``(B, L)``, when the data has timestamps,
        reach the models that use them (HSTU)."""
        return self._out(self.encoder(inputs, lengths, times))  # (B, L, D)

    def encode_last(self, inputs: torch.Tensor, lengths: torch.Tensor,
                    times: torch.Tensor | None = None) -> torch.Tensor:
        """The user vector after each sequence's newest item, ``(B, D)``: what
        evaluation and serving score with."""
        forward_last = getattr(self.encoder, "forward_last", None)
        if forward_last is not None:
            return self._out(forward_last(inputs, lengths, times))  # (B, D)
        rows = torch.arange(len(lengths), device=inputs.device)
        return self._out(self.encoder(inputs, lengths, times)[rows, lengths - 1])  # (B, D)

    def item_vectors(self) -> torch.Tensor:
        return self._out(self.item_tower.all_items())  # (N + 1, D)

    def item_vectors_of(self, items: torch.Tensor) -> torch.Tensor:
        """The vectors ``(..., D)`` of ``items`` ``(...)``: rows of `item_vectors`,
        without computing the rest (a sharded table is read this way)."""
        return self._out(self.item_tower(items))  # (..., D)

    def set_known(self, known: torch.Tensor) -> None:
        """Which items ``(N + 1,)`` occur in training (see `ItemTower`)."""
        self.item_tower.set_known(known)

    # ---- training: next-item prediction unless the encoder brings its own objective ----
    def training_batches(self, examples: TrainingExamples, batch_size: int,
                         rng: np.random.Generator,
                         shard: Shard | None = None) -> Iterator[SequenceBatch]:
        """One epoch of shuffled training batches (this rank's rows of them, with a
        ``shard``)."""
        own = getattr(self.encoder, "training_batches", None)
        if own is not None:
            batches: Iterator[SequenceBatch] = own(examples, batch_size, rng, shard)
            return batches
        return next_item_batches(examples.windows, examples.lengths, batch_size, rng,
                                 times=examples.times, shard=shard)

    def encode_train(self, batch: SequenceBatch) -> torch.Tensor:
        """User vectors ``(B, L, D)`` at the positions the training targets refer to."""
        forward = getattr(self.encoder, "forward_train", self.encoder)
        return self._out(forward(batch.inputs, batch.lengths, batch.times))
