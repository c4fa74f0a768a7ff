"""The video-text job (`describe_videos`): for each item's video, the parts its files
lack, then ``video_text`` joining them (the package docstring says what each is).

The job visits the items in catalog order and, for each, makes only the parts its
files lack, appending each result as it is made: a killed job loses at most the item in
hand, and a rerun makes nothing it has. A file that is missing, unreadable or outside
the catalog's folder (the confinement of `modrec.content.catalog.media_resolver`) gets a
record with the error for every part and a log line naming the item, and the job goes
on; as in the embedding store, a failure is remembered, not retried on every run. A
video without a soundtrack gets an empty transcript (that is information, not a
failure). ``video_text`` is composed from the part records last, for every item whose
parts are all settled; its file is keyed by the parts' producers, so changing one part's
model composes it afresh.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modrec.content.catalog import catalog_folder, item_inputs, media_resolver
from modrec.content.columns import ItemColumns, Producer
from modrec.content.encoders.base import EncodeError
from modrec.content.media import decode_audio, sample_frames
from modrec.data import Dataset
from modrec.errors import UsageError
from modrec.progress import Bar, progress_bar

log = logging.getLogger(__name__)

PARTS = ("transcript", "frame_labels", "ocr")
COLUMNS = (*PARTS, "video_text")
VIDEO_TEXT_VERSION = "video-text-1"


@dataclass
class VideoTextSettings:
    """``parts``: which of `PARTS` to make (``video_text`` joins those made);
    ``model``: a Whisper size, repository or folder (None: the bundled tiny.en);
    ``frames``: frames sampled per video for labels and OCR."""

    parts: tuple[str, ...] = PARTS
    model: str | None = None
    language: str | None = None
    threads: int = 0
    device: str = "cpu"
    frames: int = 4
    top_labels: int = 5
    ocr_lang: str = "eng"
    allow_outside: bool = False
    media_root: Path | None = None
    progress: bool = True


@dataclass
class PartReport:
    column: str
    items: int
    made: int = 0  # by this run
    cached: int = 0  # found in the file
    failures: int = 0  # flagged by this run
    seconds: float = 0.0  # spent making this part (decoding included)
    media_seconds: float = 0.0  # of audio transcribed (transcript only)
    skipped: str | None = None  # why the part was not made at all
    file: str = ""
    failed_items: list[str] = field(default_factory=list)  # external ids, first 20

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "column": self.column, "items": self.items, "made": self.made,
            "cached": self.cached, "failures": self.failures,
            "seconds": round(self.seconds, 3), "file": self.file,
            "failed_items": self.failed_items}
        if self.made:
            out["seconds_per_item"] = round(self.seconds / self.made, 3)
        if self.media_seconds and self.seconds:
            out["audio_seconds"] = round(self.media_seconds, 2)
            out["times_real_time"] = round(self.media_seconds / self.seconds, 2)
        if self.skipped:
            out["skipped"] = self.skipped
        return out


class _Part:
    """One column being made: its producer, file, records so far and report."""

    def __init__(self, producer: Producer, columns: ItemColumns, items: int,
                 make: Callable[[_Video], dict[str, Any]]) -> None:
        self.producer, self.make = producer, make
        self.file = columns.file(producer)
        self.records = self.file.records()
        self.report = PartReport(producer.column, items, file=str(self.file.path))

    def keep(self, record: dict[str, Any]) -> None:
        self.file.append(record)
        self.records[record["key"]] = record


class _Video:
    """One item's video, decoded at most once per kind (frames, soundtrack)."""

    def __init__(self, path: Path, frames: int) -> None:
        self.path, self.count = path, frames
        self._frames: list[Any] | None = None

    def frames(self) -> list[Any]:
        if self._frames is None:
            if not self.path.is_file():
                raise EncodeError(f"video file not found: {self.path}")
            self._frames = sample_frames(self.path, self.count)
        return self._frames


