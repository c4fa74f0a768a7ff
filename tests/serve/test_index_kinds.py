"""ItemIndex kinds (exact, HNSW, IVF-Flat, IVF-PQ) on a catalog with cluster structure:
the same top k as exact search where that is known, the exclusion contract for every
kind, save/load, the cache, the `auto` choice and the settings refused."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from modrec.errors import ConfigError
from modrec.serve.index import IndexConfig, ItemIndex, choose_kind, index_config

N, DIM = 3_000, 16


def clustered(rng: np.random.Generator, n: int, dim: int, clusters: int = 30) -> np.ndarray:
    """(n + 1, dim) unit vectors around ``clusters`` centres (what trained item vectors
    look like more than random ones do); row 0, the padding, would outscore them all."""
    centres = rng.standard_normal((clusters, dim))
    x = centres[rng.integers(0, clusters, n)] + 0.35 * rng.standard_normal((n, dim))
    items = np.empty((n + 1, dim), np.float32)
    items[0] = 100.0
    items[1:] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return items


@pytest.fixture(scope="module")
def items() -> np.ndarray:
    return clustered(np.random.default_rng(0), N, DIM)


@pytest.fixture(scope="module")
def queries(items: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(1)
    q = items[rng.integers(1, N + 1, 24)] + 0.2 * rng.standard_normal((24, DIM))
    return q.astype(np.float32)


GENEROUS = {  # settings under which each kind should find the exact top k
    "exact": IndexConfig(kind="exact"),
    "hnsw": IndexConfig(kind="hnsw", ef_construction=64, ef_search=512),
    "ivf": IndexConfig(kind="ivf", nlist=40, nprobe=40),  # every list: exact
    "ivfpq": IndexConfig(kind="ivfpq", nlist=40, nprobe=40, pq_m=8, rerank=8),
}


@pytest.fixture(scope="module")
def indexes(items: np.ndarray) -> dict[str, ItemIndex]:
    return {kind: ItemIndex(items, config) for kind, config in GENEROUS.items()}


def truth(items: np.ndarray, queries: np.ndarray, k: int,
          exclude: list[set[int]]) -> list[np.ndarray]:
    scores = queries.astype(np.float64) @ items[1:].astype(np.float64).T
    out = []
    for row, ex in zip(scores, exclude, strict=True):
        row[np.array(sorted(ex), np.int64) - 1] = -np.inf
        out.append(np.argsort(-row, kind="stable")[:k] + 1)
    return out


def exclusions(n: int, seed: int) -> list[set[int]]:
    rng = np.random.default_rng(seed)
    return [set(rng.integers(1, N + 1, n).tolist()) for _ in range(24)]


@pytest.mark.parametrize("kind", list(GENEROUS))
def test_every_kind_is_built_and_reports_its_settings(indexes: dict[str, ItemIndex],
                                                      kind: str) -> None:
    index = indexes[kind]
    settings = index.settings()
    assert index.kind == kind == settings["kind"]
    assert (settings["items"], settings["dim"]) == (N, DIM)
    if kind in ("ivf", "ivfpq"):
        assert (settings["nlist"], settings["nprobe"]) == (40, 40)
    if kind == "ivfpq":
        assert (settings["pq_m"], settings["pq_bits"], settings["rerank"]) == (8, 8, 8)
    if kind == "hnsw":
        assert settings["ef_search"] == 512


def test_ivf_probing_every_list_is_exact(indexes: dict[str, ItemIndex], items: np.ndarray,
                                         queries: np.ndarray) -> None:
    exclude = exclusions(20, 2)
    expected = truth(items, queries, 50, exclude)
    for (found, scores), want, q in zip(indexes["ivf"].search(queries, 50, exclude),
                                        expected, queries, strict=True):
        assert np.array_equal(found, want)
        np.testing.assert_allclose(scores, items[found] @ q, atol=1e-5)


@pytest.mark.parametrize("kind", ["hnsw", "ivfpq"])
def test_approximate_kinds_find_the_exact_top_k_when_generous(
        indexes: dict[str, ItemIndex], items: np.ndarray, queries: np.ndarray,
        kind: str) -> None:
    exclude = exclusions(20, 3)
    expected = truth(items, queries, 20, exclude)
    found = indexes[kind].search(queries, 20, exclude)
    recall = np.mean([len(np.intersect1d(f, t)) / 20
                      for (f, _), t in zip(found, expected, strict=True)])
    assert recall >= 0.98, f"{kind} recall@20 {recall:.3f}"
    if kind == "ivfpq":  # re-ranked from the float vectors: the scores are exact
        for (f, s), q in zip(found, queries, strict=True):
            np.testing.assert_allclose(s, items[f] @ q, atol=1e-5)


@pytest.mark.parametrize("kind", list(GENEROUS))
@pytest.mark.parametrize(("k", "excluded"), [(10, 0), (100, 50), (100, 2_000), (50, 2_990)])
def test_every_kind_returns_exactly_k_and_never_an_excluded_item(
        indexes: dict[str, ItemIndex], queries: np.ndarray, kind: str, k: int,
        excluded: int) -> None:
    """Histories from none to nearly the whole catalog: the over-fetch, its retry and the
    exact fallback together always give min(k, items left), never an excluded one."""
    rng = np.random.default_rng(excluded)
    exclude = [set(rng.choice(np.arange(1, N + 1), excluded, replace=False).tolist())
               for _ in range(len(queries))]
    for (found, scores), ex in zip(indexes[kind].search(queries, k, exclude), exclude,
                                   strict=True):
        assert len(found) == min(k, N - len(ex)) == len(scores)
        assert len(set(found.tolist())) == len(found)
        assert not set(found.tolist()) & ex and found.min() >= 1 and found.max() <= N
        assert np.all(np.diff(scores) <= 1e-6)  # best first


def test_a_narrow_ivf_search_stays_complete(items: np.ndarray, queries: np.ndarray) -> None:
    """One probed list cannot hold k items: nprobe grows with the fetch."""
    index = ItemIndex(items, IndexConfig(kind="ivf", nlist=60, nprobe=1))
    for found, _ in index.search(queries, 300, [set(range(1, 200))] * len(queries)):
        assert len(found) == 300 and found.min() >= 200


@pytest.mark.parametrize("kind", ["ivf", "ivfpq"])
def test_similar_leaves_out_the_item_itself(indexes: dict[str, ItemIndex],
                                            items: np.ndarray, kind: str) -> None:
    found, _ = indexes[kind].similar(7, 5)
    assert 7 not in found and len(found) == 5
    scores = items[1:] @ items[7]
    scores[6] = -np.inf
    assert set(found.tolist()) == set((np.argsort(-scores)[:5] + 1).tolist())


@pytest.mark.parametrize("kind", ["ivf", "ivfpq"])
def test_saved_ivf_loads_with_the_same_results(indexes: dict[str, ItemIndex],
                                               items: np.ndarray, queries: np.ndarray,
                                               kind: str, tmp_path: Path) -> None:
    index = indexes[kind]
    index.save(tmp_path / "items.faiss")
    loaded = ItemIndex.load(tmp_path / "items.faiss", GENEROUS[kind], items)
    assert loaded.settings() == index.settings()
    exclude = exclusions(10, 4)
    for (a, sa), (b, sb) in zip(index.search(queries, 30, exclude),
                                loaded.search(queries, 30, exclude), strict=True):
        assert np.array_equal(a, b) and np.allclose(sa, sb)
    # Without the float vectors an IVF-PQ index still answers, from its codes alone.
    bare = ItemIndex.load(tmp_path / "items.faiss", GENEROUS[kind])
    assert bare.settings()["kind"] == kind
    assert bare.rerank == 1
    for found, _ in bare.search(queries, 30, exclude):
        assert len(found) == 30


def test_an_ivf_index_is_kept_and_loaded_for_the_same_vectors(
        items: np.ndarray, queries: np.ndarray, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    config = IndexConfig(kind="ivfpq", nlist=20, pq_m=4)
    with caplog.at_level(logging.INFO, logger="modrec.serve.index"):
        first = ItemIndex.cached(items, config, tmp_path)
        [kept] = list(tmp_path.glob("*.faiss"))
        assert kept.name.startswith("ivf20-pq4-")
        caplog.clear()
        second = ItemIndex.cached(items, config, tmp_path)
        assert any("loaded the item index" in r.getMessage() for r in caplog.records)
    assert second.rerank == first.rerank > 1  # the loaded index re-ranks too
    for (a, _), (b, _) in zip(first.search(queries, 10), second.search(queries, 10),
                              strict=True):
        assert np.array_equal(a, b)
    ItemIndex.cached(items, IndexConfig(kind="ivf", nlist=20), tmp_path)
    assert len(list(tmp_path.glob("*.faiss"))) == 2


def test_auto_chooses_by_size_and_memory() -> None:
    assert choose_kind(1_000, 64, IndexConfig()) == "exact"
    assert choose_kind(1_000_000, 64, IndexConfig()) == "hnsw"
    # 1M x 64 floats are 244 MiB, 490 MiB with HNSW's links; IVF-PQ's codes about 23 MiB.
    assert choose_kind(1_000_000, 64, IndexConfig(memory_mib=400)) == "ivf"
    assert choose_kind(1_000_000, 64, IndexConfig(memory_mib=100)) == "ivfpq"
    assert choose_kind(50_000, 64, IndexConfig(memory_mib=5)) == "ivfpq"
    with pytest.raises(ConfigError, match="no index over 10,000,000 items of dim 64 fits "
                       "memory_mib 10: the smallest, ivfpq, needs about 230 MiB"):
        choose_kind(10_000_000, 64, IndexConfig(memory_mib=10))


@pytest.mark.parametrize(("settings", "message"), [
    ({"kind": "hnsw", "nprobe": 8}, "nprobe applies to the ivf and ivfpq index, not to "
     "hnsw: leave it out or choose kind ivf"),
    ({"kind": "ivf", "pq_m": 8}, "pq_m applies to the ivfpq index, not to ivf"),
    ({"kind": "exact", "rerank": 2}, "rerank applies to the ivfpq index, not to exact"),
    ({"kind": "ivf", "nlist": 16, "nprobe": 32}, "nprobe 32 is more than nlist 16"),
    ({"kind": "annoy"}, "kind: Input should be 'auto', 'exact', 'hnsw', 'ivf' or 'ivfpq'"),
    ({"nprobe": 0}, "nprobe: Input should be greater than or equal to 1"),
    ({"memory_mib": -1}, "memory_mib: Input should be greater than 0"),
    ({"nlsit": 4}, "nlsit: Unexpected keyword argument"),
])
def test_bad_settings_are_refused_with_what_is_wrong(settings: dict, message: str) -> None:
    with pytest.raises(ConfigError, match="invalid index settings: ") as err:
        index_config(**settings)
    assert message in str(err.value)


def test_settings_that_do_not_fit_the_catalog_are_refused(items: np.ndarray) -> None:
    with pytest.raises(ConfigError, match="pq_m 5 does not divide the item vectors' dim "
                       "16: choose one of 1, 2, 4, 8, 16"):
        ItemIndex(items, IndexConfig(kind="ivfpq", pq_m=5))
    with pytest.raises(ConfigError, match="a ivf index over 3000 items cannot be trained: "
                       "k-means needs at least 4000 items"):
        ItemIndex(items, IndexConfig(kind="ivf", nlist=4_000))
    with pytest.raises(ConfigError, match="ivfpq index over 100 items cannot be trained"):
        ItemIndex(items[:101], IndexConfig(kind="ivfpq"))


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from modrec.config import build_config
    from modrec.train import train

    config = build_config("ml-100k", "sasrec", overrides=[
        "train.epochs=1", "model.max_len=20", "model.num_blocks=1"])
    return train(config, tmp_path_factory.mktemp("run") / "run", progress=False)


def test_readyz_shows_the_index_and_its_settings(run: Path, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from modrec.serve import ModelService, ServeConfig
    from modrec.serve.app import AppSettings, create_app
    from modrec.serve.state import SQLiteUserState

    config = ServeConfig(index=index_config(kind="ivf", nlist=16, nprobe=4))
    service = ModelService.from_runs({"sasrec": run}, SQLiteUserState(tmp_path / "s.db"),
                                     config)
    with TestClient(create_app(service, AppSettings())) as client:
        model = client.get("/readyz").json()["models"]["sasrec"]
        assert model["index"] == "ivf"
        assert model["index_settings"] == {
            "kind": "ivf", "items": 1682, "dim": 50, "nlist": 16, "nprobe": 4,
            "threads": 1, "memory_mib": model["index_settings"]["memory_mib"]}
        answer = client.post("/v1/recommend", json={"user_id": "196", "k": 20}).json()
        assert len(answer["items"]) == 20


def test_serve_refuses_bad_index_flags(run: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    from modrec.cli import main

    serve = ["serve", str(run), "--state", str(tmp_path / "state.db")]
    for extra, expected in [
        (["--index", "hnsw", "--nprobe", "8"], "invalid index settings: nprobe applies to "
         "the ivf and ivfpq index, not to hnsw: leave it out or choose kind ivf"),
        (["--index", "ivf", "--nlist", "8", "--nprobe", "9"], "nprobe 9 is more than "
         "nlist 8"),
        (["--index", "annoy"], "argument --index: invalid choice: 'annoy'"),
        (["--nprobe", "0"], "argument --nprobe: must be at least 1"),
        (["--index", "ivfpq", "--pq-m", "7"], "pq_m 7 does not divide the item vectors' "
         "dim 50: choose one of 1, 2, 5, 10, 25, 50"),
    ]:
        code = main([*serve, *extra])
        err = capsys.readouterr().err
        assert code == 2 and expected in err and "Traceback" not in err, (extra, err)


def test_ivfpq_default_pq_m_divides_any_dim() -> None:
    """dim 50 (SASRec's default): dim // 4 = 12 does not divide it, 10 does."""
    items = clustered(np.random.default_rng(5), 2_000, 50)
    index = ItemIndex(items, IndexConfig(kind="ivfpq", nlist=10))
    assert index.settings()["pq_m"] == 10


def test_ivfpq_batched_answers_equal_one_query_at_a_time(indexes: dict[str, ItemIndex],
                                                         items: np.ndarray) -> None:
    """Re-ranking runs over the batch in blocks of rows: a batch across blocks gives each
    query what it gets alone."""
    queries = items[1:71] + 0.05
    batched = indexes["ivfpq"].search(queries, 25)
    for i, (found, scores) in enumerate(batched):
        [(alone, alone_scores)] = indexes["ivfpq"].search(queries[i:i + 1], 25)
        assert np.array_equal(found, alone) and np.allclose(scores, alone_scores)
