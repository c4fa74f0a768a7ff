"""The embed job (``modrec embed``): encode a dataset's items into its `EmbeddingStore`.

``embed(dataset, ["text", "video"])`` encodes, for each encoder, only the items the
store lacks, in batches, with a progress bar; after every batch the rows are committed
(see `EmbeddingStore.write`), so an interrupted job resumes where it stopped. An item
whose input is missing or unreadable is logged with its id and input, gets a zero row
and a failure flag, and the job goes on.

Encoders are named by specs (``text``, ``tags:tmdb_genres``, ``run:RUN_DIR``...:
`modrec.content.encoders.registry`). The item columns computed into the store's folder
(transcripts, frame labels, language-model labels: `modrec.content.columns`) join the
catalog first, so an encoder reads them by name. Media paths are read only inside the
catalog's own folder unless ``allow_outside`` (`modrec.content.catalog`).

Under ``torchrun`` (``torchrun --nproc_per_node N -m modrec embed ...``) the job is
data-parallel over items: every rank computes the same missing rows and cuts them into
the same batches; in each round rank r encodes batch ``round * N + r`` and writes its
rows into the shared memory-mapped matrix (disjoint rows, flushed), then the ranks
gather which rows they wrote and which failed, and rank 0 alone commits the masks (one
writer: no lost updates). The gather comes after every rank's flush, so no row is
marked done before it is on disk. Rank 0 alone creates the store's files (ids,
manifest, a new matrix); the others wait at a barrier and then read them. An
interrupted run resumes like a one-process run: rows written but not marked are
encoded again. The ranks must share one file system with coherent memory maps (one
machine).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from modrec.content.catalog import MEDIA_COLUMNS, catalog_folder, item_inputs, media_resolver
from modrec.content.columns import ItemColumns, with_item_columns
from modrec.content.encoders.base import EncodeError, Encoder
from modrec.content.encoders.registry import build_encoder
from modrec.content.store import EmbeddingStore, StoreError
from modrec.data import Dataset
from modrec.distributed import World
from modrec.errors import UsageError
from modrec.progress import Bar, progress_bar

log = logging.getLogger(__name__)


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


def open_store(dataset: Dataset, folder: str | Path | None = None,
               world: World | None = None) -> EmbeddingStore:
    """`EmbeddingStore.for_dataset`, opened by rank 0 first under torchrun: opening
    writes the ids file (and re-aligns matrices to a changed catalog), which one
    process must do alone; the other ranks wait at a barrier, then open it."""
    world = world or extraction_world()
    if world.is_main:
        store = EmbeddingStore.for_dataset(dataset, folder)
        world.barrier()
        return store
    world.barrier()
    return EmbeddingStore.for_dataset(dataset, folder)


def extraction_world() -> World:
    # gloo even when encoding on GPUs: only row indices and failure flags travel
    return World.from_env("cpu")


def embed(dataset: Dataset, encoders: list[str], store: EmbeddingStore | None = None,
          batch_size: int = 64, device: str = "cpu", progress: bool = True,
          dtype: str = "float32", allow_outside: bool = False,
          media_root: Path | None = None, world: World | None = None) -> list[EmbedReport]:
    """Encode the items ``store`` lacks with each encoder. ``media_root``: the folder
    media paths are confined to (default `catalog_folder`); ``allow_outside`` lifts the
    confinement (relative paths still start from ``media_root``). ``world``: the ranks
    to share the items among (default: torchrun's, or one process); every rank gets
    the same reports, of the whole job."""
    if batch_size < 1:
        raise UsageError(f"batch size must be at least 1, got {batch_size}")
    world = world or extraction_world()
    device = world.device(device)
    store = store or open_store(dataset, None, world)
    dataset = with_item_columns(dataset, ItemColumns.for_dataset(dataset, store.folder))
    root = (media_root or catalog_folder(dataset)).resolve()
    reports = []
    for spec in encoders:
        encoder = build_encoder(spec, dataset, device)
        if world.is_main:
            store.prepare(encoder.name, encoder.dim, encoder.version, encoder.reads, dtype)
        world.barrier()  # rank 0 has prepared the matrix; the others read the manifest
        if not world.is_main:
            store.reload()
            _check_prepared(store, encoder, dtype)
        inputs = item_inputs(dataset, encoder.reads)
        prepare = (media_resolver(root, allow_outside) if encoder.reads in MEDIA_COLUMNS
                   else None)
        todo = store.missing(encoder.name)  # the same on every rank
        report = EmbedReport(encoder.name, encoder.dim, dataset.num_items, 0,
                             dataset.num_items - len(todo), 0, 0.0)
        if world.is_main:
            log.info("%s: %d of %d items to encode (%d already stored) in %s%s",
                     encoder.name, len(todo), dataset.num_items, report.already,
                     store.folder, f" on {world.size} ranks" if world.distributed else "")
        started = time.perf_counter()
        bar: Bar[object] = progress_bar(total=len(todo), desc=f"embed {encoder.name}",
                                        unit="item", enabled=progress and world.is_main)
        batches = [todo[start:start + batch_size] for start in range(0, len(todo), batch_size)]
        for first in range(0, len(batches), world.size):  # one round: a batch per rank
            mine = first + world.rank
            rows = batches[mine] if mine < len(batches) else todo[:0]
            if len(rows):
                vectors, failed = _encode_batch(encoder, inputs, rows, dataset, prepare)
                store.write_rows(encoder.name, rows, vectors)  # flushed before marked
            else:
                failed = np.zeros(0, bool)
            # After every rank's flush: then rank 0 alone replaces the masks.
            parts = world.gather((rows, failed))
            rows = np.concatenate([part[0] for part in parts])
            failed = np.concatenate([part[1] for part in parts])
            if world.is_main:
                store.mark(encoder.name, rows, failed)
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
        world.barrier()  # the masks are committed before any rank goes on
        report.seconds = time.perf_counter() - started
        reports.append(report)
    return reports


def _check_prepared(store: EmbeddingStore, encoder: Encoder, dtype: str) -> None:
    info = store.info(encoder.name)
    if (info.dim, info.dtype, info.version) != (encoder.dim, dtype, encoder.version):
        raise StoreError(f"{store.folder}: rank 0 prepared {info.name} as {info.dtype} "
                         f"dim {info.dim} version {info.version}, this rank's encoder is "
                         f"{dtype} dim {encoder.dim} version {encoder.version}")


def _encode_batch(encoder: Encoder, inputs: pd.Series, rows: np.ndarray, dataset: Dataset,
                  prepare: Callable[[Any], Any] | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Vectors for ``rows`` and which of them failed. ``prepare`` turns an input into
    what the encoder reads (a media path into the file to open) or refuses it. The
    whole batch is tried first; if it raises, every item alone, so one bad file costs
    only its own row."""
    vectors = np.zeros((len(rows), encoder.dim), np.float32)
    failed = np.zeros(len(rows), bool)
    raw = [_value(inputs.get(int(r))) for r in rows]
    batch: list[Any] = list(raw)

    def flag(i: int, err: Exception) -> None:
        failed[i] = True
        item_id = dataset.items["item_id"].iloc[int(rows[i]) - 1]
        reason = err if isinstance(err, EncodeError) else f"{type(err).__name__}: {err}"
        log.warning("%s: item %s (input %r) not encoded: %s", encoder.name, item_id,
                    _short(raw[i]), reason)

    if prepare is not None:
        for i, value in enumerate(raw):
            try:
                batch[i] = prepare(value)
            except EncodeError as err:
                flag(i, err)
    good = np.flatnonzero(~failed)
    try:
        if len(good):
            vectors[good] = encoder.encode([batch[i] for i in good])
        return vectors, failed
    except Exception:  # noqa: BLE001 - narrowed item by item below
        pass
    for i in map(int, good):
        try:
            vectors[i] = encoder.encode([batch[i]])[0]
        except Exception as err:  # noqa: BLE001 - any decoder error flags one item
            vectors[i] = 0.0
            flag(i, err)
    return vectors, failed


def _value(value: Any) -> Any:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 80 else text[:77] + "..."
