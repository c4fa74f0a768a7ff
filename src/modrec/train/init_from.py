"""``train.init_from`` (``modrec train --init-from RUN``): a new run that starts from a
trained run's weights instead of a fresh initialisation: the learning loop's second
half, where tomorrow's model continues today's on the events the service logged since.

The rules, applied by `warm_start` in `train.loop.setup` before anything is written:

* the same model (name) trained with a local ID table, whose parameters match the new
  model's by name and shape except the item rows; anything else (another model, a
  changed ``dim``, ``max_len``, block form or item tower, a time bias one side lacks, a
  fitted model such as popularity, a sharded table) is refused, with the settings
  that differ named;
* items are matched by external id, not by index (a dataset read from the user state
  numbers its items afresh: a new id can shift every index): an item the source run
  trained on (its ``known.npy``) gets the source's ID row; an item new to the catalog,
  or one the source never trained on (its row was untrained noise), keeps the row the
  new model was initialised with, under the run's seed, as a run without
  ``init_from`` would start it;
* a content tower's matrix is the new run's input, read from the embedding store for
  the new catalog as for any run (new items' vectors come from the encoders through
  ``modrec embed``); its projection is copied like every other parameter;
* every parameter that is not an item row is copied as it is;
* the optimiser starts afresh (AdamW's moments at zero, the learning-rate schedule at
  epoch 1): the source's moments belong to its own trajectory and item rows, and the
  bias-corrected first steps of a fresh AdamW are small. A moving average
  (``train.ema_decay``) starts from the copied weights.

So with the source's own dataset the new model scores every user exactly as the source
does before its first step (a test compares full-ranking scores). The new run records
``train.init_from`` in its config and, beside it, ``initialised_from``: the source's
folder, dataset fingerprint and how many item rows were copied.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from modrec.config import RunConfig, config_changes
from modrec.data import Dataset
from modrec.errors import ConfigError
from modrec.models.item_tower import ItemTower
from modrec.runs import RunDir, RunError

log = logging.getLogger(__name__)


def source_config(folder: str | Path) -> RunConfig:
    """The config of the run in ``folder``, after checking that it has weights."""
    folder = Path(folder)
    source = RunDir(folder)
    if not source.config_file.is_file():
        raise RunError(f"--init-from {folder}: not a run directory (no config.json); pass "
                       "the folder of a trained run (what modrec train --out wrote)")
    if not source.weights_file.is_file():
        raise RunError(f"--init-from {folder}: has no model.pt, so no weights to start "
                       "from; train it first, or pass another run")
    return source.read_config()


def model_settings(folder: str | Path) -> tuple[str, list[str]]:
    """The source run's model name and its model settings as ``--set`` overrides.

    ``modrec train --init-from RUN`` layers these under the settings given on the
    command line: the weights fix the architecture, and a preset resolves per dataset
    (``-m sasrec`` on ml-1m takes configs/ml-1m/sasrec.yaml's block form, on a user
    state file the defaults), so the preset alone would build another model than the
    one the weights fit. ``content_dim`` is left to the embedding store, as always."""
    model = source_config(folder).model
    settings = [f"model.{key}={json.dumps(value)}" for key, value in model.to_dict().items()
                if key not in ("name", "content_dim")]
    return model.name, settings


def check_source(config: RunConfig) -> RunConfig:
    """``config.train.init_from`` is a run folder with weights, of the model ``config``
    trains (cheap: before any data is read); returns the source's config."""
    folder = Path(str(config.train.init_from))
    before = source_config(folder)
    if before.model.name != config.model.name:
        raise ConfigError(
            f"--init-from {folder}: that run is a {before.model.name} model and this one "
            f"a {config.model.name}; weights start only the same model (-m "
            f"{before.model.name}), or train this one from scratch without --init-from")
    return before


def warm_start(model: nn.Module, config: RunConfig, dataset: Dataset) -> dict[str, Any]:
    """Load ``config.train.init_from``'s weights into ``model`` (fresh, built for
    ``dataset``) by the rules above; returns what was done, for config.json."""
    folder = Path(str(config.train.init_from))
    source = RunDir(folder)
    before = check_source(config)
    _check_kind(folder, before, config, model)
    stopped = source.unfinished()
    if stopped is not None:
        log.warning("--init-from %s: its training has not finished (it %s); starting from "
                    "its best weights so far", folder, stopped)
    state = source.load_weights()
    snapshot, known = source.snapshot(before)
    mine = model.state_dict()
    rows = _item_rows(model)
    _check_parameters(folder, before, config, dataset, mine, state, rows)
    old, new = _ids(snapshot), _ids(dataset)
    match = pd.Index(old).get_indexer(new)  # (N + 1,): the source's row of each item, or -1
    match[0] = 0  # padding
    take = (match >= 0) & known[np.maximum(match, 0)]
    take[0] = False  # the padding row stays as the new model made it (zero)
    loaded = {}
    for key, value in mine.items():
        if rows.get(key) == "content":  # the new catalog's content, from the store
            loaded[key] = value
        elif rows.get(key) == "id":
            table = value.clone()
            target = torch.from_numpy(np.flatnonzero(take))
            table[target] = state[key][torch.from_numpy(match[take])].to(table.dtype)
            loaded[key] = table
        else:
            loaded[key] = state[key]
    model.load_state_dict(loaded)
    record = {"run": str(folder.resolve()), "model": before.model.name,
              "dataset": before.data.dataset,
              "dataset_fingerprint": snapshot.fingerprint(),
              "items_copied": int(take.sum()), "items_fresh": int(len(new) - 1 - take.sum()),
              "source_items_left_out": int(len(old) - 1 - len(np.unique(match[match > 0])))}
    log.info("initialised from %s: %d item rows copied, %d fresh (new or untrained there), "
             "%d of its items not in this catalog", folder, record["items_copied"],
             record["items_fresh"], record["source_items_left_out"])
    return record


