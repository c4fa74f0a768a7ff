"""Top-k retrieval over a model's item vectors with FAISS, for the model service.

A model scores item ``i`` for a user as the dot product of the user vector with row ``i``
of its item matrix ``(N + 1, D)``; row 0 is padding and never a candidate. Scoring every
item is exact and cheap for small catalogs, but its cost grows with the catalog, so above
``exact_below`` items an HNSW graph (approximate, sub-linear) answers instead. Either way
`ItemIndex.search` returns, per query, exactly ``min(k, items not excluded)`` item indices
(the matrix row numbers, 1..N) with their scores, best first, never an excluded item
(typically the user's history) and never the padding row.

Why an over-fetch and not a FAISS ID selector for the exclusions: a selector applies to a
whole ``search`` call, so per-user exclusions would mean one call per user; fetching
``k + |exclude|`` candidates keeps a batch in one call, and the exclusions (a history the
model has just read) mostly sit among the best-scored items anyway. Exact search then always
has enough survivors; HNSW may not (it can return fewer or unreachable slots), so a short
query is retried with a larger fetch and, if still short, scored exactly. A query whose
fetch is so large that the graph walk would touch about as many vectors as a scan (a
history of thousands of items) is scored exactly straight away.

HNSW here uses the inner product directly (``METRIC_INNER_PRODUCT``). That is exact
nearest-neighbour search when the vectors have equal norms (models normalise them by
default: ``model.normalize``, cosine scores); with very unequal item norms the graph
navigates less well and recall drops, which is worth re-measuring for such a model.

Threads: FAISS parallelises one ``search`` call over its queries with OpenMP. The service
answers one user per request from several HTTP threads on a 2-core machine, and OpenMP
teams started from several threads at once oversubscribe the cores: measured here
(100,000 items, dim 64, 2 cores, 2 client threads), single-query exact search ran 2,027
queries/s with 1 OpenMP thread per call and 845 with 2. So each call runs with
``IndexConfig.threads`` OpenMP threads (default 1), set in the calling thread: libgomp keeps
that setting per thread, so it has to be set where the search runs, and setting it there
does not disturb other threads. The graph build runs with every core. Searches only read
the index, which FAISS allows from several threads at once (``ef_search`` travels in
per-call search parameters).

Items added after the build (`add`: a live service's new items, appended as rows N+1,
N+2, ...) go into the same FAISS index, exact or HNSW alike (both take ``add``). FAISS
does not allow an ``add`` while another thread searches (the vector storage may be
reallocated under it), so searches hold a shared lock and `add` an exclusive one: adds
are rare and short (one vector into a graph of a million: milliseconds), searches go
on side by side. Items can be hidden (`hide`: retired, or replaced by a newer version
of themselves): a hidden item is excluded from every search like a history item,
through the same over-fetch, so nothing is removed from FAISS (HNSW cannot remove).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Literal

import faiss
import numpy as np
from pydantic import ConfigDict, Field
from pydantic.dataclasses import dataclass

from modrec import paths
from modrec.threads import usable_cores

log = logging.getLogger(__name__)

Kind = Literal["exact", "hnsw"]
Exclusions = Iterable[int] | np.ndarray


@dataclass(config=ConfigDict(extra="forbid"))
class IndexConfig:
    # Catalogs smaller than this are scored exactly (IndexFlatIP): at 100,000 items and
    # dim 64 one exact query takes about 1 ms on one core, while a graph of that size
    # takes over a minute to build on 2 cores. At 1,000,000 items an exact query takes
    # 11-13 ms (75-92 queries/s on one core): raise this if that latency is acceptable,
    # since exact search has no recall to tune.
    exact_below: Annotated[int, Field(ge=0)] = 100_000
    # HNSW graph degree, build beam and search beam, measured with benchmarks/ann_recall.py
    # on random unit vectors of dim 64, the hardest case (no cluster structure; trained
    # item vectors are easier), on 2 busy cores. At 200,000 items, recall@100 at equal
    # speed hardly differed between M=32, 48 and 64 (0.95-0.97 at 550-670 queries/s), and
    # M=16 needed twice the beam; M=32 builds faster than 64 and takes half its
    # graph memory. efConstruction 200 over 100 gained 0.01-0.03 recall@100 at the same
    # search cost, for 1.6x the build time. At 1,000,000 items (M=32, efConstruction 200,
    # built in 15-27 min: save() it) single-query recall@10 / queries/s were 0.63 / 1,100
    # at ef_search 128, 0.82 / 1,000 at 256, 0.94 / 370 at 512, and recall@100 0.96 at
    # 1024 (210-245/s, about 3x exact). 512 is the smallest beam near 0.95 recall@10 in
    # that worst case; lower it for a model whose own vectors reach the recall you need.
    hnsw_m: Annotated[int, Field(ge=4)] = 32
    ef_construction: Annotated[int, Field(ge=8)] = 200
    ef_search: Annotated[int, Field(ge=1)] = 512
    # OpenMP threads per search call (see the module docstring); None: FAISS's default
    # (every core), the right choice for one caller sending large batches.
    threads: Annotated[int, Field(ge=1)] | None = 1


@contextmanager
def _omp_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` OpenMP threads in this thread, then restore the setting."""
    if n is None:
        yield
        return
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


