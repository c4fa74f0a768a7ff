"""Sequence classifiers over a video's per-step vectors (issue 36, item 3): a padded
``(B, S, D)`` batch with each row's length in, class logits out.

    mean         masked mean of the steps, then an MLP: the baseline, blind to order
    attention    each step projected, its learned position embedding added and mixed
                 in by a layer (so a step's vector says where it is: without that,
                 attention pooling is as blind to order as the mean), four learned
                 scores per step, a masked softmax over the steps for each, the four
                 weighted sums joined by a layer (one can find A and another B)
    gru          a bidirectional GRU over the projected steps (packed: padding never
                 enters), its two final states joined
    transformer  one or two pre-norm encoder layers over the projected steps plus
                 learned position embeddings, padding masked, then a masked mean
    tcn          1-D convolutions over time (kernel 3, dilations 1, 2, 4: 15 steps seen),
                 padding zeroed before each, then a masked max over time

Steps are the stored sequences of `EmbeddingStore.sequences` (I3D: one step per 8
frames) or any per-frame vectors. `train_head` fits one head with AdamW on full
shuffled batches and keeps the epoch with the best validation accuracy (ties: the
lower validation loss); the caller chooses the validation rows (for grouped data,
`grouped_validation`: never a group on both sides). CPU, fixed seeds: the same inputs
give the same model.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from modrec.errors import UsageError

log = logging.getLogger(__name__)

Head = Literal["mean", "attention", "gru", "transformer", "tcn"]
HEADS: tuple[Head, ...] = ("mean", "attention", "gru", "transformer", "tcn")
QUERIES = 4  # attention pooling's scores per step: each pools its own view of the steps
DILATIONS = (1, 2, 4)  # the temporal convolution's layers: receptive field 15 steps


@dataclass(frozen=True)
class HeadSettings:
    """One head's shape and training; `train_head` takes these."""

    head: Head = "attention"
    hidden: int = 128
    layers: int = 1  # transformer layers (1 or 2)
    dropout: float = 0.3
    lr: float = 1e-3
    weight_decay: float = 1e-2
    batch_size: int = 32
    epochs: int = 150
    patience: int = 25  # epochs without a better validation score before stopping
    seed: int = 0

    def __post_init__(self) -> None:
        if self.head not in HEADS:
            raise UsageError(f"unknown sequence head {self.head!r}; choose from "
                             f"{', '.join(HEADS)}")
        if self.hidden < 1 or self.layers < 1 or self.epochs < 1 or self.batch_size < 1:
            raise UsageError("hidden, layers, epochs and batch_size must be at least 1, got "
                             f"{self.hidden}, {self.layers}, {self.epochs}, {self.batch_size}")


