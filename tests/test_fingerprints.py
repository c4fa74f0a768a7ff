"""Weights fingerprints (`modrec.fingerprints`) key stored results (computed columns,
annotation files, CLIP vector versions): the values must never change, so they are
pinned here for a generated file and folder."""

from __future__ import annotations

from pathlib import Path

from modrec.fingerprints import file_fingerprint, weights_fingerprint


def _weights(tmp_path: Path) -> Path:
    folder = tmp_path / "w"
    (folder / "sub").mkdir(parents=True)
    (folder / "model.bin").write_bytes(bytes(range(256)) * 9000)  # 2.3 MB: ends differ
    (folder / "sub" / "config.json").write_text('{"a": 1}')
    return folder


def test_fingerprints_are_what_stored_results_were_keyed_by(tmp_path: Path) -> None:
    folder = _weights(tmp_path)
    assert weights_fingerprint(folder) == "6d7b3a888f249534"
    assert weights_fingerprint(folder / "model.bin") == "ebdd1d1479ef77a3"
    assert file_fingerprint(folder / "model.bin") == "gguf:2304000:095f20872a473e78"


def test_only_the_ends_of_a_big_file_are_read(tmp_path: Path) -> None:
    folder = _weights(tmp_path)
    before = weights_fingerprint(folder), file_fingerprint(folder / "model.bin")
    data = bytearray((folder / "model.bin").read_bytes())
    data[len(data) // 2] ^= 0xFF  # the middle MiB is not hashed
    (folder / "model.bin").write_bytes(bytes(data))
    assert (weights_fingerprint(folder), file_fingerprint(folder / "model.bin")) == before
    data[0] ^= 0xFF
    (folder / "model.bin").write_bytes(bytes(data))
    assert weights_fingerprint(folder) != before[0]
    assert file_fingerprint(folder / "model.bin") != before[1]
