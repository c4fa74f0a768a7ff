"""``modrec embed`` and ``modrec transcribe``: item content encoded into the dataset's
embedding store, and what videos say and show made into item columns."""

from __future__ import annotations

import argparse
from typing import Any

from modrec.cli.common import (
    Subparsers,
    at_least,
    columns,
    dataset_arguments,
    dataset_source,
    device_argument,
    media_root,
    no_progress_argument,
    outside_paths_argument,
    removed_on_failure,
    store_argument,
    threads_argument,
)


def add_parsers(sub: Subparsers) -> None:
    _add_embed(sub)
    _add_transcribe(sub)


def _add_embed(sub: Subparsers) -> None:
    p = sub.add_parser("embed", help="encode item content into the dataset's embedding store")
    dataset_arguments(p)
    p.add_argument("--encoder", required=True, help="comma-separated: text, image, video, "
                   "audio, video:i3d[:frames=32:stride=2:clips=3:crop=center] (I3D clips; "
                   "also the actions column), tags[:COLUMN], text:COLUMN[:MODEL] (any item "
                   "column, a computed transcript or video_text included), a dataset's "
                   "precomputed vectors "
                   "(vggish), or MODALITY:MODEL (text:sentence-transformers/all-mpnet-base-v2)")
    store_argument(p)
    p.add_argument("--batch-size", type=at_least(1), default=64)
    p.add_argument("--dtype", choices=["float32", "float16"], default="float32")
    device_argument(p)
    outside_paths_argument(p)
    no_progress_argument(p)
    threads_argument(p)
    p.set_defaults(func=cmd_embed)


def cmd_embed(args: argparse.Namespace) -> dict[str, Any]:
    from modrec.content import EmbeddingStore, embed
    from modrec.content.embed_job import extraction_world, open_store
    from modrec.data import load_dataset

    source = dataset_source(args.dataset, args.format)
    dataset = load_dataset(source, args.format, columns(args.columns))
    folder = EmbeddingStore.folder_for(dataset, args.store)
    world = extraction_world()  # under torchrun: the ranks share the items, rank 0 reports
    with removed_on_failure(folder, lambda f: (f / "manifest.json").exists(),
                            "run the command again: it encodes only what is missing"):
        store = open_store(dataset, folder, world)
        reports = embed(dataset, args.encoder.split(","), store, batch_size=args.batch_size,
                        device=args.device, progress=not args.no_progress, dtype=args.dtype,
                        allow_outside=args.allow_outside_paths,
                        media_root=media_root(source, args.format), world=world)
    if not args.json and world.is_main:
        for r in reports:
            print(f"  {r.encoder:<10} dim {r.dim:<5} encoded {r.encoded:>6} of {r.items} "
                  f"({r.already} already stored)  {r.items_per_second:8.1f} items/s  "
                  f"failures {r.failures}")
        print(f"store: {store.folder}")
    return {"dataset": dataset.name, "store": str(store.folder),
            "encoders": [r.to_dict() for r in reports]}


def _add_transcribe(sub: Subparsers) -> None:
    p = sub.add_parser("transcribe", help="what videos say and show as item columns: "
                       "transcript, frame_labels, ocr, video_text (resumable, cached)")
    dataset_arguments(p, help="named dataset or path (its items need a video column of "
                      "file paths)")
    p.add_argument("--parts", default="transcript,frame_labels,ocr",
                   help="comma-separated: transcript (Whisper), frame_labels (ImageNet "
                   "labels of sampled frames), ocr (Tesseract; skipped when absent)")
    p.add_argument("--model", help="Whisper model: base (multilingual; offline where "
                   "modrec[video] is installed), a size faster-whisper downloads (small, "
                   "large-v3, ...), a Hugging Face repository, or a local folder "
                   "(default: the bundled tiny.en, English only)")
    p.add_argument("--language", help="spoken language code (default: detected; an .en "
                   "model hears English only)")
    threads_argument(p, help="Whisper's CPU threads")
    p.add_argument("--frames", type=at_least(1), default=4,
                   help="frames sampled per video for labels and OCR")
    p.add_argument("--top-labels", type=at_least(1), default=5,
                   help="most ImageNet labels kept per video")
    p.add_argument("--ocr-lang", default="eng", help="Tesseract language(s), e.g. eng+chi_sim")
    store_argument(p, "; the columns go to its columns/ folder")
    device_argument(p)
    outside_paths_argument(p)
    no_progress_argument(p)
    p.set_defaults(func=cmd_transcribe)


def cmd_transcribe(args: argparse.Namespace) -> dict[str, Any]:
    from modrec.content.columns import ItemColumns
    from modrec.content.video_text import VideoTextSettings, describe_videos
    from modrec.data import load_dataset

    source = dataset_source(args.dataset, args.format)
    dataset = load_dataset(source, args.format, columns(args.columns))
    settings = VideoTextSettings(
        parts=tuple(p.strip() for p in args.parts.split(",") if p.strip()),
        model=args.model, language=args.language, threads=args.threads or 0,
        device=args.device, frames=args.frames, top_labels=args.top_labels,
        ocr_lang=args.ocr_lang, allow_outside=args.allow_outside_paths,
        media_root=media_root(source, args.format), progress=not args.no_progress)
    item_columns = ItemColumns.for_dataset(dataset, args.store)
    reports = describe_videos(dataset, settings, item_columns)
    if not args.json:
        for r in reports:
            if r.skipped:
                print(f"  {r.column:<13} skipped: {r.skipped}")
                continue
            speed = (f"  {r.media_seconds / r.seconds:.1f}x real time"
                     if r.media_seconds and r.seconds else "")
            print(f"  {r.column:<13} made {r.made:>5} of {r.items} ({r.cached} already "
                  f"made)  {r.seconds:7.1f} s{speed}  failures {r.failures}")
        print(f"columns: {item_columns.folder} (read by `modrec embed --encoder "
              "text:video_text`)")
    return {"dataset": dataset.name, "folder": str(item_columns.folder),
            "columns": [r.to_dict() for r in reports]}