def step_mask(lengths: torch.Tensor, steps: int) -> torch.Tensor:
    """(B,) lengths -> (B, S) bool, True at the real steps."""
    return torch.arange(steps, device=lengths.device)[None, :] < lengths[:, None]


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, S, H) over the real steps -> (B, H)."""
    weights = mask.unsqueeze(-1).to(x.dtype)
    return (x * weights).sum(1) / weights.sum(1).clamp_min(1.0)


class SequenceHead(nn.Module):
    """Steps -> projected steps (per-step LayerNorm, linear, GELU) -> a temporal body
    pooled to one vector -> dropout and a linear layer to the classes. The ``mean``
    head pools the raw steps first, so it is an MLP over the mean vector."""

    def __init__(self, settings: HeadSettings, dim: int, classes: int, max_steps: int) -> None:
        super().__init__()
        self.kind, self.max_steps = settings.head, max_steps
        h, p = settings.hidden, settings.dropout
        self.project = nn.Sequential(nn.LayerNorm(dim), nn.Dropout(p), nn.Linear(dim, h),
                                     nn.GELU())
        self.out = nn.Sequential(nn.Dropout(p), nn.Linear(2 * h if self.kind == "gru" else h,
                                                          classes))
        if self.kind in ("attention", "transformer"):
            self.position = nn.Parameter(torch.zeros(max_steps, h))
            nn.init.normal_(self.position, std=0.02)
        if self.kind == "attention":
            self.mix = nn.Sequential(nn.Linear(h, h), nn.GELU())
            self.score = nn.Sequential(nn.Linear(h, h), nn.Tanh(), nn.Linear(h, QUERIES))
            self.join = nn.Sequential(nn.Linear(QUERIES * h, h), nn.GELU())
        elif self.kind == "gru":
            self.gru = nn.GRU(h, h, batch_first=True, bidirectional=True)
        elif self.kind == "transformer":
            layer = nn.TransformerEncoderLayer(h, nhead=4, dim_feedforward=2 * h, dropout=p,
                                               batch_first=True, norm_first=True)
            self.encoder = nn.TransformerEncoder(layer, settings.layers,
                                                 enable_nested_tensor=False)
            self.norm = nn.LayerNorm(h)
        elif self.kind == "tcn":
            self.convs = nn.ModuleList(nn.Conv1d(h, h, 3, padding=d, dilation=d)
                                       for d in DILATIONS)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, S, D) float and (B,) lengths (each at least 1) -> (B, classes) logits."""
        mask = step_mask(lengths, x.shape[1])
        if self.kind == "mean":
            return self.out(self.project(masked_mean(x, mask)))
        steps = self.project(x)  # (B, S, H)
        return self.out(self._pool(steps, mask, lengths))

    def _pool(self, steps: torch.Tensor, mask: torch.Tensor,
              lengths: torch.Tensor) -> torch.Tensor:
        if self.kind in ("attention", "transformer") and steps.shape[1] > self.max_steps:
            raise UsageError(f"sequences of {steps.shape[1]} steps are longer than the "
                             f"{self.max_steps} this head was built for")
        if self.kind == "attention":
            steps = self.mix(steps + self.position[:steps.shape[1]])
            scores = self.score(steps).masked_fill(~mask.unsqueeze(-1), float("-inf"))
            pooled = torch.einsum("bsq,bsh->bqh", scores.softmax(1), steps)  # (B, Q, H)
            return self.join(pooled.flatten(1))
        if self.kind == "gru":
            packed = pack_padded_sequence(steps, lengths.cpu(), batch_first=True,
                                          enforce_sorted=False)
            _, last = self.gru(packed)  # (2, B, H): forward and backward final states
            return torch.cat([last[0], last[1]], dim=1)
        if self.kind == "transformer":
            encoded = self.encoder(steps + self.position[:steps.shape[1]],
                                   src_key_padding_mask=~mask)
            return masked_mean(self.norm(encoded), mask)
        keep = mask.unsqueeze(1).to(steps.dtype)  # (B, 1, S)
        h = steps.transpose(1, 2) * keep  # (B, H, S)
        for conv in self.convs:
            h = (h + F.gelu(conv(h))) * keep  # residual; padding stays zero
        return h.masked_fill(~mask.unsqueeze(1), float("-inf")).amax(2)


