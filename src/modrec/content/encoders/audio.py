"""Audio encoder: statistics of a log-mel spectrogram (librosa; no torchaudio).

Each clip becomes the mean and standard deviation over time of 64 log-mel bands
(128-d): a cheap, model-free description of timbre and loudness. Pretrained audio
embeddings (VGGish, Whisper) computed elsewhere enter as precomputed vectors instead
(`modrec.content.encoders.precomputed`).

Files are decoded by `modrec.content.media`; `AudioEncoder.encode_waveform` encodes an
already decoded waveform, which is how the video encoder encodes its soundtrack.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from modrec.content.encoders.base import EncodeError, Spec
from modrec.content.media import SAMPLE_RATE, load_audio
from modrec.data import Dataset

N_MELS = 64


def log_mel_stats(waveform: np.ndarray, sample_rate: int) -> np.ndarray:
    """Mono waveform -> ``(2 * N_MELS,)`` mean and std of each log-mel band."""
    import librosa

    if waveform.size == 0:
        raise EncodeError("empty audio")
    if sample_rate != SAMPLE_RATE:
        waveform = librosa.resample(waveform, orig_sr=sample_rate, target_sr=SAMPLE_RATE)
    mel = librosa.feature.melspectrogram(y=waveform.astype(np.float32), sr=SAMPLE_RATE,
                                         n_fft=512, hop_length=160, n_mels=N_MELS)
    log_mel = librosa.power_to_db(mel, ref=1.0, top_db=None)  # (N_MELS, T)
    return np.concatenate([log_mel.mean(1), log_mel.std(1)]).astype(np.float32)


class AudioEncoder:
    reads = "audio"
    dim = 2 * N_MELS
    version = f"log-mel-stats:{N_MELS}:{SAMPLE_RATE}"

    def __init__(self, name: str = "audio") -> None:
        self.name = name

    def encode(self, batch: list[Any]) -> np.ndarray:
        out = []
        for source in batch:
            path = Path(str(source))
            if not path.is_file():
                raise EncodeError(f"audio file not found: {path}")
            out.append(self.encode_waveform(*load_audio(path)))
        return np.stack(out)

    def encode_waveform(self, waveform: np.ndarray, sample_rate: int) -> np.ndarray:
        """One decoded mono clip -> float32 ``(dim,)``."""
        return log_mel_stats(waveform, sample_rate)


def build(spec: Spec, dataset: Dataset, device: str) -> AudioEncoder:
    """``audio``: model-free, so any option is ignored and the device too."""
    return AudioEncoder(name=spec.name)
