"""Helpers the tests share: free loopback ports, a `modrec serve` process, an ASGI app on
a real uvicorn in a thread, a two-process gloo world, the comparison of two rankings
computed in batches of different sizes, a weights file that would run code, and a
short test video."""

from __future__ import annotations

import json
import math
import os
import pickle
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp

from replicas import free_port, start_serve_process


def assert_same_ranking(got: Sequence[Mapping[str, Any]],
                        expected: Sequence[Mapping[str, Any]], rel: float = 1e-5) -> None:
    """``got`` and ``expected`` (items as the service answers them: ``item_id`` and
    ``score``) are the same ranking: the same items in the same order, each score within
    ``rel`` of the other (1e-6 absolute near zero). A matrix product over a batch sums in
    another order than over one row, so on some CPUs a batched score differs from the
    lone one in the 8th digit (0.2688426375 against 0.2688426077); two neighbouring items
    may then trade places, which is accepted only when their scores tie within ``rel``."""
    def close(a: float, b: float) -> bool:
        return math.isclose(a, b, rel_tol=rel, abs_tol=1e-6)

    ids = [item["item_id"] for item in got]
    want = [item["item_id"] for item in expected]
    assert len(ids) == len(want), f"{len(ids)} items, expected {len(want)}: {ids} != {want}"
    i = 0
    while i < len(ids):
        if ids[i] != want[i]:  # only a near-tie may swap two neighbours
            swapped = ids[i:i + 2] == want[i:i + 2][::-1] and len(want[i:i + 2]) == 2
            assert swapped and close(expected[i]["score"], expected[i + 1]["score"]), (
                f"position {i}: {ids} != {want} (not two neighbours that tie)")
            pairs = [(got[i], expected[i + 1]), (got[i + 1], expected[i])]
        else:
            pairs = [(got[i], expected[i])]
        for mine, theirs in pairs:
            assert close(mine["score"], theirs["score"]), (
                f"item {mine['item_id']}: score {mine['score']!r} != {theirs['score']!r}")
        i += len(pairs)


class _RunsCode:
    """Unpickling this runs ``touch MARKER``: what a crafted .pt file can do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


def craft_weights(path: Path, marker: Path) -> None:
    """Write a .pt file at ``path`` that creates ``marker`` if it is ever unpickled."""
    with path.open("wb") as f:
        pickle.dump({"model": _RunsCode(marker)}, f)


def start_serve(run: Path, state: Path | str, port: int, log: Path,
                *extra: str) -> subprocess.Popen[bytes]:
    """``modrec serve RUN --state STATE --port PORT EXTRA...`` as a process, once /readyz
    is 200 (its output appended to ``log``, shown if it exits or never gets ready)."""
    try:
        return start_serve_process(run, state, port, log, *extra)
    except RuntimeError as err:
        pytest.fail(str(err))


def serve_in_thread(app: Any) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free loopback port in a daemon thread; yields
    ``host:port`` and stops the server afterwards (for use in a fixture)."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def torchrun_train(out: Path, overrides: list[str]) -> dict[str, Any]:
    """``torchrun --nproc_per_node 2 -m modrec train`` of SASRec on ml-100k for one epoch
    into ``out`` with ``--set`` ``overrides``; the run's results.json, once it succeeded."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "--master_port", str(free_port()), "-m", "modrec", "train", "-d", "ml-100k",
               "-m", "sasrec", "--epochs", "1", "--out", str(out), "--no-progress",
               *[arg for o in overrides for arg in ("--set", o)]]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(json.loads((out / "results.json").read_text()))


def spawn_gloo(worker: Any, *args: Any) -> None:
    """Run ``worker(rank, *args)`` in two processes joined as a gloo world."""
    from modrec.data import load_dataset

    load_dataset("ml-100k")  # converted and cached once, before two processes read it
    mp.start_processes(_join, args=(free_port(), worker, args), nprocs=2,
                       start_method="spawn")


def _join(rank: int, port: int, worker: Any, args: tuple[Any, ...]) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                       "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2"})
    torch.set_num_threads(1)  # two processes on a 2-core machine
    try:
        worker(rank, *args)
    finally:
        if torch.distributed.is_initialized():
            # Both ranks finish their collectives before either tears the group down
            # (gloo aborts a process whose peer left mid-operation).
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()


def write_video(path: Path, seconds: float, fps: int = 10, width: int = 64, height: int = 48,
                audio: bool = True, faststart: bool = True) -> Path:
    """An MPEG-4 video of ``seconds`` (frames that change colour, a 440 Hz tone as its
    soundtrack) through PyAV; ``faststart`` puts the index first, as web uploads have it,
    so that a truncated copy still opens."""
    from fractions import Fraction

    import av
    import numpy as np

    with av.open(str(path), "w", options={"movflags": "faststart"} if faststart else {}
                 ) as container:
        video = container.add_stream("mpeg4", rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        sound = container.add_stream("aac", rate=16_000) if audio else None  # streams first
        if sound is not None:
            sound.layout = "mono"
        frames = int(seconds * fps)
        for i in range(frames):
            shade = np.uint8(255 * i / max(frames - 1, 1))
            pixels = np.full((height, width, 3), shade, np.uint8)
            pixels[:, : width * (i % 8) // 8, 1] = 255 - shade
            for packet in video.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in video.encode():  # flush
            container.mux(packet)
        if sound is not None:
            samples = int(seconds * 16_000)
            wave = (0.3 * np.sin(2 * np.pi * 440 * np.arange(samples) / 16_000)).astype(
                np.float32)
            for start in range(0, samples, 1024):
                frame = av.AudioFrame.from_ndarray(wave[None, start:start + 1024], format="flt",
                                                   layout="mono")
                frame.sample_rate, frame.pts = 16_000, start
                frame.time_base = Fraction(1, 16_000)
                for packet in sound.encode(frame):
                    container.mux(packet)
            for packet in sound.encode():
                container.mux(packet)
    return path
