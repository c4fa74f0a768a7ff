"""Cheap identities of weights on disk, for keying results by what made them.

A fingerprint hashes each file's size and its first and last MiB, not the whole file:
hashing hundreds of megabytes (a Whisper model) or gigabytes (a GGUF language model) on
every start would cost seconds, and a different file of the same size almost never
shares both ends. Two forms, each stored in result files and so kept as they are:

* `weights_fingerprint`: a file or a folder of files (content models: Whisper, CLIP,
  EfficientNet-Lite0), 16 hex digits.
* `file_fingerprint`: one GGUF file (``llm/local.py``), ``gguf:<size>:<16 hex>``.

Imports nothing of modrec, so both `content` and `llm` use it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

CHUNK = 1 << 20  # bytes hashed at each end of a file


def _ends(digest: Any, file: Path, size: int, chunk: int) -> None:
    """Feed ``digest`` the first and the last ``chunk`` bytes of ``file``."""
    with file.open("rb") as f:
        digest.update(f.read(chunk))
        f.seek(max(size - chunk, 0))
        digest.update(f.read(chunk))


def weights_fingerprint(path: Path, chunk: int = CHUNK) -> str:
    """A cheap identity of a weights file or folder: SHA-256 over each file's name, size
    and first and last MiB (hashing hundreds of MB on every start would cost seconds)."""
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        size = file.stat().st_size
        name = file.name if file == path else file.relative_to(path).as_posix()
        digest.update(f"{name}\0{size}\0".encode())
        _ends(digest, file, size, chunk)
    return digest.hexdigest()[:16]


def file_fingerprint(path: Path, chunk: int = CHUNK) -> str:
    """A cheap identity of a weights file: SHA-256 over its size and its first and last
    MiB (hashing a multi-gigabyte file in full on every start would cost seconds)."""
    digest = hashlib.sha256()
    size = path.stat().st_size
    digest.update(str(size).encode())
    _ends(digest, path, size, chunk)
    return f"gguf:{size}:{digest.hexdigest()[:16]}"
