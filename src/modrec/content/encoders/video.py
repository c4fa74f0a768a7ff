"""Video encoder: K frames sampled uniformly by seeking (never a full decode), each
through the image encoder, pooled over time by mean and max; the audio track through
the audio encoder; the video's vector joins the three parts.

    [ mean over frames (F) | max over frames (F) | audio (A) ]   F = 1280, A = 128

A video without an audio track gets zeros in the audio part (that is information,
not a failure). Decoding is PyAV (FFmpeg), in `modrec.content.media`; the decoded
soundtrack goes to the injected audio encoder's ``encode_waveform``, so a substituted
audio encoder sets both the audio part and its width.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np

from modrec.content.encoders.audio import AudioEncoder
from modrec.content.encoders.base import EncodeError, Spec
from modrec.content.encoders.image import ImageEncoder
from modrec.content.media import decode_audio, sample_frames
from modrec.data import Dataset


class WaveformEncoder(Protocol):
    """What the video encoder needs of its audio encoder (`AudioEncoder` is one)."""

    dim: int
    version: str

    def encode_waveform(self, waveform: np.ndarray, sample_rate: int) -> np.ndarray:
        """One decoded mono clip -> float32 ``(dim,)``."""
        ...


class VideoEncoder:
    reads = "video"

    def __init__(self, frames: int = 8, image: ImageEncoder | None = None,
                 audio: WaveformEncoder | None = None, name: str = "video") -> None:
        self.name, self.frames = name, frames
        self.image = image if image is not None else ImageEncoder()
        self.audio: WaveformEncoder = audio if audio is not None else AudioEncoder()
        self.dim = 2 * self.image.dim + self.audio.dim
        self.version = f"frames{frames}:mean+max:{self.image.version}|{self.audio.version}"

    def encode(self, batch: list[Any]) -> np.ndarray:
        return np.stack([self.encode_one(Path(str(x))) for x in batch])

    def encode_one(self, path: Path) -> np.ndarray:
        if not path.is_file():
            raise EncodeError(f"video file not found: {path}")
        frames = self.image.encode(sample_frames(path, self.frames))  # (K, F)
        sound = decode_audio(path)
        audio = (self.audio.encode_waveform(*sound) if sound is not None and sound[0].size
                 else np.zeros(self.audio.dim, np.float32))
        return np.concatenate([frames.mean(0), frames.max(0), audio]).astype(np.float32)


def build(spec: Spec, dataset: Dataset, device: str) -> Any:
    """``video``, or ``video:MODEL`` naming the image model its frames go through; or
    ``video:i3d[:SETTINGS]``, the clip network (`modrec.content.encoders.i3d`)."""
    if spec.option == "i3d" or spec.option.startswith("i3d:"):
        from modrec.content.encoders import i3d  # torch's 3D network only when asked for

        return i3d.build(spec, dataset, device)
    image = ImageEncoder(spec.option or "efficientnet-lite0", device=device)
    return VideoEncoder(image=image, name=spec.name)
