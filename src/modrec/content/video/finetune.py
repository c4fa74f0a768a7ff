"""Fine-tuning I3D's last block for a clip classifier (issue 36, item 3): Mixed_5c with
its Kinetics-400 weights, the reference's pooling and a fresh linear classifier, trained
on stored Mixed_5b outputs so that the frozen 16 blocks below run once per clip, not
once per epoch.

    maps        (N, 832, T', 7, 7)  Mixed_5b of each clip: ``I3D.endpoints(x,
                                    last="Mixed_5b")["Mixed_5b"]`` (T' = frames / 8)
    LastBlock   maps -> Mixed_5c (B, 1024, T', 7, 7) -> `I3D.pool` (B, 1024) -> dropout
                -> linear (B, classes)

`finetune` trains in two stages, as LP-FT does (Kumar et al., "Fine-Tuning can Distort
Pretrained Features and Underperform Out-of-Distribution", ICLR 2022): a linear probe
first (the classifier alone on the frozen block's pooled vectors: the block runs once,
so it is cheap), then the block and the classifier together from the probe, at a
smaller learning rate. A fresh random classifier would send large gradients into the
pretrained block in the first steps; starting from the probe it does not. Each stage
keeps its epoch with the best validation accuracy (ties: the lower validation loss),
and stage 2's epoch 0 is the probe itself, so fine-tuning is kept only where it does
better on the validation rows (``keep_probe=False``: the best fine-tuned epoch, always).
Measured on fight-surveillance (benchmarks/fight_finetune.py, docs/benchmarks.md
``fight-finetune``): at most 2 points over the frozen block, within a fold's spread.

Batch norm keeps Kinetics' running statistics (its modules stay in eval mode while the
rest trains): statistics of batches of 16 from a few hundred clips would be noisy; its
learned offsets train with the convolutions.

Augmentation (``augment``): ``flip-map`` flips a training clip's stored map left to
right at random (cheap; not what the map of a flipped clip would be, since the
convolutions below are not mirror-symmetric); ``flip-input`` reads, at random, the map
extracted from the horizontally flipped frames instead (``flipped``: a second
extraction). Validation and test rows always read the original map.

Shapes: N clips, B a batch, C channels, T' steps (8 frames each), H and W the 7 x 7 grid.
CPU, fixed seeds: the same inputs give the same model.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from modrec.content.video.i3d import DIM, I3D
from modrec.errors import UsageError

log = logging.getLogger(__name__)

INPUT = "Mixed_5b"  # the stored endpoint
BLOCK = "Mixed_5c"  # the block that trains
CHANNELS = 832  # Mixed_5b's width
GRID = 7  # Mixed_5b's height and width for 224 x 224 frames
EVAL_BATCH = 32  # maps through the block at once when nothing trains
PROBE_PATIENCE = 20  # probe epochs without a better validation score before stopping
Augment = Literal["none", "flip-map", "flip-input"]
AUGMENTS: tuple[Augment, ...] = ("none", "flip-map", "flip-input")


class LastBlock(nn.Module):
    """Mixed_5c, the reference's pooling, dropout and a linear classifier. Build it from
    a loaded I3D with `last_block`."""

    def __init__(self, block: nn.Module, classes: int, dropout: float = 0.3) -> None:
        super().__init__()
        self.block = block
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(DIM, classes)

    def train(self, mode: bool = True) -> LastBlock:
        """Dropout follows ``mode``; batch norm always normalises with the stored
        statistics (see the module docstring)."""
        super().train(mode)
        for module in self.block.modules():
            if isinstance(module, nn.BatchNorm3d):
                module.eval()
        return self

    def pooled(self, maps: torch.Tensor) -> torch.Tensor:
        """Mixed_5b (B, 832, T', 7, 7) -> the clip vectors (B, 1024), as `I3D.embed`."""
        return I3D.pool(self.block(maps))

    def classify(self, pooled: torch.Tensor) -> torch.Tensor:
        """(B, 1024) -> (B, classes) logits."""
        return self.classifier(self.dropout(pooled))

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        return self.classify(self.pooled(maps))


def last_block(i3d: I3D, classes: int, dropout: float = 0.3) -> LastBlock:
    """A copy of ``i3d``'s Mixed_5c (training leaves ``i3d`` as it was) with a fresh
    classifier for ``classes`` classes."""
    return LastBlock(copy.deepcopy(i3d.blocks[BLOCK]), classes, dropout)


def make_optimizer(model: LastBlock, lr: float, weight_decay: float,
                   block: bool) -> torch.optim.AdamW:
    """AdamW over the classifier, and over the block's convolutions and batch-norm
    offsets when ``block``; a block left out gets no gradients (no backward through it)."""
    model.block.requires_grad_(block)
    parameters = list(model.classifier.parameters())
    if block:
        parameters += list(model.block.parameters())
    return torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)


