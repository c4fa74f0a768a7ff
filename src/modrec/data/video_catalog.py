"""Labelled video clips as a catalog: the two layouts users keep their own clips in.

  ``video-folder``  ``ROOT/CLASS/clip.mp4`` (torchvision's DatasetFolder and Kinetics
                    layout): each first-level folder is a class, every video file under
                    it (at any depth, any video extension) one of its clips
  ``video-csv``     a CSV (or ``.tsv``) with a header and the columns ``path`` and
                    ``label``, optionally ``group`` (clips of one source video, kept on
                    one side of every split) and ``id``; relative paths start at the
                    CSV's folder

Both give a catalog without interactions: one item per clip, its id (the path relative
to the root or CSV folder, or the CSV's ``id``), ``video`` (the path the ``video``
encoders read; relative where the file lies inside the catalog's folder), ``label``,
``group`` when given, and ``problem``: why FFmpeg cannot read the clip (missing for a
readable one). A broken clip stays in the catalog, flagged, so it is reported rather
than silently dropped; `modrec embed` records it as a failure and `modrec classify`
names it. Empty class folders are logged and listed in the provenance
(``video_catalog.empty_classes``).

The readability check opens each clip with PyAV and decodes its first frame, here
rather than through `modrec.content.media` because data sits below content. It does
not find a clip cut short after its first frame; the embed job's check does
(`media.check_complete`).
"""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from modrec.data.dataset import DataFormatError, Dataset, build_dataset
from modrec.data.files import dataset_name, read_text
from modrec.errors import UnavailableError

log = logging.getLogger(__name__)

# What FFmpeg reads as video (lower case); other files in a class folder are skipped.
VIDEO_SUFFIXES = frozenset({
    ".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv",
    ".3gp", ".ts", ".mts", ".m2ts", ".ogv", ".gif"})
# Spellings of the CSV's columns (case-insensitive), first the documented one.
CSV_COLUMNS = {"path": ("path", "video", "file", "filename"),
               "label": ("label", "class", "category"),
               "group": ("group", "source", "video_group"),
               "id": ("id", "item_id", "clip_id")}


def is_video_folder(root: Path) -> bool:
    """Whether ``root`` has the ``ROOT/CLASS/clip`` shape: a class folder holding a video
    (for `detect_format`)."""
    return any(_videos(folder) for folder in _class_folders(root))


def read_video_folder(root: str | Path, name: str | None = None) -> Dataset:
    """The clips under ``root``'s class folders as a catalog (see the module docstring)."""
    root = Path(root)
    if not root.is_dir():
        raise DataFormatError(f"{root}: not a folder; --format video-folder expects "
                              "ROOT/CLASS/clip.mp4 (one folder per class)")
    stray = [p.name for p in root.iterdir() if p.is_file() and _is_video(p)]
    if stray:
        raise DataFormatError(
            f"{root}: {len(stray)} video file(s) directly in the root ({', '.join(stray[:3])}) "
            "have no class; move each into a folder named after its class "
            "(ROOT/CLASS/clip.mp4)")
    rows: list[dict[str, Any]] = []
    empty: list[str] = []
    for folder in _class_folders(root):
        clips = _videos(folder)
        if not clips:
            empty.append(folder.name)
        rows += [{"item_id": clip.relative_to(root).as_posix(),
                  "video": clip.relative_to(root).as_posix(), "label": folder.name}
                 for clip in clips]
    if empty:
        log.warning("%s: %d class folder(s) hold no video: %s", root, len(empty),
                    ", ".join(repr(e) for e in empty))
    if not rows:
        raise DataFormatError(
            f"{root}: no video files in its class folders ({len(empty)} folders, every one "
            f"empty of {', '.join(sorted(VIDEO_SUFFIXES))} files); expected ROOT/CLASS/clip.mp4")
    return _catalog(name or dataset_name(root), root, pd.DataFrame(rows),
                    {"empty_classes": empty})


