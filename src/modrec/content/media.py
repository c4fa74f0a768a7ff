"""Decoding of media files: images through Pillow, video frames and audio tracks through
PyAV (FFmpeg), audio files through soundfile. Every encoder that reads a media file
decodes it here.

Kept apart from the encoders so that the audio encoder (sound files, or the soundtrack
of any container) needs nothing of the video module, the video encoder only composes
the image and audio encoders (one-way: no import cycle), and an encoder can be handed
already decoded input (`AudioEncoder.encode_waveform`). Decoding failures are
`EncodeError`s naming the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from modrec.content.encoders.base import EncodeError

# Audio tracks are resampled to this rate while decoding: the rate the audio encoder's
# log-mel features are computed at, so its own resampling step is then a no-op.
SAMPLE_RATE = 16_000


def load_image(source: Any) -> Image.Image:
    """A path or an already decoded PIL image, as RGB."""
    if isinstance(source, Image.Image):
        return source.convert("RGB")
    path = Path(str(source))
    if not path.is_file():
        raise EncodeError(f"image file not found: {path}")
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except OSError as err:
        raise EncodeError(f"unreadable image {path}: {err}") from err


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


def check_complete(path: Path, tolerance: float = 0.5) -> None:
    """Refuse a video or audio file whose data ends before the duration its header
    declares (a truncated upload or copy), or that FFmpeg cannot read through: an
    `EncodeError` naming the file and where its data stops. Demuxes the packets
    without decoding them (milliseconds for a 30-second clip).

    Needed because decoding a truncated file does not fail: frames past the cut are
    skipped and the soundtrack just ends, so the vector would silently describe a
    part. Files that declare no duration are not checked. ``tolerance``: seconds, or
    2% of the duration when that is more, allowed to be missing at the end."""
    import av

    with open_media(path) as container:
        declared = container.duration / 1_000_000 if container.duration else None
        ends: dict[int, float] = {}
        try:
            for packet in container.demux():
                if packet.pts is None or packet.stream.time_base is None:
                    continue
                stream = packet.stream
                start = float(stream.start_time * stream.time_base) if stream.start_time else 0.0
                end = float((packet.pts + (packet.duration or 0)) * stream.time_base) - start
                ends[stream.index] = max(ends.get(stream.index, 0.0), end)
        except av.FFmpegError as err:
            raise EncodeError(f"{path} is damaged: FFmpeg stops reading it ({err})") from err
        if not ends:
            raise EncodeError(f"{path} holds no video or audio data")
        for stream in container.streams:
            if stream.index not in ends or stream.type not in ("video", "audio"):
                continue
            length = (float(stream.duration * stream.time_base)
                      if stream.duration and stream.time_base else declared)
            if length and ends[stream.index] < length - max(tolerance, 0.02 * length):
                raise EncodeError(
                    f"{path} is truncated: its {stream.type} data ends at "
                    f"{ends[stream.index]:.1f} s of the {length:.1f} s its header declares "
                    "(an interrupted upload or copy?); send the whole file")


def decode_audio(path: Path, rate: int = SAMPLE_RATE) -> tuple[np.ndarray, int] | None:
    """The first audio stream as mono float32 at ``rate`` Hz, or None if there is none."""
    import av

    with open_media(path) as container:
        if not container.streams.audio:
            return None
        resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
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
    return np.concatenate(chunks).astype(np.float32), rate


def load_audio(path: Path) -> tuple[np.ndarray, int]:
    """Any file soundfile reads (wav, flac, ogg) at its own rate; others (mp3, m4a,
    video) through PyAV at `SAMPLE_RATE`. Mono float32 and its sample rate."""
    import soundfile

    try:
        waveform, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
        return waveform.mean(1), int(rate)
    except (RuntimeError, soundfile.LibsndfileError):
        result = decode_audio(path)
        if result is None:
            raise EncodeError(f"{path} has no audio stream") from None
        return result
