"""Top-k retrieval over a model's item vectors with FAISS, for the model service.

A model scores item ``i`` for a user as the dot product of the user vector with row ``i``
of its item matrix ``(N + 1, D)``; row 0 is padding and never a candidate. Four kinds of
index answer (``IndexConfig.kind``):

- ``exact``: every item scored (``IndexFlatIP``); no recall to tune, cost linear in N;
- ``hnsw``: a graph walk (``IndexHNSWFlat``), sub-linear, slow to build, the float
  vectors plus about ``8 * hnsw_m`` bytes of links per item;
- ``ivf``: IVF-Flat (``IndexIVFFlat``): the items clustered by k-means into ``nlist``
  lists, a query scanning the ``nprobe`` lists nearest to it exactly; builds in seconds
  to minutes (the k-means on a sample), the float vectors plus 8 bytes of id per item;
- ``ivfpq``: the same lists with each vector compressed to ``pq_m`` bytes (product
  quantisation, 8 bits per sub-quantiser), for catalogs whose float vectors would not
  fit: ``pq_m + 8`` bytes per item. Its scores are approximate, so when the caller's
  float vectors are at hand (the service holds its item matrix anyway) the best
  ``rerank * fetch`` candidates are re-scored exactly from them, which costs no memory
  and brings recall back to IVF-Flat's at the same ``nprobe``;
- ``auto`` chooses: exact below ``exact_below`` items, HNSW above, and with a memory
  budget (``memory_mib``) the first of those, then ivf, then ivfpq, whose index fits it.

Either way `ItemIndex.search` returns, per query, exactly ``min(k, items not excluded)``
item indices (the matrix row numbers, 1..N) with their scores, best first, never an
excluded item (typically the user's history) and never the padding row.

Why an over-fetch and not a FAISS ID selector for the exclusions: a selector applies to a
whole ``search`` call, so per-user exclusions would mean one call per user; fetching
``k + |exclude|`` candidates keeps a batch in one call, and the exclusions (a history the
model has just read) mostly sit among the best-scored items anyway. Exact search then always
has enough survivors; HNSW and IVF may not (a graph can return fewer or unreachable slots,
the probed lists may hold fewer items than the fetch), so a short query is retried with a
larger fetch (and for IVF more lists: ``nprobe`` grows with the fetch, so the probed lists
hold about twice the fetch) and, if still short, scored exactly: from the float vectors,
or where an IVF index has none at hand, by probing every list. A query whose
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
the index, which FAISS allows from several threads at once; nothing here mutates it after
the build (``ef_search`` and ``nprobe`` travel in per-call search parameters).

Every kind takes FAISS's ``add`` after the build (IVF: into the trained lists), and every
kind is written and read by `save`/`load`.

Items added after the build (`add`: a live service's new items, appended as rows N+1,
N+2, ...) go into the same FAISS index, whatever its kind (all take ``add``; IVF puts them in
its trained lists, and IVF-PQ's float vectors for re-ranking grow by the same rows). FAISS
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
import math
import os
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

import faiss
import numpy as np
from pydantic import ConfigDict, Field, ValidationError
from pydantic.dataclasses import dataclass

from modrec import paths
from modrec.errors import ConfigError
from modrec.threads import usable_cores

log = logging.getLogger(__name__)

Kind = Literal["exact", "hnsw", "ivf", "ivfpq"]
Exclusions = Iterable[int] | np.ndarray
# The kinds `auto` tries, in order, for a catalog above / below ``exact_below``.
_AUTO_ORDER: dict[bool, tuple[Kind, ...]] = {True: ("hnsw", "ivf", "ivfpq"),
                                             False: ("exact", "ivf", "ivfpq")}
# Which settings each kind reads; a setting given for a kind that ignores it is refused.
_IVF_SETTINGS = {"nlist": ("ivf", "ivfpq"), "nprobe": ("ivf", "ivfpq"),
                 "pq_m": ("ivfpq",), "rerank": ("ivfpq",)}


@dataclass(config=ConfigDict(extra="forbid"))
class IndexConfig:
    # Which index: exact | hnsw | ivf | ivfpq, or auto (by catalog size and memory_mib).
    kind: Literal["auto", "exact", "hnsw", "ivf", "ivfpq"] = "auto"
    # With kind auto, catalogs smaller than this are scored exactly (IndexFlatIP): at
    # 100,000 items and dim 64 one exact query takes about 1 ms on one core. At 1,000,000
    # items an exact query takes 11-13 ms (75-92 queries/s on one core).
    exact_below: Annotated[int, Field(ge=0)] = 100_000
    # With kind auto, the most memory the index may take (MiB, estimated from the
    # catalog's size, dim and settings); None: no limit. The caller's own copy of the
    # vectors is not counted.
    memory_mib: Annotated[float, Field(gt=0)] | None = None
    # HNSW graph degree, build beam and search beam, measured with benchmarks/ann_recall.py
    # on random unit vectors of dim 64, the hardest case (no cluster structure), on 2 busy
    # cores. At 200,000 items, recall@100 at equal speed hardly differed between M=32, 48
    # and 64 (0.95-0.97 at 550-670 queries/s), and M=16 needed twice the beam; M=32
    # builds faster than 64 and takes half its graph memory. efConstruction 200 over 100
    # gained 0.01-0.03 recall@100 at the same search cost, for 1.6x the build time. At
    # 1,000,000 random items (M=32, efConstruction 200, built in 15-27 min: save() it)
    # recall@100 was 0.85 at ef_search 512 and 0.96 only at 1024 (about 3x exact). Vectors
    # with structure are far easier: at about 20,000 items (a SASRec run's items searched
    # with its users' vectors; MiniLM sentence embeddings) ef_search 100 found recall@100
    # 0.98 and 200 found 0.995 (docs/benchmarks.md). 512 stays the default for the worst
    # case; lower it (--ef-search) for a model whose own vectors reach the recall needed.
    hnsw_m: Annotated[int, Field(ge=4)] = 32
    ef_construction: Annotated[int, Field(ge=8)] = 200
    ef_search: Annotated[int, Field(ge=1)] = 512
    # IVF lists; None: about 4 * sqrt(N) (FAISS's guidance is 4-16 * sqrt(N)), at most
    # N / 39 so that k-means has 39 training items per list, and at most 4,096 (see
    # default_nlist).
    nlist: Annotated[int, Field(ge=1)] | None = None
    # Lists a query scans; None: DEFAULT_NPROBE (64, see there), at most nlist.
    nprobe: Annotated[int, Field(ge=1)] | None = None
    # IVF-PQ bytes per item (sub-quantisers of 8 bits); must divide the dim. None: the
    # largest divisor of the dim up to dim / 4.
    pq_m: Annotated[int, Field(ge=1)] | None = None
    # IVF-PQ: candidates re-scored exactly from the float vectors, as a multiple of the
    # fetch (1: none, PQ's approximate scores). None: DEFAULT_RERANK (4, see there).
    rerank: Annotated[int, Field(ge=1)] | None = None
    # OpenMP threads per search call (see the module docstring); None: FAISS's default
    # (every core), the right choice for one caller sending large batches.
    threads: Annotated[int, Field(ge=1)] | None = 1

    def __post_init__(self) -> None:
        for name, kinds in _IVF_SETTINGS.items():
            if getattr(self, name) is not None and self.kind not in (*kinds, "auto"):
                raise ValueError(f"{name} applies to the {' and '.join(kinds)} index, not "
                                 f"to {self.kind}: leave it out or choose kind "
                                 f"{kinds[0]}")
        if self.nlist is not None and self.nprobe is not None and self.nprobe > self.nlist:
            raise ValueError(f"nprobe {self.nprobe} is more than nlist {self.nlist}: a "
                             f"query cannot scan more lists than there are (nprobe = "
                             f"nlist scans them all)")


# Measured with benchmarks/ann_recall.py (docs/benchmarks.md). On real vectors at about
# 20,000 items (a SASRec run's items searched with its users' vectors; MiniLM sentence
# embeddings), nprobe 64 of about 500-600 lists found recall@100 0.90-0.96 and 32 found
# 0.82-0.93; at 1M items (4,000 lists) 64 lists scan 1.6% of the catalog.
DEFAULT_NPROBE = 64
# IVF-PQ's codes alone found recall@100 0.65 (pq_m 10, dim 50) where IVF-Flat found 0.96
# at the same nprobe; re-ranking 4x the fetch exactly gave 0.94 and 8x 0.96, at about
# twice the search time per doubling (FAISS's IVF-PQ scan slows with k).
DEFAULT_RERANK = 4
_RESCORE_ROWS = 32


def index_config(**settings: object) -> IndexConfig:
    """`IndexConfig` from user settings (a command line's), its errors as `ConfigError`
    naming each setting."""
    try:
        return IndexConfig(**settings)  # type: ignore[arg-type]
    except ValidationError as err:
        problems = "; ".join(
            ".".join(f"{p}: " for p in e["loc"]) + e["msg"].removeprefix("Value error, ")
            for e in err.errors())
        raise ConfigError(f"invalid index settings: {problems}") from None


MAX_DEFAULT_NLIST = 4096


def default_nlist(n: int) -> int:
    """About 4 * sqrt(n) lists, at most n / 39 (FAISS asks 39 training points a list) and
    at most `MAX_DEFAULT_NLIST`: k-means costs sample x nlist and the sample (64 a list)
    grows with nlist, so 4 * sqrt(10M) = 12,649 lists would train about 9.5x as long as
    4,096 and assign every item 3x as long (the 10M build in docs/benchmarks.md used
    4,096); more lists only shorten each scan."""
    return max(1, min(round(4 * math.sqrt(n)), n // 39, MAX_DEFAULT_NLIST))


def estimated_bytes(kind: Kind, n: int, d: int, config: IndexConfig) -> int:
    """Memory an index of ``kind`` over ``n`` vectors of dim ``d`` takes, roughly: what
    FAISS allocates for vectors, links, ids and centroids (not its scratch space)."""
    if kind == "exact":
        return 4 * n * d
    if kind == "hnsw":  # level 0 holds 2 * M links of 4 bytes; upper levels add ~1/M
        return 4 * n * d + n * (8 * config.hnsw_m + 16)
    nlist = config.nlist or default_nlist(n)
    code = 4 * d if kind == "ivf" else (config.pq_m or default_pq_m(d))
    return n * (code + 8) + 4 * nlist * d + (0 if kind == "ivf" else 4 * 256 * d)


def choose_kind(n: int, d: int, config: IndexConfig) -> Kind:
    """``config.kind``, or for ``auto`` the first kind of `_AUTO_ORDER` that fits
    ``memory_mib``."""
    if config.kind != "auto":
        return config.kind
    order = _AUTO_ORDER[n >= config.exact_below]
    if config.memory_mib is None:
        return order[0]
    budget = config.memory_mib * 2**20
    for kind in order:
        if estimated_bytes(kind, n, d, config) <= budget:
            return kind
    smallest = estimated_bytes("ivfpq", n, d, config) / 2**20
    raise ConfigError(f"no index over {n:,} items of dim {d} fits memory_mib "
                      f"{config.memory_mib:g}: the smallest, ivfpq, needs about "
                      f"{smallest:,.0f} MiB; raise the budget or lower pq_m")


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

    The index holds its own copy of the vectors (inside FAISS: float32, or PQ codes); the
    caller's matrix is not copied, and only an IVF-PQ index keeps a reference to it (its
    rows 1..N, for exact re-ranking), so the caller must not change it in place. Safe to
    search from several threads at once, and to `add` and `hide` items meanwhile.
    """

    def __init__(self, items: np.ndarray, config: IndexConfig | None = None) -> None:
        config = config or IndexConfig()
        if items.ndim != 2 or len(items) < 1:
            raise ValueError(f"items must be (N + 1, D) with row 0 the padding, got "
                             f"shape {items.shape}")
        vectors = np.ascontiguousarray(items[1:], dtype=np.float32)
        n, d = vectors.shape
        kind = choose_kind(n, d, config)
        start = time.perf_counter()
        with _omp_threads(usable_cores()):  # this thread may have been limited by a search
            index = _build(kind, vectors, config)
        self._adopt(index, config, vectors if kind == "ivfpq" else None)
        log.info("built %s item index over %d items (dim %d) in %.1f s", self.kind, n, d,
                 time.perf_counter() - start)

    def _adopt(self, index: faiss.Index, config: IndexConfig,
               vectors: np.ndarray | None = None) -> None:
        self.config = config
        # Any: the FAISS stubs lack the subclasses' members (hnsw, pq, nlist, get_xb).
        self._index: Any = index
        self._lock = ReadWriteLock()
        # FAISS ids (row - 1) never returned, sorted; replaced whole, never changed in place.
        self._hidden = np.empty(0, np.int64)
        if index.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise ValueError("an item index scores by inner product")
        n, d = int(index.ntotal), int(index.d)
        storage: Any  # where exact and HNSW keep the float vectors
        if isinstance(index, faiss.IndexHNSWFlat):
            self._kind: Kind = "hnsw"
            storage = faiss.downcast_index(index.storage)
        elif isinstance(index, faiss.IndexFlatIP):
            self._kind, storage = "exact", index
        elif isinstance(index, faiss.IndexIVFFlat | faiss.IndexIVFPQ):
            self._kind = "ivf" if isinstance(index, faiss.IndexIVFFlat) else "ivfpq"
            storage = None
            # reconstruct() (`similar`) needs a map from id to list (8 bytes an item, 80 MB
            # at 10M) only where no float vectors are at hand.
            if vectors is None and index.direct_map.type == faiss.DirectMap.NoMap:  # type: ignore[attr-defined]
                index.make_direct_map()
        else:
            raise ValueError(f"not an item index: {type(index).__name__}")
        # The float vectors exact scoring reads (the fallback, IVF-PQ's re-ranking,
        # `similar`): for exact and HNSW a view of FAISS's own copy (no second copy of a
        # large catalog), valid while the index lives, which is as long as self; IVF
        # keeps its vectors in lists, not in row order, and IVF-PQ has only codes, so
        # there they are the caller's (IVF-PQ) or none (IVF-Flat: its lists are exact).
        if vectors is not None and vectors.shape != (n, d):
            raise ValueError(f"vectors of shape {vectors.shape} for an index of {n} "
                             f"items of dim {d}")
        self._storage = storage
        self._vectors = vectors
        self._view()

    def _view(self) -> None:
        """Point ``_vectors`` at FAISS's flat storage again (exact, HNSW), which an
        ``add`` may move; IVF has none (IVF-PQ's float vectors are the caller's: an
        ``add`` must append its rows to them too)."""
        if self._storage is not None:
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
            if self._storage is None and self._vectors is not None:  # IVF-PQ's re-ranking
                self._vectors = np.concatenate([self._vectors, vectors])  # a copy: O(N)
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
        """The index over ``items``; an HNSW or IVF index is kept in ``folder`` (default
        ``$MODREC_INDEX_DIR``, ``~/.cache/modrec/index``) under a digest of the vectors
        and the build settings, and loaded instead of rebuilt when the same vectors come
        again: over a million items a graph takes minutes to build, the load seconds, so a
        restart stays quick.

        Only this machine's cache is read, never a file that arrived inside a run folder
        or bundle: FAISS's reader is C++ and not meant for untrusted input."""
        config = config or IndexConfig()
        n, d = len(items) - 1, items.shape[1]
        kind = choose_kind(n, d, config)
        if kind == "exact":  # nothing worth keeping
            return cls(items, config)
        vectors = np.ascontiguousarray(items, dtype=np.float32)
        # The array's own buffer: tobytes() would copy it (2.4 GiB at 10M items x 64).
        digest = hashlib.sha256(vectors.data.cast("B")).hexdigest()[:20]
        path = (folder or paths.index_dir()) / f"{_build_name(kind, n, d, config)}-{digest}.faiss"
        if path.exists():
            try:
                index = cls.load(path, config, vectors if kind == "ivfpq" else None)
                if index.kind == kind and (index.size, index.dim) == (n, d):
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
    def load(cls, path: str | Path, config: IndexConfig | None = None,
             items: np.ndarray | None = None) -> ItemIndex:
        """An index written by `save`. Of ``config``, only the search settings
        (``ef_search``, ``nprobe``, ``rerank``, ``threads``) apply: the index was built
        with the saved ones. ``items``, the ``(N + 1, D)`` matrix it was built from, lets
        an IVF-PQ index re-rank exactly (see the module docstring); the others ignore it."""
        self = cls.__new__(cls)
        # read_index returns the concrete class, owning the index; a downcast_index()
        # wrapper around it would not own it and would dangle once it is collected.
        index = faiss.read_index(str(path))
        vectors = None
        if items is not None and isinstance(index, faiss.IndexIVFPQ):
            vectors = np.ascontiguousarray(items[1:], dtype=np.float32)
        self._adopt(index, config or IndexConfig(), vectors)
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

    @property
    def nprobe(self) -> int:
        """IVF lists a query scans (at least; a large fetch scans more); 0 without IVF."""
        if self._kind not in ("ivf", "ivfpq"):
            return 0
        return min(self.config.nprobe or DEFAULT_NPROBE, self._ivf.nlist)

    @property
    def rerank(self) -> int:
        """IVF-PQ candidates re-scored exactly, as a multiple of the fetch; 1: none."""
        if self._kind != "ivfpq" or self._vectors is None:
            return 1
        return self.config.rerank or DEFAULT_RERANK

    def settings(self) -> dict[str, Any]:
        """The kind and the settings it runs with (what /readyz reports)."""
        out: dict[str, Any] = {"kind": self._kind, "items": self.size, "dim": self.dim,
                               "memory_mib": round(estimated_bytes(
                                   self._kind, self.size, self.dim, self._built_config())
                                   / 2**20, 1), "threads": self.config.threads}
        if self._kind == "hnsw":
            hnsw = self._index.hnsw
            out |= {"hnsw_m": int(hnsw.nb_neighbors(1)), "ef_construction":
                    int(hnsw.efConstruction), "ef_search": self.config.ef_search}
        elif self._kind in ("ivf", "ivfpq"):
            out |= {"nlist": int(self._ivf.nlist), "nprobe": self.nprobe}
            if self._kind == "ivfpq":
                out |= {"pq_m": int(self._index.pq.M), "pq_bits": int(self._index.pq.nbits),
                        "rerank": self.rerank}
        return out

    def _built_config(self) -> IndexConfig:
        """The config's build settings replaced by those the index was built with."""
        if self._kind == "hnsw":
            return IndexConfig(hnsw_m=int(self._index.hnsw.nb_neighbors(1)))
        if self._kind in ("ivf", "ivfpq"):
            return IndexConfig(nlist=int(self._ivf.nlist), pq_m=int(self._index.pq.M)
                               if self._kind == "ivfpq" else None)
        return IndexConfig()

    @property
    def _ivf(self) -> Any:
        return self._index  # IndexIVFFlat or IndexIVFPQ: both have nlist

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
            return self._rows(np.array([item - 1]))[0].copy()

    def _rows(self, ids: np.ndarray) -> np.ndarray:
        """The float vectors of FAISS ids ``ids`` (for IVF-Flat, read back from its lists;
        for an IVF-PQ index loaded without its items, decoded from the codes)."""
        if self._vectors is not None:
            return self._vectors[ids]
        return np.stack([self._index.reconstruct(int(i)) for i in ids])

    def _faiss_ids(self, exclude: Exclusions | None) -> np.ndarray:
        if exclude is None:
            return np.empty(0, np.int64)
        rows = (exclude.astype(np.int64, copy=False) if isinstance(exclude, np.ndarray)
                else np.fromiter(exclude, np.int64))
        rows = np.unique(rows)
        return rows[(rows >= 1) & (rows <= self.size)] - 1

    def _search(self, queries: np.ndarray, fetch: int, ef: int, *,
                every_list: bool = False) -> tuple[np.ndarray, np.ndarray]:
        # Per-call parameters instead of setting index.hnsw.efSearch or index.nprobe: no
        # shared state changes, so concurrent searches cannot see each other's settings.
        if self._kind == "hnsw":
            params = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]  # not in stubs
            params.efSearch = max(ef, fetch)
            return self._index.search(queries, fetch, params=params)
        if self._kind == "exact":
            return self._index.search(queries, fetch)
        nlist = int(self._ivf.nlist)
        ivf = faiss.SearchParametersIVF()  # type: ignore[attr-defined]  # not in stubs
        # Enough lists to hold about twice the fetch (lists average size / nlist items).
        ivf.nprobe = nlist if every_list else min(nlist, max(
            self.nprobe, math.ceil(2 * fetch * nlist / max(self.size, 1))))
        candidates = min(self.size, fetch * self.rerank)
        scores, ids = self._index.search(queries, candidates, params=ivf)
        if candidates == fetch:
            return scores, ids
        return self._rescored(queries, ids, fetch)

    def _rescored(self, queries: np.ndarray, ids: np.ndarray,
                  fetch: int) -> tuple[np.ndarray, np.ndarray]:
        """IVF-PQ's candidates ``ids`` scored exactly from the float vectors, the best
        ``fetch`` of each row kept (missing slots stay -1)."""
        assert self._vectors is not None
        scores = np.empty(ids.shape, np.float32)
        # A few queries at a time: the gathered candidates are (rows, candidates, dim)
        # floats, 600 MB for a batch of 1,000 queries of 400 candidates at dim 384.
        for at in range(0, len(ids), _RESCORE_ROWS):
            rows = slice(at, at + _RESCORE_ROWS)
            scores[rows] = np.einsum("bcd,bd->bc", self._vectors[np.maximum(ids[rows], 0)],
                                     queries[rows])
        scores[ids < 0] = -np.inf
        order = np.argsort(-scores, axis=1, kind="stable")[:, :fetch]
        return (np.take_along_axis(scores, order, 1).astype(np.float32),
                np.take_along_axis(ids, order, 1))

    def _exact(self, query: np.ndarray, want: int, mask: np.ndarray) -> tuple[np.ndarray,
                                                                                np.ndarray]:
        """Exact top ``want`` of one query by scoring every item (the fallback); an IVF
        index without float vectors probes every list instead, which considers every
        item (IVF-Flat: exactly; IVF-PQ without its items: by its codes)."""
        if self._vectors is None:
            fetch = min(self.size, want + len(mask))
            scores, ids = self._search(query[None], fetch, 0, every_list=True)
            keep = (ids[0] >= 0) & ~np.isin(ids[0], mask)
            return ids[0][keep][:want] + 1, scores[0][keep][:want]
        scores = self._vectors @ query
        scores[mask] = -np.inf
        best = np.argpartition(-scores, want - 1)[:want]
        best = best[np.argsort(-scores[best], kind="stable")]
        return best.astype(np.int64) + 1, scores[best].astype(np.float32)


