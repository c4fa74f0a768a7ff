"""EmbeddingStore: one matrix per encoder, rows aligned with a dataset's item index.

A store is a folder::

    manifest.json              per encoder: dim, dtype, version, input column, and
                               the digest of the item ids its rows are aligned with
    ids-<digest>.json          the external item id of each row (row 0 = padding, "")
    <encoder>.<digest>.npy     (N + 1, dim) float16/float32, memory-mapped on read
    <encoder>.<digest>.done.npy    (N + 1,) bool: the row holds an encoded item
    <encoder>.<digest>.failed.npy  (N + 1,) bool: its input could not be encoded (zero row)
    <encoder>.<digest>.steps.npy    (N + 1, S, dim) float16: a sequence encoder's per-step
                                    vectors (``video:i3d``: one per 8 frames of each clip),
                                    padded with zeros to the manifest's ``steps`` = S
    <encoder>.<digest>.lengths.npy  (N + 1,) int32: how many of a row's S steps are real

Writes are crash-safe without copying the matrix: rows are written in place into the
memory-mapped file and flushed *before* the small ``done`` mask is replaced atomically
(write, then rename). A crash between the two only loses the rows not yet marked done,
which the next run encodes again; a row marked done is always on disk. Step sequences
follow the same rule: written and flushed with the row, before it is marked done.

When the dataset's item ids change (new items appended, the catalog re-indexed), each
matrix is re-aligned by id into files of the new digest, and the manifest (rewritten
atomically) switches to them last: rows of known items are kept, new items are missing,
and an interrupted re-alignment leaves the old files in charge.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modrec import paths
from modrec.atomic import WriteError, replace_atomic, write_text_atomic
from modrec.errors import ModrecError, NotFoundError, UsageError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MatrixInfo:
    name: str
    dim: int
    dtype: str
    version: str
    reads: str
    steps: int = 0  # the most steps a row's sequence holds; 0: no sequences are stored


STEPS_DTYPE = np.float16  # per-step vectors: half the bytes, ample for a temporal head


class StoreError(ModrecError, ValueError):
    """A store's files disagree with its manifest or with each other; the message names
    the files and what is wrong."""


@dataclass(frozen=True)
class ManifestShape:
    """What a manifest of named entries holds: ``{section: {name: {field: ...}}}``."""

    section: str  # the top-level key
    fields: frozenset[str]  # what every entry holds
    lacking: str  # the reason given when an entry lacks one
    what: str  # what the file should be, for the message


STORE_MANIFEST = ManifestShape(
    "encoders", frozenset({"dim", "dtype", "version", "reads", "ids"}),
    "an encoder entry lacks dim, dtype, version, reads or ids", "an embedding store manifest")


def read_manifest(path: Path, shape: ManifestShape, fix: str) -> dict[str, dict[str, Any]]:
    """The entries of the manifest at ``path`` ({} when there is none). A file that is
    not one of ``shape`` (unreadable, not JSON, an entry lacking a field) is a
    `StoreError` naming it, saying why and then ``fix``. The one check of the embedding
    store's manifest and of the computed columns' (`modrec.content.columns`)."""
    if not path.exists():
        return {}
    try:
        entries = json.loads(path.read_bytes())[shape.section]
        if not isinstance(entries, dict) or not all(
                isinstance(entry, dict) and shape.fields <= entry.keys()
                for entry in entries.values()):
            raise ValueError(shape.lacking)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise StoreError(f"{path} is not {shape.what} ({err}); {fix}") from None
    return entries


def default_folder(dataset_name: str) -> Path:
    """``$MODREC_EMBEDDINGS_DIR/<dataset name>`` ("/" becomes "_"): where a dataset's
    store is when no folder is given. The one statement of the rule, for the store
    (`EmbeddingStore.folder_for`), the run bundle (`modrec.runs.export_bundle`) and the
    service's text search alike."""
    return paths.embeddings_dir() / dataset_name.replace("/", "_")


def _save_npy(path: Path, array: np.ndarray) -> None:
    def write(tmp: Path) -> None:
        with tmp.open("wb") as f:
            np.save(f, array)
            f.flush()
            os.fsync(f.fileno())
    replace_atomic(path, write)


