"""What content jobs read of a catalog: each item's input for a column, and the media
files those inputs name.

Media paths (the ``image``, ``video`` and ``audio`` columns) are read only inside the
catalog's own folder (`catalog_folder`): a relative path is resolved against it, and a
path that leads elsewhere (``../``, an absolute path, a symbolic link out) is refused
for that item, which is flagged like any unreadable input, unless the caller allows
it (``allow_outside=True``, ``modrec embed --allow-outside-paths``). A catalog is data
from elsewhere; it should not choose which of the user's files get read. The embed job
(`modrec.content.embed_job`) and the video-text job (`modrec.content.video_text`) both
read media through `media_resolver`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from modrec import paths
from modrec.content.encoders.base import EncodeError
from modrec.data import Dataset
from modrec.data.public import NAMED
from modrec.errors import UsageError

MEDIA_COLUMNS = ("image", "video", "audio")  # columns of file paths


def input_column(dataset: Dataset, column: str) -> str:
    """The item column an encoder reading ``column`` reads in ``dataset``: text falls
    back to the title when a dataset has no richer text column. The one statement of
    the rule, for the embed job and for items the service encodes as they arrive."""
    columns = dataset.items.columns
    if column == "text" and "text" not in columns and "title" in columns:
        return "title"
    return column


def item_inputs(dataset: Dataset, column: str) -> pd.Series:
    """Each item's input for an encoder reading ``column``, indexed by item index
    (`input_column` says which column that is)."""
    items = dataset.items.set_index("item")
    column = input_column(dataset, column)
    if column == "item_id":
        return items["item_id"].astype(str)
    if column not in items.columns:
        raise UsageError(f"dataset {dataset.name!r} has no item column {column!r}; item "
                         f"columns: {column_names(dataset)}")
    return items[column]


def column_names(dataset: Dataset) -> str:
    """The catalog's item columns, for a message: ``item_id, title, genres`` (or none)."""
    return ", ".join(c for c in dataset.items.columns if c != "item") or "none"


def catalog_folder(dataset: Dataset) -> Path:
    """The folder a catalog's media paths are read from: a named dataset's data
    directory, else the folder of the file or folder it was imported from (its
    provenance), else the current directory."""
    if dataset.name in NAMED:
        return paths.data_dir().resolve()
    source = dataset.provenance.get("source")
    if not source:
        return Path.cwd().resolve()
    path = Path(source).resolve()
    return path if path.is_dir() else path.parent


def media_resolver(root: Path, allow_outside: bool = False, folder: str = "the catalog's "
                   "folder", remedy: str = "pass --allow-outside-paths to read files outside "
                   "it") -> Callable[[Any], Any]:
    """A function from a media column's value to the file to read: a relative path is
    taken relative to ``root``; one that resolves outside ``root`` (after following
    symbolic links) raises `EncodeError` unless ``allow_outside``. Values that are not
    paths (an already decoded image, None) pass through. ``folder`` and ``remedy``
    word the refusal for the caller (the service names its ``--media-dir``)."""
    real_root = Path(os.path.realpath(root))

    def resolve(value: Any) -> Any:
        if not isinstance(value, str | os.PathLike):
            return value
        path = Path(value)
        path = path if path.is_absolute() else root / path
        real = Path(os.path.realpath(path))
        if not allow_outside and not real.is_relative_to(real_root):
            raise EncodeError(f"media path {str(value)!r} resolves to {real}, outside "
                              f"{folder} {real_root}; refused ({remedy})")
        return real
    return resolve
