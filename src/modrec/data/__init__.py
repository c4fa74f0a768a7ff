"""Datasets: the canonical folder format, importers, named public datasets, splits and
batches. Nothing here imports models, training or serving."""

from modrec.data.batches import SequenceBatch
from modrec.data.dataset import DataFormatError, Dataset, Sequences
from modrec.data.public import (
    NAMED,
    DatasetUnavailable,
    list_datasets,
    load_dataset,
    named_dataset,
)
from modrec.data.splits import EvalSet, Split, leave_one_out, make_split, temporal_split

__all__ = [
    "NAMED",
    "DataFormatError",
    "Dataset",
    "DatasetUnavailable",
    "EvalSet",
    "SequenceBatch",
    "Sequences",
    "Split",
    "leave_one_out",
    "list_datasets",
    "load_dataset",
    "make_split",
    "named_dataset",
    "temporal_split",
]