def describe_videos(dataset: Dataset, settings: VideoTextSettings | None = None,
                    columns: ItemColumns | None = None) -> list[PartReport]:
    """Make the missing parts of every item's video text; reports per column (the
    parts, then ``video_text``)."""
    settings = settings or VideoTextSettings()
    unknown = [p for p in settings.parts if p not in PARTS]
    if unknown or not settings.parts:
        hint = ("; Kinetics action labels (the actions column) come with the I3D "
                "embeddings: modrec embed --encoder video:i3d" if "actions" in unknown else "")
        raise UsageError(f"unknown part {', '.join(unknown) or '(none given)'}; choose from "
                         f"{', '.join(PARTS)}{hint}")
    columns = columns or ItemColumns.for_dataset(dataset)
    inputs = item_inputs(dataset, "video")
    root = (settings.media_root or catalog_folder(dataset)).resolve()
    resolve = media_resolver(root, settings.allow_outside)
    parts, skipped = _parts(settings, columns, dataset.num_items)
    for part in parts:
        columns.commit(part.producer)  # a partly made column is readable, as it grows
    ids = dataset.items["item_id"].astype(str).tolist()
    todo = [(row, item_id) for row, item_id in enumerate(ids, start=1)
            if any(item_id not in part.records for part in parts)]
    for part in parts:
        part.report.cached = sum(item_id in part.records for item_id in ids)
    log.info("video text: %d of %d videos to describe (%s) into %s", len(todo), len(ids),
             ", ".join(p.producer.column for p in parts), columns.folder)
    bar: Bar[object] = progress_bar(total=len(todo), desc="transcribe", unit="video",
                                    enabled=settings.progress)
    try:
        for row, item_id in todo:
            _describe_one(parts, item_id, inputs.get(row), resolve, settings.frames, columns)
            bar.update(1)
    finally:
        bar.close()
    for part in parts:
        columns.commit(part.producer, items=len(part.records))
    reports = [part.report for part in parts] + skipped
    reports.append(_compose(parts, columns, ids))
    return reports


def _parts(settings: VideoTextSettings, columns: ItemColumns, items: int
           ) -> tuple[list[_Part], list[PartReport]]:
    """The models of the requested parts; OCR without Tesseract is skipped and said so."""
    parts: list[_Part] = []
    skipped: list[PartReport] = []
    if "transcript" in settings.parts:
        from modrec.content.video_text.speech import Transcriber

        whisper = Transcriber(settings.model, settings.device, threads=settings.threads,
                              language=settings.language)
        parts.append(_Part(Producer("transcript", whisper.fingerprint, whisper.version,
                                    "video"), columns, items, _transcribe(whisper)))
    if "frame_labels" in settings.parts:
        from modrec.content.video_text.frame_labels import FrameLabeler

        labeler = FrameLabeler(top=settings.top_labels, device=settings.device)
        version = f"frames{settings.frames}:{labeler.version}"
        parts.append(_Part(Producer("frame_labels", labeler.fingerprint, version, "video"),
                           columns, items, _label(labeler)))
    if "ocr" in settings.parts:
        from modrec.content.video_text.ocr import ScreenText, ocr_unavailable

        reason = ocr_unavailable()
        if reason:
            log.warning("on-screen text (OCR) skipped: %s", reason)
            skipped.append(PartReport("ocr", items, skipped=reason))
        else:
            reader = ScreenText(settings.ocr_lang)
            version = f"frames{settings.frames}:{reader.version}"
            parts.append(_Part(Producer("ocr", reader.fingerprint, version, "video"),
                               columns, items, _read(reader)))
    return parts, skipped


def _transcribe(whisper: Any) -> Callable[[_Video], dict[str, Any]]:
    def make(video: _Video) -> dict[str, Any]:
        if not video.path.is_file():
            raise EncodeError(f"video file not found: {video.path}")
        sound = decode_audio(video.path)
        if sound is None:
            return {"value": "", "note": "no audio track", "seconds": 0.0}
        heard = whisper.transcribe(*sound)
        return {"value": heard.text, "whisper": whisper.model_name, "language": heard.language,
                "seconds": round(heard.seconds, 3), "segments": heard.segments,
                "dropped": heard.dropped}
    return make


