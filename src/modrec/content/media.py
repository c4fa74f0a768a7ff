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

from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from modrec.content.encoders.base import EncodeError

# Audio tracks are resampled to this rate while decoding: the rate the audio encoder's
# log-mel features are computed at, so its own resampling step is then a no-op.
SAMPLE_RATE = 16_000
# `decode_frames` seeks when the next wanted frame lies more than this many seconds
# ahead of the decoder (decoding forward is cheaper than a seek below about a GOP:
# benchmarks/video_decode.py measures both); closer frames are reached by decoding on.
SEEK_AHEAD_SECONDS = 1.0


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


@dataclass(frozen=True)
class VideoInfo:
    """What frame sampling needs of a video stream, from the container's header."""

    frames: int  # the frame count (the header's, else its duration x rate)
    rate: Fraction  # frames per second
    start: Fraction  # the stream's first timestamp, in seconds
    width: int
    height: int


def _video_stream(container: Any, path: Path) -> Any:
    if not container.streams.video:
        raise EncodeError(f"{path} has no video stream")
    return container.streams.video[0]


def _info(container: Any, stream: Any, path: Path) -> VideoInfo:
    rate = stream.average_rate or stream.guessed_rate
    if not rate:
        raise EncodeError(f"{path}: the video's frame rate is unknown, cannot sample frames")
    rate = Fraction(rate)
    base = stream.time_base
    start = Fraction(stream.start_time * base) if stream.start_time and base else Fraction(0)
    count = int(stream.frames or 0)
    if count <= 0:  # Matroska and others keep no frame count: from the duration
        if stream.duration is not None and base is not None:
            duration = Fraction(stream.duration * base)
        elif container.duration is not None:
            duration = Fraction(container.duration, 1_000_000) - start  # microseconds
        else:
            raise EncodeError(f"{path}: duration unknown, cannot sample frames")
        count = round(duration * rate)
    if count <= 0:
        raise EncodeError(f"{path}: the video stream holds no frames")
    return VideoInfo(count, rate, start, int(stream.width), int(stream.height))


def probe_video(path: Path) -> VideoInfo:
    """A video's frame count, rate, start and size, read from its header (nothing is
    decoded); an `EncodeError` naming the file when it is unreadable or has no video."""
    path = Path(path)
    if not path.is_file():
        raise EncodeError(f"video file not found: {path}")
    with open_media(path) as container:
        return _info(container, _video_stream(container, path), path)


def scaled_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(width, height) with the short side scaled to ``short_side``, neither below it."""
    scale = short_side / min(width, height)
    return max(short_side, round(width * scale)), max(short_side, round(height * scale))


def centre_crop(image: Image.Image, short_side: int, size: int) -> Image.Image:
    """``image`` with its short side scaled to ``short_side`` (bilinear), then its central
    ``size`` x ``size`` square: the input the image and video networks were trained on."""
    image = image.resize(scaled_size(*image.size, short_side), Image.Resampling.BILINEAR)
    w, h = image.size
    left, top = (w - size) // 2, (h - size) // 2
    return image.crop((left, top, left + size, top + size))


def decode_frames(path: Path, wanted: Iterable[int], short_side: int | None = None,
                  seek_ahead: float | None = SEEK_AHEAD_SECONDS, threads: int = 0,
                  info: VideoInfo | None = None) -> dict[int, np.ndarray]:
    """The frames at the ``wanted`` indices (0-based, in presentation order, counted
    from the stream's start at its average rate) as uint8 RGB ``(H, W, 3)``, scaled by
    FFmpeg's bilinear scaler so that the short side is ``short_side`` (None: as stored).

    One decoder pass over the wanted frames in order: it seeks (to the keyframe before)
    when the next wanted frame lies more than ``seek_ahead`` seconds ahead, and decodes
    on otherwise. ``seek_ahead=0`` seeks for every frame, None never seeks (a
    sequential decode from the start). ``threads``: FFmpeg's own decoding threads (0:
    its default). Indices the stream does not reach (a header that overstates the count,
    dropped frames) are absent from the result: `frames_at` fills them."""
    import av

    path = Path(path)
    todo = sorted(set(wanted))
    found: dict[int, np.ndarray] = {}
    with open_media(path) as container:
        stream = _video_stream(container, path)
        if threads:
            stream.thread_type, stream.codec_context.thread_count = "AUTO", threads
        info = info or _info(container, stream, path)
        size = scaled_size(info.width, info.height, short_side) if short_side else None
        keep = set(todo)
        ahead = None if seek_ahead is None else seek_ahead * info.rate
        frames: Any = None  # the decoder's frames from the last seek on
        position = -1  # the index of the last frame decoded
        try:
            for index in todo:
                if index <= position:
                    continue  # passed without a frame of that index (a dropped frame)
                far = ahead is not None and index - position > ahead
                if far:  # to the keyframe before it; the decoder is flushed
                    container.seek(_pts(info, stream, index), stream=stream, backward=True)
                    position = index - 1  # what a frame without a timestamp follows
                if frames is None or far:
                    frames = container.decode(stream)
                for frame in frames:
                    position = _index(frame, info, position)
                    if position in keep:
                        found[position] = _rgb(frame, size)
                    if position >= index:
                        break
                else:
                    break  # the stream ended
        except av.FFmpegError as err:
            raise EncodeError(f"broken video stream in {path}: {err}") from err
    return found


def _pts(info: VideoInfo, stream: Any, index: int) -> int:
    """The timestamp (in the stream's time base) of frame ``index``."""
    return int((info.start + Fraction(index) / info.rate) / Fraction(stream.time_base))


def _index(frame: Any, info: VideoInfo, previous: int) -> int:
    """A decoded frame's index from its timestamp (the next one when it has none)."""
    if frame.pts is None or frame.time_base is None:
        return previous + 1
    return round((Fraction(frame.pts * frame.time_base) - info.start) * info.rate)


def _rgb(frame: Any, size: tuple[int, int] | None) -> np.ndarray:
    if size is None:
        return np.asarray(frame.to_ndarray(format="rgb24"))
    return np.asarray(frame.to_ndarray(width=size[0], height=size[1], format="rgb24",
                                       interpolation="BILINEAR"))


def frames_at(path: Path, indices: Iterable[int], short_side: int | None = None,
              seek_ahead: float | None = SEEK_AHEAD_SECONDS, threads: int = 0,
              info: VideoInfo | None = None) -> list[np.ndarray]:
    """One frame per index of ``indices`` (repeats allowed), decoded by `decode_frames`.
    An index the stream did not reach gets the nearest decoded frame before it (after
    it, when there is none before), unless the stream stops short of the header's
    count by more than a tenth: then the file is truncated (an `EncodeError`)."""
    indices = [int(i) for i in indices]
    info = info or probe_video(path)
    found = decode_frames(path, indices, short_side, seek_ahead, threads, info)
    if not found:
        raise EncodeError(f"no frame could be decoded from {path}: the file is truncated "
                          "or damaged")
    have = np.array(sorted(found))
    reached, wanted_last = int(have[-1]), max(indices)
    if wanted_last - reached > max(2, info.frames // 10):
        raise EncodeError(f"{path} ends at frame {reached + 1} of the {info.frames} its "
                          "header announces: the file is truncated or damaged")
    out = []
    for index in indices:
        at = int(np.searchsorted(have, index, side="right")) - 1
        out.append(found[int(have[max(at, 0)])])
    return out


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
        raise EncodeError(f"no frame could be decoded from {path}: the file is truncated "
                          "or damaged")
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
