"""Tests read real data from the shared data directory (``MODREC_DATA_DIR``, which
`.ci/run` points at ../shared/data) and keep converted datasets in a per-session cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("MODREC_DATA_DIR", str(DEFAULT_DATA))


@pytest.fixture(scope="session", autouse=True)
def _cache_dir(tmp_path_factory: pytest.TempPathFactory) -> None:
    os.environ["MODREC_CACHE_DIR"] = str(tmp_path_factory.mktemp("modrec-cache"))
    os.environ["MODREC_EMBEDDINGS_DIR"] = str(tmp_path_factory.mktemp("modrec-embeddings"))
    os.environ["MODREC_INDEX_DIR"] = str(tmp_path_factory.mktemp("modrec-index"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = Path(os.environ["MODREC_DATA_DIR"])
    if not (path / "ml-100k" / "ml-100k.inter").exists():
        pytest.fail(f"real test data not found under {path}; set MODREC_DATA_DIR")
    return path


@pytest.fixture(scope="session")
def ml100k(data_dir: Path):
    from modrec.data import load_dataset

    return load_dataset("ml-100k")
