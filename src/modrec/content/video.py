"""Video encoder: K frames sampled uniformly by seeking (never a full decode), each
through the image encoder, pooled over time by mean and max; the audio track through
the audio encoder; the video's vector joins the three parts.

    [ mean over frames (F) | max over frames (F) | audio (A) ]   F = 1280, A = 128

A video without an audio track gets zeros in the audio part (that is information,
not a failure). Decoding is PyAV (FFmpeg).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from modrec.content.audio import SAMPLE_RATE, AudioEncoder, log_mel_stats
from modrec.content.encoder import EncodeError
from modrec.content.image import ImageEncoder


def open_media(path: Path) -> Any:
    """A PyAV container, or an `EncodeError` naming the file."""
    import av

    try:
        return av.open(str(path))
    except (av.FFmpegError, OSError) as err:
        raise EncodeError(f"unreadable media {path}: {err}") from err


def sample_frames(path: Path, count: int) -> list[Image.Image]:
    """``count`` frames at the centres of equal time slices, found by seeking to the
    keyframe before each instant and decoding forward to it."""
    with open_media(path) as container:
        if not container.streams.video:
            raise EncodeError(f"{path} has no video stream")
        stream = container.streams.video[0]
        base = stream.time_base
        if stream.duration is not None and base is not None:
            duration = float(stream.duration * base)
        elif container.duration is not None:
            duration = container.duration / 1_000_000  # microseconds
        else:
            raise EncodeError(f"{path}: duration unknown, cannot sample frames")
        frames: list[Image.Image] = []
        for i in range(count):
            instant = duration * (i + 0.5) / count
            frame = _frame_at(container, stream, instant)
            if frame is not None:
                frames.append(frame)
    if not frames:
        raise EncodeError(f"no frame could be decoded from {path}")
    return frames


def _frame_at(container: Any, stream: Any, instant: float) -> Image.Image | None:
    import av

    base = float(stream.time_base)
    start = float(stream.start_time * stream.time_base) if stream.start_time else 0.0
    try:
        container.seek(int((start + instant) / base), stream=stream, backward=True)
        last = None
        for frame in container.decode(stream):
            last = frame
            if frame.pts is not None and frame.pts * base >= start + instant:
                break
    except av.FFmpegError:
        return None
    return None if last is None else last.to_image()


def decode_audio(path: Path) -> tuple[np.ndarray, int] | None:
    """The first audio stream as mono float32 at 16 kHz, or None if there is none."""
    import av

    with open_media(path) as container:
        if not container.streams.audio:
            return None
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        chunks = []
        try:
            for frame in container.decode(container.streams.audio[0]):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
            for out in resampler.resample(None):  # flush
                chunks.append(out.to_ndarray().reshape(-1))
        except av.FFmpegError as err:
            raise EncodeError(f"broken audio track in {path}: {err}") from err
    if not chunks:
        return None
    return np.concatenate(chunks).astype(np.float32), SAMPLE_RATE


class VideoEncoder:
    reads = "video"

    def __init__(self, frames: int = 8, image: ImageEncoder | None = None,
                 audio: AudioEncoder | None = None, name: str = "video") -> None:
        self.name, self.frames = name, frames
        self.image = image or ImageEncoder()
        self.audio = audio or AudioEncoder()
        self.dim = 2 * self.image.dim + self.audio.dim
        self.version = f"frames{frames}:mean+max:{self.image.version}|{self.audio.version}"

    def encode(self, batch: list[Any]) -> np.ndarray:
        return np.stack([self.encode_one(Path(str(x))) for x in batch])

    def encode_one(self, path: Path) -> np.ndarray:
        if not path.is_file():
            raise EncodeError(f"video file not found: {path}")
        frames = self.image.encode(sample_frames(path, self.frames))  # (K, F)
        sound = decode_audio(path)
        audio = (log_mel_stats(*sound) if sound is not None and sound[0].size
                 else np.zeros(self.audio.dim, np.float32))
        return np.concatenate([frames.mean(0), frames.max(0), audio]).astype(np.float32)
