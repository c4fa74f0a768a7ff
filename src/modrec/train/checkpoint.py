"""Everything a resumed run needs to continue as if it had never stopped, in one file.

A checkpoint holds the weights (and their moving average, with ``train.ema_decay``),
the optimiser's moments, the loop's counters and the state of all three random
generators (NumPy's for batch order and cloze masks, the torch generator for sampled
negatives, torch's global one for dropout). The learning rate is a pure function of
the epoch (`epoch_lr`), so no scheduler state is needed. It is written atomically after
every epoch and loaded with ``weights_only=True``: tensors and plain values only.

A run with a sharded item table keeps the table out of this file: every rank writes its
rows and their optimiser state as a part of its own (`RunDir.save_checkpoint_part`),
and this file, written after all of them, holds the rest and names those parts
(``table_parts``). Until it is replaced, it names the previous epoch's parts, which are
only deleted after; so a run killed while it saves resumes from the checkpoint before.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from modrec.runs import RunError, load_tensors, save_tensors


@dataclasses.dataclass
class Progress:
    """The loop's counters: where training is and what validation has chosen."""

    epoch: int = 0  # epochs finished
    best: float = -math.inf  # best validation score so far
    best_epoch: int = -1
    bad_evals: int = 0  # validation passes since the best one
    train_seconds: float = 0.0  # training time, evaluation not counted


class Checkpoint:
    def __init__(self, path: Path) -> None:
        self.path = path

    def exists(self) -> bool:
        return self.path.exists()

    def save(self, model: nn.Module, optimizer: torch.optim.Optimizer,
             averaged: AveragedModel | None, progress: Progress, rng: np.random.Generator,
             generator: torch.Generator, ranks: list[Any] | None = None,
             weights: dict[str, torch.Tensor] | None = None,
             table_parts: dict[str, int] | None = None) -> None:
        """``ranks``: under data parallelism, every rank's (numpy, torch, cpu) generator
        states, so that each rank resumes its own streams. ``weights``: what to save
        instead of ``model.state_dict()`` (a sharded run's weights without the table);
        ``table_parts``: which parts hold the table (``epoch``, ``world_size``)."""
        save_tensors({"model": model.state_dict() if weights is None else weights,
                      "optimizer": optimizer.state_dict(),
                      "ema": None if averaged is None else averaged.state_dict(),
                      "state": dataclasses.asdict(progress),
                      "numpy_rng": rng.bit_generator.state,
                      "torch_rng": generator.get_state(), "cpu_rng": torch.get_rng_state(),
                      **({"rank_rngs": ranks} if ranks is not None else {}),
                      **({"table_parts": table_parts} if table_parts is not None else {})},
                     self.path)

    def progress(self) -> Progress:
        """The counters alone (to decide what a resume may change before loading)."""
        return _progress(self._load())

    def table_parts(self) -> dict[str, int] | None:
        """Which parts hold a sharded run's table (None: the table is in this file)."""
        parts: dict[str, int] | None = self._load().get("table_parts")
        return parts

    def restore(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                averaged: AveragedModel | None, rng: np.random.Generator,
                generator: torch.Generator, rank: int = 0,
                load_weights: Callable[[dict[str, Any]], object] | None = None) -> Progress:
        """Put everything back as it was after the saved epoch (``rank``'s own random
        streams, for a data-parallel run); returns the counters. ``load_weights``
        loads the saved weights instead of ``model.load_state_dict`` (a sharded run's)."""
        saved = self._load()
        (load_weights or model.load_state_dict)(
            {k: v for k, v in saved["model"].items() if not k.endswith("tower.known")})
        optimizer.load_state_dict(saved["optimizer"])
        if averaged is not None and saved.get("ema") is not None:
            averaged.load_state_dict(saved["ema"])
        streams = (saved["numpy_rng"], saved["torch_rng"], saved["cpu_rng"])
        ranks = saved.get("rank_rngs")
        if ranks is not None and rank < len(ranks):
            streams = ranks[rank]
        rng.bit_generator.state = streams[0]
        generator.set_state(streams[1])
        torch.set_rng_state(streams[2])
        return _progress(saved)

    def _load(self) -> dict[str, Any]:
        saved = load_tensors(self.path)
        if not isinstance(saved, dict) or not {"model", "optimizer", "state"} <= saved.keys():
            raise RunError(f"{self.path} is not a modrec checkpoint (expected model, "
                           "optimizer and state); delete it to start the run afresh")
        return saved


def _progress(saved: dict[str, Any]) -> Progress:
    fields = {f.name for f in dataclasses.fields(Progress)}
    return Progress(**{k: v for k, v in saved["state"].items() if k in fields})
