"""The image encoder on real pictures (frames of a real video), with the audio encoder
on the same video's soundtrack; unreadable files are clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from modrec.content import EncodeError


def test_image_and_audio_encoders_read_real_files(tmp_path, data_dir):
    """A real frame saved as PNG and the real soundtrack saved as WAV, through the
    image and audio encoders; unreadable files are clear errors."""
    import soundfile

    from modrec.content.encoders.audio import AudioEncoder
    from modrec.content.encoders.image import ImageEncoder
    from modrec.content.media import decode_audio, sample_frames

    video = data_dir / "microlens-sample" / "1002.mp4"
    frame = sample_frames(video, 1)[0]
    frame.save(tmp_path / "frame.png")
    image = ImageEncoder()
    from_file = image.encode([str(tmp_path / "frame.png")])
    assert from_file.shape == (1, 1280)
    assert np.allclose(from_file, image.encode([frame]), atol=1e-4)  # PNG is lossless
    waveform, rate = decode_audio(video)
    soundfile.write(tmp_path / "sound.wav", waveform, rate, subtype="FLOAT")
    sound = AudioEncoder().encode([str(tmp_path / "sound.wav"), str(video)])
    assert sound.shape == (2, 128) and np.allclose(sound[0], sound[1], atol=1e-3)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(EncodeError, match="bad.png"):
        image.encode([str(tmp_path / "bad.png")])
