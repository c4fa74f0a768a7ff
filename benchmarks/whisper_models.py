"""Whisper tiny.en against multilingual base on the MicroLens videos (Chinese speech)
and on a Spanish passage spoken by espeak-ng: x real time, what each keeps; into
docs/llm.md.

    python benchmarks/whisper_models.py [--threads 1]

The MicroLens videos have no reference transcript, so what is measured there is speed and
how much speech each model keeps past Whisper's own failure checks (segments kept and
dropped, characters kept, the language detected), with the start of each transcript to
read. The Spanish passage has a reference: the share of its words heard.
"""

from __future__ import annotations

from modrec import threads as _threads  # noqa: F401  first: its OpenMP policy, before torch

# isort: split

import argparse
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
from kit import ROOT, cpu_name, markdown_table, write_section

from modrec import paths
from modrec.content.media import decode_audio
from modrec.content.video_text.speech import Transcriber

SPANISH = ("Los sistemas de recomendación sugieren qué ver después. Aprenden de lo que la "
           "gente reprodujo, saltó y le gustó. Un vídeo nuevo todavía no tiene historia, así "
           "que su contenido debe hablar por él.")


def spanish_clip(folder: Path) -> tuple[np.ndarray, int] | None:
    if shutil.which("espeak-ng") is None:
        return None
    wav = folder / "es.wav"
    subprocess.run(["espeak-ng", "-v", "es", "-s", "140", "-w", str(wav), SPANISH], check=True)
    return decode_audio(wav)


def words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def measure(model: str | None, clips: list[Path], spanish: tuple[np.ndarray, int] | None,
            threads: int) -> tuple[list[list[object]], list[str]]:
    started = time.perf_counter()
    whisper = Transcriber(model, threads=threads)
    whisper.transcribe(np.zeros(16_000, np.float32))
    load = time.perf_counter() - started
    name = whisper.model_name
    rows: list[list[object]] = []
    samples: list[str] = []
    audio = spent = 0.0
    kept = dropped = chars = 0
    languages: list[str] = []
    for clip in clips:
        sound = decode_audio(clip)
        if sound is None:
            continue
        started = time.perf_counter()
        heard = whisper.transcribe(*sound)
        spent += time.perf_counter() - started
        audio += heard.seconds
        kept, dropped = kept + heard.segments, dropped + heard.dropped
        chars += len(heard.text.replace(" ", ""))
        languages.append(heard.language)
        samples.append(f"{name}, {clip.stem}: \"{heard.text[:80]}\"")
    rows.append([name, f"MicroLens ({len(clips)} videos)", f"{load:.1f}", f"{audio:.1f}",
                 f"{audio / spent:.1f}x", f"{kept} / {dropped}", chars,
                 ", ".join(languages), "no reference"])
    if spanish is not None:
        started = time.perf_counter()
        heard = whisper.transcribe(*spanish)
        seconds = time.perf_counter() - started
        said, got = words(SPANISH), set(words(heard.text))
        share = sum(w in got for w in said) / len(said)
        rows.append([name, "Spanish passage (espeak-ng)", "", f"{heard.seconds:.1f}",
                     f"{heard.seconds / seconds:.1f}x", f"{heard.segments} / {heard.dropped}",
                     len(heard.text.replace(" ", "")), heard.language, f"{share:.0%}"])
    return rows, samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="Whisper's CPU threads")
    parser.add_argument("--doc", default=str(ROOT / "docs" / "llm.md"))
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    clips = sorted((paths.data_dir() / "microlens-sample").glob("*.mp4"))
    rows: list[list[object]] = []
    samples: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        spanish = spanish_clip(Path(tmp))
        for model in (None, "base"):
            more_rows, more_samples = measure(model, clips, spanish, args.threads)
            rows += more_rows
            samples += more_samples
    body = "\n".join([
        "### Multilingual transcripts: Whisper tiny.en against base",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} on {cpu_name()} with `python "
        f"benchmarks/whisper_models.py --threads {args.threads}` (int8, beam 5, temperature "
        f"0, Whisper's own failure checks drop segments); load average {load_before:.1f} "
        f"before, {os.getloadavg()[0]:.1f} after (a shared 2-core machine). `base` is joined "
        "once from its two packages (`modrec transcribe --model base`); the load column "
        "includes that join on a first run. The MicroLens videos have no reference "
        "transcript: characters kept and the detected language say how much each model "
        "kept, the samples below what it heard.",
        "",
        markdown_table(["model", "clips", "load s", "audio s", "x real time",
                        "segments kept / dropped", "characters kept", "language",
                        "words heard"], rows),
        "",
        *[f"- {s}" for s in samples],
    ])
    write_section(Path(args.doc), "whisper-models", body)
    print(body)


if __name__ == "__main__":
    main()
