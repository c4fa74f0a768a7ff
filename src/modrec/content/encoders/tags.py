"""Metadata encoder: categorical tags (genres, categories) as multi-hot vectors.

The vocabulary is the dataset's own: every tag that occurs in the ``tags`` column
(``|``-separated), or in the column a spec names (``tags:tmdb_genres``,
``tags:frame_labels``). Its version is a hash of the vocabulary, so adding a tag to the
catalog re-encodes the store.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

import numpy as np

from modrec.content.catalog import column_names
from modrec.content.encoders.base import EncodeError, Spec
from modrec.data import Dataset
from modrec.errors import UsageError


def split_tags(value: Any) -> list[str]:
    if isinstance(value, str):
        return [t.strip() for t in value.split("|") if t.strip()]
    if isinstance(value, Iterable):
        return [str(t).strip() for t in value if str(t).strip()]
    return []


class TagEncoder:
    reads = "tags"

    def __init__(self, vocabulary: list[str], name: str = "tags") -> None:
        if not vocabulary:
            raise UsageError("a tag encoder needs at least one tag; the catalog has none")
        self.name = name
        self.vocabulary = sorted(vocabulary)
        self._index = {tag: i for i, tag in enumerate(self.vocabulary)}
        self.dim = len(self.vocabulary)
        digest = hashlib.sha256("\n".join(self.vocabulary).encode()).hexdigest()[:12]
        self.version = f"multi-hot:{self.dim}:{digest}"

    @classmethod
    def fit(cls, values: Iterable[Any], name: str = "tags") -> TagEncoder:
        return cls(sorted({t for v in values for t in split_tags(v)}), name)

    def encode(self, batch: list[Any]) -> np.ndarray:
        out = np.zeros((len(batch), self.dim), np.float32)
        for row, value in enumerate(batch):
            tags = split_tags(value)
            if not tags:
                raise EncodeError(f"no tags ({value!r})")
            for tag in tags:
                if tag in self._index:
                    out[row, self._index[tag]] = 1.0
        return out


def build(spec: Spec, dataset: Dataset, device: str) -> TagEncoder:
    """``tags`` or ``tags:COLUMN``: the vocabulary of that item column."""
    column = spec.option or "tags"
    if column not in dataset.items.columns:
        raise UsageError(f"dataset {dataset.name!r} has no item column {column!r} for "
                         f"{spec.text!r}; item columns: {column_names(dataset)}")
    encoder = TagEncoder.fit(dataset.items[column].dropna(), name=spec.name)
    encoder.reads = column
    return encoder