@dataclass
class TrainedHead:
    model: SequenceHead
    settings: HeadSettings
    valid_accuracy: float
    valid_loss: float
    epochs: int  # epochs run (the best one is kept)
    seconds: float

    @torch.no_grad()
    def probabilities(self, x: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """(N, S, D) steps and (N,) lengths -> (N, classes) class probabilities."""
        self.model.eval()
        xt, lt = _tensors(x, lengths)
        return self.model(xt, lt).softmax(-1).numpy()


def _tensors(x: np.ndarray, lengths: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    if len(lengths) and int(np.min(lengths)) < 1:
        bad = np.flatnonzero(np.asarray(lengths) < 1)[:5].tolist()
        raise UsageError(f"rows {bad} have no steps (length 0: an item that failed to "
                         "encode?); leave them out before training or predicting")
    return (torch.from_numpy(np.asarray(x, dtype=np.float32)),
            torch.from_numpy(np.asarray(lengths, dtype=np.int64)))


def train_head(x: np.ndarray, lengths: np.ndarray, y: np.ndarray, train: np.ndarray,
               valid: np.ndarray, settings: HeadSettings | None = None) -> TrainedHead:
    """Fit one head on rows ``train`` of ``x`` (N, S, D) with ``lengths`` (N,) and class
    indices ``y`` (N,); stop early on rows ``valid`` (see the module docstring)."""
    settings = settings or HeadSettings()
    if len(train) == 0 or len(valid) == 0:
        raise UsageError(f"training a head needs training and validation rows, got "
                         f"{len(train)} and {len(valid)}")
    started = time.perf_counter()
    torch.manual_seed(settings.seed)
    xt, lt = _tensors(x, lengths)
    yt = torch.from_numpy(np.asarray(y, dtype=np.int64))
    classes = int(yt.max()) + 1
    model = SequenceHead(settings, xt.shape[2], classes, xt.shape[1])
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr,
                                  weight_decay=settings.weight_decay)
    rows, held = torch.from_numpy(np.asarray(train)), torch.from_numpy(np.asarray(valid))
    generator = torch.Generator().manual_seed(settings.seed)
    best: tuple[float, float] = (-1.0, 0.0)
    best_state, bad, ran = None, 0, 0
    while ran < settings.epochs and bad < settings.patience:
        ran += 1
        model.train()
        for batch in rows[torch.randperm(len(rows), generator=generator)].split(
                settings.batch_size):
            loss = F.cross_entropy(model(xt[batch], lt[batch]), yt[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        accuracy, valid_loss = _evaluate(model, xt[held], lt[held], yt[held])
        if (accuracy, -valid_loss) > best:
            best, bad = (accuracy, -valid_loss), 0
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
        else:
            bad += 1
    assert best_state is not None
    model.load_state_dict(best_state)
    model.eval()
    log.debug("%s head: validation accuracy %.3f after %d epochs", settings.head, best[0],
              ran)
    return TrainedHead(model, settings, best[0], -best[1], ran,
                       time.perf_counter() - started)


@torch.no_grad()
def _evaluate(model: nn.Module, x: torch.Tensor, lengths: torch.Tensor,
              y: torch.Tensor) -> tuple[float, float]:
    model.eval()
    logits = model(x, lengths)
    return (float((logits.argmax(1) == y).float().mean()),
            float(F.cross_entropy(logits, y)))


def select_head(x: np.ndarray, lengths: np.ndarray, y: np.ndarray, train: np.ndarray,
                valid: np.ndarray, candidates: list[HeadSettings]) -> TrainedHead:
    """The candidate with the best validation accuracy (ties: lower validation loss,
    then the earlier candidate): hyperparameters chosen on ``valid`` only."""
    if not candidates:
        raise UsageError("select_head needs at least one candidate setting")
    trained = [train_head(x, lengths, y, train, valid, c) for c in candidates]
    return max(trained, key=lambda t: (t.valid_accuracy, -t.valid_loss))


def grouped_validation(y: np.ndarray, groups: np.ndarray, rows: np.ndarray,
                       parts: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``rows`` split into (train, valid), about one part in ``parts`` held out for
    validation, each group wholly on one side and the classes balanced as far as the
    groups allow (sklearn's StratifiedGroupKFold, shuffled by ``seed``)."""
    from sklearn.model_selection import StratifiedGroupKFold

    if len(set(groups[rows].tolist())) < parts:
        raise UsageError(f"{len(set(groups[rows].tolist()))} groups cannot be split into "
                         f"{parts} parts; give fewer parts or more groups")
    folds = StratifiedGroupKFold(parts, shuffle=True, random_state=seed)
    inner_train, inner_valid = next(folds.split(rows, y[rows], groups[rows]))
    return rows[inner_train], rows[inner_valid]
