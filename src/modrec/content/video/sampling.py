"""Which frames of a video a clip network reads: the sampling policy (`ClipPolicy`) of
the ``video:i3d`` encoder, and the clips it cuts (`read_views`).

A policy takes ``clips`` windows of ``frames`` frames, ``stride`` frames apart at the
video's own rate (or at ``fps`` frames per second), evenly spaced over the video (at
the centres of equal parts, so one clip is the middle one), and crops each frame to
224 x 224 after scaling its short side to 256: the centre (``crop=center``) or three
crops along the long side (``crop=three``: start, centre, end). Every (clip, crop) pair
is one view of the video through the network.

A short video gets fewer clips, never overlapping ones: as many as fit without overlap
(at least one), up to ``clips``. A video shorter than one window is looped, as the I3D
paper does for short videos ("we looped the video as many times as necessary"), so a
clip always has exactly ``frames`` frames.

The defaults, ``frames=32:stride=2:clips=3:crop=center``: I3D was trained on 64
consecutive frames at 25 fps (2.6 s) and evaluated on whole 10 s clips; 32 frames two
apart span the same ~2 s with half the computation (mmaction2's I3D recipes sample
32 x 2 as well), and three evenly spaced clips cover a 10 s Kinetics clip or a
30 s MicroLens video where one middle clip would see a fifth of it, while a 2-4 s
surveillance clip gets one or two. mmaction2 tests with 10 clips x 3 crops, 30
forward passes per video: several minutes a video on a CPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from modrec.content.media import SEEK_AHEAD_SECONDS, VideoInfo, frames_at, probe_video
from modrec.errors import UsageError

SIZE = 224  # the crop I3D reads
SHORT_SIDE = 256  # frames are scaled to this short side before cropping
CROPS = ("center", "three")


@dataclass(frozen=True)
class ClipPolicy:
    """How clips are sampled from a video; see the module docstring."""

    frames: int = 32
    stride: int = 2  # frames apart at the video's own rate (ignored when fps is given)
    fps: float | None = None  # or: frames sampled at this rate, whatever the video's
    clips: int = 3  # the most clips per video, evenly spaced
    crop: str = "center"

    def __post_init__(self) -> None:
        if self.frames < 1 or self.stride < 1 or self.clips < 1:
            raise UsageError(f"clip sampling needs frames, stride and clips of at least 1, "
                             f"got frames={self.frames}, stride={self.stride}, "
                             f"clips={self.clips}")
        if self.fps is not None and not (math.isfinite(self.fps) and self.fps > 0):
            raise UsageError(f"fps must be a positive number, got {self.fps}")
        if self.crop not in CROPS:
            raise UsageError(f"unknown crop {self.crop!r}; choose from {', '.join(CROPS)}")

    @classmethod
    def parse(cls, text: str, minimum_frames: int = 1) -> ClipPolicy:
        """``frames=16:stride=1:clips=1:crop=three`` (any subset, any order; ``fps=F``
        instead of ``stride``) -> a policy; "" gives the defaults. A `UsageError` names
        a setting it does not know or a value it cannot read."""
        known = [f.name for f in fields(cls)]
        values: dict[str, object] = {}
        for part in filter(None, text.split(":")):
            key, sep, raw = part.partition("=")
            if not sep or key not in known:
                raise UsageError(f"unknown clip setting {part!r}; write KEY=VALUE with KEY "
                                 f"one of {', '.join(known)} (e.g. video:i3d:frames=16:"
                                 "clips=1)")
            if key in values:
                raise UsageError(f"clip setting {key} given twice in {text!r}")
            try:
                values[key] = raw if key == "crop" else (float(raw) if key == "fps"
                                                          else int(raw))
            except ValueError:
                raise UsageError(f"clip setting {key}={raw!r} is not a number") from None
        if "fps" in values and "stride" in values:
            raise UsageError("give either stride (frames apart) or fps (frames per "
                             "second), not both")
        policy = cls(**values)  # type: ignore[arg-type]
        if policy.frames < minimum_frames:
            raise UsageError(f"frames={policy.frames} is too few: the network needs at "
                             f"least {minimum_frames} frames a clip")
        return policy

    def describe(self) -> str:
        """The settings as a version string: another policy is another version."""
        pace = f"fps{self.fps:g}" if self.fps is not None else f"stride{self.stride}"
        return f"frames{self.frames}:{pace}:clips{self.clips}:crop-{self.crop}"

    @property
    def crops(self) -> int:
        return 3 if self.crop == "three" else 1

    def offsets(self, rate: float) -> np.ndarray:
        """The frames of one clip relative to its first, at a video's ``rate``."""
        step = self.stride if self.fps is None else rate / self.fps
        return np.floor(np.arange(self.frames) * step + 0.5).astype(np.int64)

    def windows(self, info: VideoInfo) -> list[np.ndarray]:
        """Each clip's frame indices in the video (looped past its end when the video is
        shorter than one window), clips in time order."""
        offsets = self.offsets(float(info.rate))
        span, count = int(offsets[-1]) + 1, info.frames
        clips = min(self.clips, max(1, count // span))
        last_start = max(0, count - span)
        out = []
        for j in range(clips):
            centre = (j + 0.5) * count / clips
            start = min(max(math.floor(centre - span / 2 + 0.5), 0), last_start)
            out.append((start + offsets) % count)
        return out


def crop_views(frame: np.ndarray, crop: str) -> list[np.ndarray]:
    """``SIZE`` x ``SIZE`` crops of a frame whose short side is ``SHORT_SIDE``: the
    centre, or start, centre and end along the long side."""
    h, w = frame.shape[:2]
    top, left = (h - SIZE) // 2, (w - SIZE) // 2
    if crop == "center":
        return [frame[top:top + SIZE, left:left + SIZE]]
    if w >= h:
        return [frame[top:top + SIZE, x:x + SIZE] for x in (0, left, w - SIZE)]
    return [frame[y:y + SIZE, left:left + SIZE] for y in (0, top, h - SIZE)]


@dataclass(frozen=True)
class Views:
    """One video's views: ``pixels`` (clips x crops, frames, 224, 224, 3) uint8, clip
    by clip (the crops of one clip together); ``indices`` each clip's frame indices."""

    pixels: np.ndarray
    indices: list[np.ndarray]

    @property
    def clips(self) -> int:
        return len(self.indices)


def read_views(path: Path, policy: ClipPolicy, seek_ahead: float | None = SEEK_AHEAD_SECONDS,
               threads: int = 0) -> Views:
    """The policy's clips of the video at ``path``, decoded once (`frames_at`: a seek
    to each clip's window, then decoding forward) and cropped."""
    info = probe_video(path)
    windows = policy.windows(info)
    flat = np.concatenate(windows)
    frames = frames_at(path, flat, SHORT_SIDE, seek_ahead, threads, info)
    per_frame = [crop_views(frame, policy.crop) for frame in frames]  # [frame][crop]
    views: list[np.ndarray] = []
    for clip in range(len(windows)):
        rows = per_frame[clip * policy.frames:(clip + 1) * policy.frames]
        views.extend(np.stack([row[c] for row in rows]) for c in range(policy.crops))
    return Views(np.stack(views), windows)
