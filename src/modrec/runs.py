"""The run directory's owner: everything that reads or writes a run folder goes
through here, so that evaluation, serving and the CLI need nothing from training.

A run folder::

    config.json      the RunConfig (flat sections, as in YAML) plus what was written
                     beside it: run_format, dataset_info (with a fingerprint of the
                     data), protocol, and the resumes with what they changed
    model.pt         best weights (state dict; a content tower's matrix is in it)
    checkpoint.pt    the latest epoch's resumable state (see train/checkpoint.py)
    metrics.jsonl    one line per epoch record
    results.json     test metrics at the best validation epoch, with the protocol
    dataset/         a snapshot of the dataset it was trained on (a modrec dataset
                     folder): item ids in index order, titles and other item columns,
                     user ids, every user's history
    known.npy        (N + 1,) bool: the items that occur in the training split
    item_table/      only with model.item_table=sharded: the best ID item table in
                     parts, ``<first row>.pt``, each written by the rank that holds those
                     rows (model.pt then holds every other weight)
    checkpoint_table/<epoch>/rank<r>.pt
                     only with model.item_table=sharded: rank r's rows of the latest
                     checkpoint's table and their optimiser state (checkpoint.pt names
                     the epoch; parts of other epochs are left by an interrupted save)

`load_run` reads only this folder: a run copied to a machine without the data
directory loads, recommends and evaluates (the split is recomputed from the snapshot).

Formats: folders written before 2026-12-03 (format 1) have no snapshot and an older
config section; `load_config` reads their config, and `load_run` rebuilds the
snapshot from the named dataset once (that needs the data) and saves it into the
folder when it can. Weights and checkpoints are loaded with ``weights_only=True``
only: a ``.pt`` file is a pickle, and a crafted pickle runs code when it is unpickled
with the full unpickler.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import pickle
import shutil
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, BinaryIO, cast

import numpy as np
import torch
from torch import nn

from modrec.atomic import WriteError, append_line, replace_atomic, write_text_atomic
from modrec.config import RUN_FORMAT, RunConfig, load_config
from modrec.data import Dataset, EvalSet, Split, load_dataset
from modrec.data.dataset import DataFormatError
from modrec.data.splits import cut_and_split
from modrec.errors import ModrecError
from modrec.eval import NonFiniteScores, evaluate
from modrec.models import Scorer, build_model

log = logging.getLogger(__name__)


class RunError(ModrecError, ValueError):
    """A run directory (or a file in it) is missing, incomplete or not what modrec
    wrote. The message names the path and what to do."""


def load_tensors(path: Path, map_location: str | torch.device = "cpu") -> Any:
    """A ``.pt`` file of tensors, plain containers and numbers, never code."""
    if not path.exists():
        raise RunError(f"{path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, TypeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise RunError(
            f"{path} is not a weights file modrec can load safely ({first}). modrec loads "
            "only tensors and plain values, never objects that could run code; if this "
            "file came from elsewhere, do not trust it. Retrain, or restore the file "
            "from the run that wrote it.") from None


def save_tensors(obj: Any, path: Path) -> None:
    """``obj`` into ``path`` atomically. torch.save writes through its own C++ writer,
    which turns the failed write of a full disk into a RuntimeError about stream
    positions ("unexpected pos ..."); it writes through `_Sink` here, which keeps the
    OSError to raise instead, so that `replace_atomic` names the file and the cause."""
    def write(tmp: Path) -> None:
        with tmp.open("wb") as file:
            sink = _Sink(file)
            try:
                torch.save(obj, cast(BinaryIO, sink))
            except RuntimeError:
                if sink.error is not None:
                    raise sink.error from None
                raise
    replace_atomic(path, write)


class _Sink:
    """The file-like object torch.save writes to: ``file``, remembering the first
    OSError a write raised (torch's writer reports only that the write came up short)."""

    def __init__(self, file: BinaryIO) -> None:
        self.file = file
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return self.file.write(data)
        except OSError as err:
            self.error = self.error or err
            raise

    def flush(self) -> None:
        self.file.flush()


class RunDir:
    """The files of one run folder, by name; every write is atomic (a reader sees the
    old file or the new one)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    config_file = property(lambda self: self.folder / "config.json")
    weights_file = property(lambda self: self.folder / "model.pt")
    checkpoint_file = property(lambda self: self.folder / "checkpoint.pt")
    metrics_file = property(lambda self: self.folder / "metrics.jsonl")
    results_file = property(lambda self: self.folder / "results.json")
    dataset_folder = property(lambda self: self.folder / "dataset")
    known_file = property(lambda self: self.folder / "known.npy")
    table_folder = property(lambda self: self.folder / "item_table")
    checkpoint_parts_folder = property(lambda self: self.folder / "checkpoint_table")

    @property
    def finished(self) -> bool:
        return self.results_file.exists()

    @property
    def trained(self) -> bool:
        """Training has written weights here (a checkpoint, best weights or results),
        finished or not: only ``--resume`` trains into such a folder again."""
        return any(f.exists() for f in (self.results_file, self.checkpoint_file,
                                        self.weights_file))

    def epoch_reached(self) -> int | None:
        """The last epoch training recorded: metrics.jsonl's last record, or what
        bundle.json recorded for an exported unfinished run (None: none)."""
        epoch = max((int(r.get("epoch", 0)) for r in self.metrics()), default=None)
        if epoch is None and (self.folder / "bundle.json").exists():
            with contextlib.suppress(RunError, KeyError, TypeError, ValueError):
                epoch = int(_read_json(self.folder / "bundle.json")["epoch_reached"])
        return epoch

    def unfinished(self) -> str | None:
        """None for a finished run (results.json); else how far its training got, as
        words for a message: "stopped after epoch 2 of 5"."""
        if self.finished:
            return None
        epoch, planned = self.epoch_reached(), None
        with contextlib.suppress(RunError, KeyError, TypeError, ValueError):
            planned = int(_read_json(self.config_file)["train"]["epochs"])
        if epoch is None:
            return "stopped before its first epoch ended"
        return f"stopped after epoch {epoch}" + (f" of {planned}" if planned else "")

    def create(self) -> None:
        """Make the folder, or take over one a killed run left: its snapshot put back
        if the kill fell between the two renames that replace it, and the temporary
        files of interrupted writes removed (only the run's one writer calls this)."""
        if self.folder.is_dir() and not self.config_file.exists():
            # Never write a run into a folder of other files (``--out .``), nor clean one.
            foreign = sorted(p.name for p in self.folder.iterdir() if not _leftover(p))
            if foreign:
                raise RunError(f"{self.folder} exists and is not a run directory (it holds "
                               f"{', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}"
                               "); choose a new or empty --out")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise RunError(f"cannot create the run directory {self.folder}: "
                           f"{err.strerror or err}") from None
        self._recover_snapshot()
        for leftover in filter(_leftover, self.folder.iterdir()):
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)

    def _recover_snapshot(self) -> None:
        """`Dataset.save` swaps folders by two renames; a kill between them leaves the
        previous snapshot as ``.dataset.old-PID`` and no ``dataset/``: move it back."""
        if (self.dataset_folder / "manifest.json").exists():
            return
        for old in sorted(self.folder.glob(".dataset.old-*")):
            if (old / "manifest.json").exists() and not self.dataset_folder.exists():
                try:
                    old.rename(self.dataset_folder)
                except OSError:
                    return
                log.info("%s: restored the dataset snapshot an interrupted write left "
                         "aside", self.folder)
                return

    # ---- config -----------------------------------------------------------------------
    def write_config(self, config: RunConfig, beside: dict[str, Any]) -> None:
        """The config plus what is written beside it (dataset_info, protocol, ...)."""
        write_text_atomic(self.config_file, json.dumps(
            {**config.to_dict(), "run_format": RUN_FORMAT, **beside}, indent=2))

    def read_config(self) -> RunConfig:
        if not self.config_file.exists():
            raise RunError(f"{self.folder} is not a run directory (no config.json)")
        return load_config(self.config_file)

    def config_extras(self) -> dict[str, Any]:
        """What config.json holds beside the config itself (empty when there is none)."""
        if not self.config_file.exists():
            return {}
        raw = _read_json(self.config_file)
        return {k: v for k, v in raw.items() if k not in RunConfig.__dataclass_fields__}

    # ---- weights ----------------------------------------------------------------------
    def save_weights(self, state: dict[str, torch.Tensor]) -> None:
        save_tensors(state, self.weights_file)

    def load_weights(self, map_location: str | torch.device = "cpu") -> dict[str, Any]:
        """model.pt's state dict. ``known`` is never taken from it (runs before
        2026-11-30 saved it with content towers); it comes from `known.npy`."""
        if not self.weights_file.exists():
            raise RunError(f"{self.folder} has no model.pt yet; train it first")
        state = load_tensors(self.weights_file, map_location)
        if not isinstance(state, dict):
            raise RunError(f"{self.weights_file} holds no state dict")
        return {k: v for k, v in state.items() if not k.endswith("tower.known")}

    # ---- metrics and results ----------------------------------------------------------
    # ---- a sharded item table: parts written by the ranks that hold them ---------------
    def save_table_rows(self, start: int, rows: torch.Tensor) -> None:
        """Rows ``start ...`` of a sharded item table (``(R, D)``)."""
        self.table_folder.mkdir(parents=True, exist_ok=True)
        if rows.untyped_storage().nbytes() != rows.nbytes:  # a view: save its rows only
            rows = rows.clone()
        save_tensors(rows.detach().cpu(), self.table_folder / f"{start:012d}.pt")

    def clear_table(self) -> None:
        shutil.rmtree(self.table_folder, ignore_errors=True)

    def load_table_rows(self, start: int, map_location: str | torch.device = "cpu"
                        ) -> torch.Tensor:
        path = self.table_folder / f"{start:012d}.pt"
        if not path.exists():
            raise RunError(f"{path} is missing: a sharded run's item table is incomplete")
        rows: torch.Tensor = load_tensors(path, map_location)
        return rows

    def load_table(self, num_rows: int) -> torch.Tensor:
        """The whole sharded item table ``(num_rows, D)``, its parts in row order (what
        one process that serves or evaluates the run needs)."""
        parts = sorted(self.table_folder.glob("*.pt"))
        starts = [int(p.stem) for p in parts]
        rows = [self.load_table_rows(start) for start in starts]
        ends = [start + len(r) for start, r in zip(starts, rows, strict=True)]
        if not parts or starts[0] != 0 or starts[1:] != ends[:-1] or ends[-1] != num_rows:
            raise RunError(f"{self.table_folder} does not hold rows 0..{num_rows - 1} of the "
                           f"item table in consecutive parts (found {starts})")
        return torch.cat(rows)

    # ---- a sharded run's checkpoint: each rank's rows and their optimiser state ------
    def _checkpoint_part(self, epoch: int, rank: int) -> Path:
        return self.checkpoint_parts_folder / f"{epoch:06d}" / f"rank{rank:05d}.pt"

    def save_checkpoint_part(self, epoch: int, rank: int, part: dict[str, Any]) -> None:
        """Rank ``rank``'s part of the checkpoint after ``epoch`` (its own file, so ranks
        never write the same one)."""
        path = self._checkpoint_part(epoch, rank)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_tensors(part, path)

    def load_checkpoint_part(self, epoch: int, rank: int) -> dict[str, Any]:
        path = self._checkpoint_part(epoch, rank)
        if not path.exists():
            raise RunError(f"{path} is missing: the checkpoint of this sharded run is "
                           "incomplete and cannot be resumed; train into a new --out")
        part = load_tensors(path)
        if not isinstance(part, dict) or not {"rows", "optimizer"} <= part.keys():
            raise RunError(f"{path} is not a part of a modrec checkpoint (expected rows and "
                           "optimizer); train into a new --out")
        return part

    def drop_checkpoint_parts(self, keep: int) -> None:
        """The parts of every checkpoint but epoch ``keep``'s (call once checkpoint.pt
        names ``keep``: nothing reads the others again)."""
        if self.checkpoint_parts_folder.is_dir():
            for folder in self.checkpoint_parts_folder.iterdir():
                if folder.name != f"{keep:06d}":
                    shutil.rmtree(folder, ignore_errors=True)

    def append_metrics(self, record: dict[str, Any]) -> None:
        append_line(self.metrics_file, json.dumps(record))

    def metrics(self) -> list[dict[str, Any]]:
        """Every complete record; a line torn by a kill mid-write is skipped."""
        if not self.metrics_file.exists():
            return []
        records = []
        text = self.metrics_file.read_bytes().decode("utf-8", errors="replace")
        for line in text.splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = None
            if isinstance(record, dict):
                records.append(record)
            elif line.strip():
                log.warning("%s: skipping an incomplete line", self.metrics_file)
        return records

    def keep_metrics_until(self, epoch: int) -> None:
        """Drop records after ``epoch`` (and torn lines): a resume from the checkpoint
        of ``epoch`` writes the later epochs again."""
        if self.metrics_file.exists():
            kept = [r for r in self.metrics() if int(r.get("epoch", 0)) <= epoch]
            write_text_atomic(self.metrics_file, "".join(json.dumps(r) + "\n" for r in kept))

    def write_results(self, results: dict[str, Any]) -> None:
        write_text_atomic(self.results_file, json.dumps(results, indent=2))

    def results(self) -> dict[str, Any]:
        if not self.finished:
            raise RunError(f"{self.folder} has no results.json: the run has not finished")
        return _read_json(self.results_file)

    # ---- the dataset snapshot ---------------------------------------------------------
    def write_snapshot(self, dataset: Dataset, known: np.ndarray) -> None:
        """The dataset and the ``known`` mask, unless the snapshot already holds them."""
        if (self.dataset_folder / "manifest.json").exists() and self.known_file.exists():
            try:  # a damaged snapshot is written afresh
                fingerprint = json.loads(
                    (self.dataset_folder / "manifest.json").read_bytes()).get("fingerprint")
                same = fingerprint == dataset.fingerprint() and np.array_equal(
                    np.load(self.known_file), known)
            except (OSError, ValueError, AttributeError):
                same = False
            if same:
                return
        try:
            dataset.save(self.dataset_folder)
        except WriteError:
            raise
        except OSError as err:  # Dataset.save keeps the previous snapshot on failure
            raise WriteError(self.dataset_folder, err) from err

        def write(tmp: Path) -> None:
            with tmp.open("wb") as f:
                np.save(f, known.astype(bool))
        replace_atomic(self.known_file, write)

    def snapshot(self, config: RunConfig) -> tuple[Dataset, np.ndarray]:
        """The dataset the run was trained on and its ``known`` mask."""
        self._recover_snapshot()
        if (self.dataset_folder / "manifest.json").exists() and self.known_file.exists():
            try:
                dataset = Dataset.read(self.dataset_folder)
                known = np.load(self.known_file)  # allow_pickle is off: data only
            except (OSError, ValueError) as err:
                raise RunError(f"{self.folder}: its dataset snapshot or known.npy is "
                               f"unreadable ({err}); restore them from the run that wrote "
                               "them, or delete both to rebuild them from the dataset") from None
            if known.dtype != bool or known.shape != (dataset.num_items + 1,):
                raise RunError(f"{self.known_file} is not a mask of the snapshot's "
                               f"{dataset.num_items} items (+ padding): {known.dtype} "
                               f"{known.shape}")
            return dataset, known
        # Format 1: rebuild from the named dataset, then keep it for next time.
        log.info("%s predates run snapshots: reading %s to make one", self.folder,
                 config.data.dataset)
        dataset, split = cut_and_split(
            load_dataset(config.data.dataset, config.data.format, config.data.columns,
                         config.data.consecutive_repeats),
            config.data.split, config.data.keep_last)
        known = split.known_items()
        try:
            self.write_snapshot(dataset, known)
        except (OSError, DataFormatError) as err:  # a read-only run still loads
            log.warning("could not save a snapshot into %s: %s", self.folder, err)
        return dataset, known


def _leftover(path: Path) -> bool:
    """What an interrupted write leaves in a run folder: the temporary sibling of an
    atomic file write, or `Dataset.save`'s temporary and set-aside folders."""
    return path.name.startswith(".") and (
        (path.is_file() and path.name.endswith(".tmp"))
        or (path.is_dir() and path.name.startswith(".dataset.")))


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object file of the run folder, or a `RunError` naming it."""
    try:
        raw = json.loads(path.read_bytes())
    except (OSError, ValueError) as err:
        raise RunError(f"{path} is unreadable ({err}); restore it from the run that wrote "
                       "it, or train into a new folder") from None
    if not isinstance(raw, dict):
        raise RunError(f"{path}: expected a JSON object, found {type(raw).__name__}")
    return raw


@dataclass
class Run:
    """A trained run loaded back from its folder."""

    folder: Path
    config: RunConfig
    dataset: Dataset  # the snapshot it was trained on
    model: nn.Module
    known: np.ndarray  # (N + 1,) bool: items that occur in training

    @cached_property
    def split(self) -> Split:
        """The run's split, recomputed from the snapshot (deterministic)."""
        return cut_and_split(self.dataset, self.config.data.split, self.config.data.keep_last)[1]

    @property
    def scorer(self) -> Scorer:
        return cast(Scorer, self.model)

    @torch.no_grad()
    def item_vectors(self) -> np.ndarray:
        """``(N + 1, D)`` float32: what the model scores each item with (row 0 = padding;
        items never trained on are zero in an ID tower)."""
        return self.scorer.item_vectors().float().cpu().numpy()

    def evaluate(self, evalset: EvalSet, device: str = "cpu") -> dict[str, float]:
        """Full-ranking metrics on one of the split's evaluation sets."""
        try:
            return evaluate(self.scorer, evalset, self.config.model.max_len,
                            self.config.train.eval_batch_size, device)
        except NonFiniteScores as err:
            raise RunError(f"{self.folder}: {err}; such scores cannot be ranked. Retrain "
                           "it into a new --out with a lower learning rate "
                           "(--set train.lr=...).") from None


def load_run(folder: str | Path, device: str = "cpu") -> Run:
    """Read a run folder back: config, snapshot and the best weights, on ``device``.
    Weights that hold NaN or infinite values are refused (they would score every item
    NaN); a run whose training has not finished is loaded with a warning saying so."""
    run_dir = RunDir(folder)
    config = run_dir.read_config()
    state = run_dir.load_weights(device)
    broken = [key for key, value in state.items()
              if isinstance(value, torch.Tensor) and value.is_floating_point()
              and not bool(torch.isfinite(value).all())]
    if broken:
        raise RunError(
            f"{run_dir.weights_file} holds NaN or infinite weights ({', '.join(broken[:3])}"
            f"{', ...' if len(broken) > 3 else ''}): the training that wrote them diverged, "
            "and they would score every item NaN. Retrain into a new --out with a lower "
            "learning rate (--set train.lr=...).")
    stopped = run_dir.unfinished()
    if stopped is not None:
        finish = ("finish that run and export it again"
                  if (run_dir.folder / "bundle.json").exists() else
                  f"finish it with modrec train ... --out {run_dir.folder} --resume")
        log.warning("%s: training has not finished (no results.json; it %s), so these are "
                    "the best weights up to then, not a finished model; %s",
                    run_dir.folder, stopped, finish)
    dataset, known = run_dir.snapshot(config)
    model_config = config.model
    if model_config.item_table == "sharded":
        # Trained with a sharded table: read back whole into one process, which is what
        # serving needs (its index holds every item vector anyway).
        model_config = dataclasses.replace(model_config, item_table="local")
    model = build_model(model_config, dataset.num_items, timestamps=dataset.has_timestamps)
    if config.model.item_table == "sharded":
        table = run_dir.load_table(dataset.num_items + 1)
        for key in model.state_dict():  # the tower's table, under each name it goes by
            if key.endswith("item_tower.embedding.weight") and key not in state:
                state[key] = table
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise RunError(f"{run_dir.weights_file} does not fit the model in config.json "
                       f"({str(err).splitlines()[0]})") from None
    set_known = getattr(model, "set_known", None)
    if set_known is not None:
        set_known(torch.from_numpy(known))
    model.to(device).eval()
    return Run(run_dir.folder, config, dataset, model, known)


BUNDLE_FILES = ("config.json", "model.pt", "results.json", "known.npy")
BUNDLE_FOLDERS = ("dataset", "item_table")


def export_bundle(folder: str | Path, out: str | Path,
                  embeddings: tuple[str, ...] = ("text",), unfinished: bool = False) -> Path:
    """A self-contained copy of a run for serving: its config, best weights, results,
    dataset snapshot and known mask (no checkpoint, no metrics), plus the dataset's
    stored ``embeddings`` that exist (text search reads them), and ``bundle.json``
    naming the source and each file's SHA-256. ``out`` must not exist or be empty.

    A run whose training has not finished (no results.json) is refused unless
    ``unfinished``: serving a half-trained model by accident is the harm; with it, the
    bundle records ``"finished": false`` and the epoch reached, and loading it warns."""
    import hashlib
    import shutil
    from datetime import UTC, datetime

    from modrec.content.store import EmbeddingStore, default_folder

    source, target = RunDir(folder), Path(out)
    stopped = source.unfinished() if source.config_file.exists() else None
    if stopped is not None and not unfinished:
        raise RunError(
            f"{source.folder} has not finished training (no results.json; it {stopped}): "
            "a bundle of it would serve a half-trained model. Finish it first (modrec "
            f"train ... --out {source.folder} --resume), or pass --unfinished to export its "
            "best weights so far (the bundle then records that it is unfinished).")
    run = load_run(folder)  # also makes a format-1 folder's snapshot
    if target.exists() and any(target.iterdir()):
        raise FileExistsError(f"{target} exists and is not empty; choose a new --out")
    tmp = target.with_name(f".{target.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        for name in BUNDLE_FILES:
            if (source.folder / name).exists():
                shutil.copy2(source.folder / name, tmp / name)
        for name in BUNDLE_FOLDERS:
            if (source.folder / name).is_dir():
                shutil.copytree(source.folder / name, tmp / name)
        store_folder = default_folder(run.dataset.name)
        carried = []
        if (store_folder / "manifest.json").exists():
            ids = run.dataset.items["item_id"].astype(str).tolist()
            store = EmbeddingStore(store_folder, ids)
            for name in (n for n in embeddings if n in store.names()):
                info = store.info(name)
                copy = EmbeddingStore(tmp / "embeddings", ids)
                copy.prepare(name, info.dim, info.version, info.reads, info.dtype)
                rows = np.arange(1, store.num_rows)
                copy.write(name, rows, np.asarray(store.matrix(name)[1:]),
                           store.failed(name)[1:])
                carried.append(name)
        digests = {str(p.relative_to(tmp)): hashlib.sha256(p.read_bytes()).hexdigest()
                   for p in sorted(tmp.rglob("*")) if p.is_file()}
        (tmp / "bundle.json").write_text(json.dumps({
            "exported_from": str(source.folder.resolve()),
            "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "finished": stopped is None,
            **({} if stopped is None else {"epoch_reached": source.epoch_reached()}),
            "embeddings": carried, "files": digests}, indent=2))
        if target.exists():
            target.rmdir()
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
