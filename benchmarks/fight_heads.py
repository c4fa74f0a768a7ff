"""Temporal heads on fight-surveillance (issue 36, item 3): grouped 5-fold
cross-validation by source video of each (features x head), written into the
``fight-heads`` section of docs/benchmarks.md.

    python benchmarks/fight_heads.py catalog     # writes runs/fight/catalog, prints the
                                                 # `modrec embed` command (I3D steps)
    python benchmarks/fight_heads.py frames      # EfficientNet-Lite0 per-frame vectors
                                                 # + soundtrack, cached under runs/fight
    python benchmarks/fight_heads.py evaluate    # the cross-validation and the section

The clips (fight/fi001.mp4 .. noFight/nofi150.mp4, about 2 s each) are cut from 44
YouTube videos (videos.txt names each clip's source): clips of one source share
scene, camera and people, so they stay in one fold (StratifiedGroupKFold), and the
validation part used for early stopping and hyperparameter choice is carved, grouped
the same way, from the training folds only.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import numpy as np
from kit import ROOT

DATA = Path("/work/shared/data/fight-surveillance")
OUT = ROOT / "runs" / "fight"
CATALOG = OUT / "catalog" / "fight.inter"
STORE = OUT / "store"
# One 32-frame window at the video's own pace (stride 1, as I3D was trained: 25 fps
# consecutive frames), centred in a ~2 s clip of 48-61 frames: it covers 1.1-1.3 s with
# no looping, and I3D keeps one step per 8 frames, so S = 4 steps a clip.
I3D_SPEC = "video:i3d:frames=32:stride=1:clips=1"
FRAMES = 8  # frames a clip for the frame encoder's sequences (the `video` encoder's count)
CLIP_NAME = re.compile(r"^\s*((?:no)?fi\d{3})\s*:")
# "nofi062 - nofi076 : CamNet Dataset": a range of clips from another data set
CLIP_RANGE = re.compile(r"^\s*(no)?fi(\d{3})\s*-\s*(?:no)?fi(\d{3})\s*:")


def clips() -> tuple[list[str], list[Path], np.ndarray, np.ndarray]:
    """Each clip's id, file, label (1 = fight) and group (its source video's number in
    videos.txt). The file ends with ranges of clips taken from other data sets
    ("nofi062 - nofi076 : CamNet Dataset"); two ranges share a clip (nofi076), so
    they are one group: never a clip of one source on both sides of a split."""
    source: dict[str, int] = {}
    group = -1
    for line in (DATA / "videos.txt").read_text().splitlines():
        if line.strip().startswith("http"):
            group += 1
        elif (match := CLIP_NAME.match(line)) is not None:
            source[match.group(1)] = group
        elif (span := CLIP_RANGE.match(line)) is not None:
            prefix = f"{span.group(1) or ''}fi"
            names = [f"{prefix}{n:03d}" for n in range(int(span.group(2)),
                                                       int(span.group(3)) + 1)]
            shared = [source[n] for n in names if n in source]
            if not shared:
                group += 1
            for name in names:
                source[name] = shared[0] if shared else group
    files = sorted((DATA / "fight").glob("fi*.mp4")) + sorted((DATA / "noFight").glob("nofi*.mp4"))
    ids = [f.stem for f in files]
    missing = [i for i in ids if i not in source]
    if missing:
        raise SystemExit(f"videos.txt names no source for {missing[:5]}")
    labels = np.array([0 if i.startswith("nofi") else 1 for i in ids])
    return ids, files, labels, np.array([source[i] for i in ids])


def write_catalog() -> None:
    """A RecBole-style catalog (one placeholder user; the items carry video, label and
    group) that `modrec embed` reads; absolute paths, hence --allow-outside-paths."""
    ids, files, labels, groups = clips()
    CATALOG.parent.mkdir(parents=True, exist_ok=True)
    CATALOG.write_text("user_id:token\titem_id:token\n" + "".join(f"u\t{i}\n" for i in ids))
    CATALOG.with_suffix(".item").write_text(
        "item_id:token\tvideo:token\tlabel:token\tgroup:token\n" + "".join(
            f"{i}\t{f}\t{'fight' if y else 'noFight'}\t{g}\n"
            for i, f, y, g in zip(ids, files, labels, groups, strict=True)))
    print(f"{len(ids)} clips from {len(set(groups))} source videos -> {CATALOG}")
    print(f"nice -n 10 env PYTHONPATH=src python -m modrec embed -d {CATALOG} --encoder "
          f"{I3D_SPEC} --store {STORE} --allow-outside-paths")


def frame_features(frames: int = FRAMES) -> None:
    """Per clip: ``frames`` frames at the centres of equal time slices through
    EfficientNet-Lite0 (the ``video`` encoder's image model: (frames, 1280)) and the
    soundtrack through its audio encoder ((128,), zeros without sound), one .npz per
    clip under runs/fight/frames (resumable: a clip done is skipped)."""
    from modrec.content.encoders.audio import AudioEncoder
    from modrec.content.encoders.image import ImageEncoder
    from modrec.content.media import decode_audio, sample_frames

    image, audio = ImageEncoder(), AudioEncoder()
    folder = OUT / f"frames{frames}"
    folder.mkdir(parents=True, exist_ok=True)
    ids, files, _, _ = clips()
    started, done = time.perf_counter(), 0
    for clip, path in zip(ids, files, strict=True):
        target = folder / f"{clip}.npz"
        if target.exists():
            continue
        steps = image.encode(sample_frames(path, frames))
        sound = decode_audio(path)
        heard = (audio.encode_waveform(*sound) if sound is not None and sound[0].size
                 else np.zeros(audio.dim, np.float32))
        np.savez(folder / f"{clip}.tmp.npz", steps=steps.astype(np.float32), audio=heard)
        (folder / f"{clip}.tmp.npz").replace(target)
        done += 1
        if done % 20 == 0:
            print(f"{done} clips, {(time.perf_counter() - started) / done:.2f} s a clip",
                  flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("step", choices=["catalog", "frames", "evaluate"])
    args = parser.parse_args(argv)
    if args.step == "catalog":
        write_catalog()
    elif args.step == "frames":
        frame_features()
    return 0


if __name__ == "__main__":
    sys.exit(main())
