"""What videos say and show, timed: Whisper transcription as x real time, frame labels
and OCR per video, and `modrec transcribe` end to end; written into docs/llm.md.

    python benchmarks/video_text.py [--threads 2] [--fight 20]

Real clips: the three MicroLens videos (Chinese speech and music, 8-29 s) and the first
``--fight`` surveillance clips (1-5 s, street sound). Models are loaded and warmed up
before the per-clip timings; the end-to-end run starts cold, as a user's first run does.
"""

from __future__ import annotations

from modrec import threads as _threads  # noqa: F401  first: its OpenMP policy, before torch

# isort: split

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from kit import ROOT, cpu_name, markdown_table, write_section
from PIL import Image

from modrec import paths
from modrec.content.columns import ItemColumns
from modrec.content.media import decode_audio, sample_frames
from modrec.content.video_text import VideoTextSettings, describe_videos
from modrec.content.video_text.frame_labels import FrameLabeler
from modrec.content.video_text.ocr import ScreenText, ocr_unavailable
from modrec.content.video_text.speech import Transcriber
from modrec.data import load_dataset


def timed_clips(clips: list[Path], whisper: Transcriber, labeler: FrameLabeler,
                reader: ScreenText | None, frames: int) -> dict[str, float]:
    total = {"audio": 0.0, "decode_audio": 0.0, "transcribe": 0.0, "decode_frames": 0.0,
             "labels": 0.0, "ocr": 0.0, "kept": 0, "dropped": 0, "words": 0}
    for clip in clips:
        started = time.perf_counter()
        sound = decode_audio(clip)
        total["decode_audio"] += time.perf_counter() - started
        if sound is not None:
            started = time.perf_counter()
            heard = whisper.transcribe(*sound)
            total["transcribe"] += time.perf_counter() - started
            total["audio"] += heard.seconds
            total["kept"] += heard.segments
            total["dropped"] += heard.dropped
            total["words"] += len(heard.text.split())
        started = time.perf_counter()
        images = sample_frames(clip, frames)
        total["decode_frames"] += time.perf_counter() - started
        started = time.perf_counter()
        labeler.labels(images)
        total["labels"] += time.perf_counter() - started
        if reader is not None:
            started = time.perf_counter()
            reader.read(images)
            total["ocr"] += time.perf_counter() - started
    return total


PASSAGE = ("Recommender systems suggest what to watch next. They learn from what people "
           "played, skipped and liked. A new video has no history yet, so its content must "
           "speak for it: what is said, what is shown and what is written on the screen. "
           "A transcript turns speech into text that a language model can read. Frame "
           "labels name the objects in view, and the words on screen often name the topic.")


