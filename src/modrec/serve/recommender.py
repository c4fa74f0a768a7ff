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
    often each occurs in the snapshot's interactions (the popularity fallback)."""

    def __init__(self, run: Run, display_columns: Sequence[str]) -> None:
        items = run.dataset.items.sort_values("item")
        self.ids = np.array([""] + items["item_id"].astype(str).tolist(), dtype=object)
        self.index_of = {item_id: i for i, item_id in enumerate(self.ids) if i > 0}
        self.columns = [c for c in display_columns if c in items.columns]
        self._display: list[dict[str, Any]] = [{}] + [
            {c: (None if value != value or value is None else str(value))  # NaN -> None
             for c, value in zip(self.columns, row, strict=True)}
            for row in items[self.columns].itertuples(index=False)]
        counts = np.bincount(run.dataset.interactions["item"].to_numpy(),
                             minlength=len(self.ids)).astype(np.float64)
        counts[0] = -1.0  # padding is never recommended
        self.popularity = counts
        self.by_popularity = np.argsort(-counts, kind="stable")

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
        row = {"item_id": str(self.ids[index]), **self._display[index]}
        return row if score is None else {**row, "score": score}


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
        # Items are scored through the index, so their vectors are computed once.
        self.item_matrix = run.item_vectors()  # (N + 1, D)
        if not np.isfinite(self.item_matrix).all():
            raise RunError(f"{run.folder}: the model's item vectors hold NaN or infinite "
                           f"values, so its scores cannot be ranked; {RETRAIN}")
        self.index = ItemIndex.cached(self.item_matrix, self.config.index)
        encoder = getattr(run.model, "encoder", None)
        self.needs_times = bool(getattr(encoder, "time_bias", False))
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

    def describe(self) -> dict[str, Any]:
        return {"run_dir": str(self.folder), "model": self.name,
                "dataset": self.run.dataset.name, "items": len(self.catalog),
                "index": self.index.kind, "index_settings": self.index.settings(),
                "max_len": self.max_len,
                "needs_timestamps": self.needs_times, "loaded_at": self.loaded_at}

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
        items = []
        for item in self.catalog.by_popularity:
            if item == 0:
                break  # only padding (score -1) is left
            if int(item) not in skip:
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
