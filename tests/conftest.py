"""Tests read real data from the shared data directory (``MODREC_DATA_DIR``, which
`.ci/run` points at ../shared/data) and keep converted datasets in a per-session cache."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# Before any test module imports torch: the OpenMP policy (modrec.threads) applies to the
# whole session, as it does to the modrec command.
from modrec import threads as _threads  # noqa: F401, E402

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


@pytest.fixture(scope="session")
def ml100k_store(ml100k, tmp_path_factory: pytest.TempPathFactory):
    """ml-100k titles through MiniLM and genres as multi-hot, once for the session:
    encoding the titles is the slowest setup here, and every user only reads it (the
    content tests, and the service's tests of items added live)."""
    from modrec.content import EmbeddingStore, embed

    # Laid out as $MODREC_EMBEDDINGS_DIR/<dataset>, so training finds it by name.
    store = EmbeddingStore.for_dataset(ml100k, tmp_path_factory.mktemp("embeddings") / "ml-100k")
    embed(ml100k, ["text", "tags:genres"], store, progress=False)
    return store


@pytest.fixture(scope="session")
def postgres() -> Iterator[Any]:
    """A PostgreSQL server of the session's own (`replicas`), started on first use;
    skipped, saying why, only where none can run (no binaries, root with no postgres
    user)."""
    from replicas import PostgresServer, unavailable

    why = unavailable()
    if why is not None:
        pytest.skip(f"PostgreSQL: {why}")
    server = PostgresServer()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def state_where(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a new, empty user state is: an SQLite file, or a fresh database of the
    session's PostgreSQL server; a test taking it runs on both."""
    if request.param == "sqlite":
        return str(tmp_path / "state.db")
    return str(request.getfixturevalue("postgres").database())