class ReadWriteLock:
    """Many readers at once, or one writer; a waiting writer lets no new reader in, so a
    steady stream of searches cannot starve an `ItemIndex.add`."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writing = False
        self._writers_waiting = 0

    @contextmanager
    def reading(self) -> Iterator[None]:
        with self._cond:
            while self._writing or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if self._readers == 0:
                    self._cond.notify_all()

    @contextmanager
    def writing(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            while self._writing or self._readers:
                self._cond.wait()
            self._writers_waiting -= 1
            self._writing = True
        try:
            yield
        finally:
            with self._cond:
                self._writing = False
                self._cond.notify_all()


class ItemIndex:
    """Inner-product top-k over the rows 1..N of an item matrix ``(N + 1, D)``.

    The index holds its own float32 copy of the vectors (inside FAISS); the caller's matrix
    is not kept. Safe to search from several threads at once, and to `add` and `hide`
    items meanwhile.
    """

    def __init__(self, items: np.ndarray, config: IndexConfig | None = None) -> None:
        config = config or IndexConfig()
        if items.ndim != 2 or len(items) < 1:
            raise ValueError(f"items must be (N + 1, D) with row 0 the padding, got "
                             f"shape {items.shape}")
        vectors = np.ascontiguousarray(items[1:], dtype=np.float32)
        n, d = vectors.shape
        start = time.perf_counter()
        index: faiss.Index
        if n < config.exact_below:
            index = faiss.IndexFlatIP(d)
        else:
            index = faiss.IndexHNSWFlat(d, config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = config.ef_construction
        with _omp_threads(usable_cores()):  # this thread may have been limited by a search
            index.add(vectors)
        self._adopt(index, config)
        log.info("built %s item index over %d items (dim %d) in %.1f s", self.kind, n, d,
                 time.perf_counter() - start)

    def _adopt(self, index: faiss.Index, config: IndexConfig) -> None:
        self.config = config
        self._index = index
        self._lock = ReadWriteLock()
        # FAISS ids (row - 1) never returned, sorted; replaced whole, never changed in place.
        self._hidden = np.empty(0, np.int64)
        storage: faiss.IndexFlat  # where the vectors live
        if isinstance(index, faiss.IndexHNSWFlat):
            self._kind: Kind = "hnsw"
            storage = faiss.downcast_index(index.storage)  # type: ignore[assignment]
        elif isinstance(index, faiss.IndexFlatIP):
            self._kind = "exact"
            storage = index
        else:
            raise ValueError(f"not an item index: {type(index).__name__}")
        if index.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise ValueError("an item index scores by inner product")
        # A view of FAISS's own copy (no second copy of a large catalog), for exact
        # scoring of the queries approximate search leaves short; valid while the index
        # lives, which is as long as self.
        self._storage = storage
        self._view()

    def _view(self) -> None:
        """Point ``_vectors`` at FAISS's storage again (after an add may have moved it)."""
        n, d = int(self._index.ntotal), int(self._index.d)
        self._vectors = faiss.rev_swig_ptr(self._storage.get_xb(), n * d).reshape(n, d)

    def add(self, vectors: np.ndarray) -> range:
        """Append items ``(L, D)`` after the last row; returns their row numbers. Waits for
        the searches in flight, and new searches wait for it (see the module docstring)."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"vectors must be (L, {self.dim}), got shape {vectors.shape}")
        with self._lock.writing():
            first = self.size + 1
            self._index.add(vectors)
            self._view()
        return range(first, first + len(vectors))

    def hide(self, rows: Iterable[int]) -> None:
        """Never return the items at ``rows`` again (a retired item, or the row an updated
        item leaves behind). Out-of-range rows are ignored."""
        ids = self._faiss_ids(np.fromiter(rows, np.int64))
        self._hidden = np.union1d(self._hidden, ids)  # one assignment: searches see either

    @property
    def hidden(self) -> int:
        """How many items are hidden."""
        return len(self._hidden)

    @classmethod
    def cached(cls, items: np.ndarray, config: IndexConfig | None = None,
               folder: Path | None = None) -> ItemIndex:
        """The index over ``items``; an HNSW graph is kept in ``folder`` (default
        ``$MODREC_INDEX_DIR``, ``~/.cache/modrec/index``) under a digest of the vectors
        and the graph settings, and loaded instead of rebuilt when the same vectors come
        again: over a million items the build takes minutes, the load seconds, so a
        restart stays quick.

        Only this machine's cache is read, never a file that arrived inside a run folder
        or bundle: FAISS's reader is C++ and not meant for untrusted input."""
        config = config or IndexConfig()
        if len(items) - 1 < config.exact_below:  # exact: nothing worth keeping
            return cls(items, config)
        vectors = np.ascontiguousarray(items, dtype=np.float32)
        digest = hashlib.sha256(vectors.tobytes()).hexdigest()[:20]
        path = (folder or paths.index_dir()) / (
            f"hnsw-m{config.hnsw_m}-efc{config.ef_construction}-{digest}.faiss")
        if path.exists():
            try:
                index = cls.load(path, config)
                if index.kind == "hnsw" and (index.size, index.dim) == (
                        len(items) - 1, items.shape[1]):
                    log.info("loaded the item index from %s", path)
                    return index
                log.warning("%s does not match the item vectors: rebuilding it", path)
            except (RuntimeError, ValueError, OSError) as err:
                log.warning("%s is unreadable (%s): rebuilding it", path, err)
        index = cls(items, config)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            index.save(path)
        except (RuntimeError, OSError) as err:  # a read-only cache costs only start-up
            log.warning("could not keep the item index in %s (%s): the next start builds "
                        "it again", path, err)
        return index

    def save(self, path: str | Path) -> None:
        """Write the index to ``path`` (atomically): a graph over a million items takes
        minutes to build, and loading it takes seconds. The file does not say which item
        matrix it was built from: name it after the run it belongs to."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp")
        faiss.write_index(self._index, str(tmp))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | Path, config: IndexConfig | None = None) -> ItemIndex:
        """An index written by `save`. Of ``config``, only the search settings
        (``ef_search``, ``threads``) apply: the graph was built with the saved ones."""
        self = cls.__new__(cls)
        # read_index returns the concrete class, owning the index; a downcast_index()
        # wrapper around it would not own it and would dangle once it is collected.
        index = faiss.read_index(str(path))
        self._adopt(index, config or IndexConfig())
        return self

    @property
    def size(self) -> int:
        """Items that can be returned (N: the padding row is not one)."""
        return int(self._index.ntotal)

    @property
    def dim(self) -> int:
        return int(self._index.d)

    @property
    def kind(self) -> Kind:
        return self._kind

    def search(self, queries: np.ndarray, k: int,
               exclude: Sequence[Exclusions | None] | None = None, *,
               ef_search: int | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        """The best ``k`` items for each query vector of ``queries`` ``(B, D)``.

        ``exclude[b]``: item indices query ``b`` must not get back (any iterable or array;
        0 and out-of-range indices are ignored). Returns per query (item indices int64,
        scores float32), best first, exactly ``min(k, N - excluded)`` of them (hidden
        items count as excluded).
        ``ef_search`` overrides the configured HNSW search beam for this call.
        """
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"queries must be (B, {self.dim}), got shape {queries.shape}")
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        if exclude is None:
            exclude = [None] * len(queries)
        if len(exclude) != len(queries):
            raise ValueError(f"{len(exclude)} exclusion sets for {len(queries)} queries")
        with self._lock.reading():
            return self._search_all(queries, k, exclude, ef_search)

    def _search_all(self, queries: np.ndarray, k: int, exclude: Sequence[Exclusions | None],
                    ef_search: int | None) -> list[tuple[np.ndarray, np.ndarray]]:
        """`search`, under the shared lock."""
        # FAISS ids are row - 1: the padding row is not in the index at all.
        hidden = self._hidden
        masks = [np.union1d(self._faiss_ids(e), hidden) if len(hidden) else
                 self._faiss_ids(e) for e in exclude]
        wants = [min(k, self.size - len(m)) for m in masks]
        results: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(queries)
        fetches: dict[int, int] = {}
        for b, (mask, want) in enumerate(zip(masks, wants, strict=True)):
            if want <= 0:
                results[b] = (np.empty(0, np.int64), np.empty(0, np.float32))
            else:
                # The exclusions rounded up to a power of two: queries with similar
                # histories share a fetch size, and so a FAISS call (below).
                fetches[b] = min(self.size, k + _round_up(len(mask)))
        ef = self.config.ef_search if ef_search is None else ef_search
        with _omp_threads(self.config.threads):
            retried: set[int] = set()
            while fetches:
                # One FAISS call per fetch size: a single long history should not make
                # every query of the batch fetch that many candidates.
                by_fetch: dict[int, list[int]] = {}
                for b, fetch in fetches.items():
                    by_fetch.setdefault(fetch, []).append(b)
                fetches = {}
                for fetch, rows in by_fetch.items():
                    if self._kind == "hnsw" and fetch * self.config.hnsw_m >= self.size:
                        # A beam this wide visits about as many vectors as a scan of
                        # all of them (a huge history, or a small catalog): scan.
                        for b in rows:
                            results[b] = self._exact(queries[b], wants[b], masks[b])
                        continue
                    scores, ids = self._search(queries[rows], fetch, ef)
                    for b, row_scores, row_ids in zip(rows, scores, ids, strict=True):
                        keep = (row_ids >= 0) & ~np.isin(row_ids, masks[b])
                        found, found_scores = row_ids[keep][:wants[b]], row_scores[keep][:wants[b]]
                        if len(found) == wants[b]:
                            results[b] = (found + 1, found_scores)
                        elif b in retried or fetch >= self.size:
                            results[b] = self._exact(queries[b], wants[b], masks[b])
                        else:  # approximate search came up short: once more, wider
                            retried.add(b)
                            fetches[b] = min(self.size, 4 * fetch)
        assert all(r is not None for r in results)
        return results  # type: ignore[return-value]

    def similar(self, item: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` items whose vectors score highest against item ``item``'s own vector
        (item-to-item), without the item itself."""
        if not 1 <= item <= self.size:
            raise ValueError(f"item must be in 1..{self.size}, got {item}")
        [result] = self.search(self.vector(item)[None], k, [[item]])
        return result

    def vector(self, item: int) -> np.ndarray:
        """A copy of item ``item``'s vector, as the index holds it."""
        if not 1 <= item <= self.size:
            raise ValueError(f"item must be in 1..{self.size}, got {item}")
        with self._lock.reading():  # the view may move with an add
            return self._vectors[item - 1].copy()

    def _faiss_ids(self, exclude: Exclusions | None) -> np.ndarray:
        if exclude is None:
            return np.empty(0, np.int64)
        rows = (exclude.astype(np.int64, copy=False) if isinstance(exclude, np.ndarray)
                else np.fromiter(exclude, np.int64))
        rows = np.unique(rows)
        return rows[(rows >= 1) & (rows <= self.size)] - 1

    def _search(self, queries: np.ndarray, fetch: int, ef: int) -> tuple[np.ndarray, np.ndarray]:
        if self._kind == "hnsw":
            # Per-call parameters instead of setting index.hnsw.efSearch: no shared state
            # changes, so concurrent searches cannot see each other's beam.
            params = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]  # not in stubs
            params.efSearch = max(ef, fetch)
            scores, ids = self._index.search(queries, fetch, params=params)
        else:
            scores, ids = self._index.search(queries, fetch)
        return scores, ids

    def _exact(self, query: np.ndarray, want: int, mask: np.ndarray) -> tuple[np.ndarray,
                                                                                np.ndarray]:
        """Exact top ``want`` of one query by scoring every item (the fallback)."""
        scores = self._vectors @ query
        scores[mask] = -np.inf
        best = np.argpartition(-scores, want - 1)[:want]
        best = best[np.argsort(-scores[best], kind="stable")]
        return best.astype(np.int64) + 1, scores[best].astype(np.float32)


def _round_up(n: int) -> int:
    """0, or the smallest power of two not below ``n``."""
    return 0 if n == 0 else 1 << (n - 1).bit_length()