def store_name(spec: str) -> str:
    """The store key of an encoder spec: ``text`` -> ``text``, ``tags:tmdb_genres`` ->
    ``tags-tmdb_genres``, ``text:org/model`` -> ``text-org-model``. A key maps to
    itself, so users may name a matrix either way."""
    return re.sub(r"[^A-Za-z0-9_.+-]+", "-", spec).strip("-")


def _digest(item_ids: list[str]) -> str:
    return hashlib.sha256("\n".join(item_ids).encode()).hexdigest()[:12]


def _a_folder(path: Path) -> Path:
    """``path``, unless it names a file: a store is a folder."""
    if path.exists() and not path.is_dir():
        raise StoreError(f"the store {path} is a file, not a folder; pass a folder for the "
                         "store (a new one, or one `modrec embed` wrote)")
    return path


class EmbeddingStore:
    """Open (or create) the store of one dataset's catalog."""

    def __init__(self, folder: str | Path, item_ids: list[str]) -> None:
        self.folder = _a_folder(Path(folder))
        self.folder.mkdir(parents=True, exist_ok=True)
        self.item_ids = [""] + [str(i) for i in item_ids]  # row 0 = padding
        self.digest = _digest(self.item_ids)
        ids_file = self.folder / f"ids-{self.digest}.json"
        if not ids_file.exists():
            write_text_atomic(ids_file, json.dumps(self.item_ids))
        self._manifest: dict[str, dict[str, Any]] = self._read_manifest()
        for name, info in list(self._manifest.items()):
            if info["ids"] != self.digest:
                self._realign(name, info)

    def reload(self) -> None:
        """Read the manifest again: another process (rank 0 of a distributed
        extraction) may have prepared a matrix since this store was opened."""
        self._manifest = self._read_manifest()

    def _read_manifest(self) -> dict[str, dict[str, Any]]:
        return self.stored(self.folder)

    @staticmethod
    def stored(folder: str | Path) -> dict[str, dict[str, Any]]:
        """The manifest's entries of the store in ``folder`` (none without a manifest),
        read without opening the store (which would write its ids file): what a reader
        checks before it opens one. A damaged manifest is a `StoreError`."""
        folder = Path(folder)
        return read_manifest(folder / "manifest.json", STORE_MANIFEST,
                             f"delete the folder {folder} to encode afresh")

    @staticmethod
    def folder_for(dataset: Any, folder: str | Path | None = None) -> Path:
        """Where `for_dataset` keeps a dataset's store (nothing is created); a file there
        is refused."""
        return _a_folder(Path(folder or default_folder(dataset.name)))

    @classmethod
    def for_dataset(cls, dataset: Any, folder: str | Path | None = None) -> EmbeddingStore:
        """The store of a `Dataset`: ``folder`` or ``$MODREC_EMBEDDINGS_DIR/<name>``."""
        return cls(cls.folder_for(dataset, folder), dataset.items["item_id"].astype(str).tolist())

    # ---- reading ---------------------------------------------------------------------
    @property
    def num_rows(self) -> int:
        return len(self.item_ids)

    def names(self) -> list[str]:
        return sorted(self._manifest)

    def info(self, name: str) -> MatrixInfo:
        name = store_name(name)
        if name not in self._manifest:
            have = ", ".join(self.names()) or "none"
            raise NotFoundError(f"no {name!r} embeddings in {self.folder} (have: {have}); "
                                f"run `modrec embed --encoder {name}` first")
        info = self._manifest[name]
        return MatrixInfo(name, info["dim"], info["dtype"], info["version"], info["reads"],
                          int(info.get("steps", 0)))

    def _file(self, name: str, part: str = "", digest: str | None = None) -> Path:
        return self.folder / f"{store_name(name)}.{digest or self.digest}{part}.npy"

    def matrix(self, name: str) -> np.ndarray:
        """``(N + 1, dim)``, memory-mapped read-only; rows not yet encoded are zero."""
        name = self.info(name).name
        return np.load(self._file(name), mmap_mode="r")

    def done(self, name: str) -> np.ndarray:
        return np.load(self._file(name, ".done"))

    def failed(self, name: str) -> np.ndarray:
        return np.load(self._file(name, ".failed"))

    def sequences(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """The per-step vectors of a sequence encoder, for a temporal head: ``(N + 1, S,
        dim)`` float16, memory-mapped read-only, each row padded with zeros after its
        length, and the ``(N + 1,)`` int32 lengths (0 for rows not encoded or failed).
        ``torch.from_numpy(steps[rows].astype("float32"))`` with ``lengths[rows]`` is a
        padded batch."""
        info = self.info(name)
        if not info.steps:
            raise NotFoundError(f"{info.name} in {self.folder} stores no step sequences "
                                "(only sequence encoders such as video:i3d do)")
        lengths = np.load(self._file(info.name, ".lengths"))
        lengths = np.where(self.done(info.name) & ~self.failed(info.name), lengths, 0)
        return np.load(self._file(info.name, ".steps"), mmap_mode="r"), lengths

    def missing(self, name: str) -> np.ndarray:
        """Item indices (1..N) with no row yet."""
        if name not in self._manifest:
            return np.arange(1, self.num_rows)
        return np.flatnonzero(~self.done(name)[1:]) + 1

    def validate(self) -> dict[str, dict[str, int]]:
        """Check that every matrix agrees with the manifest and the catalog: its ids
        file holds the ids its digest names, the matrix has ``(N + 1, dim)`` rows of the
        manifest's dtype, both masks are ``(N + 1,)`` bools, the padding row is never
        done, rows flagged as failed are zero and done rows are finite. Raises
        `StoreError` listing every problem; returns per encoder the rows ``done``,
        ``failed`` and ``pending`` (flagged failed by a commit that was interrupted
        before its done mask: encoded again by the next run).

        What an interrupted job may leave is not a problem: rows written but not yet
        marked done, temporary files of a write (``.*.tmp``)."""
        problems: list[str] = []
        summary: dict[str, dict[str, int]] = {}
        ids_file = self.folder / f"ids-{self.digest}.json"
        try:
            stored = json.loads(ids_file.read_bytes())
            if _digest([str(i) for i in stored]) != self.digest or stored != self.item_ids:
                problems.append(f"{ids_file} does not hold the ids its name's digest names")
        except (OSError, ValueError) as err:
            problems.append(f"{ids_file} is unreadable ({err})")
        for name, info in self._manifest.items():
            if info["ids"] != self.digest:
                problems.append(f"{name}: aligned with ids {info['ids']}, not the catalog's "
                                f"{self.digest}")
                continue
            try:
                matrix = np.load(self._file(name), mmap_mode="r")
                done, failed = self.done(name), self.failed(name)
            except (OSError, ValueError) as err:
                problems.append(f"{name}: unreadable file ({err})")
                continue
            rows = self.num_rows
            if matrix.shape != (rows, info["dim"]) or matrix.dtype != np.dtype(info["dtype"]):
                problems.append(f"{self._file(name)}: {matrix.dtype} {matrix.shape}, the "
                                f"manifest says {info['dtype']} ({rows}, {info['dim']})")
                continue
            misshapen = [f"{self._file(name, part)}: {mask.dtype} {mask.shape}, expected "
                         f"bool ({rows},)" for part, mask in ((".done", done),
                                                              (".failed", failed))
                         if mask.shape != (rows,) or mask.dtype != bool]
            if misshapen:
                problems.extend(misshapen)
                continue
            if done[0]:
                problems.append(f"{name}: the padding row 0 is marked done")
            flagged = np.flatnonzero(done & failed)
            if len(flagged) and np.any(matrix[flagged] != 0):
                problems.append(f"{name}: rows flagged as failed are not zero")
            usable = np.flatnonzero(done & ~failed)
            for start in range(0, len(usable), 65_536):  # bounded memory on big stores
                if not np.isfinite(matrix[usable[start:start + 65_536]]).all():
                    problems.append(f"{name}: done rows hold NaN or infinity")
                    break
            problems.extend(self._step_problems(name, info, done & ~failed))
            summary[name] = {"rows": rows - 1, "done": int(done[1:].sum()),
                             "failed": int((done & failed)[1:].sum()),
                             "pending": int((failed & ~done)[1:].sum())}
        if problems:
            raise StoreError(f"embedding store {self.folder}: " + "; ".join(problems))
        return summary

    def _step_problems(self, name: str, info: dict[str, Any], usable: np.ndarray) -> list[str]:
        """What is wrong with a sequence encoder's steps and lengths (`validate`)."""
        steps = int(info.get("steps", 0))
        if not steps:
            return []
        try:
            array = np.load(self._file(name, ".steps"), mmap_mode="r")
            lengths = np.load(self._file(name, ".lengths"))
        except (OSError, ValueError) as err:
            return [f"{name}: unreadable step file ({err})"]
        shape = (self.num_rows, steps, info["dim"])
        if array.shape != shape or array.dtype != STEPS_DTYPE:
            return [f"{self._file(name, '.steps')}: {array.dtype} {array.shape}, expected "
                    f"float16 {shape}"]
        if lengths.shape != (self.num_rows,) or lengths.dtype != np.int32:
            return [f"{self._file(name, '.lengths')}: {lengths.dtype} {lengths.shape}, "
                    f"expected int32 ({self.num_rows},)"]
        problems = []
        used = lengths[usable]
        if np.any((used < 1) | (used > steps)):
            problems.append(f"{name}: done rows have step lengths outside 1..{steps}")
        rows = np.flatnonzero(usable)
        for start in range(0, len(rows), 4096):  # bounded memory on big stores
            if not np.isfinite(array[rows[start:start + 4096]]).all():
                problems.append(f"{name}: done rows' steps hold NaN or infinity")
                break
        return problems

    # ---- writing ---------------------------------------------------------------------
    def prepare(self, name: str, dim: int, version: str, reads: str,
                dtype: str = "float32", steps: int = 0) -> None:
        """Make sure ``name`` has a matrix for this encoder version; a different version
        or dim starts it afresh (old vectors would not be comparable with new ones).
        ``steps``: a sequence encoder's most steps per item (their files are made too)."""
        wanted: dict[str, Any] = {"dim": dim, "dtype": dtype, "version": version,
                                  "reads": reads, "ids": self.digest}
        if steps:
            wanted["steps"] = steps
        if self._manifest.get(name) == wanted:
            return
        if steps:  # before the matrix: a manifest naming steps always finds their files
            self._zeros(self._file(name, ".steps"), (self.num_rows, steps, dim), STEPS_DTYPE)
            self._zeros(self._file(name, ".lengths"), (self.num_rows,), np.int32)
        self._create(name, np.zeros((self.num_rows, dim), dtype), np.zeros(self.num_rows, bool),
                     np.zeros(self.num_rows, bool))
        self._manifest[name] = wanted
        self._save_manifest()

    def write(self, name: str, rows: np.ndarray, vectors: np.ndarray,
              failed: np.ndarray | None = None) -> None:
        """Store ``vectors`` at item indices ``rows`` and mark them done (and failed)."""
        self.write_rows(name, rows, vectors)  # rows on disk before they are marked done
        self.mark(name, rows, failed)

    def write_rows(self, name: str, rows: np.ndarray, vectors: np.ndarray) -> None:
        """Write ``vectors`` at item indices ``rows`` into the matrix and flush them,
        without marking them done (`mark` does): several processes may each write
        disjoint rows of one store at once (`modrec embed` under torchrun)."""
        try:
            array = np.load(self._file(name), mmap_mode="r+")
            array[rows] = vectors.astype(array.dtype)
            array.flush()
            del array
        except OSError as err:  # unmarked rows count as missing: nothing is lost
            raise WriteError(self._file(name), err) from err

    def write_steps(self, name: str, rows: np.ndarray, steps: np.ndarray,
                    lengths: np.ndarray) -> None:
        """Write a sequence encoder's ``steps`` (B, S, dim) and ``lengths`` (B,) at item
        indices ``rows`` and flush them, before `mark` (as `write_rows`)."""
        for part, values in ((".steps", steps), (".lengths", lengths)):
            path = self._file(name, part)
            try:
                array = np.load(path, mmap_mode="r+")
                array[rows] = values.astype(array.dtype)
                array.flush()
                del array
            except OSError as err:
                raise WriteError(path, err) from err

    @staticmethod
    def _zeros(path: Path, shape: tuple[int, ...], dtype: Any) -> np.memmap:
        """A new zero ``.npy`` at ``path`` (atomic), written through a memory map so that
        a large one never sits in memory whole; returned memory-mapped for writing."""
        def write(tmp: Path) -> None:
            array = np.lib.format.open_memmap(tmp, "w+", dtype, shape)
            array.flush()
            del array
        replace_atomic(path, write)
        return np.lib.format.open_memmap(path, mode="r+")

    def mark(self, name: str, rows: np.ndarray, failed: np.ndarray | None = None) -> None:
        """Mark ``rows`` done (and ``failed``) by replacing both masks atomically; the
        rows must already be flushed (`write_rows`). One process at a time: two
        concurrent markers would each replace the masks and lose the other's rows."""
        done, flags = self.done(name), self.failed(name)
        done[rows] = True
        flags[rows] = False if failed is None else failed
        _save_npy(self._file(name, ".failed"), flags)
        _save_npy(self._file(name, ".done"), done)

    def _create(self, name: str, matrix: np.ndarray, done: np.ndarray,
                failed: np.ndarray) -> None:
        _save_npy(self._file(name), matrix)
        _save_npy(self._file(name, ".failed"), failed)
        _save_npy(self._file(name, ".done"), done)

    def _save_manifest(self) -> None:
        text = json.dumps({"encoders": self._manifest}, indent=2)
        write_text_atomic(self.folder / "manifest.json", text)

    def _realign(self, name: str, info: dict[str, Any]) -> None:
        """Re-index one matrix from the ids it was built for to the current ones."""
        old_digest = info["ids"]
        stored = json.loads((self.folder / f"ids-{old_digest}.json").read_text())
        position = {item_id: row for row, item_id in enumerate(stored) if row > 0}
        source = np.array([position.get(i, -1) for i in self.item_ids])
        source[0] = -1
        known = source >= 0
        old = np.load(self._file(name, digest=old_digest))
        matrix = np.zeros((self.num_rows, info["dim"]), dtype=old.dtype)
        matrix[known] = old[source[known]]
        done = np.zeros(self.num_rows, bool)
        failed = np.zeros(self.num_rows, bool)
        done[known] = np.load(self._file(name, ".done", old_digest))[source[known]]
        failed[known] = np.load(self._file(name, ".failed", old_digest))[source[known]]
        parts = ["", ".done", ".failed"]
        if info.get("steps"):
            parts += [".steps", ".lengths"]
            self._realign_steps(name, info, old_digest, source, known)
        self._create(name, matrix, done, failed)
        self._manifest[name] = {**info, "ids": self.digest}
        self._save_manifest()  # the commit point: the new files are in charge now
        for part in parts:
            self._file(name, part, old_digest).unlink(missing_ok=True)


    def _realign_steps(self, name: str, info: dict[str, Any], old_digest: str,
                       source: np.ndarray, known: np.ndarray) -> None:
        old = np.load(self._file(name, ".steps", old_digest), mmap_mode="r")
        steps = self._zeros(self._file(name, ".steps"), (self.num_rows, *old.shape[1:]),
                            STEPS_DTYPE)
        for start in range(0, self.num_rows, 4096):  # bounded memory on big stores
            block = slice(start, start + 4096)
            take = known[block]
            steps[start:start + 4096][take] = old[source[block][take]]
        steps.flush()
        del steps
        lengths = np.zeros(self.num_rows, np.int32)
        lengths[known] = np.load(self._file(name, ".lengths", old_digest))[source[known]]
        _save_npy(self._file(name, ".lengths"), lengths)


def normalize_rows(matrix: np.ndarray, eps: float = 1e-8) -> np.ndarray:
    """Each row divided by its L2 norm, as a new array (so cosine is a dot product). Norms
    below ``eps`` divide by ``eps`` instead: zero rows (items without a vector) stay zero
    rather than becoming NaN."""
    return matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), eps)


def content_matrix(store: EmbeddingStore, encoders: list[str]) -> np.ndarray:
    """``(N + 1, C)`` float32: the chosen encoders' rows side by side, each block
    L2-normalised so that no modality dominates by scale; items never encoded or
    flagged as failed are zero. Row 0 (padding) is zero."""
    if not encoders:
        raise UsageError("no encoders given: name the stored embeddings to use "
                         "(e.g. --encoder text)")
    blocks = []
    for name in map(store_name, encoders):
        block = np.asarray(store.matrix(name), dtype=np.float32).copy()
        usable = store.done(name) & ~store.failed(name)
        missing = int((~usable[1:]).sum())
        if missing:
            log.warning("%s: %d of %d items have no %s vector; they get zeros", store.folder,
                        missing, store.num_rows - 1, name)
        block[~usable] = 0.0
        blocks.append(normalize_rows(block))
    return np.concatenate(blocks, axis=1)
