"""The audio encoder: a decoded waveform and the file it came from encode alike, and
waveforms at another rate are resampled to the features' rate."""

from __future__ import annotations

import numpy as np
import pytest

from modrec.content import EncodeError
from modrec.content.encoders.audio import N_MELS, SAMPLE_RATE, AudioEncoder, log_mel_stats
from modrec.content.media import decode_audio


def test_encode_waveform_matches_encoding_the_file(tmp_path, data_dir):
    import soundfile

    video = data_dir / "microlens-sample" / "1002.mp4"
    waveform, rate = decode_audio(video)
    soundfile.write(tmp_path / "sound.wav", waveform, rate, subtype="FLOAT")
    encoder = AudioEncoder()
    vector = encoder.encode_waveform(waveform, rate)
    assert vector.shape == (encoder.dim,) and vector.dtype == np.float32
    assert np.allclose(vector, log_mel_stats(waveform, rate))
    assert np.allclose(encoder.encode([str(tmp_path / "sound.wav")])[0], vector, atol=1e-4)


def test_encode_waveform_resamples_other_rates_and_refuses_silence():
    encoder = AudioEncoder()
    seconds = np.arange(22_050, dtype=np.float32) / 22_050
    tone = np.sin(2 * np.pi * 440 * seconds).astype(np.float32)  # one second of A4
    vector = encoder.encode_waveform(tone, 22_050)
    assert vector.shape == (encoder.dim,) and np.isfinite(vector).all()
    native = np.sin(2 * np.pi * 440 * np.arange(SAMPLE_RATE) / SAMPLE_RATE).astype(np.float32)
    same = encoder.encode_waveform(native, SAMPLE_RATE)
    # The same tone sampled at the features' rate peaks in the same mel band (the
    # near-silent bands' decibels are resampling noise, not worth comparing).
    assert vector[:N_MELS].argmax() == same[:N_MELS].argmax()
    assert vector[:N_MELS].max() == pytest.approx(same[:N_MELS].max(), abs=0.5)
    with pytest.raises(EncodeError, match="empty audio"):
        encoder.encode_waveform(np.zeros(0, np.float32), SAMPLE_RATE)
