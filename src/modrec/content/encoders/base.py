"""The one interface every content encoder has (`Encoder`, `EncodeError`), and what a
builder of one is given (`Spec`, `Builder`: `modrec.content.encoders.registry`).

An encoder turns a batch of one modality's raw inputs (texts, file paths, tag lists or
item ids) into a float32 matrix ``(B, dim)``. ``reads`` says which item column feeds
it, so the embed job needs no per-modality code. ``version`` names the weights
and settings: the embedding store re-encodes everything when it changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from modrec.errors import ModrecError

if TYPE_CHECKING:
    from modrec.data import Dataset


class EncodeError(ModrecError, RuntimeError):
    """One item's input could not be encoded (missing or unreadable file, empty text)."""


@dataclass
class Encoded:
    """What an encoder that gives more than vectors (`SequenceEncoder`) makes of a batch:
    the vectors, each item's per-step vectors padded to the encoder's ``steps`` with
    their ``lengths``, and per item the fields of its record in each computed column
    the encoder produces (``{"actions": {"value": ..., "scores": ...}}``). An item whose
    input is broken may be reported in ``errors`` instead of raising, so that the rest
    of the batch is not computed again item by item."""

    vectors: np.ndarray  # (B, dim) float32
    steps: np.ndarray  # (B, S, dim)
    lengths: np.ndarray  # (B,) int
    columns: list[dict[str, dict[str, Any]]]  # per item: column -> record fields
    errors: list[str | None] | None = None  # per item, why it failed (a zero row); None: none


class Encoder(Protocol):
    name: str  # the store's key for this encoder's matrix
    dim: int
    version: str
    reads: str  # the item column holding the inputs: text, image, video, audio, tags, item_id

    def encode(self, batch: list[Any]) -> np.ndarray:
        """``len(batch)`` inputs -> float32 ``(len(batch), dim)``. Raises on a bad input;
        the job then retries the batch item by item to find and flag the culprit."""
        ...


class SequenceEncoder(Encoder, Protocol):
    """An encoder that also gives each item a sequence of step vectors (stored for
    temporal heads: `EmbeddingStore.sequences`) and values of computed item columns made
    from the same decoded input (`modrec.content.columns`), so nothing is decoded twice.
    The embed job asks an encoder for ``encode_all`` by attribute."""

    steps: int  # the most steps an item's sequence has
    columns: list[Any]  # the `modrec.content.columns.Producer` of each column it makes

    def encode_all(self, batch: list[Any]) -> Encoded:
        ...


@dataclass(frozen=True)
class Spec:
    """An encoder spec (``--encoder``) taken apart: ``MODALITY[:OPTION]``, and ``name``,
    the store key its matrix gets (`modrec.content.store.store_name`)."""

    text: str  # as given: ``tags:tmdb_genres``
    modality: str  # ``tags``
    option: str  # ``tmdb_genres``; "" when none is given
    name: str  # ``tags-tmdb_genres``


class Builder(Protocol):
    def __call__(self, spec: Spec, dataset: Dataset, device: str) -> Encoder:
        """The encoder ``spec`` names, for ``dataset``'s items, on ``device``."""
        ...
