"""The one interface every content encoder has, and how an encoder is named.

An encoder turns a batch of one modality's raw inputs (texts, file paths, tag lists or
item ids) into a float32 matrix ``(B, dim)``. ``reads`` says which item column feeds
it, so the extraction job needs no per-modality code. ``version`` names the weights
and settings: the embedding store re-encodes everything when it changes.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from modrec.errors import ModrecError


class EncodeError(ModrecError, RuntimeError):
    """One item's input could not be encoded (missing or unreadable file, empty text)."""


class Encoder(Protocol):
    name: str  # the store's key for this encoder's matrix
    dim: int
    version: str
    reads: str  # the item column holding the inputs: text, image, video, audio, tags, item_id

    def encode(self, batch: list[Any]) -> np.ndarray:
        """``len(batch)`` inputs -> float32 ``(len(batch), dim)``. Raises on a bad input;
        the job then retries the batch item by item to find and flag the culprit."""
        ...
