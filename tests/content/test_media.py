"""Media decoding (`modrec.content.media`): sound files through soundfile, any other
container's soundtrack through PyAV, clear errors; and the module boundaries that keep
decoding in one place (no import cycle between the audio and video encoders)."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from modrec.content import EncodeError
from modrec.content.media import SAMPLE_RATE, decode_audio, load_audio, load_image


def test_load_audio_reads_sound_files_and_falls_back_to_pyav(tmp_path, data_dir):
    import soundfile

    video = data_dir / "microlens-sample" / "10040.mp4"
    waveform, rate = decode_audio(video)
    assert rate == SAMPLE_RATE and waveform.dtype == np.float32
    soundfile.write(tmp_path / "stereo.wav", np.stack([waveform, waveform], 1), rate,
                    subtype="FLOAT")
    from_wav, wav_rate = load_audio(tmp_path / "stereo.wav")  # soundfile, mixed to mono
    assert wav_rate == rate and np.allclose(from_wav, waveform)
    from_mp4, mp4_rate = load_audio(video)  # soundfile cannot: PyAV decodes the track
    assert mp4_rate == rate and np.array_equal(from_mp4, waveform)
    assert decode_audio(video, rate=8_000)[1] == 8_000


def test_a_container_without_sound_is_none_or_a_clear_error(silent_video: Path, tmp_path):
    assert decode_audio(silent_video) is None
    with pytest.raises(EncodeError, match="silent.mp4 has no audio stream"):
        load_audio(silent_video)
    (tmp_path / "junk.mp3").write_bytes(b"not audio at all")
    with pytest.raises(EncodeError, match="junk.mp3"):
        load_audio(tmp_path / "junk.mp3")
    with pytest.raises(EncodeError, match="image file not found"):
        load_image(tmp_path / "nowhere.png")


def _imports(module: str) -> set[str]:
    """Every module ``module`` imports, at the top or inside a function."""
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin is not None
    names: set[str] = set()
    for node in ast.walk(ast.parse(Path(spec.origin).read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_decoding_lives_in_media_and_audio_never_imports_video():
    own = {m for m in _imports("modrec.content.media") if m.startswith("modrec")}
    assert own == {"modrec.content.encoders.base"}  # decoding depends on no encoder
    assert "modrec.content.encoders.video" not in _imports("modrec.content.encoders.audio")
    for module in ("modrec.content.encoders.audio", "modrec.content.encoders.video",
                   "modrec.content.encoders.image"):
        assert not {"av", "soundfile"} & _imports(module), module  # decoders only in media


def test_check_complete_refuses_a_truncated_video(tmp_path: Path) -> None:
    """Decoding a truncated file does not fail (frames past the cut are skipped), so a
    new item's video is checked against the duration its header declares."""
    from modrec.content.media import check_complete
    from support import write_video

    whole = write_video(tmp_path / "whole.mp4", 4)
    check_complete(whole)  # no error
    data = whole.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[:len(data) // 2])
    with pytest.raises(EncodeError, match=r"cut.mp4 is truncated: its \w+ data ends at"):
        check_complete(cut)
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all" * 10)
    with pytest.raises(EncodeError, match="junk.mp4"):
        check_complete(junk)
