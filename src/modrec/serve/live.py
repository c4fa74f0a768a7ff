"""Items that arrive while the service runs (``POST /v1/items``): encoded with each
served model's own content encoders and item tower, stored, and added to its index.

An item becomes recommendable in three steps, under one lock (adds, retirements and a
model being attached take turns; answers go on throughout):

1. **checked**: its id is new (not a trained item, not retired), its fields are the
   catalog's, its media files lie inside ``--media-dir``, exist and are whole
   (`modrec.content.media.check_complete`); one bad item refuses the whole batch, with
   every problem named, and nothing is stored;
2. **encoded**, per served model with a content tower, by the encoders `modrec embed`
   builds for the run's specs (`build_encoder`, the same code), each checked once
   against the version the run was trained on (config.json's ``content_encoders``,
   written by training; for older runs, the embedding store's manifest; failing both,
   a probe: a few trained items encoded again must give the rows the tower holds). An
   encoder that now makes other vectors is refused for that model: its new items
   would not be comparable with what it learned. The content row is what
   `content_matrix` makes offline (each encoder's block L2-normalised, a missing input
   a zero block), and the item vector is the tower's output for an item with no ID
   vector (`Recommender.new_item_vectors`);
3. **stored** in the state's file in one transaction (`modrec.serve.item_state`), and
   only then added to each model (`Recommender.add_items`): tower row, index vector,
   catalog entry. The reply comes after both.

Encoders are built on the first item that needs them (MiniLM takes seconds to load,
the video encoder more), or at start-up with ``ServeConfig.load_encoders``. A model
loaded later (a restart, a reload) gets every stored item attached without encoding
(`attach`): stored content vectors of its encoders' versions, and stored item vectors
made by the same tower; an item whose vector of a version is missing (the model's
encoder differs from the one that encoded it) is encoded again from its stored fields,
and said so in the log.

Several processes may serve one state file (``modrec serve --workers N``): each has
its own models, and an item one of them stored reaches the others through the file.
Before every answer a process reads the state's change counter and, when another
process raised it, attaches the items it lacks from their stored vectors and hides the
newly retired ones (`sync`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from modrec.content.catalog import MEDIA_COLUMNS, input_column, media_resolver
from modrec.content.encoders.base import EncodeError, Encoder
from modrec.content.encoders.registry import build_encoder, shipped_matrices
from modrec.content.media import check_complete
from modrec.content.store import EmbeddingStore, StoreError, default_folder, normalize_rows
from modrec.data.state_schema import catalog_rows
from modrec.errors import ModrecError
from modrec.runs import RunDir, RunError
from modrec.serve.errors import RequestError
from modrec.serve.item_state import ItemVersion, LiveItemState, StoredItem
from modrec.serve.recommender import Recommender

log = logging.getLogger(__name__)

# Encoders built for new items, by (spec, dataset fingerprint, device): see `_build`.
_ENCODERS: dict[tuple[str, str, str], Encoder] = {}
_ENCODERS_LOCK = threading.Lock()

# Fields every live item may have, whatever the catalogs hold: what encoders read.
BASE_FIELDS = ("title", "text", *MEDIA_COLUMNS)
PROBE_ITEMS = 4  # trained items encoded again when a run records no encoder versions


@dataclasses.dataclass(frozen=True)
class EncoderRecord:
    """One encoder a content tower was trained on: its store name, version, width and
    the item column it reads (in the run's dataset: `input_column`)."""

    name: str
    version: str
    dim: int
    column: str

    @property
    def key(self) -> tuple[str, str]:
        """The live_content key of its vectors: the version and the field it read (a
        dataset without a text column feeds the text encoder its titles)."""
        return self.name, f"{self.version}|{self.column}"


@dataclasses.dataclass
class Plan:
    """What one served model reads of a new item, and with what."""

    records: list[EncoderRecord]
    tower: str  # digest of what makes its item vectors (item_state's live_vectors key)
    specs: list[str]
    encoders: list[Encoder] | None = None  # built on first use


class EncoderChanged(ModrecError):
    """A model's encoder makes other vectors than those it was trained on; the message
    says so as `Reason` does (what follows "model NAME (FOLDER)")."""


def named(name: str, model: Recommender, reason: str) -> str:
    """A reason (what follows the model's name) as a sentence about served model ``name``."""
    return f"model {name!r} ({model.folder}) {reason}"


def no_content_tower(model: Recommender) -> str:
    dataset = model.run.dataset.name
    return ("has an ID item tower, which holds a "
            "vector only for the items it trained on, so it cannot represent a new item. "
            "To recommend new items from their content, serve a run with a content tower: "
            f"`modrec embed -d {dataset} --encoder text`, then `modrec train -d {dataset} "
            f"-m {model.name} --set model.item_tower=id+content --set "
            "'model.encoders=[\"text\"]'`")


class LiveItems:
    """The service's live items: checks, encoding, storage, and every model's rows."""

    def __init__(self, state: LiveItemState, media_dir: Path | None = None,
                 device: str = "cpu") -> None:
        self.state = state
        self.media_dir = None if media_dir is None else Path(media_dir).resolve()
        self.device = device
        self.lock = threading.RLock()  # adds, retirements and attaching take turns
        self._plans: weakref.WeakKeyDictionary[Recommender, Plan | str] = \
            weakref.WeakKeyDictionary()
        # per model, the digest of each live item's version it holds (`sync`)
        self._applied: weakref.WeakKeyDictionary[Recommender, dict[str, str]] = \
            weakref.WeakKeyDictionary()
        self._version = -1  # the state's change counter when `sync` last caught up

    # ---- a model's plan and encoders -----------------------------------------------------
    def plan(self, model: Recommender) -> Plan | str:
        """The model's `Plan`, or why it cannot take new items (what follows "model NAME
        (FOLDER)" in a sentence: `named`)."""
        found = self._plans.get(model)
        if found is None:
            try:
                found = self._make_plan(model)
            except (RunError, StoreError, EncodeError, OSError, ValueError) as err:
                found = f"cannot encode new items: {err}"
            if isinstance(found, str):
                log.warning("the model at %s takes no new items: it %s", model.folder, found)
            self._plans[model] = found
        return found

    def _make_plan(self, model: Recommender) -> Plan | str:
        if not model.content_tower or model.tower is None:
            return no_content_tower(model)
        specs = list(model.run.config.model.encoders)
        shipped = shipped_matrices(model.run.dataset)
        for spec in specs:
            if spec in shipped or spec.partition(":")[0] == "run":
                return (f"reads {spec!r}, vectors computed elsewhere "
                        "for the catalog's items; a new item has none. Train one on "
                        "encoders that read item fields (text, tags, image, video, audio)")
        records = trained_records(model, specs)
        if records is None:  # nothing says which versions it was trained on: probe
            encoders = self._build(model, specs)
            records = probe(model, encoders)
            return Plan(records, tower_digest(model, records), specs, encoders)
        width = sum(r.dim for r in records)
        if width != model.tower.content.shape[1]:
            return (f"has a content tower that reads {model.tower.content.shape[1]} values "
                    f"per item, but the encoders it records add up to {width}")
        return Plan(records, tower_digest(model, records), specs)

    def encoders(self, model: Recommender, plan: Plan) -> list[Encoder]:
        """The plan's encoders, built on first use and checked against the versions the
        model was trained on: a mismatch raises `EncoderChanged`, and the model takes no
        new items from then on (its plan becomes the reason)."""
        if plan.encoders is None:
            encoders = self._build(model, plan.specs)
            for encoder, record in zip(encoders, plan.records, strict=True):
                if (encoder.version, encoder.dim) != (record.version, record.dim):
                    reason = changed_encoder(model, record, encoder)
                    self._plans[model] = reason
                    log.warning("the model at %s takes no new items: it %s", model.folder,
                                reason)
                    raise EncoderChanged(reason)
            plan.encoders = encoders
        return plan.encoders

    def _build(self, model: Recommender, specs: Sequence[str]) -> list[Encoder]:
        """Each spec's encoder as `modrec embed` builds it for the run's dataset; one
        instance per (spec, dataset, device) in the process (`_ENCODERS`), shared by the
        models, reloads and services that use it: encoders hold no state once built,
        and loading one takes seconds (MiniLM), a video encoder more."""
        dataset = model.run.dataset
        built = []
        for spec in specs:
            key = (spec, dataset.fingerprint(), self.device)
            with _ENCODERS_LOCK:
                if key not in _ENCODERS:
                    started = time.perf_counter()
                    _ENCODERS[key] = build_encoder(spec, dataset, self.device)
                    log.info("loaded the %s encoder for new items in %.1f s", spec,
                             time.perf_counter() - started)
                built.append(_ENCODERS[key])
        return built

    def load_encoders(self, models: Mapping[str, Recommender]) -> None:
        """Build every model's encoders now rather than on the first new item."""
        for model in models.values():
            plan = self.plan(model)
            if isinstance(plan, Plan):
                with contextlib.suppress(EncoderChanged):  # logged, and the plan says it
                    self.encoders(model, plan)

    # ---- a model loaded: every stored item into it ---------------------------------------
    def attach(self, model: Recommender) -> None:
        """Give a freshly loaded model every stored live item (and hide the retired
        ones), from stored vectors where they fit it, encoding only what they lack."""
        with self.lock:
            self._catch_up(model, self.state.items(), self.state.retired())

    def sync(self, models: Mapping[str, Recommender]) -> None:
        """Catch ``models`` up with what another process serving the same state file
        (``modrec serve --workers N``) added or retired since they last looked: one read
        of the state's change counter when nothing changed; otherwise the stored items
        whose version a model lacks are attached as `attach` does (from the vectors the
        other process stored: nothing is encoded again) and the retired ones hidden.
        Called before every answer, so an item acknowledged by any process is in every
        process's answers to the requests that follow the acknowledgement."""
        if self.state.version() == self._version:
            return
        with self.lock:
            # Read before the tables: a write that lands in between raises it again, so
            # the next call catches up with that one too.
            version = self.state.version()
            items, retired = self.state.items(), self.state.retired()
            for model in models.values():
                self._catch_up(model, items, retired)
            self._version = version

    def _catch_up(self, model: Recommender, stored: list[StoredItem],
                  retired: dict[str, float]) -> None:
        """Add to ``model`` the ``stored`` items it does not hold at their stored version,
        then hide the ``retired`` ones. Callers hold the lock."""
        applied = self._applied.setdefault(model, {})
        items = [item for item in stored if applied.get(item.item_id) != item.digest]
        trained = trained_versions(model, items)
        if trained:
            log.info("the model at %s was trained on %d live items as they are now: "
                     "their trained rows serve", model.folder, len(trained))
            applied.update((item.item_id, item.digest) for item in items
                           if item.item_id in trained)
            items = [item for item in items if item.item_id not in trained]
        plan = self.plan(model) if items else None
        if isinstance(plan, str):  # the plan's warning said why
            log.info("the model at %s leaves out the %d live items", model.folder,
                     len(items))
        elif isinstance(plan, Plan):
            started = time.perf_counter()
            content, encoded = self._stored_content(model, plan, items)
            rows = content_rows(plan.records, [content[r.key] for r in plan.records])
            usable = [i for i in range(len(items)) if rows[i].any()]
            vectors = self.state.vectors(plan.tower)
            found = self._attached_vectors(model, plan, items, rows, usable, vectors)
            model.add_items([items[i].item_id for i in usable],
                            [items[i].fields for i in usable], rows[usable], found)
            log.info("the model at %s: %d live items attached in %.2f s (%d encoded again, "
                     "%d vectors computed)", model.folder, len(usable),
                     time.perf_counter() - started, encoded,
                     sum(items[i].item_id not in vectors for i in usable))
        # an item the model cannot take is not looked at again until its next version
        applied.update((item.item_id, item.digest) for item in items)
        model.hide([i for i in map(model.catalog.index_of.get, retired) if i is not None])

    def _stored_content(self, model: Recommender, plan: Plan, items: list[StoredItem]
                        ) -> tuple[dict[tuple[str, str], list[np.ndarray | None]], int]:
        """Each encoder's vector of every item: stored ones of the plan's versions, the
        rest encoded again from the stored fields (and stored). Returns the vectors and
        how many items were encoded again."""
        content: dict[tuple[str, str], list[np.ndarray | None]] = {}
        lacking: set[int] = set()
        for record in plan.records:
            found = self.state.content(*record.key)
            lacking |= {i for i, item in enumerate(items) if item.item_id not in found}
            content[record.key] = [found.get(item.item_id) for item in items]
        if lacking:
            order = sorted(lacking)
            log.info("the model at %s: %d live items have no stored vectors of its "
                     "encoders' versions (%s): encoding them again from their stored fields",
                     model.folder, len(order), ", ".join(f"{r.name} {r.version}"
                                                         for r in plan.records))
            fresh: dict[tuple[str, str], list[np.ndarray | None]] = {}
            try:
                problems = self._encode(model, plan, [items[i].fields for i in order], fresh)
            except EncoderChanged:  # logged; only the stored vectors of its version serve
                return content, 0
            for j, i in enumerate(order):
                if j in problems:  # e.g. a media file gone since: left out, not stored
                    log.warning("the model at %s leaves out live item %r: %s", model.folder,
                                items[i].item_id, "; ".join(problems[j]))
                    continue
                for record in plan.records:
                    content[record.key][i] = fresh[record.key][j]
                self.state.add_vectors(items[i].item_id,
                                       [(r.key, fresh[r.key][j]) for r in plan.records], [])
        return content, len(lacking)

    def _attached_vectors(self, model: Recommender, plan: Plan, items: list[StoredItem],
                          rows: np.ndarray, usable: list[int],
                          stored: dict[str, np.ndarray]) -> np.ndarray:
        """The usable items' vectors: stored ones made by this tower (byte for byte what
        was acknowledged), the rest computed now and stored."""
        vectors = np.zeros((len(usable), model.index.dim), np.float32)
        missing = [j for j, i in enumerate(usable) if items[i].item_id not in stored]
        for j, i in enumerate(usable):
            if items[i].item_id in stored:
                vectors[j] = stored[items[i].item_id]
        if missing:
            computed = model.new_item_vectors(rows[[usable[j] for j in missing]])
            for j, vector in zip(missing, computed, strict=True):
                vectors[j] = vector
                self.state.add_vectors(items[usable[j]].item_id, [], [(plan.tower, vector)])
        return vectors

    # ---- new items -----------------------------------------------------------------------
    def add(self, models: Mapping[str, Recommender], items: Sequence[Mapping[str, Any]]
            ) -> list[dict[str, Any]]:
        """Check, encode, store and index a batch of items (new ones, or new versions of
        live ones), all or none; returns one reply row per item, in order. Raises a
        `RequestError` naming every problem when any item is refused (nothing stored)."""
        with self.lock:
            plans = self._plans_of(models)
            self._check_ids(models, items)
            self._check_fields(models, items)
            digests = self._digests(items)
            previous = [self.state.get(str(item["item_id"])) for item in items]
            changed = [i for i, (before, digest) in enumerate(zip(previous, digests, strict=True))
                       if before is None or before.digest != digest]
            made = self._make(models, plans, [items[i] for i in changed])
            self.state.write([  # durable before any model shows it
                ItemVersion(str(items[i]["item_id"]), dict(items[i]), digests[i],
                            made.content[j], made.vectors[j]) for j, i in enumerate(changed)])
            for name, model in models.items():
                self._applied.setdefault(model, {}).update(
                    (str(items[i]["item_id"]), digests[i]) for i in changed)
                positions, rows, vectors = made.per_model.get(name, ([], None, None))
                chosen = [str(items[changed[j]]["item_id"]) for j in positions]
                # a new version this model cannot take: its old one is not shown either
                model.hide([model.catalog.index_of[item_id] for item_id in (
                    str(items[i]["item_id"]) for i in changed)
                    if item_id not in chosen and item_id in model.catalog.index_of])
                if rows is not None and vectors is not None and chosen:
                    model.add_items(chosen, [dict(items[changed[j]]) for j in positions],
                                    rows, vectors)
            return [self._reply(models, plans, item, "added" if previous[i] is None else
                                "updated" if i in changed else "unchanged")
                    for i, item in enumerate(items)]

    def _plans_of(self, models: Mapping[str, Recommender]) -> dict[str, Plan | str]:
        """Every served model's plan; a 422 saying why when none can take new items."""
        plans = {name: self.plan(model) for name, model in models.items()}
        _some_can(models, plans)
        return plans

    def _make(self, models: Mapping[str, Recommender], plans: dict[str, Plan | str],
              items: Sequence[Mapping[str, Any]]) -> Made:
        """Encode ``items`` for every model that can take them: their content vectors
        (shared by models with the same encoder version), rows and item vectors. A model
        whose encoder turns out to have changed is left out (its plan says why)."""
        made = Made([{} for _ in items], [{} for _ in items], {})
        if not items:
            return made
        cache: dict[tuple[str, str], list[np.ndarray | None]] = {}
        problems: dict[int, list[str]] = {}
        for name, plan in list(plans.items()):
            if isinstance(plan, Plan):
                try:
                    for i, found in self._encode(models[name], plan, items, cache).items():
                        problems.setdefault(i, []).extend(found)
                except EncoderChanged as err:
                    plans[name] = str(err)
        _some_can(models, plans)
        if problems:
            raise RequestError("nothing was stored: " + "; ".join(
                dict.fromkeys(m for i in sorted(problems) for m in problems[i])))
        for name, plan in plans.items():
            if not isinstance(plan, Plan):
                continue
            rows = content_rows(plan.records, [cache[r.key] for r in plan.records])
            positions = [i for i in range(len(items)) if rows[i].any()]
            vectors = models[name].new_item_vectors(rows[positions])
            made.per_model[name] = (positions, rows[positions], vectors)
            for j, i in enumerate(positions):
                made.vectors[i][plan.tower] = vectors[j]
                made.content[i].update({r.key: cache[r.key][i] for r in plan.records})
        empty = [str(item["item_id"]) for i, item in enumerate(items)
                 if not any(i in positions for positions, _, _ in made.per_model.values())]
        if empty:
            reads = "; ".join(f"model {name!r} reads {', '.join(r.column for r in plan.records)}"
                              for name, plan in plans.items() if isinstance(plan, Plan))
            raise RequestError(f"items {empty[:10]} have none of the fields the served models "
                               f"read ({reads}); nothing was stored")
        return made

    def _encode(self, model: Recommender, plan: Plan, items: Sequence[Mapping[str, Any]],
                cache: dict[tuple[str, str], list[np.ndarray | None]]) -> dict[int, list[str]]:
        """Each of the plan's encoders' vectors of every item into ``cache`` (None: the
        item lacks its field; a key already there is not encoded again); returns the
        problems by item position (an input given that could not be encoded)."""
        problems: dict[int, list[str]] = {}
        resolve = self._media()
        for encoder, record in zip(self.encoders(model, plan), plan.records, strict=True):
            if record.key in cache:
                continue
            given = [present(item.get(record.column)) for item in items]
            values = [v if v is None or record.column not in MEDIA_COLUMNS else resolve(v)
                      for v in given]
            cache[record.key], errors = encode_each(encoder, values)
            for i, error in errors.items():
                problems.setdefault(i, []).append(
                    f"item {str(items[i]['item_id'])!r}: its {record.column} "
                    f"{_short(given[i])!r} could not be encoded ({error})")
        return problems

    def _media(self) -> Any:
        """What turns a media field into the file to read, inside ``--media-dir`` only."""
        if self.media_dir is None:
            return lambda value: value
        return media_resolver(self.media_dir, folder="the media folder (--media-dir)",
                              remedy="name a file inside it, or send it to POST /v1/media")

    # ---- checks --------------------------------------------------------------------------
    def _check_ids(self, models: Mapping[str, Recommender],
                   items: Sequence[Mapping[str, Any]]) -> None:
        """A trained item's id, or a retired one, is not taken for a new item (409). An
        item that arrived live stays updatable after a run trained on it (the learning
        loop): its new version replaces the trained row, as it replaces a live one."""
        conflicts = []
        for item in items:
            item_id = str(item["item_id"])
            trained = [name for name, model in models.items()
                       if 0 < model.catalog.index_of.get(item_id, 0) <= model.catalog.trained]
            if trained and self.state.get(item_id) is None:
                conflicts.append(f"item {item_id!r} is a trained item of model {trained[0]!r} "
                                 "(its content is what the model was trained on); post new "
                                 "items under new ids, or retrain to change a trained item")
            elif (at := self.state.retired_at(item_id)) is not None:
                conflicts.append(f"item {item_id!r} was retired at {_when(at)}; a retired id "
                                 "is not used again: post the new item under a new id")
        if conflicts:
            raise RequestError("nothing was stored: " + "; ".join(conflicts), 409)

    def _check_fields(self, models: Mapping[str, Recommender],
                      items: Sequence[Mapping[str, Any]]) -> None:
        """Every field must be one the served catalogs have (or an encoder reads)."""
        known = set(BASE_FIELDS)
        for model in models.values():
            known |= set(map(str, model.run.dataset.items.columns))
        known -= {"item"}
        problems = [f"item {str(item['item_id'])!r} has the field {field!r}, which no served "
                    "catalog has" for item in items for field in item if field not in known]
        if problems:
            raise RequestError("; ".join(problems) + f" (fields: {', '.join(sorted(known))}); "
                               "nothing was stored")

    def _digests(self, items: Sequence[Mapping[str, Any]]) -> list[str]:
        """Each item's digest (its fields and its media files' bytes), its media checked
        on the way: inside ``--media-dir``, present and whole."""
        digests, problems = [], []
        for item in items:
            digest = hashlib.sha256(json.dumps(item, sort_keys=True).encode())
            for field in MEDIA_COLUMNS:
                value = present(item.get(field))
                if value is None:
                    continue
                try:
                    digest.update(self._media_digest(field, str(value)).encode())
                except EncodeError as err:
                    problems.append(f"item {str(item['item_id'])!r}: its {field} {err}")
            digests.append(digest.hexdigest()[:32])
        if problems:
            raise RequestError("nothing was stored: " + "; ".join(problems))
        return digests

    def _media_digest(self, field: str, value: str) -> str:
        """The file's SHA-256, once it is shown to be inside ``--media-dir``, a file, and
        (video, audio) whole; an `EncodeError` saying what is wrong otherwise."""
        if self.media_dir is None:
            raise EncodeError(f"{value!r} names a file, but this service reads no media "
                              "files: start modrec serve with --media-dir FOLDER (paths are "
                              "read inside it only)")
        path = self._media()(value)
        if not path.is_file():
            raise EncodeError(f"{value!r} is not a file inside the media folder "
                              f"{self.media_dir}")
        if field in ("video", "audio"):
            check_complete(path)
        digest = hashlib.sha256()
        with path.open("rb") as file:
            while chunk := file.read(1 << 20):
                digest.update(chunk)
        return digest.hexdigest()

    # ---- replies, retirement -------------------------------------------------------------
    def _reply(self, models: Mapping[str, Recommender], plans: Mapping[str, Plan | str],
               item: Mapping[str, Any], status: str) -> dict[str, Any]:
        """One item's reply row: per model that takes new items, where the item is."""
        item_id = str(item["item_id"])
        return {"item_id": item_id, "status": status, "models": {
            name: _in_model(model, plan, item_id)
            for name, model in models.items() if isinstance(plan := plans[name], Plan)}}

    def refusals(self, models: Mapping[str, Recommender]) -> dict[str, str]:
        """Why each served model that takes no new items takes none (a sentence each)."""
        return {name: named(name, model, plan) for name, model in models.items()
                if isinstance(plan := self.plan(model), str)}

    def retire(self, models: Mapping[str, Recommender], item_id: str) -> dict[str, Any]:
        """Retire an item (live or trained): never recommended again by any model, still
        read in the histories that name it. Idempotent (the first time is kept)."""
        with self.lock:
            live = self.state.get(item_id)
            holders = {name: model for name, model in models.items()
                       if item_id in model.catalog.index_of}
            if live is None and not holders:
                raise RequestError(f"no item {item_id!r}: no served model has it and it was "
                                   "not added live", 404)
            at = self.state.retire(item_id)
            for model in holders.values():
                model.hide([model.catalog.index_of[item_id]])
            return {"item_id": item_id, "origin": "live" if live is not None else "trained",
                    "retired_at": at}

    def describe(self, item_id: str) -> dict[str, Any]:
        """Where an item came from: ``origin`` ("live" with its times, or "trained") and
        ``retired_at`` (None unless retired)."""
        live = self.state.get(item_id)
        origin: dict[str, Any] = {"origin": "trained"} if live is None else {
            "origin": "live", "added_at": live.added, "updated_at": live.updated}
        return {**origin, "retired_at": self.state.retired_at(item_id)}


def _in_model(model: Recommender, plan: Plan, item_id: str) -> dict[str, Any]:
    """Where the item is in ``model``: its index and a digest of its vector, or why the
    model left it out."""
    index = model.catalog.index_of.get(item_id)
    if index is None:
        return {"skipped": "the item has none of the fields the model reads ("
                f"{', '.join(r.column for r in plan.records)})"}
    return {"index": index, "vector_sha256": vector_digest(model.index.vector(index))}


def _some_can(models: Mapping[str, Recommender], plans: Mapping[str, Plan | str]) -> None:
    """A 422 saying why, model by model, when no served model can take new items."""
    if not any(isinstance(plan, Plan) for plan in plans.values()):
        raise RequestError("no served model can take new items: " + "; ".join(
            named(name, models[name], str(plan)) for name, plan in plans.items()))


@dataclasses.dataclass
class Made:
    """What `LiveItems._make` made for a batch: per item, the content vectors and item
    vectors to store; per model, the positions it takes, their rows and vectors."""

    content: list[dict[tuple[str, str], np.ndarray | None]]
    vectors: list[dict[str, np.ndarray]]
    per_model: dict[str, tuple[list[int], np.ndarray, np.ndarray]]


def trained_versions(model: Recommender, items: Sequence[StoredItem]) -> set[str]:
    """The live items ``model`` was trained on as they are now: its dataset holds the
    item with the fields it was last posted with (a run trained on the state after the
    item arrived, the learning loop). Such an item keeps its trained row, learned ID
    vector included; attaching its live row would hide that row behind the content-only
    vector a never-seen item gets. An item posted again with other fields since is
    attached as the newer version. (A media file changed in place under the same path is
    not seen here: post the item again under another path.)"""
    known = [item for item in items if item.item_id in model.catalog.index_of]
    if not known:
        return set()
    table = model.run.dataset.items
    rows = table[table["item_id"].astype(str).isin({item.item_id for item in known})]
    fields = {item_id: json.loads(text) for item_id, text in catalog_rows(rows)}
    return {item.item_id for item in known if item.item_id in fields and all(
        _same(fields[item.item_id].get(name), value) for name, value in item.fields.items()
        if name != "item_id")}


def _same(trained: Any, posted: Any) -> bool:
    """A field as the run's dataset holds it equals the posted one (a year may come back
    from a table as 1997.0 where 1997 was posted)."""
    if trained == posted:
        return True
    try:
        return float(trained) == float(posted)
    except (TypeError, ValueError):
        return False


def vector_digest(vector: np.ndarray) -> str:
    """The first 16 hex digits of the SHA-256 of a vector's float32 bytes: equal digests,
    the same vector byte for byte."""
    return hashlib.sha256(np.ascontiguousarray(vector, "<f4").tobytes()).hexdigest()[:16]


def _when(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 80 else text[:77] + "..."


def encode_each(encoder: Encoder, values: Sequence[Any]
                ) -> tuple[list[np.ndarray | None], dict[int, str]]:
    """``encoder``'s vector of each value (None for a missing one) and, by position,
    why a value could not be encoded. The whole batch is tried first, then one by one
    to name the culprit (as the embed job does)."""
    vectors: list[np.ndarray | None] = [None] * len(values)
    errors: dict[int, str] = {}
    given = [i for i, v in enumerate(values) if v is not None]
    if not given:
        return vectors, errors
    try:
        batch = encoder.encode([values[i] for i in given])
        for i, vector in zip(given, batch, strict=True):
            vectors[i] = np.asarray(vector, np.float32)
        return vectors, errors
    except Exception:  # noqa: BLE001 - narrowed item by item below
        pass
    for i in given:
        try:
            vectors[i] = np.asarray(encoder.encode([values[i]])[0], np.float32)
        except Exception as err:  # noqa: BLE001 - any decoder error names one item
            errors[i] = str(err) if isinstance(err, EncodeError) else \
                f"{type(err).__name__}: {err}"
    return vectors, errors


def present(value: Any) -> Any:
    """A field's value, or None when it is missing (None, NaN, "", [])."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, str | list | tuple) and len(value) == 0:
        return None
    return value


def content_rows(records: Sequence[EncoderRecord],
                 blocks: Sequence[Sequence[np.ndarray | None]]) -> np.ndarray:
    """``(L, C)`` float32 content rows as `content_matrix` makes them offline: each
    encoder's block L2-normalised, a missing vector a zero block."""
    parts = []
    for record, vectors in zip(records, blocks, strict=True):
        block = np.zeros((len(vectors), record.dim), np.float32)
        for i, vector in enumerate(vectors):
            if vector is not None:
                block[i] = vector
        parts.append(normalize_rows(block))
    return np.concatenate(parts, axis=1)


def tower_digest(model: Recommender, records: Sequence[EncoderRecord]) -> str:
    """A digest of everything a new item's vector depends on in ``model``: the tower's
    projection (and gate) weights, its mode, the model's normalisation and the encoder
    versions. Equal digests, equal vectors from equal content."""
    assert model.tower is not None
    digest = hashlib.sha256()
    digest.update(json.dumps([model.tower.mode, model.tower.combine,
                              bool(getattr(model.model, "normalize", False)),
                              [dataclasses.astuple(r) for r in records]]).encode())
    for name, tensor in sorted(model.tower.state_dict().items()):
        if name.startswith(("project.", "gate.")):
            digest.update(name.encode())
            digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:24]


def trained_records(model: Recommender, specs: Sequence[str]) -> list[EncoderRecord] | None:
    """The encoders the run's content tower was trained on: config.json's
    ``content_encoders`` (written by training), else the entries of the embedding store
    it was most likely trained from (an exported bundle's own, then the dataset's);
    None when neither names every one."""
    from modrec.content.store import store_name

    dataset = model.run.dataset
    names = [store_name(spec) for spec in specs]
    recorded = {e["name"]: e for e in RunDir(model.folder).config_extras().get(
        "content_encoders", []) if isinstance(e, dict) and "name" in e}
    sources: list[dict[str, dict[str, Any]]] = [recorded]
    for folder in (model.folder / "embeddings", default_folder(dataset.name)):
        if (folder / "manifest.json").exists():
            sources.append(EmbeddingStore.stored(folder))
    for entries in sources:
        if all(name in entries for name in names):
            return [EncoderRecord(name, str(entries[name]["version"]), int(entries[name]["dim"]),
                                  input_column(dataset, str(entries[name]["reads"])))
                    for name in names]
    return None


def probe(model: Recommender, encoders: Sequence[Encoder]) -> list[EncoderRecord]:
    """Records for a run that names no encoder versions, once its encoders are shown to
    make what the tower holds: up to `PROBE_ITEMS` trained items per encoder, encoded
    again, must give (cosine at least 0.99) the rows of the tower's content matrix."""
    assert model.tower is not None
    dataset = model.run.dataset
    content = model.tower.content[:model.catalog.trained + 1].float().cpu().numpy()
    records, start = [], 0
    items = dataset.items.sort_values("item")
    for encoder in encoders:
        record = EncoderRecord(encoder.name, encoder.version, encoder.dim,
                               input_column(dataset, encoder.reads))
        block = content[:, start:start + encoder.dim]
        start += encoder.dim
        if record.column in MEDIA_COLUMNS or record.column not in items.columns:
            raise RunError(f"{model.folder} does not record which {encoder.name} encoder "
                           "it was trained with; retrain it (runs record it now)")
        rows = [int(i) for i, value in zip(items["item"], items[record.column], strict=True)
                if present(value) is not None and block[int(i)].any()][:PROBE_ITEMS]
        if not rows:
            raise RunError(f"{model.folder}: no trained item to check its {encoder.name} "
                           "encoder against; retrain it (runs record their encoders now)")
        fresh = normalize_rows(encoder.encode([items[record.column].iloc[r - 1] for r in rows]))
        if fresh.shape[1] != block.shape[1] or float(
                (fresh * block[rows]).sum(1).min()) < 0.99:
            raise RunError(f"{model.folder} {changed_encoder(model, record, encoder)}")
        records.append(record)
    if start != content.shape[1]:
        raise RunError(f"{model.folder}: its content tower reads {content.shape[1]} values "
                       f"per item, its encoders make {start}")
    return records


def changed_encoder(model: Recommender, record: EncoderRecord, encoder: Encoder) -> str:
    dataset = model.run.dataset.name
    return (f"was trained on {record.name} vectors of version "
            f"{record.version!r} ({record.dim} values), and the {record.name} encoder here "
            f"makes version {encoder.version!r} ({encoder.dim} values): new items encoded "
            "now would not be comparable with what it learned, so it takes none. Serve it "
            "where that encoder is installed, or embed and train again: `modrec embed -d "
            f"{dataset} --encoder {record.name}`, then `modrec train` on it")
