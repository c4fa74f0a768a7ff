"""Replacing a file so that a reader sees the old version or the new one, never half
of one: write a hidden sibling, then rename it over the target (atomic on POSIX)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def replace_atomic(path: Path, write: Callable[[Path], object]) -> None:
    """``write(tmp)`` fills a temporary sibling of ``path``, which then replaces it."""
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


def write_text_atomic(path: Path, text: str) -> None:
    replace_atomic(path, lambda tmp: tmp.write_text(text))
