"""The model service without HTTP: several named recommenders over one user state.

``ModelService`` routes a request to a model by name (the first is the default),
reads the user's history from the durable state (or takes the one the request sends),
records events, and swaps a model for a newly trained run without stopping: a reload
builds the new `Recommender` beside the old one and replaces the reference in one
assignment, so a request already holding the old one finishes on it.

User state is shared by every model and keyed by external ids (user id, item id
strings), so models over different catalogs can be served from one state: an item a
model does not know is left out of that model's input and reported. An event naming an
item no model knows yet is kept all the same (the item may arrive later: it is read
from then on) and reported in the reply.

Items added while serving (`add_items`, `retire`) live in the same state file
(`modrec.serve.live`, `modrec.serve.item_state`): every model loaded, at start-up or by
a reload, gets them attached before it serves, and every public method first catches
up with the items other processes serving the same file added or retired (`sync`), so
the workers of ``modrec serve --workers N`` answer alike.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from modrec.data.state_schema import catalog_rows
from modrec.serve.errors import RequestError
from modrec.serve.item_state import LiveItemState
from modrec.serve.live import LiveItems, vector_digest
from modrec.serve.postgres_state import PostgresUserState
from modrec.serve.recommender import Answer, Query, Recommender, ServeConfig
from modrec.serve.state import AlreadySeeded, SQLiteUserState, StateUnavailable, UserState

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Request:
    """What a client asks for (external ids); see the HTTP schema for the fields."""

    user_id: str | None = None
    history: list[str] | None = None
    timestamps: list[int] | None = None
    k: int = 10
    exclude_seen: bool = True
    exclude: list[str] = dataclasses.field(default_factory=list)
    model: str | None = None


@dataclasses.dataclass
class Reply:
    model: str
    source: str  # "history" (sent with the request), "user" (from the state), "popularity"
    items: list[dict[str, Any]]
    history_length: int  # items of the history the model read or masked
    unknown_items: list[str]  # ids in the history or exclusions the model does not know


@dataclasses.dataclass
class Event:
    user_id: str
    item_id: str
    timestamp: int | None = None
    type: str | None = None


class ModelService:
    def __init__(self, models: dict[str, Recommender], state: UserState,
                 config: ServeConfig | None = None) -> None:
        if not models:
            raise ValueError("serve at least one model")
        self.models = dict(models)
        self.default = next(iter(self.models))
        self.state = state
        self.config = config or ServeConfig()
        self._reload_lock = threading.Lock()
        # Live items need the state's tables (SQLite's or PostgreSQL's; another
        # UserState has none).
        self.live: LiveItems | None = None
        if isinstance(state, SQLiteUserState | PostgresUserState):
            media = None if self.config.media_dir is None else Path(self.config.media_dir)
            self.live = LiveItems(LiveItemState(state), media, self.config.device)
            for model in self.models.values():
                self.live.attach(model)
            if self.config.load_encoders:
                self.live.load_encoders(self.models)

    @classmethod
    def from_runs(cls, runs: Mapping[str, str | Path], state: UserState,
                  config: ServeConfig | None = None, seed: bool = True) -> ModelService:
        """Load every run; with ``seed``, copy the default run's dataset histories into a
        state that has never been seeded (once: the state remembers it)."""
        config = config or ServeConfig()
        models = {name: Recommender.from_run(folder, config) for name, folder in runs.items()}
        service = cls(models, state, config)
        if seed:
            service.seed_state()
        return service

    def model(self, name: str | None) -> Recommender:
        self.sync()
        return self._model_in(self.models, name or self.default)

    def sync(self) -> None:
        """Catch up with the items other processes serving this state file added or
        retired (one read of a counter when there is nothing new: `LiveItems.sync`)."""
        if self.live is None:
            return
        try:
            self.live.sync(self.models)
        except StateUnavailable as err:  # a request that sends its history still answers
            log.warning("could not look for items other processes added: %s", err)

    @staticmethod
    def _model_in(models: dict[str, Recommender], name: str) -> Recommender:
        recommender = models.get(name)
        if recommender is None:
            raise RequestError(f"no model named {name!r}; this service has "
                               f"{', '.join(models)}", status=404)
        return recommender

    # ---- state -----------------------------------------------------------------------
    def seed_state(self) -> int:
        """The default model's dataset histories into the state, unless it has them, with
        its catalog (training from the state reads the items' titles and other fields
        back from it: `modrec.data.state_source`)."""
        dataset = self.model(None).run.dataset
        source = f"{dataset.name}:{dataset.fingerprint()}"
        seeded = self.state.seeded_from()
        if seeded == source:
            if self.state.catalog_size() == 0:  # seeded before states kept the catalog
                added = self.state.seed_catalog(catalog_rows(dataset.items))
                log.info("added the catalog of %s (%d items) to the user state", source,
                         added)
            return 0
        if seeded is not None:
            log.warning("user state already holds %s; not seeding %s into it", seeded, source)
            return 0
        started = time.perf_counter()
        frame = dataset.interactions
        users = dataset.users["user_id"].astype(str).to_numpy()[frame["user"].to_numpy()]
        items = dataset.items["item_id"].astype(str).to_numpy()[frame["item"].to_numpy() - 1]
        times = frame["timestamp"].to_numpy() if dataset.has_timestamps else None
        try:
            written = self.state.seed(users, items, times, source, catalog_rows(dataset.items))
        except AlreadySeeded:  # a replica beside this one seeded the shared state meanwhile
            log.info("user state was seeded meanwhile by another process; not seeding %s",
                     source)
            return 0
        log.info("seeded the user state with %d events of %s in %.1fs", written, dataset.name,
                 time.perf_counter() - started)
        return written

    def record(self, events: Sequence[Event]) -> tuple[int, list[str]]:
        """Write events in one transaction, durable when this returns. Returns how many
        were written and the item ids no served model knows (yet): their events are kept
        too, so nothing is lost when an item's events arrive before the item does."""
        models = list(self.models.values())
        unknown = sorted({e.item_id for e in events
                          if not any(e.item_id in m.catalog.index_of for m in models)})
        now = int(time.time())
        written = self.state.append_many([
            (e.user_id, e.item_id, now if e.timestamp is None else e.timestamp, e.type)
            for e in events])
        return written, unknown

    # ---- live items --------------------------------------------------------------------
    def _live(self) -> LiveItems:
        if self.live is None:
            raise RequestError("this service's user state cannot keep new items (it is "
                               "neither SQLite nor PostgreSQL); serve with --state FILE.db "
                               "or --state postgresql://...", 501)
        return self.live

    def add_items(self, items: Sequence[Mapping[str, Any]]
                  ) -> tuple[list[dict[str, Any]], dict[str, str]]:
        """New items (or new versions of live ones), encoded for every model that can
        represent them, stored, then indexed; all or none (`LiveItems.add`). Returns a
        row per item and, by name, why the models that take no new items take none."""
        self.sync()  # a new version of an item another process added: after that one
        models = self.models
        return self._live().add(models, items), self._live().refusals(models)

    def retire(self, item_id: str) -> dict[str, Any]:
        """Never recommend ``item_id`` again (live or trained); histories keep it."""
        self.sync()
        return self._live().retire(self.models, item_id)

    def item(self, item_id: str, model: str | None = None) -> dict[str, Any]:
        """An item's catalog fields in ``model``, where it came from (``origin``,
        ``retired_at``) and a digest of its vector there; 404 when the model lacks it,
        saying why."""
        recommender = self.model(model)
        index = recommender.catalog.index_of.get(item_id)
        live = self.live.describe(item_id) if self.live is not None else {}
        if index is None:
            why = ""
            if live.get("origin") == "live":
                plan = self._live().plan(recommender)
                why = (f": it arrived live, and the model {plan}" if isinstance(plan, str) else
                       ": it arrived live with none of the fields the model reads")
            raise RequestError(f"model {model or self.default!r} has no item {item_id!r}{why}",
                               404)
        return {**recommender.catalog.describe(index), **live,
                "vector_sha256": vector_digest(recommender.index.vector(index))}

    def history(self, user_id: str, limit: int | None = None) -> list[dict[str, Any]]:
        items, times = self.state.history(user_id, limit)
        catalog = self.model(None).catalog
        rows = []
        for i, item_id in enumerate(items):
            index = catalog.index_of.get(str(item_id))
            row = catalog.describe(index) if index is not None else {"item_id": str(item_id)}
            rows.append({**row, "timestamp": None if times is None else int(times[i])})
        return rows

    # ---- recommendations -------------------------------------------------------------
    def recommend(self, requests: Sequence[Request]) -> list[Reply | RequestError]:
        """Replies for a batch of requests, one model call per model; a request that
        cannot be answered gets its error in its place, not the others'."""
        self.sync()
        replies: list[Reply | RequestError | None] = [None] * len(requests)
        # A query holds the indices of the recommender that resolved it, so that one
        # recommender answers it: a reload may swap the model in between, and the new
        # run numbers its items otherwise.
        by_model: dict[str, tuple[Recommender, list[tuple[int, Query, list[str]]]]] = {}
        models = self.models  # one dict for the whole batch, whatever a reload does
        for i, request in enumerate(requests):
            name = request.model or self.default
            try:
                recommender = self._model_in(models, name)
                query, unknown = self._query(recommender, request)
            except RequestError as err:
                replies[i] = err
                continue
            by_model.setdefault(name, (recommender, []))[1].append((i, query, unknown))
        for name, (recommender, batch) in by_model.items():
            try:
                answers: list[Answer] = recommender.recommend([q for _, q, _ in batch])
            except ValueError as err:  # e.g. a time-aware model without timestamps
                for i, _, _ in batch:
                    replies[i] = RequestError(str(err))
                continue
            for (i, query, unknown), answer in zip(batch, answers, strict=True):
                replies[i] = Reply(name, answer.source, answer.items, len(query.history),
                                   unknown)
        return [r if r is not None else RequestError("not answered", 500) for r in replies]

    def _query(self, recommender: Recommender, request: Request) -> tuple[Query, list[str]]:
        if request.history is not None:
            ids, times = request.history, request.timestamps
            source = "history"
            if times is not None and len(times) != len(ids):
                raise RequestError(f"{len(ids)} history items but {len(times)} timestamps")
        elif request.user_id is not None:
            stored, stored_times = self.state.history(request.user_id, self.config.max_history)
            ids = [str(i) for i in stored]
            times = None if stored_times is None else stored_times.tolist()
            source = "user"
        else:
            raise RequestError("send a user_id or a history")
        indices, unknown = recommender.catalog.lookup(ids)
        known_times = None
        if times is not None:
            keep = np.array([str(i) in recommender.catalog.index_of for i in ids], dtype=bool)
            try:
                known_times = np.asarray(times, dtype=np.int64)[keep] if len(ids) else None
            except OverflowError:  # raised here it would fail the whole micro-batch
                raise RequestError("timestamps must fit in 64 bits (seconds since the "
                                   "epoch)") from None
        if recommender.needs_times and len(indices) and known_times is None:
            raise RequestError(f"model {recommender.name!r} learned from elapsed time: send "
                               "timestamps (seconds) beside the history")
        excluded, unknown_excluded = recommender.catalog.lookup(request.exclude)
        if request.exclude_seen:
            excluded = np.union1d(excluded, indices)
        if len(indices) == 0:
            source = "popularity"
        return (Query(indices, known_times, request.k, excluded, source),  # type: ignore[arg-type]
                unknown + unknown_excluded)

    # ---- reload ----------------------------------------------------------------------
    def reload(self, name: str | None = None, folder: str | Path | None = None) -> Recommender:
        """Load ``folder`` (default: the model's own folder again) and swap it in for
        ``name``; requests in flight finish on the old one."""
        name = name or self.default
        with self._reload_lock:  # one load at a time; reads go on meanwhile
            old = self.models.get(name)
            if old is None and folder is None:
                raise RequestError(f"no model named {name!r} to reload; give a run_dir to add "
                                   "it", status=404)
            source = Path(folder) if folder is not None else old.folder  # type: ignore[union-attr]
            fresh = Recommender.from_run(source, self.config)
            # Attached and swapped under the live items' lock: an item added meanwhile
            # is either attached here or added to the new model too.
            with self.live.lock if self.live is not None else contextlib.nullcontext():
                if self.live is not None:
                    self.live.attach(fresh)
                    if self.config.load_encoders:
                        self.live.load_encoders({name: fresh})
                models = dict(self.models)
                models[name] = fresh
                self.models = models  # one assignment: readers see the old dict or the new
        log.info("model %r now serves %s", name, source)
        return fresh

    def reload_all(self) -> dict[str, str]:
        """Reload every model from its own folder (what SIGHUP does). A model whose folder
        no longer loads (weights refused, a file missing) keeps serving what it served,
        with one line in the log naming it and why; the others are reloaded all the same.
        Returns {name: why} for the models that failed."""
        failed: dict[str, str] = {}
        for name in list(self.models):
            try:
                self.reload(name)
            except Exception as err:  # noqa: BLE001 - one model's failure stops no other
                # The project's errors (bad files, missing runs) say it all; anything else
                # is a bug, named by its type, its traceback at debug level.
                known = isinstance(err, ValueError | OSError)
                failed[name] = str(err) if known else f"{type(err).__name__}: {err}"
                log.error("reloading model %r from %s failed; it keeps serving the weights "
                          "loaded before: %s", name, self.models[name].folder, failed[name],
                          exc_info=not known and log.isEnabledFor(logging.DEBUG))
        return failed
