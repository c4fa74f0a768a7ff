"""Vectors computed elsewhere (VGGish or Whisper audio embeddings, a text model run
offline) used as an encoder's output: a matrix plus the item id of each row. A named
dataset's shipped matrices are found by `modrec.content.encoders.registry`; ``run:RUN``
(`build_run`) takes a trained run's item vectors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from modrec.content.encoders.base import EncodeError, Spec
from modrec.data import DataFormatError, Dataset
from modrec.errors import UsageError


class PrecomputedEncoder:
    reads = "item_id"

    def __init__(self, name: str, vectors: np.ndarray, item_ids: list[str], source: str) -> None:
        if len(vectors) != len(item_ids):
            raise DataFormatError(f"{source}: {len(vectors)} vectors but {len(item_ids)} item ids")
        self.name, self.dim = name, int(vectors.shape[1])
        self.version = f"precomputed:{source}"
        self._vectors = vectors.astype(np.float32)
        self._row = {str(i): r for r, i in enumerate(item_ids)}

    @classmethod
    def from_files(cls, name: str, matrix: Path, row_ids: Path,
                   id_column: str) -> PrecomputedEncoder:
        """``matrix`` a .npy ``(R, dim)``; ``row_ids`` a TSV naming each row's item id."""
        vectors = np.load(matrix)
        ids = pd.read_csv(row_ids, sep="\t", dtype=str)
        if id_column not in ids.columns:
            raise DataFormatError(f"{row_ids}: no column {id_column!r} (has {list(ids.columns)})")
        if "npy_row" in ids.columns:
            ids = ids.sort_values("npy_row", key=lambda s: s.astype(int))
        return cls(name, vectors, ids[id_column].tolist(), matrix.name)

    @classmethod
    def from_run(cls, name: str, run_dir: Path, dataset_name: str) -> PrecomputedEncoder:
        """The item vectors a trained run learned from interactions (what its model
        scores items with): behaviour as a feature. The run must be on the same dataset;
        rows are matched by item id, so it may come from an older snapshot of the
        catalog. Items it never trained on have no vector and are flagged as failures."""
        # Reading a run is downstream of content by nature (a run learns, content
        # reuses what it learned), so the import waits until a run is asked for.
        from modrec.runs import load_run

        run = load_run(run_dir)
        if run.dataset.name != dataset_name:
            raise UsageError(f"run {run_dir} was trained on {run.dataset.name!r}, not "
                             f"{dataset_name!r}")
        vectors = run.item_vectors()[1:][run.known[1:]]  # (known items, D)
        item_ids = run.dataset.items["item_id"].astype(str).to_numpy()[run.known[1:]]
        return cls(name, vectors, item_ids.tolist(), f"run:{run_dir}")

    def encode(self, batch: list[Any]) -> np.ndarray:
        rows = []
        for item_id in batch:
            if str(item_id) not in self._row:
                raise EncodeError(f"item {item_id!r} has no precomputed {self.name} vector")
            rows.append(self._row[str(item_id)])
        return self._vectors[rows]


def build_run(spec: Spec, dataset: Dataset, device: str) -> PrecomputedEncoder:
    """``run:RUN_DIR``: the item vectors the run in RUN_DIR learned."""
    return PrecomputedEncoder.from_run(spec.name, Path(spec.option), dataset.name)
