"""The embed job (``modrec embed``): encode a dataset's items into its `EmbeddingStore`.

``embed(dataset, ["text", "video"])`` encodes, for each encoder, only the items the
store lacks, in batches, with a progress bar; after every batch the rows are committed
(see `EmbeddingStore.write`), so an interrupted job resumes where it stopped. An item
whose input is missing or unreadable is logged with its id and input, gets a zero row
and a failure flag, and the job goes on.

Encoders are named by specs (``text``, ``tags:tmdb_genres``, ``run:RUN_DIR``...:
`modrec.content.encoders.registry`). The item columns computed into the store's folder
(transcripts, frame labels, language-model labels: `modrec.content.columns`) join the
catalog first, so an encoder reads them by name. A sequence encoder (``video:i3d``:
`modrec.content.encoders.base.SequenceEncoder`) also gives each item its step vectors,
stored beside its row (`EmbeddingStore.sequences`), and the records of the columns it
makes from the same decoded input (``actions``), appended by rank 0 as rows are
committed; an item lacking such a record is encoded again. Media paths are read only inside the
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
from modrec.content.columns import ItemColumns, Producer, with_item_columns
from modrec.content.encoders.base import Encoded, EncodeError, Encoder
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
    item_columns = ItemColumns.for_dataset(dataset, store.folder)
    dataset = with_item_columns(dataset, item_columns)
    root = (media_root or catalog_folder(dataset)).resolve()
    job = _Job(dataset, store, world, batch_size, progress)
    reports = []
    for spec in encoders:
        encoder = build_encoder(spec, dataset, device)
        if world.is_main:
            store.prepare(encoder.name, encoder.dim, encoder.version, encoder.reads, dtype,
                          _steps(encoder))
        world.barrier()  # rank 0 has prepared the matrix; the others read the manifest
        if not world.is_main:
            store.reload()
            _check_prepared(store, encoder, dtype)
        prepare = (media_resolver(root, allow_outside) if encoder.reads in MEDIA_COLUMNS
                   else None)
        reports.append(job.run(encoder, prepare, _Columns(item_columns, encoder, world)))
    return reports


def _steps(encoder: Encoder) -> int:
    """A sequence encoder's most steps per item; 0 for one that gives vectors only."""
    return int(getattr(encoder, "steps", 0)) if hasattr(encoder, "encode_all") else 0


class _Columns:
    """The computed columns an encoder makes beside its vectors (``video:i3d``: the
    ``actions``), written by rank 0 as the rows are committed; none for most encoders."""

    def __init__(self, columns: ItemColumns, encoder: Encoder, world: World) -> None:
        self.columns = columns
        self.producers: list[Producer] = list(getattr(encoder, "columns", []))
        self.files = {p.column: columns.file(p) for p in self.producers}
        self.have = [set(self.files[p.column].records()) for p in self.producers]
        if world.is_main:
            for producer in self.producers:  # a partly made column is readable as it grows
                self.columns.commit(producer)

    def lacking(self, item_ids: list[str]) -> np.ndarray:
        """Item indices (1..N) lacking a record in some column."""
        return np.array([row for row, item_id in enumerate(item_ids, start=1)
                         if any(item_id not in have for have in self.have)], np.int64)

    def write(self, records: list[tuple[str, str, dict[str, Any] | None, str | None]]
              ) -> None:
        for producer in self.producers:
            file = self.files[producer.column]
            for column, item_id, fields, error in records:
                if column == producer.column:
                    file.append(self.columns.record(producer, item_id, error=error,
                                                    **(fields or {})))

    def finish(self, world: World) -> None:
        if world.is_main:
            for producer in self.producers:
                self.columns.commit(producer, items=len(self.files[producer.column].records()))


@dataclass
class _Job:
    """One embed job's shared state: what every encoder's pass reads and writes."""

    dataset: Dataset
    store: EmbeddingStore
    world: World
    batch_size: int
    progress: bool

    def run(self, encoder: Encoder, prepare: Callable[[Any], Any] | None,
            columns: _Columns) -> EmbedReport:
        """Encode the rows the store lacks (and those lacking a column the encoder
        makes), a batch per rank per round."""
        dataset, store, world = self.dataset, self.store, self.world
        inputs = item_inputs(dataset, encoder.reads)
        todo = store.missing(encoder.name)  # the same on every rank
        if columns.producers:
            ids = dataset.items["item_id"].astype(str).tolist()
            todo = np.union1d(todo, columns.lacking(ids)).astype(np.int64)
        report = EmbedReport(encoder.name, encoder.dim, dataset.num_items, 0,
                             dataset.num_items - len(todo), 0, 0.0)
        if world.is_main:
            log.info("%s: %d of %d items to encode (%d already stored) in %s%s",
                     encoder.name, len(todo), dataset.num_items, report.already,
                     store.folder, f" on {world.size} ranks" if world.distributed else "")
        started = time.perf_counter()
        bar: Bar[object] = progress_bar(total=len(todo), desc=f"embed {encoder.name}",
                                        unit="item", enabled=self.progress and world.is_main)
        size = self.batch_size
        batches = [todo[start:start + size] for start in range(0, len(todo), size)]
        for first in range(0, len(batches), world.size):  # one round: a batch per rank
            mine = first + world.rank
            rows, failed = self._round(encoder, inputs, batches[mine] if mine < len(batches)
                                       else todo[:0], prepare, columns)
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
        columns.finish(world)
        world.barrier()  # the masks are committed before any rank goes on
        report.seconds = time.perf_counter() - started
        return report

    def _round(self, encoder: Encoder, inputs: pd.Series, rows: np.ndarray,
               prepare: Callable[[Any], Any] | None, columns: _Columns
               ) -> tuple[np.ndarray, np.ndarray]:
        """This rank's batch encoded and written; every rank's rows gathered and marked
        by rank 0. Returns all ranks' rows and which of them failed."""
        records: list[tuple[str, str, dict[str, Any] | None, str | None]] = []
        if len(rows):
            batch = _encode_batch(encoder, inputs, rows, self.dataset, prepare)
            failed = batch.failed
            self.store.write_rows(encoder.name, rows, batch.encoded.vectors)  # flushed
            if _steps(encoder):  # before marked
                self.store.write_steps(encoder.name, rows, batch.encoded.steps,
                                       batch.encoded.lengths)
            records = batch.records(columns.producers, self.dataset, rows)
        else:
            failed = np.zeros(0, bool)
        # After every rank's flush: then rank 0 alone replaces the masks.
        parts = self.world.gather((rows, failed, records))
        rows = np.concatenate([part[0] for part in parts])
        failed = np.concatenate([part[1] for part in parts])
        if self.world.is_main:
            self.store.mark(encoder.name, rows, failed)
            columns.write([record for part in parts for record in part[2]])
        return rows, failed


