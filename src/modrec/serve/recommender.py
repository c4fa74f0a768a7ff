"""One trained run as a recommender, with no HTTP in it.

``Recommender.from_run(folder)`` reads the run folder alone (`modrec.runs.load_run`:
config, weights, the dataset snapshot), computes every item's vector once and builds an
`ItemIndex` over them. ``recommend(queries)`` answers a batch of histories with one
forward pass of the model and one index search: the micro-batching in front of it
hands it every request that arrived within a few milliseconds.

Histories and answers speak external item ids (the catalog's ``item_id`` strings);
inside, items are the model's indices 1..N. The ranking is the offline evaluator's:
the model's vector after the newest ``max_len`` items, dot product with every item, the
history masked (``exclude_seen``), so the service's top-k for a held-out user is the
top of the ranking the evaluator scored (a test checks it).

Items that arrive while the service runs (`add_items`, fed by `modrec.serve.live`) are
appended after the trained ones, indices N+1, N+2, ...: a row of the item tower's
content matrix (no ID vector: ``known`` False, so the forward pass reads them as it
reads a cold item offline), a vector in the index, an entry in the catalog. An updated
item gets a new row and its old row is hidden; a retired item keeps its row (the
histories that name it are still read) but is hidden from every answer (`hide`).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import torch
from pydantic import ConfigDict, Field
from pydantic.dataclasses import dataclass

from modrec.errors import UsageError
from modrec.eval.evaluator import user_vectors
from modrec.models.item_tower import ItemTower
from modrec.runs import Run, RunError, load_run
from modrec.serve.errors import RequestError
from modrec.serve.index import IndexConfig, ItemIndex

log = logging.getLogger(__name__)

Source = Literal["history", "user", "popularity"]

RETRAIN = "retrain it into a new --out with a lower learning rate (--set train.lr=...)"


@dataclass(config=ConfigDict(extra="forbid"))
class ServeConfig:
    index: IndexConfig = dataclasses.field(default_factory=IndexConfig)
    max_k: Annotated[int, Field(ge=1)] = 1000  # the most items one answer may ask for
    # The most items a request may send as its history or exclusions (the model reads
    # only its newest max_len; the rest are masked).
    max_history: Annotated[int, Field(ge=1)] = 10_000
    # Catalog columns sent with every item, when the dataset has them.
    display_columns: list[str] = dataclasses.field(
        default_factory=lambda: ["title", "genres"])
    device: str = "cpu"
    # Where the media files of items added live are read (paths inside it only); None:
    # new items may carry no media (`modrec.serve.live`).
    media_dir: str | None = None
    # Build the content encoders for new items at start-up instead of on the first one.
    load_encoders: bool = False


@dataclasses.dataclass
class Query:
    """One request, resolved: a history as item indices (known items only, oldest
    first) and what to leave out."""

    history: np.ndarray  # int64 item indices 1..N
    times: np.ndarray | None  # int64 seconds, beside history; None without timestamps
    k: int
    exclude: np.ndarray  # int64 item indices never to return (the history, when it is masked)
    source: Source  # which path answers: "history", "user" or "popularity" (no history)


@dataclasses.dataclass
class Answer:
    items: list[dict[str, Any]]  # {"item_id", "score", display columns...}, best first
    source: Source


class Catalog:
    """The run's items by external id and index, with their display fields, and how
    often each occurs in the snapshot's interactions (the popularity fallback). Items
    added while serving (`append`) follow the trained ones; ``hidden`` holds the indices
    never to return (retired items, and the rows updated items left behind)."""

    def __init__(self, run: Run, display_columns: Sequence[str]) -> None:
        items = run.dataset.items.sort_values("item")
        # Lists, not arrays: live items are appended one by one.
        self.ids: list[str] = [""] + items["item_id"].astype(str).tolist()
        self.index_of = {item_id: i for i, item_id in enumerate(self.ids) if i > 0}
        self.trained = len(self.ids) - 1  # indices 1..trained came from training
        self.live = 0  # ids added while serving (an update adds a row, not an id)
        self.columns = [c for c in display_columns if c in items.columns]
        # By column, not a dict per item: at 10M items a dict per row cost 640 MB even
        # with no display columns. Row 0 is the padding.
        self._display: dict[str, list[str | None]] = {}
        for c in self.columns:
            values: list[str | None] = [None]
            values.extend(_shown(value) for value in items[c])
            self._display[c] = values
        counts = np.bincount(run.dataset.interactions["item"].to_numpy(),
                             minlength=len(self.ids)).astype(np.float64)
        counts[0] = -1.0  # padding is never recommended
        self.popularity = counts
        self.by_popularity = np.argsort(-counts, kind="stable")
        self.hidden: frozenset[int] = frozenset()  # replaced whole, never changed in place

    def __len__(self) -> int:
        return len(self.ids) - 1

    def lookup(self, item_ids: Sequence[str]) -> tuple[np.ndarray, list[str]]:
        """(indices of the known ids, in order; the unknown ids)."""
        known, unknown = [], []
        for item_id in item_ids:
            index = self.index_of.get(str(item_id))
            if index is None:
                unknown.append(str(item_id))
            else:
                known.append(index)
        return np.array(known, dtype=np.int64), unknown

    def describe(self, index: int, score: float | None = None) -> dict[str, Any]:
        row = {"item_id": str(self.ids[index]),
               **{c: values[index] for c, values in self._display.items()}}
        return row if score is None else {**row, "score": score}

    def origin(self, index: int) -> str:
        """"trained" (in the run's dataset) or "live" (added while serving)."""
        return "trained" if index <= self.trained else "live"

    def append(self, item_id: str, fields: dict[str, Any]) -> int:
        """A new row for ``item_id`` with these display fields; returns its index. It is
        not looked up by id until `point` says so."""
        for c, values in self._display.items():
            values.append(_shown(fields.get(c)))
        self.ids.append(item_id)  # after its display row: `describe` may read it at once
        return len(self.ids) - 1

    def point(self, item_id: str, index: int) -> None:
        """Histories naming ``item_id`` now read row ``index``."""
        if item_id not in self.index_of:
            self.live += 1
        self.index_of[item_id] = index

    def hide(self, indices: Sequence[int]) -> None:
        self.hidden = self.hidden | frozenset(int(i) for i in indices)


def _shown(value: Any) -> str | None:
    """A catalog value as an answer shows it: text, None for a missing one (NaN), a
    list of tags joined by "|" as the catalog files write them."""
    if value is None or (isinstance(value, float) and value != value):
        return None
    if isinstance(value, list | tuple):
        return "|".join(map(str, value))
    return str(value)


class Recommender:
    """A loaded run: model, catalog and item index. Thread-safe for reading; forward
    passes are serialised by a lock (torch already spreads one over the cores)."""

    def __init__(self, run: Run, config: ServeConfig | None = None) -> None:
        self.run = run
        self.config = config or ServeConfig()
        self.folder = run.folder
        self.catalog = Catalog(run, self.config.display_columns)
        self.max_len = run.config.model.max_len
        self.model = run.model.to(self.config.device).eval()
        # Items are scored through the index, so their vectors are computed once (the
        # index keeps its own copy).
        item_matrix = run.item_vectors()  # (N + 1, D)
        if not np.isfinite(item_matrix).all():
            raise RunError(f"{run.folder}: the model's item vectors hold NaN or infinite "
                           f"values, so its scores cannot be ranked; {RETRAIN}")
        self.index = ItemIndex.cached(item_matrix, self.config.index)
        encoder = getattr(run.model, "encoder", None)
        self.needs_times = bool(getattr(encoder, "time_bias", False))
        # A content tower can represent items it never trained on; an ID tower cannot.
        tower = getattr(run.model, "item_tower", None)
        self.tower: ItemTower | None = tower if isinstance(tower, ItemTower) else None
        # BERT4Rec's mask token is the index after the last trained item: live items
        # start one further on (`_reserve`).
        self._reserved = getattr(encoder, "mask_token", None)
        self._lock = threading.Lock()
        self._search: Any = None  # content.search.TextSearch, loaded on the first query
        self._search_lock = threading.Lock()
        self.loaded_at = time.time()

    @classmethod
    def from_run(cls, folder: str | Path, config: ServeConfig | None = None) -> Recommender:
        started = time.perf_counter()
        config = config or ServeConfig()
        recommender = cls(load_run(folder, config.device), config)
        log.info("loaded %s: %s over %d items (%s index) in %.2fs", folder,
                 recommender.run.config.model.name, len(recommender.catalog),
                 recommender.index.kind, time.perf_counter() - started)
        return recommender

    @property
    def name(self) -> str:
        return self.run.config.model.name

    @property
    def content_tower(self) -> bool:
        """Whether new items can be represented (from their content)."""
        return self.tower is not None and self.tower.mode != "id"

    def describe(self) -> dict[str, Any]:
        return {"run_dir": str(self.folder), "model": self.name,
                "dataset": self.run.dataset.name, "items": len(self.catalog),
                "live_items": self.catalog.live,
                "hidden_rows": len(self.catalog.hidden),
                "item_tower": None if self.tower is None else self.tower.mode,
                "index": self.index.kind, "index_settings": self.index.settings(),
                "max_len": self.max_len,
                "needs_timestamps": self.needs_times, "loaded_at": self.loaded_at}

    # ---- items added while serving -------------------------------------------------------
    def new_item_vectors(self, content: np.ndarray) -> np.ndarray:
        """``(L, D)`` float32: the vectors of new items with content rows ``content``
        ``(L, C)`` (each encoder's block L2-normalised, as `content_matrix` makes them),
        as the model scores them once added: the tower's output for an item with no ID
        vector, normalised when the model normalises. Changes nothing."""
        if self.tower is None or not self.content_tower:
            raise ValueError(f"{self.name} has no content item tower")
        with torch.no_grad():
            vectors = self.tower.unknown_vectors(torch.from_numpy(content))
            if getattr(self.model, "normalize", False):
                vectors = torch.nn.functional.normalize(vectors, dim=-1)
        return vectors.float().cpu().numpy()

    def add_items(self, item_ids: Sequence[str], fields: Sequence[dict[str, Any]],
                  content: np.ndarray, vectors: np.ndarray) -> list[int]:
        """Append new items (or new versions of items added before, whose old rows are
        hidden): content rows ``(L, C)`` into the tower, ``vectors`` ``(L, D)`` (from
        `new_item_vectors`) into the index, ids and display fields into the catalog.
        Returns their indices. Callers serialise adds; answers go on meanwhile and see
        each item whole or not at all."""
        if self.tower is None or not self.content_tower:
            raise ValueError(f"{self.name} has no content item tower")
        if not np.isfinite(vectors).all():
            raise ValueError("new item vectors hold NaN or infinite values")
        self._reserve()
        with self._lock:  # forward passes read the tower's buffers
            rows = list(self.tower.extend(torch.from_numpy(content)))
        for item_id, row_fields, row in zip(item_ids, fields, rows, strict=True):
            if self.catalog.append(item_id, row_fields) != row:
                raise RuntimeError("catalog and item tower disagree on the next index")
        # An updated item's old row is hidden before its new one can be returned, so an
        # answer never holds the same id twice.
        self.hide([i for i in map(self.catalog.index_of.get, item_ids) if i is not None])
        if list(self.index.add(vectors)) != rows:
            raise RuntimeError("index and item tower disagree on the next index")
        for item_id, row in zip(item_ids, rows, strict=True):
            self.catalog.point(item_id, row)
        return rows

    def _reserve(self) -> None:
        """Keep the index a model uses for itself (BERT4Rec's mask token, right after the
        trained items) out of the live items' way: a zero row, hidden."""
        assert self.tower is not None
        if self._reserved != self.tower.num_items + 1:
            return
        with self._lock:
            [row] = self.tower.extend(torch.zeros(1, self.tower.content.shape[1]))
        self.catalog.append("", {})
        self.index.add(np.zeros((1, self.index.dim), np.float32))
        self.hide([row])

    def hide(self, indices: Sequence[int]) -> None:
        """Never return these items again (kept in the catalog: histories still read
        them)."""
        self.catalog.hide(indices)
        self.index.hide(indices)

    # ---- recommendations -------------------------------------------------------------
    def recommend(self, queries: Sequence[Query]) -> list[Answer]:
        """Answers for a batch of queries: one forward pass for every query with a
        history, the popularity ranking for the others."""
        answers: list[Answer | None] = [None] * len(queries)
        with_history = [i for i, q in enumerate(queries) if len(q.history) > 0]
        for i, query in enumerate(queries):
            if len(query.history) == 0:
                answers[i] = self._popular(query)
        if with_history:
            histories = [queries[i].history[-self.max_len:] for i in with_history]
            times = None
            if self.needs_times:
                times = [self._times_of(queries[i])[-self.max_len:] for i in with_history]
            with self._lock, torch.no_grad():
                users = user_vectors(self.run.scorer, histories, self.config.device, times)
            excluded = [queries[i].exclude for i in with_history]
            found = self.index.search(users.float().cpu().numpy(),
                                      max(queries[i].k for i in with_history), excluded)
            for i, (items, scores) in zip(with_history, found, strict=True):
                k = queries[i].k
                if not np.isfinite(scores[:k]).all():  # a NaN would sort anywhere
                    raise RunError(f"{self.folder}: the model scores this history's items "
                                   f"NaN or infinite, which cannot be ranked; {RETRAIN}")
                answers[i] = Answer([self.catalog.describe(int(item), float(score))
                                     for item, score in zip(items[:k], scores[:k],
                                                            strict=True)],
                                    queries[i].source)
        return [a for a in answers if a is not None]

    def _times_of(self, query: Query) -> np.ndarray:
        if query.times is None:
            raise UsageError(f"{self.name} at {self.folder} learned from elapsed time: "
                             "send the history's timestamps (seconds) beside its items")
        return query.times

    def _popular(self, query: Query) -> Answer:
        """The most frequent items, for a user with no history to read."""
        skip = set(query.exclude.tolist())
        hidden = self.catalog.hidden
        items = []
        for item in self.catalog.by_popularity:
            if item == 0:
                break  # only padding (score -1) is left
            if int(item) not in skip and int(item) not in hidden:
                items.append(self.catalog.describe(int(item),
                                                   float(self.catalog.popularity[item])))
                if len(items) == query.k:
                    break
        return Answer(items, "popularity")

    # ---- items -----------------------------------------------------------------------
    def similar(self, item: int, k: int) -> list[dict[str, Any]]:
        """Item-to-item: the items whose vectors score highest against this one's."""
        items, scores = self.index.similar(item, k)
        return [self.catalog.describe(int(i), float(s)) for i, s in zip(items, scores,
                                                                         strict=True)]

    def search(self, query: str, k: int) -> list[dict[str, Any]]:
        """Items ranked by the cosine of their text embedding with the query's."""
        hits = self._text_search().search(query, k)
        return [self.catalog.describe(int(hit["item"]), float(hit["score"])) for hit in hits]

    def _text_search(self) -> Any:
        with self._search_lock:
            if self._search is None:
                from modrec.content.search import TextSearch
                from modrec.content.store import EmbeddingStore, default_folder

                dataset = self.run.dataset
                # An exported bundle carries its text embeddings; a run folder uses the
                # dataset's store.
                folder = self.folder / "embeddings"
                if not (folder / "manifest.json").exists():
                    folder = default_folder(dataset.name)
                if "text" not in EmbeddingStore.stored(folder):
                    raise RequestError(
                        f"no text embeddings for {dataset.name!r} (looked in {folder}); run "
                        f"`modrec embed -d {dataset.name} --encoder text`, or export a bundle "
                        "that carries them", status=404)
                store = EmbeddingStore(folder, dataset.items["item_id"].astype(str).tolist())
                self._search = TextSearch(dataset, store)
        return self._search
