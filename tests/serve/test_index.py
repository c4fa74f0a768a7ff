"""ItemIndex: exact search equals a numpy ranking, HNSW recall, exclusions, item-to-item."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest

from modrec.serve.index import IndexConfig, ItemIndex


def unit_vectors(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def catalog(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    """(n + 1, dim) item vectors whose padding row 0 would outscore every item, so a
    search that failed to leave it out would show it."""
    items = np.empty((n + 1, dim), np.float32)
    items[0] = 100.0
    items[1:] = rng.standard_normal((n, dim))
    return items


def numpy_scores(items: np.ndarray, query: np.ndarray,
                 exclude: Iterable[int] = ()) -> np.ndarray:
    """Scores of rows 1..N (float64), excluded items at -inf."""
    scores = items[1:].astype(np.float64) @ query.astype(np.float64)
    rows = np.array([i for i in set(exclude) if 1 <= i < len(items)], np.int64)
    scores[rows - 1] = -np.inf
    return scores


def assert_numpy_ranking(found: np.ndarray, found_scores: np.ndarray, items: np.ndarray,
                         query: np.ndarray, k: int, exclude: Iterable[int] = ()) -> None:
    """``found`` is numpy's argsort of the scores with exclusions masked, ties aside."""
    scores = numpy_scores(items, query, exclude)
    want = min(k, int(np.isfinite(scores).sum()))
    expected = np.argsort(-scores, kind="stable")[:want] + 1
    assert found.dtype == np.int64 and found_scores.dtype == np.float32
    assert len(found) == want
    np.testing.assert_allclose(found_scores, scores[expected - 1], rtol=0, atol=1e-4)
    differ = found != expected  # only where two items score the same
    np.testing.assert_allclose(scores[found[differ] - 1], scores[expected[differ] - 1],
                               rtol=0, atol=1e-5)
    assert np.isfinite(scores[found - 1]).all(), "an excluded item came back"


@pytest.fixture(scope="module")
def hnsw() -> tuple[ItemIndex, np.ndarray]:
    items = np.zeros((20_001, 32), np.float32)
    items[1:] = unit_vectors(np.random.default_rng(0), 20_000, 32)
    # A narrow build beam keeps the build to seconds on 2 busy cores; search uses the
    # default beam, and recall@10 stays near 1.0 at this size.
    index = ItemIndex(items, IndexConfig(exact_below=0, ef_construction=40))
    assert index.kind == "hnsw"
    return index, items


@pytest.mark.parametrize("batch", [1, 25])  # FAISS switches to BLAS from 20 queries
def test_exact_search_equals_numpy_ranking(batch: int) -> None:
    rng = np.random.default_rng(1)
    items = catalog(rng, 2000, 16)
    index = ItemIndex(items)
    assert (index.kind, index.size, index.dim) == ("exact", 2000, 16)
    queries = rng.standard_normal((batch, 16)).astype(np.float32)
    for k in (1, 10, 100):
        exclude = [set(rng.choice(np.arange(1, 2001), size=n, replace=False).tolist())
                   for n in rng.choice([0, 3, 50, 700], size=batch)]
        exclude[0] |= {0, -3, 5000}  # the padding and out-of-range indices are ignored
        results = index.search(queries, k, exclude)
        assert len(results) == batch
        for (found, scores), query, ex in zip(results, queries, exclude, strict=True):
            assert_numpy_ranking(found, scores, items, query, k, ex)


def test_exact_search_returns_all_that_is_left() -> None:
    rng = np.random.default_rng(2)
    items = catalog(rng, 50, 8)
    index = ItemIndex(items)
    query = rng.standard_normal((1, 8)).astype(np.float32)
    [(found, scores)] = index.search(query, 10, [np.arange(1, 46)])  # 5 items left
    assert_numpy_ranking(found, scores, items, query[0], 10, range(1, 46))
    assert sorted(found) == [46, 47, 48, 49, 50]
    [(found, scores)] = index.search(query, 10, [range(1, 51)])
    assert len(found) == len(scores) == 0
    [(found, _)] = index.search(query, 1000)
    assert sorted(found) == list(range(1, 51))


def test_kind_follows_exact_below() -> None:
    items = catalog(np.random.default_rng(3), 100, 8)
    assert ItemIndex(items, IndexConfig(exact_below=101)).kind == "exact"
    assert ItemIndex(items, IndexConfig(exact_below=100)).kind == "hnsw"


def test_hnsw_recall_at_10(hnsw: tuple[ItemIndex, np.ndarray]) -> None:
    index, items = hnsw
    queries = unit_vectors(np.random.default_rng(4), 200, 32)
    truth = np.argsort(-(queries @ items[1:].T), axis=1)[:, :10] + 1
    found = np.stack([f for f, _ in index.search(queries, 10)])
    recall = np.mean([len(np.intersect1d(f, t)) / 10 for f, t in zip(found, truth,
                                                                        strict=True)])
    assert recall >= 0.95