def _check_prepared(store: EmbeddingStore, encoder: Encoder, dtype: str) -> None:
    info = store.info(encoder.name)
    if (info.dim, info.dtype, info.version) != (encoder.dim, dtype, encoder.version):
        raise StoreError(f"{store.folder}: rank 0 prepared {info.name} as {info.dtype} "
                         f"dim {info.dim} version {info.version}, this rank's encoder is "
                         f"{dtype} dim {encoder.dim} version {encoder.version}")


@dataclass
class _Batch:
    """One batch's results: what the encoder made (zeros for failed items), which
    items failed and why."""

    encoded: Encoded
    failed: np.ndarray
    reasons: list[str | None]

    def records(self, producers: list[Producer], dataset: Dataset, rows: np.ndarray
                ) -> list[tuple[str, str, dict[str, Any] | None, str | None]]:
        """(column, item id, record fields, error) for each item and computed column."""
        ids = dataset.items["item_id"].iloc[rows - 1].astype(str).tolist()
        return [(p.column, item_id, None if self.failed[i]
                 else self.encoded.columns[i].get(p.column), self.reasons[i])
                for p in producers for i, item_id in enumerate(ids)]


def _encode(encoder: Encoder, batch: list[Any]) -> Encoded:
    full = getattr(encoder, "encode_all", None)
    if full is not None:
        encoded: Encoded = full(batch)
        return encoded
    vectors = encoder.encode(batch)
    return Encoded(vectors, np.zeros((len(batch), 0, encoder.dim), np.float32),
                   np.zeros(len(batch), np.int32), [{} for _ in batch])


def _encode_batch(encoder: Encoder, inputs: pd.Series, rows: np.ndarray, dataset: Dataset,
                  prepare: Callable[[Any], Any] | None = None) -> _Batch:
    """Vectors (and a sequence encoder's steps and columns) for ``rows`` and which of
    them failed. ``prepare`` turns an input into what the encoder reads (a media path
    into the file to open) or refuses it. The whole batch is tried first; if it raises,
    every item alone, so one bad file costs only its own row."""
    out = Encoded(np.zeros((len(rows), encoder.dim), np.float32),
                  np.zeros((len(rows), _steps(encoder), encoder.dim), np.float32),
                  np.zeros(len(rows), np.int32), [{} for _ in rows])
    result = _Batch(out, np.zeros(len(rows), bool), [None] * len(rows))
    raw = [_value(inputs.get(int(r))) for r in rows]
    batch: list[Any] = list(raw)

    def flag(i: int, err: Exception) -> None:
        result.failed[i] = True
        item_id = dataset.items["item_id"].iloc[int(rows[i]) - 1]
        reason = err if isinstance(err, EncodeError) else f"{type(err).__name__}: {err}"
        result.reasons[i] = str(reason)
        log.warning("%s: item %s (input %r) not encoded: %s", encoder.name, item_id,
                    _short(raw[i]), reason)

    if prepare is not None:
        for i, value in enumerate(raw):
            try:
                batch[i] = prepare(value)
            except EncodeError as err:
                flag(i, err)
    good = np.flatnonzero(~result.failed)
    try:
        if len(good):
            encoded = _encode(encoder, [batch[i] for i in good])
            _put(out, good, encoded)
            for at, error in zip(good, encoded.errors or [None] * len(good), strict=True):
                if error is not None:  # reported, not raised: the rest is kept
                    _put(out, np.array([at]), None)
                    flag(int(at), EncodeError(error))
        return result
    except Exception:  # noqa: BLE001 - narrowed item by item below
        pass
    for i in map(int, good):
        try:
            encoded = _encode(encoder, [batch[i]])
            if encoded.errors and encoded.errors[0] is not None:
                raise EncodeError(encoded.errors[0])
            _put(out, np.array([i]), encoded)
        except Exception as err:  # noqa: BLE001 - any decoder error flags one item
            _put(out, np.array([i]), None)
            flag(i, err)
    return result


def _put(out: Encoded, at: np.ndarray, encoded: Encoded | None) -> None:
    """``encoded``'s items into ``out`` at positions ``at`` (zeros when None)."""
    if encoded is None:
        out.vectors[at], out.steps[at], out.lengths[at] = 0.0, 0.0, 0
        return
    out.vectors[at] = encoded.vectors
    out.steps[at] = encoded.steps
    out.lengths[at] = encoded.lengths
    for i, columns in zip(at, encoded.columns, strict=True):
        out.columns[int(i)] = columns


def _value(value: Any) -> Any:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 80 else text[:77] + "..."