def english_speech(whisper: Transcriber) -> list[object] | None:
    """A row for an English passage spoken by espeak-ng (synthetic: the one clip of
    English speech here), with the share of its words Whisper heard."""
    import re
    import shutil
    import subprocess


    if shutil.which("espeak-ng") is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "passage.wav"
        subprocess.run(["espeak-ng", "-s", "150", "-w", str(wav), PASSAGE], check=True)
        sound = decode_audio(wav)  # 16 kHz, as a video's soundtrack is decoded
    assert sound is not None
    started = time.perf_counter()
    heard = whisper.transcribe(*sound)
    seconds = time.perf_counter() - started
    said = re.findall(r"[a-z]+", PASSAGE.lower())
    got = set(re.findall(r"[a-z]+", heard.text.lower()))
    recall = sum(w in got for w in said) / len(said)
    return [f"English passage, espeak-ng (synthetic; {recall:.0%} of its words heard)",
            f"{heard.seconds:.1f}", f"{seconds:.2f}", f"{heard.seconds / seconds:.1f}x",
            f"{heard.segments} / {heard.dropped}", "", "", "", ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="Whisper's CPU threads")
    parser.add_argument("--fight", type=int, default=20, help="surveillance clips timed")
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--doc", default=str(ROOT / "docs" / "llm.md"))
    args = parser.parse_args()
    load_before = os.getloadavg()[0]

    data = paths.data_dir()
    microlens = sorted((data / "microlens-sample").glob("*.mp4"))
    fight = sorted((data / "fight-surveillance").glob("*/*.mp4"))
    fight = [clip for pair in zip(fight[:len(fight) // 2], fight[len(fight) // 2:], strict=True)
             for clip in pair][:args.fight]  # fight and noFight alternately

    started = time.perf_counter()
    whisper = Transcriber(threads=args.threads)
    whisper.transcribe(np.zeros(16_000, np.float32))
    whisper_load = time.perf_counter() - started
    started = time.perf_counter()
    labeler = FrameLabeler()
    labeler.labels([Image.new("RGB", (224, 224))])
    labels_load = time.perf_counter() - started
    reader = None if ocr_unavailable() else ScreenText()

    rows = []
    for name, clips in (("MicroLens (3 videos, Chinese speech and music)", microlens),
                        (f"surveillance clips ({len(fight)}, street sound)", fight)):
        t = timed_clips(clips, whisper, labeler, reader, args.frames)
        n = len(clips)
        rows.append([
            name, f"{t['audio']:.1f}", f"{t['transcribe']:.2f}",
            f"{t['audio'] / t['transcribe']:.1f}x",
            f"{int(t['kept'])} / {int(t['dropped'])}",
            f"{1000 * t['decode_audio'] / n:.0f}", f"{1000 * t['decode_frames'] / n:.0f}",
            f"{1000 * t['labels'] / n:.0f}",
            f"{1000 * t['ocr'] / n:.0f}" if reader else "no tesseract"])

    spoken = english_speech(whisper)
    if spoken:
        rows.append(spoken)

    with tempfile.TemporaryDirectory() as tmp:
        dataset = load_dataset("microlens-sample")
        columns = ItemColumns(Path(tmp) / "columns")
        settings = VideoTextSettings(threads=args.threads, frames=args.frames, progress=False)
        started = time.perf_counter()
        first = describe_videos(dataset, settings, columns)
        cold = time.perf_counter() - started
        started = time.perf_counter()
        describe_videos(dataset, settings, columns)
        rerun = time.perf_counter() - started
        texts = columns.values("video_text")
    parts = {r.column: r for r in first}
    speech = parts["transcript"]
    load_after = os.getloadavg()[0]

    ocr = f"{parts['ocr'].seconds:.1f} s" if "ocr" in parts else "skipped (no tesseract)"
    example = texts.get("1002", "").replace("\n", " / ")
    body = "\n".join([
        "### Video text: speed (transcripts, frame labels, OCR)",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} on {cpu_name()} with `python "
        f"benchmarks/video_text.py --threads {args.threads} --fight {args.fight} --frames "
        f"{args.frames}`: Whisper tiny.en (int8, CTranslate2, {args.threads} threads, beam 5), "
        f"EfficientNet-Lite0 on {args.frames} frames a video, Tesseract "
        f"{'on the same frames' if reader else 'absent'}; load average {load_before:.1f} "
        f"before, {load_after:.1f} after (a shared 2-core machine). Models were loaded and "
        f"warmed up first (Whisper {whisper_load:.1f} s, EfficientNet {labels_load:.1f} s); "
        "times per video are means.",
        "",
        markdown_table(["clips", "audio s", "transcribe s", "x real time",
                        "segments kept / dropped", "decode audio ms", "decode frames ms",
                        "labels ms", "OCR ms"], rows),
        "",
        f"`modrec transcribe -d microlens-sample` from cold (models loaded by the first "
        f"video): {cold:.1f} s for the 3 videos; transcripts {speech.seconds:.1f} s for "
        f"{speech.media_seconds:.1f} s of audio "
        f"({speech.media_seconds / max(speech.seconds, 1e-9):.1f}x real time, the model load "
        f"included), frame labels {parts['frame_labels'].seconds:.1f} s (frame decoding "
        f"included), OCR {ocr}. The rerun found everything cached in {rerun:.2f} s and "
        f"loaded no model. The video_text of video 1002: \"{example}\"",
    ])
    write_section(Path(args.doc), "video-text", body)
    print(body)


if __name__ == "__main__":
    main()
