"""Item columns computed from content (a video's transcript, its frames' labels, the
text on its screen), kept beside the embedding store so that every path that reads an
item column reads them too.

A folder in the dataset's store folder (``<store>/columns/``)::

    manifest.json             per column: the file in charge, the producer's fingerprint
                              (weights) and version (settings), the column it reads, the
                              time it was last extended
    <column>-<digest>.jsonl   an `AnnotationFile`: one record per item id, appended
                              whole as it is made: {"key": item id, "value": ..., "error":
                              why there is no value (a broken file), "model", "version",
                              "time", and what else the producer recorded}

The digest covers the producer's fingerprint and version, so another model or other
settings write another file and a rerun with the same ones finds every answer: a job
resumes after a kill, and costs nothing once done. Records are keyed by the external
item id, not the index, so they survive new items and a re-indexed catalog.
`with_item_columns` adds the columns in charge to a dataset's item table (as values;
None where an item has none), and `item_inputs`, `label_matrix` and the ``tags:``
encoder then read them like the catalog's own columns.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from modrec.atomic import write_text_atomic
from modrec.content.annotation_file import AnnotationFile
from modrec.content.store import EmbeddingStore, ManifestShape, read_manifest
from modrec.data import Dataset
from modrec.errors import NotFoundError, UsageError

COLUMNS_MANIFEST = ManifestShape("columns", frozenset({"file"}), "a column entry lacks its file",
                                 "an item-columns manifest")


@dataclass(frozen=True)
class Producer:
    """What makes one column: ``fingerprint`` identifies the weights (a file digest or
    a model name), ``version`` the settings that change a value, ``reads`` the item
    column it reads (``video``)."""

    column: str
    fingerprint: str
    version: str
    reads: str

    @property
    def digest(self) -> str:
        key = "\n".join([self.column, self.fingerprint, self.version])
        return hashlib.sha256(key.encode()).hexdigest()[:12]


class ItemColumns:
    """The computed columns of one dataset: a folder of `AnnotationFile`s and the
    manifest that says which file is each column's."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    @classmethod
    def for_dataset(cls, dataset: Dataset, store_folder: str | Path | None = None
                    ) -> ItemColumns:
        """``<store folder>/columns``, the store folder being `EmbeddingStore.folder_for`'s."""
        return cls(EmbeddingStore.folder_for(dataset, store_folder) / "columns")

    def _manifest(self) -> dict[str, dict[str, Any]]:
        return read_manifest(self.folder / "manifest.json", COLUMNS_MANIFEST,
                             "delete it and run `modrec transcribe` again (answers already "
                             "in the JSON-lines files beside it are found again)")

    def names(self) -> list[str]:
        return sorted(self._manifest())

    def info(self, column: str) -> dict[str, Any]:
        columns = self._manifest()
        if column not in columns:
            have = ", ".join(sorted(columns)) or "none"
            raise NotFoundError(f"no computed column {column!r} in {self.folder} (have: {have}); "
                                "run `modrec transcribe` first")
        return columns[column]

    def file(self, producer: Producer) -> AnnotationFile:
        """The producer's results file (created on the first append)."""
        return AnnotationFile(self.folder / f"{producer.column}-{producer.digest}.jsonl")

    def record(self, producer: Producer, item_id: str, value: Any = None,
               error: str | None = None, **extra: Any) -> dict[str, Any]:
        """One item's result, with its provenance, as the file stores it."""
        return {"key": str(item_id), "value": value, "error": error, **extra,
                "model": producer.fingerprint, "version": producer.version,
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}

    def commit(self, producer: Producer, **details: Any) -> None:
        """Make the producer's file the column's (atomic manifest replacement)."""
        columns = self._manifest()
        columns[producer.column] = {
            "file": self.file(producer).path.name, "model": producer.fingerprint,
            "version": producer.version, "reads": producer.reads,
            "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **details}
        self.folder.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.folder / "manifest.json",
                          json.dumps({"columns": columns}, indent=2, ensure_ascii=False))

    def records(self, column: str) -> dict[str, dict[str, Any]]:
        """The column's records by item id."""
        return AnnotationFile(self.folder / self.info(column)["file"]).records()

    def values(self, column: str) -> dict[str, Any]:
        """Item id -> value, for the items that have one (no error)."""
        return {key: record.get("value") for key, record in self.records(column).items()
                if record.get("error") is None and record.get("value") is not None}