def read_video_csv(path: str | Path, name: str | None = None) -> Dataset:
    """The clips a ``path,label[,group][,id]`` CSV lists as a catalog (see the module
    docstring); a row whose file is missing is an error naming the row."""
    path = Path(path)
    text = read_text(path)  # NUL bytes and invalid UTF-8 named by line
    sep = "\t" if path.suffix.lower() == ".tsv" else ","
    try:
        table = pd.read_csv(io.StringIO(text), sep=sep, dtype=str, keep_default_na=False,
                            skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise DataFormatError(f"{path}: not a readable CSV ({err}); expected a header line "
                              "and rows of path,label[,group]") from None
    roles = _csv_roles(path, list(table.columns))
    if table.empty:
        raise DataFormatError(f"{path}: no rows under the header; expected one row per clip")
    folder = path.parent.resolve()
    rows: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for position, record in enumerate(table.to_dict("records")):
        line = position + 2  # the header is line 1
        values = {role: str(record[column]).strip() for role, column in roles.items()}
        for role in ("path", "label", "group"):
            if role in values and not values[role]:
                raise DataFormatError(f"{path}:{line}: empty {roles[role]!r}; every row needs "
                                      f"a {role}")
        clip = Path(values["path"]).expanduser()
        clip = clip if clip.is_absolute() else folder / clip
        if not clip.is_file():
            what = "is a folder" if clip.is_dir() else "does not exist"
            raise DataFormatError(
                f"{path}:{line}: clip {values['path']!r} {what} (looked for {clip}); fix the "
                "path (relative paths start at the CSV's folder) or delete the row")
        stored = _relative_if_inside(clip, folder)
        item_id = values.get("id") or stored
        if item_id in seen:
            raise DataFormatError(f"{path}:{line}: clip id {item_id!r} is also on line "
                                  f"{seen[item_id]}; each clip once (give an id column to "
                                  "tell apart two rows of one file)")
        seen[item_id] = line
        row = {"item_id": item_id, "video": stored, "label": values["label"]}
        if "group" in values:
            row["group"] = values["group"]
        rows.append(row)
    return _catalog(name or dataset_name(path), path, pd.DataFrame(rows), {})


def _csv_roles(path: Path, columns: list[str]) -> dict[str, str]:
    """Role (path, label, group, id) -> the CSV's column holding it."""
    lowered = {c.strip().lower(): c for c in columns}
    roles = {}
    for role, spellings in CSV_COLUMNS.items():
        found = next((lowered[s] for s in spellings if s in lowered), None)
        if found is not None:
            roles[role] = found
    missing = [r for r in ("path", "label") if r not in roles]
    if missing:
        raise DataFormatError(
            f"{path}: no {' or '.join(repr(m) for m in missing)} column in the header "
            f"(columns: {', '.join(repr(c) for c in columns)}); expected path,label[,group]")
    return roles


def _catalog(name: str, source: Path, table: pd.DataFrame, report: dict[str, Any]) -> Dataset:
    """The clips as a dataset without interactions, each probed (``problem``)."""
    root = source if source.is_dir() else source.parent.resolve()
    table["problem"] = [_unreadable(_absolute(root, v)) for v in table["video"]]
    broken = table[table["problem"].notna()]
    for item_id, problem in zip(broken["item_id"], broken["problem"], strict=True):
        log.warning("clip %s is unreadable: %s", item_id, problem)
    counts = table.groupby("label").size()
    if len(counts) < 2:
        log.warning("%s: one class only (%s); a classifier needs two or more", source,
                    ", ".join(counts.index))
    report = {**report, "clips": len(table), "unreadable": len(broken),
              "classes": {str(k): int(v) for k, v in counts.items()}}
    none = np.array([], dtype=object)
    return build_dataset(name, none, none, item_table=table,
                         provenance={"source": str(source.resolve()), "video_catalog": report})


def _class_folders(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _videos(folder: Path) -> list[Path]:
    """The video files under ``folder`` at any depth, hidden ones (``.x``, macOS's
    ``._x.mp4``) left out, in name order."""
    found = []
    for parent, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [Path(parent) / f for f in files if not f.startswith(".")
                  and _is_video(Path(f))]
    return sorted(found)


def _is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES


def _relative_if_inside(path: Path, folder: Path) -> str:
    resolved = path.resolve()
    return (resolved.relative_to(folder).as_posix() if resolved.is_relative_to(folder)
            else str(resolved))


def _absolute(root: Path, value: str) -> Path:
    path = Path(value)
    return path if path.is_absolute() else root / path


def _unreadable(path: Path) -> str | None:
    """Why FFmpeg cannot give a frame of ``path``, or None when it can."""
    try:
        import av
    except ImportError as err:
        raise UnavailableError("reading video clips needs PyAV: pip install "
                               "'modrec[content]'") from err
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                return "no video stream"
            for _ in container.decode(video=0):
                return None
            return "no decodable frame"
    except (av.FFmpegError, OSError, ValueError) as err:
        reason = getattr(err, "strerror", None) or str(err)  # not the path again
        return f"FFmpeg cannot read it: {reason}"
