"""How items become vectors. Shapes: N items (index 0 = padding), D model dim,
C content dim (the concatenated stored embeddings of the chosen encoders).

Three modes, the same interface for every sequence model:

* ``id``          a learned embedding per item (the classic setting);
* ``content``     frozen content vectors through a trainable projection (linear, or a
                  small MLP): an item nobody has interacted with still gets a vector;
* ``id+content``  both, summed or mixed by a learned per-dimension gate.

An item that never occurs in training (``known`` is False) has no ID vector: its
embedding row was never trained, and a random one would land at random places in
every ranking (on ml-100k with 10% of items withheld, such rows cut warm HR@10 by a
quarter). In ``id`` mode it scores zero; with content it uses its content vector alone.
``known`` is recomputed from the training split whenever a model is built for training
or loaded, so it is not saved. The content matrix is a buffer that *is* saved with the
weights, so a run folder is self-contained.

The ID rows are an ``nn.Embedding`` unless the caller injects another table (``ids``:
any module mapping item indices ``(...)`` to vectors ``(..., D)``): the sharded
TorchRec table of `models/sharded_items.py` is one, and such a table is only looked
up, never read whole (`all_items` then refuses).

A content tower can take items after training (`extend`: a live service's new items,
`modrec.serve`): their content rows are appended at indices N+1, N+2, ... with
``known`` False, so the same forward pass reads them as it reads a cold item, and the
ID table is never looked up for them (it has no such row). `unknown_vectors` is what
the tower gives such a row, computed without extending it.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

Mode = Literal["id", "content", "id+content"]


class ItemTower(nn.Module):
    """Item index -> vector. Row 0 is the padding item and stays zero."""

    content: torch.Tensor  # (N + 1, C) buffer, content modes only
    known: torch.Tensor  # (N + 1,) bool buffer: the item occurs in training

    def __init__(self, num_items: int, dim: int, mode: Mode = "id",
                 content: torch.Tensor | None = None, content_mlp: bool = False,
                 combine: Literal["sum", "gate"] = "sum", id_dropout: float = 0.0,
                 ids: nn.Module | None = None) -> None:
        super().__init__()
        self.num_items, self.dim, self.mode, self.combine = num_items, dim, mode, combine
        self.id_dropout = id_dropout
        self.id_rows = num_items + 1  # rows of the ID table; `extend` adds items beyond
        self._spare: dict[str, torch.Tensor] = {}  # room to extend into (see `extend`)
        self.register_buffer("known", torch.ones(num_items + 1, dtype=torch.bool),
                             persistent=False)
        if mode != "content" and ids is not None:
            self.embedding: nn.Module = ids
        elif mode != "content":
            self.embedding = nn.Embedding(num_items + 1, dim, padding_idx=0)
            # Small init as in SASRec/HSTU: large item norms slow early training.
            nn.init.normal_(self.embedding.weight, std=0.02)
            with torch.no_grad():
                self.embedding.weight[0].zero_()
        if mode != "id":
            if content is None or content.shape[0] != num_items + 1:
                raise ValueError(f"item tower {mode!r} needs a content matrix of "
                                 f"{num_items + 1} rows (row 0 = padding)")
            self.register_buffer("content", content.float())  # (N + 1, C)
            c = content.shape[1]
            self.project: nn.Module = (
                nn.Sequential(nn.Linear(c, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
                if content_mlp else nn.Linear(c, dim))
            if mode == "id+content" and combine == "gate":
                self.gate = nn.Linear(2 * dim, dim)

    def set_known(self, known: torch.Tensor) -> None:
        """Which items have training interactions (``(N + 1,)`` bool)."""
        self.known.copy_(known)

    def extend(self, content: torch.Tensor) -> range:
        """Append items that arrived after training, by their content rows ``(L, C)``
        (as `content_matrix` makes them: each encoder's block L2-normalised); they get
        ``known`` False. Returns their indices. The buffers grow by doubling their room,
        so a long run of single items costs amortised O(C) each, not a copy of the whole
        matrix; the callers serialise this with their forward passes."""
        if self.mode == "id":
            raise ValueError("an ID item tower has no vector for an item it never trained "
                             "on; only content towers can take new items")
        if content.ndim != 2 or content.shape[1] != self.content.shape[1]:
            raise ValueError(f"new items need content rows of width {self.content.shape[1]}, "
                             f"got shape {tuple(content.shape)}")
        first, added = self.num_items + 1, len(content)
        for name, rows in (("content", content.to(self.content)),
                           ("known", torch.zeros(added, dtype=torch.bool,
                                                 device=self.known.device))):
            setattr(self, name, self._appended(name, rows))
        self.num_items += added
        return range(first, first + added)

    def _appended(self, name: str, rows: torch.Tensor) -> torch.Tensor:
        """Buffer ``name`` with ``rows`` after its rows: a view of a larger tensor kept in
        ``_spare``, reallocated (twice the size) only when it is full."""
        current: torch.Tensor = getattr(self, name)
        used, spare = len(current), self._spare.get(name)
        if spare is None or len(spare) < used + len(rows):
            spare = current.new_zeros((max(2 * used, used + len(rows)), *current.shape[1:]))
            spare[:used] = current
            self._spare[name] = spare
        spare[used:used + len(rows)] = rows
        return spare[:used + len(rows)]

    @torch.no_grad()
    def unknown_vectors(self, content: torch.Tensor) -> torch.Tensor:
        """``(L, D)``: the vectors items with content rows ``content`` ``(L, C)`` get when
        they are not in training (``known`` False), as `extend` would give them; the tower
        is not changed."""
        if self.mode == "id":
            raise ValueError("an ID item tower has no vector for an item it never trained on")
        return self.project(content.to(self.content))  # (L, D): no ID part to add or mix

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        return self._vectors(items)  # (..., D)

    def all_items(self) -> torch.Tensor:
        """Every item's vector, padding included, so row i is item i."""
        table = None if self.mode == "content" else self._table()  # refuses a sharded one
        if table is not None and self.mode == "id":
            return table.weight * self.known.unsqueeze(-1)  # (N + 1, D)
        return self._vectors(torch.arange(self.num_items + 1, device=self.content.device))

    def _table(self) -> nn.Embedding:
        if not isinstance(self.embedding, nn.Embedding):
            raise ValueError("the ID item table is sharded: no process holds every item's "
                             "vector; look items up (RetrievalModel.item_vectors_of) in blocks")
        return self.embedding

    def _vectors(self, items: torch.Tensor) -> torch.Tensor:
        if self.mode == "id":
            return self.embedding(items) * self.known[items].unsqueeze(-1)
        real = (items > 0).unsqueeze(-1)  # padding stays zero after the projection's bias
        content = self.project(self.content[items]) * real  # (..., D)
        if self.mode == "content":
            return content
        has_id = self.known
        if self.training and self.id_dropout > 0:
            # Drop whole items' ID vectors so the content path learns to stand alone, as
            # it must for new items (and the IDs of sparse items cannot overfit).
            has_id = has_id & (torch.rand(has_id.shape, device=has_id.device)
                               >= self.id_dropout)
        rows = items
        if self.num_items + 1 > self.id_rows:  # extended: new items have no ID row
            rows = items.masked_fill(items >= self.id_rows, 0)
        ids = self.embedding(rows) * has_id[items].unsqueeze(-1)  # (..., D)
        if self.combine == "gate":
            gate = torch.sigmoid(self.gate(torch.cat([ids, content], dim=-1)))
            mixed = gate * ids + (1 - gate) * content
            # An unknown item has no ID part to mix in: content alone.
            return torch.where(has_id[items].unsqueeze(-1), mixed, content)
        return ids + content