def _build_name(kind: Kind, n: int, d: int, config: IndexConfig) -> str:
    """The part of a cached index's file name that names its build settings."""
    if kind == "hnsw":
        return f"hnsw-m{config.hnsw_m}-efc{config.ef_construction}"
    nlist = config.nlist or default_nlist(n)
    return f"ivf{nlist}" if kind == "ivf" else f"ivf{nlist}-pq{_pq_m(d, config)}"


def default_pq_m(d: int) -> int:
    """The largest divisor of ``d`` not above ``d / 4``: a byte for about every 4 dims."""
    return max(v for v in range(1, max(1, d // 4) + 1) if d % v == 0)


def _pq_m(d: int, config: IndexConfig) -> int:
    m = config.pq_m or default_pq_m(d)
    if d % m:
        divisors = [v for v in range(1, d + 1) if d % v == 0]
        raise ConfigError(f"pq_m {m} does not divide the item vectors' dim {d}: choose "
                          f"one of {', '.join(map(str, divisors))}")
    return m


def _build(kind: Kind, vectors: np.ndarray, config: IndexConfig) -> faiss.Index:
    """A FAISS index of ``kind`` over ``vectors`` (N, D), trained where it needs to be."""
    n, d = vectors.shape
    index: Any  # the FAISS stubs lack the subclasses' members
    if kind == "exact":
        index = faiss.IndexFlatIP(d)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = config.ef_construction
    else:
        nlist = config.nlist or default_nlist(n)
        smallest = nlist if kind == "ivf" else max(nlist, 256)  # 256 codes a sub-quantiser
        if n < smallest:
            raise ConfigError(
                f"a {kind} index over {n} items cannot be trained: k-means needs at least "
                f"{smallest} items ({'nlist' if smallest == nlist else '2^8 PQ codes'}); "
                f"use kind exact or hnsw for so small a catalog, or a smaller nlist")
        # "np": no polysemous training (a Hamming pre-filter this index does not use, and
        # 20x the training time).
        codes = "Flat" if kind == "ivf" else f"PQ{_pq_m(d, config)}x8np"
        index = faiss.index_factory(d, f"IVF{nlist},{codes}", faiss.METRIC_INNER_PRODUCT)
        # k-means on a fixed sample (the same vectors give the same index): 64 points a
        # list, and for PQ at least 256 * 39 per sub-quantiser (FAISS's minimum advice).
        sample = min(n, max(64 * nlist, 256 * 39 if kind == "ivfpq" else 0))
        rows = np.sort(np.random.default_rng(0).choice(n, sample, replace=False))
        index.train(vectors[rows])
    index.add(vectors)
    return index


def _round_up(n: int) -> int:
    """0, or the smallest power of two not below ``n``."""
    return 0 if n == 0 else 1 << (n - 1).bit_length()
