"""The video encoder on real videos: frames sampled by seeking, the soundtrack through
the injected audio encoder, clear errors for broken and missing files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from modrec.content import EncodeError
from modrec.content.encoders.audio import log_mel_stats
from modrec.content.encoders.image import ImageEncoder
from modrec.content.encoders.video import VideoEncoder
from modrec.content.media import decode_audio, sample_frames


@pytest.fixture(scope="module")
def image() -> ImageEncoder:
    """One EfficientNet for the module's encoders (loading it dominates a short test)."""
    return ImageEncoder()


class TinyAudio:
    """A stand-in audio encoder with its own width: seconds of sound and peak level."""

    dim, version = 2, "tiny-audio:1"

    def __init__(self) -> None:
        self.rates: list[int] = []  # the sample rate of each waveform it was given

    def encode_waveform(self, waveform: np.ndarray, sample_rate: int) -> np.ndarray:
        self.rates.append(sample_rate)
        return np.array([len(waveform) / sample_rate, np.abs(waveform).max()], np.float32)


def test_video_encoder_samples_frames_and_joins_audio(data_dir):
    from modrec.content.encoders.video import VideoEncoder, decode_audio, sample_frames

    video = data_dir / "microlens-sample" / "10040.mp4"
    frames = sample_frames(video, 3)
    assert len(frames) == 3 and frames[0].size == (1280, 720)
    waveform, rate = decode_audio(video)
    assert rate == 16_000 and len(waveform) > rate  # seconds of real sound
    encoder = VideoEncoder(frames=2)
    vector = encoder.encode([str(video)])[0]
    assert vector.shape == (2 * 1280 + 128,) and np.isfinite(vector).all()
    assert np.abs(vector[-128:]).sum() > 0  # the audio part is filled


def test_broken_and_missing_media_are_clear_errors(tmp_path, data_dir):
    from modrec.content.encoders.audio import AudioEncoder
    from modrec.content.encoders.video import VideoEncoder

    broken = tmp_path / "broken.mp4"
    broken.write_bytes((data_dir / "microlens-sample" / "10040.mp4").read_bytes()[:2000])
    encoder = VideoEncoder(frames=2)
    with pytest.raises(EncodeError, match="broken.mp4"):
        encoder.encode([str(broken)])
    with pytest.raises(EncodeError, match="not found"):
        encoder.encode([str(tmp_path / "nowhere.mp4")])
    with pytest.raises(EncodeError, match="not found"):
        AudioEncoder().encode([str(tmp_path / "nowhere.wav")])


def test_default_video_vector_is_frames_then_log_mel_stats(data_dir, image):
    """The default encoders give the vector the video encoder gave before its audio
    part went through the audio encoder (stores built earlier stay valid)."""
    video = data_dir / "microlens-sample" / "10040.mp4"
    encoder = VideoEncoder(frames=2, image=image)
    assert encoder.dim == 2 * 1280 + 128
    assert encoder.version == ("frames2:mean+max:efficientnet-lite0:pool-mean:224|"
                               "log-mel-stats:64:16000")
    frames = image.encode(sample_frames(video, 2))
    before = np.concatenate([frames.mean(0), frames.max(0), log_mel_stats(*decode_audio(video))])
    assert np.allclose(encoder.encode([str(video)])[0], before, atol=1e-6)


def test_a_substituted_audio_encoder_makes_the_audio_part(data_dir, image):
    video = data_dir / "microlens-sample" / "10040.mp4"
    tiny = TinyAudio()
    encoder = VideoEncoder(frames=2, image=image, audio=tiny)
    assert encoder.dim == 2 * 1280 + 2 and encoder.version.endswith("|tiny-audio:1")
    vector = encoder.encode([str(video)])[0]
    assert vector.shape == (2 * 1280 + 2,) and vector.dtype == np.float32
    waveform, rate = decode_audio(video)
    assert tiny.rates == [16_000]  # called once, with the decoded soundtrack
    assert np.allclose(vector[-2:], [len(waveform) / rate, np.abs(waveform).max()])
    default = VideoEncoder(frames=2, image=image).encode([str(video)])[0]
    assert np.allclose(vector[:-2], default[:-128], atol=1e-6)  # the frames are the same


def test_a_video_without_sound_gets_zeros_in_the_audio_encoders_width(silent_video: Path,
                                                                      image):
    tiny = TinyAudio()
    vector = VideoEncoder(frames=2, image=image, audio=tiny).encode([str(silent_video)])[0]
    assert vector.shape == (2 * 1280 + 2,) and vector[-2:].tolist() == [0.0, 0.0]
    assert tiny.rates == [] and np.abs(vector[:-2]).sum() > 0
