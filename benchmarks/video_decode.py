"""Video decoding throughput for ``video:i3d`` (issue 36, item 5): is the decoder the
bottleneck?

    python benchmarks/video_decode.py [--fight 30] [--batch 4] [--repeats 2]

Over the fight-surveillance clips (the first ``--fight``) and the Kinetics clips:

1. sampled frames per second of the decode path (`modrec.content.media.frames_at`, the
   default policy's 3 clips x 32 frames, stride 2, scaled to a short side of 256):
   seeking for every sampled frame, seeking per window (the default), one sequential
   decode; PyAV's own decoding threads (1, 2, 4); worker processes (1, 2);
2. every frame decoded to RGB at the stored size, PyAV against ``ffmpeg -threads 1 ...
   -f rawvideo -pix_fmt rgb24 /dev/null`` (the reference decoder; process start included);
3. clips per second at 16 and 32 frames (one centre clip per video): decoding and
   cropping alone (`read_views`), the network alone on batches of ``--batch`` clips,
   and end to end through the encoder (`I3DEncoder.encode_all`: the next video decoded
   in a thread while the network runs), with the ratio decode / network that should
   be at least 2.

Writes the ``video-decode`` section of docs/benchmarks.md.
"""

from __future__ import annotations

from modrec import threads as _threads  # noqa: F401  first: its OpenMP policy, before torch

# isort: split

import argparse
import os
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from kit import DOC, machine, markdown_table, write_section

from modrec import paths
from modrec.content.encoders.i3d import I3DEncoder
from modrec.content.media import frames_at, open_media, probe_video
from modrec.content.video.i3d import I3D, load_i3d
from modrec.content.video.sampling import SHORT_SIDE, ClipPolicy, read_views

POLICY = ClipPolicy()  # the default: 3 clips x 32 frames, stride 2


def clips(fight: int) -> list[Path]:
    root = paths.data_dir()
    found = sorted((root / "fight-surveillance").glob("*Fight/*.mp4"))[:fight]
    return found + sorted((root / "kinetics-tiny" / "k400").rglob("*.mp4")) + sorted(
        (root / "kinetics-tiny" / "k400").rglob("*.mkv"))


def sampled(path: str, seek_ahead: float | None, threads: int) -> int:
    """Decode the default policy's frames of one video; how many were delivered."""
    indices = np.concatenate(POLICY.windows(probe_video(Path(path))))
    return len(frames_at(Path(path), indices, SHORT_SIDE, seek_ahead, threads))


def best_of(repeats: int, run: Callable[[], int]) -> tuple[int, float]:
    """(units done, the fastest of ``repeats`` runs' seconds)."""
    times, count = [], 0
    for _ in range(repeats):
        started = time.perf_counter()
        count = run()
        times.append(time.perf_counter() - started)
    return count, min(times)


def decode_rows(videos: list[Path], repeats: int) -> list[list[object]]:
    names = [str(v) for v in videos]
    cases: list[tuple[str, float | None, int, int]] = [
        ("seek for every sampled frame", 0.0, 0, 1),
        ("seek per window (default)", 1.0, 0, 1),
        ("sequential decode, no seek", None, 0, 1),
        ("per window, 1 decoder thread", 1.0, 1, 1),
        ("per window, 2 decoder threads", 1.0, 2, 1),
        ("per window, 4 decoder threads", 1.0, 4, 1),
        ("per window, 2 worker processes", 1.0, 1, 2),
    ]
    rows: list[list[object]] = []
    for label, ahead, threads, workers in cases:
        if workers == 1:
            def run(ahead: float | None = ahead, threads: int = threads) -> int:
                return sum(sampled(n, ahead, threads) for n in names)
        else:
            def run(ahead: float | None = ahead, threads: int = threads,
                    workers: int = workers) -> int:
                with ProcessPoolExecutor(workers) as pool:
                    return sum(pool.map(sampled, names, [ahead] * len(names),
                                        [threads] * len(names)))
        frames, seconds = best_of(repeats, run)
        rows.append([label, frames, f"{frames / seconds:.0f}", f"{len(names) / seconds:.1f}"])
    return rows