def _label(labeler: Any) -> Callable[[_Video], dict[str, Any]]:
    def make(video: _Video) -> dict[str, Any]:
        labels = labeler.labels(video.frames())
        return {"value": "|".join(name for name, _ in labels),
                "scores": dict(labels), "frames": len(video.frames())}
    return make


def _read(reader: Any) -> Callable[[_Video], dict[str, Any]]:
    def make(video: _Video) -> dict[str, Any]:
        return {"value": reader.read(video.frames()), "frames": len(video.frames())}
    return make


def _describe_one(parts: list[_Part], item_id: str, value: Any,
                  resolve: Callable[[Any], Any], frames: int, columns: ItemColumns) -> None:
    """Make every part the item lacks; a part that fails is recorded as failed."""
    missing = [part for part in parts if item_id not in part.records]
    try:
        if value is None or (isinstance(value, float) and value != value):
            raise EncodeError("no video file named for this item")
        video = _Video(Path(resolve(value)), frames)
    except EncodeError as err:
        for part in missing:
            _fail(part, columns, item_id, value, err)
        return
    for part in missing:
        started = time.perf_counter()
        try:
            answer = part.make(video)
        except Exception as err:  # noqa: BLE001 - any decoder error flags one item's part
            part.report.seconds += time.perf_counter() - started
            _fail(part, columns, item_id, value, err)
            continue
        part.report.seconds += time.perf_counter() - started
        part.report.media_seconds += float(answer.get("seconds", 0.0) or 0.0)
        part.keep(columns.record(part.producer, item_id, **answer))
        part.report.made += 1


def _fail(part: _Part, columns: ItemColumns, item_id: str, value: Any,
          err: Exception) -> None:
    reason = str(err) if isinstance(err, EncodeError) else f"{type(err).__name__}: {err}"
    log.warning("%s: item %s (video %r) not described: %s", part.producer.column, item_id,
                value, reason)
    part.keep(columns.record(part.producer, item_id, error=reason))
    part.report.failures += 1
    if len(part.report.failed_items) < 20:
        part.report.failed_items.append(item_id)


def _compose(parts: list[_Part], columns: ItemColumns, ids: list[str]) -> PartReport:
    """``video_text`` for every item whose parts are all recorded and that lacks it."""
    digest = hashlib.sha256("\n".join(f"{p.producer.column}={p.producer.digest}"
                                      for p in parts).encode()).hexdigest()[:16]
    producer = Producer("video_text", f"parts:{digest}",
                        f"{VIDEO_TEXT_VERSION}:{'+'.join(p.producer.column for p in parts)}",
                        "video")
    part = _Part(producer, columns, len(ids), lambda video: {})
    part.report.cached = sum(item_id in part.records for item_id in ids)
    started = time.perf_counter()
    for item_id in ids:
        if item_id in part.records or any(item_id not in p.records for p in parts):
            continue
        found = {p.producer.column: p.records[item_id] for p in parts}
        errors = {c: r["error"] for c, r in found.items() if r.get("error")}
        if len(errors) == len(found):  # nothing to say: the file could not be read
            part.keep(columns.record(producer, item_id, error="; ".join(
                f"{c}: {e}" for c, e in errors.items())))
            part.report.failures += 1
            continue
        values = {c: r.get("value") or "" for c, r in found.items() if not r.get("error")}
        part.keep(columns.record(producer, item_id, compose_video_text(**values),
                                 parts={c: r.get("version") for c, r in found.items()}))
        part.report.made += 1
    part.report.seconds = time.perf_counter() - started
    columns.commit(producer, items=len(part.records),
                   parts={p.producer.column: p.file.path.name for p in parts})
    return part.report


def compose_video_text(transcript: str = "", frame_labels: str = "", ocr: str = "") -> str:
    """One text from the parts: what is said, then what is shown and written."""
    lines = []
    if transcript.strip():
        lines.append(transcript.strip())
    if labels := [label for label in frame_labels.split("|") if label.strip()]:
        lines.append(f"Shown: {', '.join(labels)}.")
    if ocr.strip():
        lines.append(f"On screen: {ocr.strip()}.")
    return "\n".join(lines)
