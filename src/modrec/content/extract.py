"""The extraction job: encode a dataset's items into its `EmbeddingStore`.

``embed(dataset, ["text", "video"])`` encodes, for each encoder, only the items the
store lacks, in batches, with a progress bar; after every batch the rows are committed
(see `EmbeddingStore.write`), so an interrupted job resumes where it stopped. An item
whose input is missing or unreadable is logged with its id and input, gets a zero row
and a failure flag, and the job goes on.

Encoder specs (``--encoder``): ``text``, ``image``, ``video``, ``audio``, ``tags``, a
model after a colon (``text:sentence-transformers/all-mpnet-base-v2``,
``image:timm:resnet50``), a column after a colon for tags (``tags:tmdb_genres``), a
precomputed matrix that the named dataset ships (``vggish`` for lastfm-2k), or the item
vectors a trained run learned from interactions (``run:runs/ml-1m-sasrec``).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from modrec import paths
from modrec.content.encoder import EncodeError, Encoder
from modrec.content.store import EmbeddingStore, store_name
from modrec.data import Dataset
from modrec.data.public import NAMED

log = logging.getLogger(__name__)

MODALITIES = ("text", "image", "video", "audio", "tags")


def build_encoder(spec: str, dataset: Dataset, device: str = "cpu") -> Encoder:
    modality, _, option = spec.partition(":")
    name = store_name(spec)
    precomputed = NAMED[dataset.name].precomputed if dataset.name in NAMED else {}
    if spec in precomputed:
        from modrec.content.precomputed import PrecomputedEncoder

        matrix, rows, id_column = precomputed[spec]
        root = paths.data_dir()
        return PrecomputedEncoder.from_files(name, root / matrix, root / rows, id_column)
    if modality == "run" and option:
        from pathlib import Path

        from modrec.content.precomputed import PrecomputedEncoder

        return PrecomputedEncoder.from_run(name, Path(option), dataset.name)
    if modality == "text":
        from modrec.content.text import TextEncoder

        return TextEncoder(option or None, name=name, device=device)
    if modality == "image":
        from modrec.content.image import ImageEncoder

        return ImageEncoder(option or "efficientnet-lite0", name=name, device=device)
    if modality == "video":
        from modrec.content.image import ImageEncoder
        from modrec.content.video import VideoEncoder

        image = ImageEncoder(option or "efficientnet-lite0", device=device)
        return VideoEncoder(image=image, name=name)
    if modality == "audio":
        from modrec.content.audio import AudioEncoder

        return AudioEncoder(name=name)
    if modality == "tags":
        from modrec.content.metadata import TagEncoder

        column = option or "tags"
        if column not in dataset.items.columns:
            raise ValueError(f"dataset {dataset.name!r} has no item column {column!r} for "
                             f"{spec!r}; item columns: {_columns(dataset)}")
        encoder = TagEncoder.fit(dataset.items[column].dropna(), name=name)
        encoder.reads = column
        return encoder
    known = list(MODALITIES) + sorted(precomputed)
    raise ValueError(f"unknown encoder {spec!r}; choose from {', '.join(known)} "
                     "(optionally NAME:MODEL)")


def item_inputs(dataset: Dataset, column: str) -> pd.Series:
    """Each item's input for an encoder reading ``column``, indexed by item index.
    Text falls back to the title when a dataset has no richer text column."""
    items = dataset.items.set_index("item")
    if column == "text" and "text" not in items.columns and "title" in items.columns:
        column = "title"
    if column == "item_id":
        return items["item_id"].astype(str)
    if column not in items.columns:
        raise ValueError(f"dataset {dataset.name!r} has no item column {column!r}; item "
                         f"columns: {_columns(dataset)}")
    return items[column]


def _columns(dataset: Dataset) -> str:
    return ", ".join(c for c in dataset.items.columns if c != "item") or "none"


@dataclass
class EmbedReport:
    encoder: str
    dim: int
    items: int  # items in the catalog
    encoded: int  # encoded by this run
    already: int  # found in the store
    failures: int  # flagged by this run
    seconds: float
    failed_items: list[str] = field(default_factory=list)  # external ids, first 20

    @property
    def items_per_second(self) -> float:
        return self.encoded / self.seconds if self.seconds > 0 else math.nan

    def to_dict(self) -> dict[str, Any]:
        return {"encoder": self.encoder, "dim": self.dim, "items": self.items,
                "encoded": self.encoded, "already_stored": self.already,
                "failures": self.failures, "seconds": round(self.seconds, 3),
                "items_per_second": round(self.items_per_second, 2),
                "failed_items": self.failed_items}


def embed(dataset: Dataset, encoders: list[str], store: EmbeddingStore | None = None,
          batch_size: int = 64, device: str = "cpu", progress: bool = True,
          dtype: str = "float32") -> list[EmbedReport]:
    store = store or EmbeddingStore.for_dataset(dataset)
    reports = []
    for spec in encoders:
        encoder = build_encoder(spec, dataset, device)
        store.prepare(encoder.name, encoder.dim, encoder.version, encoder.reads, dtype)
        inputs = item_inputs(dataset, encoder.reads)
        todo = store.missing(encoder.name)
        report = EmbedReport(encoder.name, encoder.dim, dataset.num_items, 0,
                             dataset.num_items - len(todo), 0, 0.0)
        started = time.perf_counter()
        bar = tqdm(total=len(todo), desc=f"embed {encoder.name}", unit="item",
                   disable=not progress)
        for start in range(0, len(todo), batch_size):
            rows = todo[start:start + batch_size]
            vectors, failed = _encode_batch(encoder, inputs, rows, dataset)
            store.write(encoder.name, rows, vectors, failed)
            report.encoded += int((~failed).sum())
            report.failures += int(failed.sum())
            for row in rows[failed]:
                if len(report.failed_items) < 20:
                    report.failed_items.append(str(dataset.items["item_id"].iloc[row - 1]))
            bar.update(len(rows))
            report.seconds = time.perf_counter() - started
            bar.set_postfix(items_per_s=f"{report.items_per_second:.1f}",
                            failures=report.failures)
        bar.close()
        report.seconds = time.perf_counter() - started
        reports.append(report)
    return reports


def _encode_batch(encoder: Encoder, inputs: pd.Series, rows: np.ndarray,
                  dataset: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Vectors for ``rows`` and which of them failed. The whole batch is tried first;
    if it raises, every item alone, so one bad file costs only its own row."""
    batch = [_value(inputs.get(int(r))) for r in rows]
    try:
        return encoder.encode(batch), np.zeros(len(rows), bool)
    except Exception:  # noqa: BLE001 - narrowed item by item below
        pass
    vectors = np.zeros((len(rows), encoder.dim), np.float32)
    failed = np.zeros(len(rows), bool)
    for i, (row, value) in enumerate(zip(rows, batch, strict=True)):
        try:
            vectors[i] = encoder.encode([value])[0]
        except Exception as err:  # noqa: BLE001 - any decoder error flags one item
            failed[i] = True
            item_id = dataset.items["item_id"].iloc[int(row) - 1]
            reason = err if isinstance(err, EncodeError) else f"{type(err).__name__}: {err}"
            log.warning("%s: item %s (input %r) not encoded: %s", encoder.name, item_id,
                        _short(value), reason)
    return vectors, failed


def _value(value: Any) -> Any:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 80 else text[:77] + "..."
