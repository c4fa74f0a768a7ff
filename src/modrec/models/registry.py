"""Model configs and the builder that turns a config into a module.

Every model exposes the same two calls (the `Scorer` protocol) and nothing else is
assumed by evaluation or serving:

  ``encode_last(inputs (B, L), lengths (B,)) -> (B, D)``  the user vector after each
                                                          sequence's newest item
  ``item_vectors() -> (N + 1, D)``                        row i is item i (0 = padding)

The score of item i for a user is the dot product of the two (a cosine when the model
normalises its vectors). Training also reads a user vector at every position:
`RetrievalModel.encode` ``-> (B, L, D)``.
"""

from __future__ import annotations

import dataclasses
from typing import Literal, Protocol

import torch
import torch.nn.functional as F
from pydantic import ConfigDict
from pydantic.dataclasses import dataclass
from torch import nn

from modrec.models.bert4rec import BERT4Rec
from modrec.models.gru4rec import GRU4Rec
from modrec.models.hstu import HSTU
from modrec.models.item_tower import ItemTower
from modrec.models.popularity import Popularity
from modrec.models.sasrec import SASRec

MODELS = ("popularity", "gru4rec", "sasrec", "bert4rec", "hstu")


@dataclass(config=ConfigDict(extra="forbid"))
class ModelConfig:
    name: Literal["popularity", "gru4rec", "sasrec", "bert4rec", "hstu"] = "sasrec"
    dim: int = 50
    max_len: int = 200  # the newest max_len items of a history are read
    num_blocks: int = 2  # SASRec, BERT4Rec, HSTU
    num_heads: int = 1  # SASRec, BERT4Rec, HSTU
    head_dim: int | None = None  # HSTU query/key and value dims per head (dim / heads)
    num_layers: int = 1  # GRU4Rec
    hidden_dim: int | None = None  # GRU4Rec: the GRU's state width (dim when None)
    mask_rate: float = 0.2  # BERT4Rec: share of items hidden in training
    dropout: float = 0.2
    normalize: bool = True  # L2-normalise user and item vectors (cosine scores)
    # Item representation (see models/item_tower.py): "id", "content", "id+content".
    item_tower: Literal["id", "content", "id+content"] = "id"
    encoders: list[str] = dataclasses.field(default_factory=list)  # stored embeddings used
    content_mlp: bool = False  # a small MLP instead of a linear projection of content
    combine: Literal["sum", "gate"] = "sum"  # how id+content are joined
    id_dropout: float = 0.0  # id+content: share of items whose ID vector a step drops
    content_dim: int | None = None  # filled in from the store when the model is built
    # SASRec: "pre-ln" (pre-LayerNorm blocks, a final LayerNorm) or "original" (the
    # authors' block, as the HSTU repository reproduces it; see models/sasrec.py)
    sasrec_block: Literal["pre-ln", "original"] = "pre-ln"
    # BERT4Rec: "pre-ln" (SASRec's pre-LayerNorm block) or "bert" (BERT's post-LayerNorm
    # block with a 4D GELU feed-forward, as the BERT4Rec authors; see models/bert4rec.py)
    bert4rec_block: Literal["pre-ln", "bert"] = "pre-ln"
    time_bias: bool = True  # HSTU: learn from elapsed time when the dataset has timestamps


class Scorer(Protocol):
    def encode_last(self, inputs: torch.Tensor, lengths: torch.Tensor,
                    times: torch.Tensor | None = None) -> torch.Tensor: ...

    def item_vectors(self) -> torch.Tensor: ...


class RetrievalModel(nn.Module):
    """A sequence encoder and an item tower, scored by dot product."""

    def __init__(self, encoder: nn.Module, item_tower: ItemTower, normalize: bool) -> None:
        super().__init__()
        self.encoder = encoder
        self.item_tower = item_tower
        self.normalize = normalize

    def encode(self, inputs: torch.Tensor, lengths: torch.Tensor,
               times: torch.Tensor | None = None) -> torch.Tensor:
        """User vectors ``(B, L, D)``; ``times`` ``(B, L)``, when the data has timestamps,
        reach the models that use them (HSTU)."""
        users = self.encoder(inputs, lengths, times)  # (B, L, D)
        return F.normalize(users, dim=-1) if self.normalize else users

    def encode_last(self, inputs: torch.Tensor, lengths: torch.Tensor,
                    times: torch.Tensor | None = None) -> torch.Tensor:
        """The user vector after each sequence's newest item, ``(B, D)``: what
        evaluation and serving score with. Encoders with a ``forward_last`` (HSTU)
        compute only that position in their last layer."""
        forward_last = getattr(self.encoder, "forward_last", None)
        if forward_last is not None:
            users = forward_last(inputs, lengths, times)  # (B, D)
        else:
            rows = torch.arange(len(lengths), device=inputs.device)
            users = self.encoder(inputs, lengths, times)[rows, lengths - 1]  # (B, D)
        return F.normalize(users, dim=-1) if self.normalize else users

    @property
    def objective(self) -> str:
        """"next_item" (causal models) or "cloze" (BERT4Rec): how the loop trains it."""
        return getattr(self.encoder, "objective", "next_item")

    def encode_masked(self, inputs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Cloze training: vectors at every position of inputs holding mask tokens."""
        if not isinstance(self.encoder, BERT4Rec):
            raise TypeError(f"{type(self.encoder).__name__} is not trained by cloze")
        users = self.encoder.bidirectional(inputs, lengths)  # (B, L, D)
        return F.normalize(users, dim=-1) if self.normalize else users

    def item_vectors(self) -> torch.Tensor:
        items = self.item_tower.all_items()  # (N + 1, D)
        return F.normalize(items, dim=-1) if self.normalize else items


Model = RetrievalModel | Popularity


def build_model(config: ModelConfig, num_items: int,
                content: torch.Tensor | None = None, timestamps: bool = False) -> Model:
    """A fresh, untrained model for a catalog of ``num_items`` items; ``content``
    ``(N + 1, C)`` feeds a content item tower (zeros stand in when weights that hold
    the real matrix are about to be loaded); ``timestamps``: whether the dataset has
    them (HSTU then adds its time bias, unless ``config.time_bias`` is off)."""
    if config.name == "popularity":
        return Popularity(num_items)
    if config.item_tower != "id" and content is None:
        if config.content_dim is None:
            raise ValueError(f"item_tower {config.item_tower!r} needs content embeddings")
        content = torch.zeros(num_items + 1, config.content_dim)
    tower = ItemTower(num_items, config.dim, config.item_tower, content, config.content_mlp,
                      config.combine, config.id_dropout)
    encoder: nn.Module
    if config.name == "sasrec":
        encoder = SASRec(tower, config.max_len, config.num_blocks, config.num_heads,
                         config.dropout, config.sasrec_block)
    elif config.name == "bert4rec":
        encoder = BERT4Rec(tower, config.max_len, config.num_blocks, config.num_heads,
                           config.dropout, config.bert4rec_block)
    elif config.name == "hstu":
        encoder = HSTU(tower, config.max_len, config.num_blocks, config.num_heads,
                       config.dropout, config.head_dim, config.time_bias and timestamps)
    elif config.name == "gru4rec":
        encoder = GRU4Rec(tower, config.num_layers, config.dropout, config.hidden_dim)
    else:  # pragma: no cover - Literal above guards this
        raise ValueError(f"unknown model {config.name!r}; choose one of {', '.join(MODELS)}")
    return RetrievalModel(encoder, tower, config.normalize)