def _ids(dataset: Dataset) -> np.ndarray:
    """External item ids by index, ``[""]`` for the padding row 0."""
    items = dataset.items.sort_values("item")["item_id"].astype(str).tolist()
    return np.array(["", *items], dtype=object)


def _check_kind(folder: Path, before: RunConfig, config: RunConfig, model: nn.Module) -> None:
    """A model trained (not fitted), with tables that one process holds."""
    if getattr(model, "fit", None) is not None:
        raise ConfigError(
            f"--init-from {folder}: {config.model.name} is fitted by counting, not trained, "
            "so there are no weights to start from; train it without --init-from")
    if "sharded" in (before.model.item_table, config.model.item_table):
        raise ConfigError(
            f"--init-from {folder}: a sharded item table (model.item_table=sharded) cannot "
            "be initialised from a run yet; train with model.item_table=local, or from "
            "scratch")


def _item_rows(model: nn.Module) -> dict[str, str]:
    """The state-dict keys of ``model`` that are indexed by item: ``"id"`` for an item
    tower's ID table, ``"content"`` for its content matrix (every name each goes by:
    a tower held by the model and by its encoder appears twice)."""
    rows = {}
    for prefix, module in model.named_modules(remove_duplicate=False):
        if isinstance(module, ItemTower):
            dot = f"{prefix}." if prefix else ""
            rows[f"{dot}embedding.weight"] = "id"
            rows[f"{dot}content"] = "content"
    return rows


def _check_parameters(folder: Path, before: RunConfig, config: RunConfig, dataset: Dataset,
                      mine: dict[str, torch.Tensor], state: dict[str, Any],
                      rows: dict[str, str]) -> None:
    """Every parameter by name, and by shape except along the item rows."""
    missing = sorted(set(mine) - set(state))
    extra = sorted(set(state) - set(mine))
    wrong = [f"{key} {tuple(state[key].shape)} there, {tuple(value.shape)} here"
             for key, value in mine.items() if key in state and _shape(key, rows, state[
                 key]) != _shape(key, rows, value)]
    if not (missing or extra or wrong):
        return
    problems = []
    if missing:
        problems.append(f"parameters it lacks: {', '.join(missing[:3])}"
                        + (", ..." if len(missing) > 3 else ""))
    if extra:
        problems.append(f"parameters this model lacks: {', '.join(extra[:3])}"
                        + (", ..." if len(extra) > 3 else ""))
    if wrong:
        problems.append(f"other shapes: {'; '.join(wrong[:3])}" + ("; ..." if len(wrong) > 3
                                                                  else ""))
    raise RunError(f"--init-from {folder}: its {before.model.name} does not fit the model "
                   f"this run builds ({'; '.join(problems)}){_why(folder, before, config, dataset)}"
                   ". Start from a run trained with the same model settings, or train from "
                   "scratch without --init-from")


def _shape(key: str, rows: dict[str, str], value: torch.Tensor) -> tuple[int, ...]:
    """A parameter's shape, less its item dimension (the first) for item rows."""
    shape = tuple(value.shape)
    return shape[1:] if key in rows else shape


def _why(folder: Path, before: RunConfig, config: RunConfig, dataset: Dataset) -> str:
    """The likely cause of a mismatch: the model settings that differ, and timestamps
    one dataset has and the other lacks (a model may learn from elapsed time)."""
    changes = {key: change for key, change in config_changes(before, config).items()
               if key.startswith("model.") and key != "model.content_dim"}
    parts = [f"{key} {old!r} there, {new!r} here" for key, (old, new) in changes.items()]
    info = RunDir(folder).config_extras().get("dataset_info", {})
    if isinstance(info, dict) and "timestamps" in info and \
            bool(info["timestamps"]) != dataset.has_timestamps:
        parts.append("its dataset had timestamps and this one has none" if info["timestamps"]
                     else "this dataset has timestamps and its dataset had none")
    return f"; settings that differ: {', '.join(parts)}" if parts else ""