def with_item_columns(dataset: Dataset, columns: ItemColumns | None = None) -> Dataset:
    """The dataset with its computed columns added to the item table (a copy; a column
    the catalog already has is left as it is): ``columns``, or those in the default
    store folder (`ItemColumns.for_dataset`; pass ``ItemColumns.for_dataset(dataset,
    store)`` for another). ``provenance["item_columns"]`` gets each added column's file
    and a digest of its values, so an encoder reading one knows when what it encoded
    changed. The one way computed columns join a dataset: the embed job, the CLI's
    ``--labels``, search and classify all come through here."""
    columns = columns or ItemColumns.for_dataset(dataset)
    names = [n for n in columns.names() if n not in dataset.items.columns]
    if not names:
        return dataset
    items = dataset.items.copy()
    added: dict[str, dict[str, str]] = {}
    ids = items["item_id"].astype(str)
    for name in names:
        values = columns.values(name)
        column = [values.get(i) for i in ids]
        items[name] = pd.Series(column, index=items.index, dtype=object)
        text = json.dumps(column, ensure_ascii=False, default=str)
        added[name] = {"file": columns.info(name)["file"],
                       "digest": hashlib.sha256(text.encode()).hexdigest()[:12]}
    provenance = {**dataset.provenance,
                  "item_columns": {**dataset.provenance.get("item_columns", {}), **added}}
    return dataclasses.replace(dataset, items=items, provenance=provenance)


def write_label_column(dataset: Dataset, column: str, labels: list[str], items: Any,
                       scores: Any, llm_fingerprint: str, version: str, reads: str,
                       threshold: float = 0.5, columns: ItemColumns | None = None,
                       ) -> dict[str, Any]:
    """Language-model label scores as a computed column of ``|``-separated labels
    (those scoring at least ``threshold``, and always the item's best one), so that the
    ``tags:`` encoder, `label_matrix` and the classifiers read them like any catalog
    column. Each record keeps every label's score. ``version`` names the prompt and
    method; the threshold joins it, so another threshold is another file."""
    import numpy as np

    if not 0.0 <= threshold <= 1.0:
        raise UsageError(f"the label threshold must lie in [0, 1], not {threshold}")
    columns = columns or ItemColumns.for_dataset(dataset)
    if column in dataset.items.columns and column not in columns.names():
        raise UsageError(f"the catalog already has a column {column!r}; name the "
                         "language model's labels another way (--column)")
    producer = Producer(column, llm_fingerprint, f"{version}:threshold={threshold:g}", reads)
    file = columns.file(producer)
    ids = dataset.items.set_index("item")["item_id"].astype(str)
    written = 0
    for item, row in zip(np.asarray(items), np.asarray(scores, dtype=np.float64),
                         strict=True):
        chosen = [label for label, score in zip(labels, row, strict=True)
                  if score >= threshold] or [labels[int(np.argmax(row))]]
        file.append(columns.record(producer, ids[int(item)], "|".join(chosen),
                                   scores={label: round(float(score), 6) for label, score
                                           in zip(labels, row, strict=True)}))
        written += 1
    columns.commit(producer, labels=labels, threshold=threshold)
    return {"column": column, "file": str(file.path), "items": written}


def write_class_column(dataset: Dataset, column: str, classes: list[str], items: Any,
                       scores: Any, missing: dict[str, str], head_digest: str,
                       version: str, reads: str, columns: ItemColumns | None = None,
                       ) -> dict[str, Any]:
    """A single-label head's predictions as a computed column: each item's most probable
    class as the value (read by ``tags:COLUMN``, ``--labels COLUMN`` and the other
    verbs like a catalog column), every class's probability in its record; the
    ``missing`` items (id -> why) get a record with that error and no value.
    ``head_digest`` identifies the head (its file's digest), so another head writes
    another file."""
    import numpy as np

    columns = columns or ItemColumns.for_dataset(dataset)
    if column in dataset.items.columns and column not in columns.names():
        raise UsageError(f"the catalog already has a column {column!r}; name the "
                         "predictions another way (--column)")
    producer = Producer(column, head_digest, version, reads)
    file = columns.file(producer)
    ids = dataset.items.set_index("item")["item_id"].astype(str)
    for item, row in zip(np.asarray(items), np.asarray(scores, dtype=np.float64),
                         strict=True):
        file.append(columns.record(producer, ids[int(item)], classes[int(np.argmax(row))],
                                   scores={c: round(float(p), 6) for c, p in
                                           zip(classes, row, strict=True)}))
    for item_id, why in missing.items():
        file.append(columns.record(producer, item_id, error=why))
    columns.commit(producer, classes=classes)
    return {"column": column, "file": str(file.path), "items": len(np.asarray(items)),
            "missing": len(missing)}