def training_step(model: LastBlock, optimizer: torch.optim.Optimizer, maps: torch.Tensor,
                  y: torch.Tensor) -> float:
    """One AdamW step on a batch of maps (B, 832, T', 7, 7) and classes (B,): its loss."""
    model.train()
    loss = F.cross_entropy(model(maps), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return float(loss.detach())


@dataclass(frozen=True)
class FinetuneSettings:
    """One training of `finetune`: the probe's, then the block's."""

    lr: float = 1e-4  # stage 2, block and classifier; 0: the probe alone (block frozen)
    probe_lr: float = 1e-3
    weight_decay: float = 1e-2
    dropout: float = 0.3
    batch_size: int = 16
    epochs: int = 10  # stage 2's epochs at most
    patience: int = 4  # stage 2's epochs without a better validation score
    probe_epochs: int = 150
    augment: Augment = "none"
    keep_probe: bool = True  # False: stage 2 keeps its best epoch from 1 on, never the probe
    seed: int = 0

    def __post_init__(self) -> None:
        if self.augment not in AUGMENTS:
            raise UsageError(f"unknown augmentation {self.augment!r}; choose from "
                             f"{', '.join(AUGMENTS)}")
        if min(self.batch_size, self.epochs, self.patience, self.probe_epochs) < 1:
            raise UsageError("batch_size, epochs, patience and probe_epochs must be at "
                             f"least 1, got {self.batch_size}, {self.epochs}, "
                             f"{self.patience}, {self.probe_epochs}")
        if self.lr < 0 or self.probe_lr <= 0:
            raise UsageError(f"learning rates: lr >= 0 (0 keeps the block frozen) and "
                             f"probe_lr > 0, got {self.lr} and {self.probe_lr}")


@dataclass
class Finetuned:
    model: LastBlock
    settings: FinetuneSettings
    valid_accuracy: float
    valid_loss: float
    probe_accuracy: float  # the probe's validation accuracy (stage 2's epoch 0)
    epoch: int  # stage 2's kept epoch: 0 is the probe, the block as loaded
    seconds: float
    history: list[tuple[float, float]]  # stage 2's validation (accuracy, loss) by epoch, 0 on

    @torch.no_grad()
    def probabilities(self, maps: np.ndarray) -> np.ndarray:
        """Mixed_5b maps (N, 832, T', 7, 7) -> (N, classes) class probabilities."""
        check_maps(maps)
        self.model.eval()
        return _logits(self.model, torch.from_numpy(maps),
                       torch.arange(len(maps))).softmax(-1).numpy()


def check_maps(maps: np.ndarray, what: str = "maps") -> None:
    if maps.ndim != 5 or maps.shape[1] != CHANNELS or maps.shape[3:] != (GRID, GRID) \
            or maps.shape[2] < 2:
        raise UsageError(
            f"{what}: the last block reads I3D's {INPUT} outputs, (clips, {CHANNELS}, "
            f"steps >= 2, {GRID}, {GRID}) (I3D.endpoints(x, last={INPUT!r}) of 224 x 224 "
            f"clips of at least 16 frames); got {tuple(maps.shape)}")


def _batch(maps: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Rows of the stored maps (float16 on disk) as float32."""
    return maps[rows].float()


def _logits(model: LastBlock, maps: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    return torch.cat([model(_batch(maps, part)) for part in rows.split(EVAL_BATCH)])


@torch.no_grad()
def _pooled(model: LastBlock, maps: torch.Tensor, rows: torch.Tensor,
            flip: bool = False) -> torch.Tensor:
    """The frozen block's clip vectors of ``rows`` (len(rows), 1024), of the maps
    flipped left to right when ``flip``."""
    model.eval()
    return torch.cat([model.pooled(_batch(maps, part).flip(-1) if flip else
                                   _batch(maps, part)) for part in rows.split(EVAL_BATCH)])


def _score(logits: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(accuracy, -loss): larger is better, as the epochs are compared."""
    return (float((logits.argmax(1) == y).float().mean()), -float(F.cross_entropy(logits, y)))


def _probe(model: LastBlock, maps: torch.Tensor, other: torch.Tensor | None, y: torch.Tensor,
           train: torch.Tensor, valid: torch.Tensor, settings: FinetuneSettings,
           generator: torch.Generator) -> tuple[float, float]:
    """Stage 1: the classifier alone on the frozen block's vectors; keeps the best epoch
    in ``model`` and returns its validation score."""
    features = _pooled(model, maps, train)  # (len(train), 1024)
    flipped = None
    if settings.augment == "flip-map":
        flipped = _pooled(model, maps, train, flip=True)
    elif other is not None:
        flipped = _pooled(model, other, train)
    held = _pooled(model, maps, valid)
    optimizer = make_optimizer(model, settings.probe_lr, settings.weight_decay, block=False)
    best, best_state, bad = (-1.0, 0.0), None, 0
    for _ in range(settings.probe_epochs):
        if bad >= PROBE_PATIENCE:
            break
        model.train()
        for batch in torch.randperm(len(train), generator=generator).split(settings.batch_size):
            x = features[batch]
            if flipped is not None:  # each clip read as itself or flipped, at random
                pick = torch.rand(len(batch), generator=generator) < 0.5
                x = torch.where(pick[:, None], flipped[batch], x)
            loss = F.cross_entropy(model.classify(x), y[train[batch]])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            score = _score(model.classify(held), y[valid])
        if score > best:
            best, bad = score, 0
            best_state = copy.deepcopy(model.classifier.state_dict())
        else:
            bad += 1
    assert best_state is not None
    model.classifier.load_state_dict(best_state)
    return best


def _augmented(maps: torch.Tensor, other: torch.Tensor | None, rows: torch.Tensor,
               augment: Augment, generator: torch.Generator) -> torch.Tensor:
    """A training batch (B, 832, T', 7, 7): each clip as stored, or flipped at random."""
    x = _batch(maps, rows)
    if augment == "none":
        return x
    pick = torch.rand(len(rows), generator=generator) < 0.5
    if augment == "flip-map":
        x[pick] = x[pick].flip(-1)  # W: the grid's last axis
    elif other is not None:
        x[pick] = _batch(other, rows[pick])
    return x


def finetune(maps: np.ndarray, y: np.ndarray, train: np.ndarray, valid: np.ndarray,
             i3d: I3D, settings: FinetuneSettings | None = None,
             flipped: np.ndarray | None = None) -> Finetuned:
    """Fit a `LastBlock` on rows ``train`` of ``maps`` (N, 832, T', 7, 7) with class
    indices ``y`` (N,), stopping each stage early on rows ``valid``; ``flipped``: the
    maps of the flipped clips, for ``augment="flip-input"`` (module docstring)."""
    settings = settings or FinetuneSettings()
    check_maps(maps)
    if len(y) != len(maps):
        raise UsageError(f"{len(maps)} maps but {len(y)} labels: give one label per clip")
    if len(train) == 0 or len(valid) == 0:
        raise UsageError(f"fine-tuning needs training and validation rows, got {len(train)} "
                         f"and {len(valid)}")
    if settings.augment == "flip-input":
        if flipped is None:
            raise UsageError("augment='flip-input' reads the maps of the flipped clips: "
                             "pass them as flipped (or choose flip-map or none)")
        check_maps(flipped, "flipped")
        if flipped.shape != maps.shape:
            raise UsageError(f"flipped maps {flipped.shape} do not match the maps "
                             f"{maps.shape}: one flipped map per clip, the same steps")
    started = time.perf_counter()
    torch.manual_seed(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    xs = torch.from_numpy(maps)
    other = torch.from_numpy(flipped) if settings.augment == "flip-input" and \
        flipped is not None else None
    yt = torch.from_numpy(np.asarray(y, dtype=np.int64))
    rows, held = torch.from_numpy(np.asarray(train)), torch.from_numpy(np.asarray(valid))
    model = last_block(i3d, int(yt.max()) + 1, settings.dropout)
    probe = best = _probe(model, xs, other, yt, rows, held, settings, generator)
    kept, ran, history = 0, 0, [(probe[0], -probe[1])]
    if settings.lr > 0:
        best_state = copy.deepcopy(model.state_dict())
        if not settings.keep_probe:
            best = (-1.0, 0.0)  # the first fine-tuned epoch replaces the probe
        optimizer = make_optimizer(model, settings.lr, settings.weight_decay, block=True)
        bad = 0
        while ran < settings.epochs and bad < settings.patience:
            ran += 1
            for batch in rows[torch.randperm(len(rows), generator=generator)].split(
                    settings.batch_size):
                x = _augmented(xs, other, batch, settings.augment, generator)
                training_step(model, optimizer, x, yt[batch])
            model.eval()
            with torch.no_grad():
                score = _score(_logits(model, xs, held), yt[held])
            history.append((score[0], -score[1]))
            log.debug("fine-tuning epoch %d: validation accuracy %.3f, loss %.3f", ran,
                      score[0], -score[1])
            if score > best:
                best, kept, bad = score, ran, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                bad += 1
        model.load_state_dict(best_state)
    model.block.requires_grad_(False)
    model.eval()
    return Finetuned(model, settings, best[0], -best[1], probe[0], kept,
                     time.perf_counter() - started, history)


def select_finetuned(maps: np.ndarray, y: np.ndarray, train: np.ndarray, valid: np.ndarray,
                     i3d: I3D, candidates: list[FinetuneSettings],
                     flipped: np.ndarray | None = None) -> Finetuned:
    """The candidate with the best validation accuracy (ties: the lower validation loss,
    then the earlier candidate): the learning rates chosen on ``valid`` only."""
    if not candidates:
        raise UsageError("select_finetuned needs at least one candidate setting")
    trained = [finetune(maps, y, train, valid, i3d, c, flipped) for c in candidates]
    return max(trained, key=lambda t: (t.valid_accuracy, -t.valid_loss))