def test_hnsw_returns_exactly_k_without_excluded_items(hnsw: tuple[ItemIndex, np.ndarray]
                                                       ) -> None:
    index, items = hnsw
    rng = np.random.default_rng(5)
    queries = unit_vectors(rng, 6, 32)
    ranking = np.argsort(-(queries @ items[1:].T), axis=1) + 1
    # The hardest exclusions: each query's own best items, up to thousands of them, so
    # the survivors lie far down the ranking.
    exclude = [set(ranking[b, :n].tolist()) | {0}
               for b, n in enumerate([0, 10, 100, 500, 3000, 19_990])]
    for k in (1, 10, 50):
        for (found, scores), ex in zip(index.search(queries, k, exclude), exclude,
                                       strict=True):
            assert len(found) == min(k, 20_000 - len(ex - {0}))
            assert not set(found.tolist()) & ex
            assert len(set(found.tolist())) == len(found)
            assert np.all(np.diff(scores) <= 1e-6)  # best first


def test_short_approximate_results_are_completed(hnsw: tuple[ItemIndex, np.ndarray],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """When the graph search comes back short (unreachable slots), the query is retried
    wider and then scored exactly: still exactly k results, the exact ones."""
    index, items = hnsw
    calls: list[int] = []
    search = index._search

    def short(queries: np.ndarray, fetch: int, ef: int) -> tuple[np.ndarray, np.ndarray]:
        calls.append(fetch)
        scores, ids = search(queries, fetch, ef)
        ids[:, 10:] = -1  # FAISS marks slots it could not fill with -1
        return scores, ids

    monkeypatch.setattr(index, "_search", short)
    query = unit_vectors(np.random.default_rng(6), 1, 32)
    exclude = set(range(1, 40))
    [(found, scores)] = index.search(query, 20, [exclude])
    assert calls == [20 + 64, 4 * (20 + 64)]  # the first fetch, then one wider retry
    assert_numpy_ranking(found, scores, items, query[0], 20, exclude)


def test_similar_leaves_out_the_item_itself(hnsw: tuple[ItemIndex, np.ndarray]) -> None:
    rng = np.random.default_rng(7)
    items = catalog(rng, 300, 8)
    exact = ItemIndex(items)
    found, scores = exact.similar(17, 10)
    assert_numpy_ranking(found, scores, items, items[17], 10, {17})
    index, _ = hnsw
    for item in (1, 123, 20_000):
        found, _ = index.similar(item, 10)
        assert len(found) == 10 and item not in found and 0 not in found
    with pytest.raises(ValueError):
        exact.similar(0, 10)


def test_concurrent_searches_agree_with_serial(hnsw: tuple[ItemIndex, np.ndarray]) -> None:
    index, _ = hnsw
    queries = unit_vectors(np.random.default_rng(8), 64, 32)
    serial = [index.search(q[None], 10, [{1, 2, 3}])[0][0] for q in queries]
    out: dict[int, np.ndarray] = {}

    def work(rows: range) -> None:
        for i in rows:
            out[i] = index.search(queries[i:i + 1], 10, [{1, 2, 3}])[0][0]

    threads = [threading.Thread(target=work, args=(range(t, 64, 4),)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(np.array_equal(out[i], serial[i]) for i in range(64))


def test_bad_arguments_are_refused() -> None:
    index = ItemIndex(catalog(np.random.default_rng(9), 20, 4))
    with pytest.raises(ValueError):
        index.search(np.zeros((1, 5), np.float32), 3)
    with pytest.raises(ValueError):
        index.search(np.zeros((1, 4), np.float32), 0)
    with pytest.raises(ValueError):
        index.search(np.zeros((2, 4), np.float32), 3, [{1}])
    with pytest.raises(ValueError):
        ItemIndex(np.zeros(5, np.float32))
    with pytest.raises(ValueError):
        IndexConfig(exact_below=10, unknown=1)  # type: ignore[call-arg]


def test_saved_index_loads_with_the_same_results(hnsw: tuple[ItemIndex, np.ndarray],
                                                 tmp_path: Path) -> None:
    queries = unit_vectors(np.random.default_rng(10), 5, 32)
    exact = ItemIndex(catalog(np.random.default_rng(11), 100, 32))
    for index in (hnsw[0], exact):
        index.save(tmp_path / "items.faiss")
        loaded = ItemIndex.load(tmp_path / "items.faiss")
        assert (loaded.kind, loaded.size, loaded.dim) == (index.kind, index.size, index.dim)
        for (a, sa), (b, sb) in zip(index.search(queries, 10, [{1}] * 5),
                                    loaded.search(queries, 10, [{1}] * 5), strict=True):
            assert np.array_equal(a, b) and np.allclose(sa, sb)
        assert np.array_equal(index.similar(3, 5)[0], loaded.similar(3, 5)[0])


def test_a_built_graph_is_kept_and_loaded_for_the_same_vectors(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The second start over the same vectors loads the graph; other vectors, other
    graph settings or a damaged file build afresh; a small catalog keeps nothing."""
    import logging

    rng = np.random.default_rng(20)
    items = np.zeros((3_001, 16), np.float32)
    items[1:] = unit_vectors(rng, 3_000, 16)
    config = IndexConfig(exact_below=0, ef_construction=40)
    queries = unit_vectors(rng, 4, 16)
    with caplog.at_level(logging.INFO, logger="modrec.serve.index"):
        first = ItemIndex.cached(items, config, tmp_path)
        [kept] = list(tmp_path.glob("*.faiss"))
        caplog.clear()
        second = ItemIndex.cached(items, config, tmp_path)
        assert any("loaded the item index" in r.getMessage() for r in caplog.records)
    for (a, _), (b, _) in zip(first.search(queries, 10), second.search(queries, 10),
                              strict=True):
        assert np.array_equal(a, b)

    other = items.copy()
    other[5] = -other[5]
    ItemIndex.cached(other, config, tmp_path)
    ItemIndex.cached(items, IndexConfig(exact_below=0, ef_construction=48), tmp_path)
    assert len(list(tmp_path.glob("*.faiss"))) == 3

    kept.write_bytes(b"not an index")
    with caplog.at_level(logging.WARNING, logger="modrec.serve.index"):
        rebuilt = ItemIndex.cached(items, config, tmp_path)
    assert rebuilt.kind == "hnsw" and rebuilt.size == 3_000
    assert any("unreadable" in r.getMessage() for r in caplog.records)

    small = tmp_path / "small"
    assert ItemIndex.cached(items, IndexConfig(exact_below=10_000), small).kind == "exact"
    assert not small.exists()


# ---- items added and hidden after the build (a live service's new and retired items) --
@pytest.mark.parametrize("exact_below", [10_000, 0])  # exact, HNSW
def test_added_items_are_searched_and_hidden_ones_never_returned(exact_below: int) -> None:
    rng = np.random.default_rng(11)
    items = catalog(rng, 500, 16)
    index = ItemIndex(items, IndexConfig(exact_below=exact_below, ef_construction=40))
    new = rng.standard_normal((30, 16)).astype(np.float32)
    assert list(index.add(new[:10])) == list(range(501, 511))
    assert list(index.add(new[10:])) == list(range(511, 531)) and index.size == 530
    grown = np.concatenate([items, new])
    np.testing.assert_array_equal(index.vector(520), new[19])
    query = new[3] * 10  # its own direction, far longer than any item: it comes first
    [(found, _)] = index.search(query[None], 5)
    assert found[0] == 504
    index.hide([504, 7, 999_999])  # out of range: ignored
    assert index.hidden == 2
    queries = rng.standard_normal((3, 16)).astype(np.float32)
    for found, _ in index.search(queries, 600, [{1}, None, [2, 504]]):
        assert not {504, 7} & set(found.tolist())
        assert len(found) == len(set(found.tolist()))
    [(found, scores)] = index.search(queries[:1], 600, [{1}])
    assert len(found) == 530 - 3  # all that is left: exclusions and hidden items
    if exact_below:
        assert_numpy_ranking(found, scores, grown, queries[0], 600, {1, 504, 7})
    assert 504 not in index.similar(503, 50)[0]


def test_adds_while_searching_lose_nothing() -> None:
    """FAISS must not be searched while an add reallocates its storage: searches and
    adds from several threads at once neither fail nor miss a finished add."""
    rng = np.random.default_rng(12)
    index = ItemIndex(catalog(rng, 2_000, 16), IndexConfig(exact_below=0, ef_construction=40))
    new = unit_vectors(rng, 300, 16) * 50  # each its own query's top item
    errors: list[BaseException] = []
    done = threading.Event()

    def search() -> None:
        queries = rng.standard_normal((4, 16)).astype(np.float32)
        while not done.is_set():
            try:
                for found, _ in index.search(queries, 10):
                    assert len(found) == 10
            except BaseException as error:  # noqa: BLE001 - reported below
                errors.append(error)
                return

    threads = [threading.Thread(target=search) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for i, vector in enumerate(new):
            [row] = index.add(vector[None])
            assert row == 2_001 + i
            [(found, _)] = index.search(vector[None], 1)
            assert found[0] == row  # searchable as soon as add returns
    finally:
        done.set()
        for t in threads:
            t.join()
    assert not errors, errors[0]