def full_decode_rows(videos: list[Path], repeats: int) -> list[list[object]]:
    def pyav() -> int:
        count = 0
        for video in videos:
            with open_media(video) as container:
                stream = container.streams.video[0]
                stream.codec_context.thread_count = 1
                for frame in container.decode(stream):
                    frame.to_ndarray(format="rgb24")
                    count += 1
        return count

    def ffmpeg() -> int:
        for video in videos:  # to the null device: no pipe copy measured
            subprocess.run(["ffmpeg", "-v", "error", "-threads", "1", "-i", str(video),
                            "-f", "rawvideo", "-pix_fmt", "rgb24", "-y", os.devnull],
                           check=True)
        return decoded

    decoded = pyav()  # the frame count (ffmpeg decodes the same frames)
    rows: list[list[object]] = []
    for label, run in (("PyAV, 1 thread, to RGB arrays", pyav),
                       ("ffmpeg -threads 1, rawvideo rgb24 to /dev/null", ffmpeg)):
        frames, seconds = best_of(repeats, run)
        rows.append([label, frames, f"{frames / seconds:.0f}"])
    return rows


def clip_row(model: I3D, videos: list[Path], frames: int, batch: int,
             repeats: int) -> list[object]:
    """Decode, network and end-to-end clips/s of one centre clip of ``frames`` frames."""
    policy = ClipPolicy(frames=frames, stride=2, clips=1)
    _, decode_s = best_of(repeats, lambda: sum(read_views(v, policy).clips for v in videos))
    x = torch.rand(batch, 3, frames, 224, 224) * 2 - 1
    with torch.inference_mode():
        model.feature_map(x[:1])  # warm up
        _, model_s = best_of(repeats, lambda: int(model.embed(x).shape[0]))
    encoder = I3DEncoder(policy, model=model)
    few = videos[:max(batch, 4)]
    _, end_s = best_of(1, lambda: len(encoder.encode_all(few).vectors))
    decode, network = len(videos) / decode_s, batch / model_s
    return [frames, f"{decode:.1f}", f"{network:.2f}", f"{len(few) / end_s:.2f}",
            f"{decode / network:.0f}x", decode / network]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fight", type=int, default=30, help="surveillance clips decoded")
    parser.add_argument("--batch", type=int, default=4, help="clips per network pass")
    parser.add_argument("--repeats", type=int, default=2, help="runs per case (the best)")
    parser.add_argument("--doc", type=Path, default=DOC)
    args = parser.parse_args()
    videos = clips(args.fight)
    decode = decode_rows(videos, args.repeats)
    full = full_decode_rows(videos, args.repeats)
    model = load_i3d()
    clip = [clip_row(model, videos, frames, args.batch, args.repeats) for frames in (16, 32)]
    load = os.getloadavg()[0]
    ratios = [row.pop() for row in clip]
    verdict = ("is not" if min(ratios) >= 2 else "IS") + (
        f" the bottleneck: one process decodes {min(ratios):.0f}x or more of the network's "
        "clips/s (at least 2x is asked for)")
    command = (f"python benchmarks/video_decode.py --fight {args.fight} --batch {args.batch} "
               f"--repeats {args.repeats}")
    body = "\n\n".join([
        "## Video decoding for I3D (`benchmarks/video_decode.py`)",
        f"`{command}` on {machine()}, {os.cpu_count()} CPUs visible; {len(videos)} videos "
        f"({args.fight} fight-surveillance clips, 3 Kinetics clips). Best of "
        f"{args.repeats} runs; load average {load:.1f} when done (a shared machine: "
        "compare rows as ratios).",
        "Sampled frames of the default policy (3 clips x 32 frames, stride 2, scaled to "
        "a short side of 256):",
        markdown_table(["decode path", "frames", "frames/s", "videos/s"], decode),
        "Every frame to RGB at the stored size, against ffmpeg as the reference:",
        markdown_table(["decoder", "frames", "frames/s"], full),
        f"Clips per second, one centre clip per video (the network on batches of "
        f"{args.batch} clips; end to end: `I3DEncoder.encode_all`, decoding the next "
        "video in a thread while the network runs):",
        markdown_table(["frames", "decode clips/s", "I3D clips/s", "end to end clips/s",
                        "decode / I3D"], clip),
        f"On this CPU the decoder {verdict}. Seeking for every sampled frame restarts "
        "at the keyframe before it each time (these H.264 clips have few keyframes), "
        "hence the default: one seek per window, decoding on within it. ffmpeg is run "
        "once per clip, its process start included.",
    ])
    write_section(args.doc, "video-decode", body)
    print(body)


if __name__ == "__main__":
    main()
