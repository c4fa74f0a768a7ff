"""The one training loop, for every model and dataset, in named pieces::

    session = setup(config, out_dir)       # config -> data -> split -> model -> optimiser
    while not session.stopped:             #   (-> the checkpoint's state, with resume)
        record = train_epoch(session)      # one shuffled pass over the training windows
        validate_and_select(session, record)   # validation, best weights, patience
        save_checkpoint(session)
    finish(session)                        # the best weights scored on test

`train` is exactly that. Early stopping is on validation NDCG@10; the run directory
(see `modrec.runs`) keeps the best weights, the latest checkpoint, one metrics line
per validation pass and the test results. An epoch whose loss, weights or validation
scores are NaN or infinite stops the run (`Diverged`) before anything of it is saved;
a folder that already holds trained weights is trained into again only with
``resume`` (the resume policy is `train/resume.py`). Benchmark scripts build on the
same pieces. Under ``torchrun`` the same pieces train data-parallel
(`modrec/distributed.py` says how the work and the writing divide among ranks).

`setup` is itself a sequence of named steps (seeds, data, model, the weights of the
run it starts from (``train.init_from``), placement, items, run folder, optimiser,
wrapping and restore). ``refit`` (`train/refit.py`) retrains a
finished run through `train`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from modrec.config import LossConfig, ModelConfig, RunConfig, TrainConfig
from modrec.content.store import EmbeddingStore, content_matrix, store_name
from modrec.data import Dataset, Split, load_dataset
from modrec.data.batches import (
    SequenceBatch,
    Shard,
    TrainingExamples,
    local_batches,
    split_by_length,
)
from modrec.data.dataset import read_user_block, user_block
from modrec.data.public import dataset_folder
from modrec.data.splits import EvalSet, check_split, cut_and_split
from modrec.data.state_schema import is_postgres_url, redact
from modrec.distributed import World
from modrec.errors import ConfigError
from modrec.eval import NonFiniteScores, evaluate, rank_targets, ranking_metrics
from modrec.models import RetrievalModel, Scorer, Trainable, build_model
from modrec.models.sharded_items import ShardableTable
from modrec.progress import progress_bar
from modrec.runs import RunDir, RunError
from modrec.threads import apply_env_threads, warn_if_default_wait
from modrec.train import sharded
from modrec.train.checkpoint import Checkpoint, Progress
from modrec.train.init_from import check_source, warm_start
from modrec.train.losses import next_item_loss, sampled_softmax_by_lookup
from modrec.train.resume import check_new, resume_history

log = logging.getLogger(__name__)

SELECT_ON = "ndcg@10"


@dataclass(kw_only=True)
class Session:
    """Everything one training run holds while it runs (built by `setup`, by keyword)."""

    config: RunConfig  # the caller's, with derived settings filled in (a copy)
    run: RunDir
    dataset: Dataset
    split: Split
    model: nn.Module
    kept: nn.Module  # what is validated and saved: the model, or its moving average
    optimizer: torch.optim.Optimizer | None  # None: fitted in setup, not trained (popularity)
    averaged: AveragedModel | None  # train.ema_decay's moving average of the weights
    examples: TrainingExamples
    pool: torch.Tensor | None  # the items training may use as negatives (None: all)
    rng: np.random.Generator  # batch order, cloze masks
    generator: torch.Generator  # sampled negatives
    checkpoint: Checkpoint
    progress: Progress
    loss: nn.Module  # `BatchLoss` of the model (wrapped in DDP when data-parallel)
    world: World = dataclasses.field(default_factory=World)
    device: str = "cpu"  # train.device, this rank's own GPU under torchrun
    show_progress: bool = True
    table: ShardableTable | None = None  # model.item_table=sharded: this rank's shard
    # data.rank_users under torchrun: `dataset` and `split` hold this rank's users only
    rank_users: bool = False

    @property
    def trainable(self) -> Trainable:
        return cast(Trainable, self.model)

    @property
    def scorer(self) -> Scorer:
        """The kept weights, as evaluation reads them."""
        return cast(Scorer, self.kept)

    @property
    def stopped(self) -> bool:
        tc = self.config.train
        return (self.optimizer is None or self.progress.epoch >= tc.epochs
                or self.progress.bad_evals >= tc.patience)


def train(config: RunConfig, out_dir: str | Path, resume: bool = False,
          progress: bool = True) -> Path:
    """Train to early stopping (or ``config.train.epochs``) and write ``out_dir``."""
    session = setup(config, out_dir, resume, progress)
    if session.optimizer is None:  # fitted in setup: validate and keep what was fitted
        validate_and_select(session, {"epoch": 0})
    while not session.stopped:
        record = train_epoch(session)
        validate_and_select(session, record)
        save_checkpoint(session)
    return finish(session)


# ---- set-up ------------------------------------------------------------------------------
def setup(config: RunConfig, out_dir: str | Path, resume: bool = False,
          show_progress: bool = True) -> Session:
    """Data, split, model, optimiser and counters for a run into ``out_dir``; with
    ``resume`` and a checkpoint there, everything as the checkpoint left it. Writes the
    run's config.json and dataset snapshot. ``config`` itself is never changed.

    Every rank runs the steps below in this order (rank 0 alone writes the folder);
    the resume policy (`train.resume`) and the checks of data, split, model and
    settings run before the folder is written."""
    apply_env_threads()
    warn_if_default_wait()
    run = RunDir(out_dir)
    if not resume:
        check_new(run)  # only --resume trains into a folder with trained weights
    checkpoint = Checkpoint(run.checkpoint_file)
    resuming = resume and checkpoint.exists()
    if config.train.init_from is not None and not resuming:
        check_source(config)  # a mistyped folder is named before any data is read
    world = World.from_env(config.train.device)
    device = world.device(config.train.device)
    rng, generator = _seeds(config.train, world, device)
    rank_users = config.data.rank_users and world.distributed
    dataset, split = _data(config, world, rank_users)
    config, model = _model(config, dataset, split, rank_users)
    table = sharded.table_of(model)
    started_from = _start_from(run, model, config, dataset, resuming)
    model = _place(model, config, device, checkpoint if resuming else None, world)
    if world.distributed:
        torch.manual_seed(config.train.seed + 1_000_003 * world.rank)  # dropout, per rank
    known, pool = _items(model, config, split, world, device, rank_users)
    resumed = (resume_history(run, config, dataset, checkpoint.progress().epoch)
               if resuming else [])
    if world.is_main:
        _write_run(run, config, dataset, split, known, world.size,
                   {**({"resumed": resumed} if resumed else {}),
                    **({"initialised_from": started_from} if started_from else {})},
                   clear_table=table is not None and not resuming)
    optimizer, averaged = _optimiser(model, split, config.train)
    session = Session(
        config=config, run=run, dataset=dataset, split=split, model=model,
        kept=model if averaged is None else averaged.module, optimizer=optimizer,
        averaged=averaged, examples=TrainingExamples.of(split.train, config.model.max_len),
        pool=pool, rng=rng, generator=generator, checkpoint=checkpoint, progress=Progress(),
        loss=BatchLoss(model, config.loss, by_lookup=table is not None), world=world,
        device=device, show_progress=show_progress and world.is_main, table=table,
        rank_users=rank_users)
    _wrap_and_restore(session, resuming)
    if world.is_main:
        run.keep_metrics_until(session.progress.epoch if resuming else -1)
    return session


def _seeds(tc: TrainConfig, world: World, device: str) -> tuple[np.random.Generator,
                                                                 torch.Generator]:
    """Seed the initial weights (alike on every rank) and make the run's random streams:
    ``rng`` (batch order, cloze masks) and ``generator`` (sampled negatives)."""
    torch.manual_seed(tc.seed)  # the initial weights, alike on every rank
    # Per rank under torchrun, so that ranks do not draw the same masks and negatives;
    # one process keeps the single seed it always had.
    rank_seed = [tc.seed, world.rank] if world.distributed else tc.seed
    rng = np.random.default_rng(rank_seed)
    generator = torch.Generator(device=device).manual_seed(
        tc.seed + 1_000_003 * world.rank)
    return rng, generator


def _data(config: RunConfig, world: World, rank_users: bool) -> tuple[Dataset, Split]:
    """The dataset (with ``rank_users``, this rank's block of users) and its split. Rank
    0 reads first: it converts and caches the dataset, the others then read the cache."""
    if rank_users:
        _check_rank_users(config)
    if world.distributed and is_postgres_url(config.data.dataset):
        # Nothing is cached for the other ranks to read: each would read the state at
        # its own moment, and the ranks would train on different events.
        raise ConfigError(f"{redact(config.data.dataset)}: a PostgreSQL user state is read "
                          "by one process; train from it without torchrun, or train on a "
                          "dataset folder saved from it")
    if not world.is_main:
        world.barrier()  # rank 0 converts and caches the dataset; the others then read it
    dataset = (_user_block(config, world) if rank_users else
               load_dataset(config.data.dataset, config.data.format, config.data.columns,
                            config.data.consecutive_repeats))
    if world.is_main:
        world.barrier()
    return cut_and_split(dataset, config.data.split, config.data.keep_last)


def _model(config: RunConfig, dataset: Dataset, split: Split,
           rank_users: bool) -> tuple[RunConfig, nn.Module]:
    """The model (on the CPU, or a sharded table on "meta"), and the config with the
    content width it reads filled in; the split is checked against what the model
    needs (a validation and a test target for every model trained by epochs)."""
    content = content_for(config.model, dataset)
    if content is not None:  # the content width follows from the store
        config = dataclasses.replace(
            config, model=dataclasses.replace(config.model, content_dim=content.shape[1]))
    model = build_model(config.model, dataset.num_items, content, dataset.has_timestamps)
    if not rank_users:  # a rank's block of users may hold no targets; the others do
        check_split(split, dataset, config.data.split, getattr(model, "fit", None) is None)
    return config, model


def _start_from(run: RunDir, model: nn.Module, config: RunConfig, dataset: Dataset,
                resuming: bool) -> dict[str, Any] | None:
    """With ``train.init_from``, the source run's weights in ``model`` (`warm_start`)
    and what was copied; a resume restores its checkpoint instead and keeps the record
    its first start wrote (given --init-from again or not: the weights came from there)."""
    if resuming:
        record: dict[str, Any] | None = run.config_extras().get("initialised_from")
        return record
    if config.train.init_from is None:
        return None
    return warm_start(model, config, dataset)


def _place(model: nn.Module, config: RunConfig, device: str, resuming: Checkpoint | None,
           world: World) -> nn.Module:
    """The model on ``device``; a sharded table (checked, and with ``resuming``'s
    checkpoint, its parts checked against this world) stays on "meta", where
    DistributedModelParallel places it when the loss is wrapped."""
    if config.model.item_table == "sharded":
        sharded.check_settings(config, model)
        if resuming is not None:
            sharded.check_resume(resuming, world)
        return model
    return model.to(device)


def _items(model: nn.Module, config: RunConfig, split: Split, world: World, device: str,
           rank_users: bool) -> tuple[np.ndarray, torch.Tensor | None]:
    """The items training knows (an item tower keeps the others' rows untrained) and the
    pool of negatives (None: all items; a cold-items split withholds its cold ones).
    With ``rank_users`` the known items are the union over ranks, and a fitted model,
    which counts over all users, is refused."""
    if rank_users and getattr(model, "fit", None) is not None:
        raise ConfigError(f"data.rank_users: model {config.model.name!r} is fitted from "
                         "counts over all users, which no rank holds; fit it in one process")
    known = split.known_items()
    if rank_users:  # every rank's training items
        known = world.union(known)
    set_known = getattr(model, "set_known", None)  # an item tower's untrained rows
    if set_known is not None:
        set_known(torch.from_numpy(known).to(device))
    pool = None
    if split.cold_items is not None:  # withheld items stay unseen, even as negatives
        pool = torch.from_numpy(np.flatnonzero(~split.cold_items[1:]) + 1).to(device)
    return known, pool


def _write_run(run: RunDir, config: RunConfig, dataset: Dataset, split: Split,
               known: np.ndarray, world_size: int, history: dict[str, Any],
               clear_table: bool) -> None:
    """Rank 0's writes: the run folder, its config.json (the dataset's description and
    fingerprint, the protocol, and ``history``: the resumes and the run it started
    from) and the dataset snapshot; with ``clear_table``, the sharded-table parts an
    earlier, killed run left."""
    run.create()
    run.write_config(config, {
        "dataset_info": {**dataset.describe(), "fingerprint": dataset.fingerprint()},
        "protocol": split.protocol, "world_size": world_size,
        **content_record(config.model, dataset), **history})
    run.write_snapshot(dataset, known)
    if clear_table:  # parts an earlier, killed run left
        run.clear_table()


def _optimiser(model: nn.Module, split: Split,
               tc: TrainConfig) -> tuple[torch.optim.Optimizer | None, AveragedModel | None]:
    """AdamW over the dense parameters and, with ``train.ema_decay``, the moving average
    of the weights; a model with nothing to learn by gradient is fitted here instead
    (no optimiser)."""
    fit = getattr(model, "fit", None)
    if fit is not None:  # nothing to learn by gradient
        fit(split.train)
        return None, None
    # A sharded table's rows are stepped by TorchRec's fused optimiser instead.
    optimizer = torch.optim.AdamW(sharded.dense_parameters(model), lr=tc.lr,
                                  betas=tc.betas, weight_decay=tc.weight_decay)
    # With train.ema_decay, the weights validated and kept are a moving average of
    # the trained ones; the trained ones go on being optimised as usual.
    averaged = None
    if tc.ema_decay is not None:
        averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(tc.ema_decay))
    return optimizer, averaged


def _wrap_and_restore(session: Session, resuming: bool) -> None:
    """Wrap the session's batch loss for this world (a sharded table: TorchRec's
    DistributedModelParallel; data-parallel: DDP) and, when ``resuming`` a trained
    model, restore everything the checkpoint holds: before DDP wraps the loss, or with a
    sharded table (which exists only once sharded) after, this rank's part of it too."""
    s, tc, optimizer = session, session.config.train, session.optimizer
    if resuming and optimizer is not None and s.table is None:
        s.progress = s.checkpoint.restore(s.model, optimizer, s.averaged, s.rng, s.generator,
                                          s.world.rank)
        log.info("resumed %s at epoch %d", s.run.folder, s.progress.epoch)
    if s.table is not None:
        s.loss = sharded.shard(s.loss, s.world, s.device, s.config.model.item_sharding,
                               tc.table_lr)
        log.info("item table shard on rank %d: %s", s.world.rank, sharded.shard_sizes(s.table))
        if resuming and optimizer is not None:  # the table exists only now, sharded
            model = s.model
            s.progress = s.checkpoint.restore(
                model, optimizer, s.averaged, s.rng, s.generator, s.world.rank,
                load_weights=lambda state: sharded.load_dense_state(model, state))
            parts = s.checkpoint.table_parts() or {}
            sharded.restore_part(s.loss, s.table,
                                 s.run.load_checkpoint_part(parts["epoch"], s.world.rank))
            log.info("resumed %s at epoch %d", s.run.folder, s.progress.epoch)
    elif s.world.distributed and optimizer is not None:
        # Buffers (the known mask, a content matrix) are alike on every rank already.
        s.loss = DistributedDataParallel(
            s.loss, device_ids=[s.world.local_rank] if s.device.startswith("cuda") else None,
            broadcast_buffers=False)


def _user_block(config: RunConfig, world: World) -> Dataset:
    """This rank's block of users, read from the cached dataset folder (rank 0, first,
    converts the dataset or lays the folder out in row groups)."""
    folder = dataset_folder(config.data.dataset, config.data.format, config.data.columns,
                            config.data.consecutive_repeats)
    num_users = int(json.loads((folder / "manifest.json").read_text())["users"])
    part = read_user_block(folder, *user_block(num_users, world.rank, world.size))
    log.info("rank %d holds users %d..%d: %d interactions", world.rank, part.start,
             part.stop - 1, len(part.interactions))
    return part


def _check_rank_users(config: RunConfig) -> None:
    """What data.rank_users cannot do, said before any data is read."""
    if config.data.split == "temporal":
        raise ConfigError(
            "data.rank_users: the temporal split cuts at time quantiles of all interactions, "
            "which no rank holds; use --split loo (or cold-items, loo-no-valid), or train "
            "without data.rank_users")


def content_for(model: ModelConfig, dataset: Dataset) -> torch.Tensor | None:
    """``(N + 1, C)``: the stored embeddings a content item tower reads (None for IDs)."""
    if model.item_tower == "id":
        return None
    return torch.from_numpy(content_matrix(EmbeddingStore.for_dataset(dataset),
                                           model.encoders))


def content_record(model: ModelConfig, dataset: Dataset) -> dict[str, Any]:
    """``{"content_encoders": [{name, version, dim, reads}, ...]}``: the store entries a
    content tower was trained on, in its order, kept in config.json so that a service
    encoding new items for the run (`modrec.serve.live`) can check that its encoders
    make the same vectors; empty for an ID tower."""
    if model.item_tower == "id":
        return {}
    stored = EmbeddingStore.stored(EmbeddingStore.folder_for(dataset))
    return {"content_encoders": [
        {"name": name, **{key: stored[name][key] for key in ("version", "dim", "reads")}}
        for name in map(store_name, model.encoders) if name in stored]}


# ---- one epoch ---------------------------------------------------------------------------
def train_epoch(session: Session) -> dict[str, Any]:
    """One shuffled pass over the training examples; returns the epoch's record."""
    s, tc = session, session.config.train
    if s.optimizer is None:
        raise ValueError(f"{s.config.model.name} is fitted, not trained by epochs")
    epoch = s.progress.epoch + 1
    for group in s.optimizer.param_groups:
        group["lr"] = epoch_lr(tc, epoch)
    s.model.train()
    started = time.perf_counter()
    losses, seen = [], 0
    # Data-parallel: every rank cuts the same global batches (an order seeded by the
    # epoch) and steps on its rows of each; with rank_users, every rank cuts its own
    # examples into local batches and all take the smallest rank's number of them.
    shard, steps, examples = None, math.ceil(len(s.examples) / tc.batch_size), len(s.examples)
    if s.rank_users:
        steps = s.world.min_int(local_batches(len(s.examples), tc.batch_size, s.world.rank,
                                              s.world.size))
        examples = s.world.sum_int(examples)
        shard = Shard(s.world.rank, s.world.size,
                      np.random.default_rng([tc.seed, epoch, s.world.rank]), steps)
        log.info("epoch %d: rank %d takes %d local batches of its %d training windows",
                 epoch, s.world.rank, steps, len(s.examples))
    elif s.world.distributed:
        shard = Shard(s.world.rank, s.world.size, np.random.default_rng([tc.seed, epoch]))
    batches = s.trainable.training_batches(s.examples, tc.batch_size, s.rng, shard)
    bar = progress_bar(batches, total=steps, desc=f"epoch {epoch}", unit="batch",
                       enabled=s.show_progress, leave=False)
    # A sharded table steps in every backward (its optimiser is fused into it), so a
    # batch runs as one slice: slices would make one table step each.
    slices = tc.length_slices if s.table is None else 1
    for batch in bar:
        losses.append(train_step(s.loss, s.optimizer, batch.to(s.device), slices,
                                 s.generator, s.pool, s.world))
        if not math.isfinite(losses[-1]) and not s.world.distributed:
            break  # diverged: no use going on (under torchrun every rank ends the epoch)
        if s.averaged is not None:
            s.averaged.update_parameters(s.model)
        seen += len(batch.lengths)
        bar.set_postfix(loss=f"{losses[-1]:.3f}",
                        seq_per_s=f"{seen / (time.perf_counter() - started):.0f}")
    bar.close()
    seconds = time.perf_counter() - started
    # Each rank's step losses are its shares of the global batch's mean: they add up.
    loss = float(sum(s.world.gather(float(np.mean(losses)))))
    _check_diverged(s, epoch, losses, loss)
    s.progress.train_seconds += seconds
    s.progress.epoch = epoch
    return {"epoch": epoch, "loss": loss, "lr": epoch_lr(tc, epoch),
            "epoch_seconds": seconds, "sequences_per_second": examples / seconds}


class Diverged(RunError):
    """Training produced a NaN or infinite loss, weights or scores. The message says
    which epoch, what was kept and how to go on with a lower learning rate."""


def _check_diverged(session: Session, epoch: int, losses: list[float], loss: float) -> None:
    """Stop a run whose ``epoch`` ended with a non-finite step loss (``losses``, this
    rank's) or weights, before anything of it is validated or saved: the checkpoint and
    best weights of the epochs before stay as they were. One all-reduce decides alike
    on every rank; ``loss`` is the epoch's, for the message."""
    s = session
    finite = all(math.isfinite(x) for x in losses)
    weights = all(bool(torch.isfinite(p).all()) for p in sharded.dense_parameters(s.model))
    if s.world.min_int(int(finite and weights)):
        return
    raise _diverged(s, epoch, f"the loss became {loss}" if not math.isfinite(loss)
                    else "the weights became NaN or infinite")


def _diverged(session: Session, epoch: int, what: str) -> Diverged:
    """The error for a run that diverged in ``epoch`` (its checkpoint, if any, is of the
    epoch before: checkpoints are written after every epoch)."""
    s, tc = session, session.config.train
    lr = epoch_lr(tc, epoch)
    lower = f"--set train.lr={tc.lr / 10:g}"
    head = f"training diverged in epoch {epoch} of {s.run.folder}: {what} (learning rate {lr:g})"
    last = epoch - 1
    if last >= 1 and s.optimizer is not None:
        best = f"; model.pt holds the best weights so far (epoch {s.progress.best_epoch})" \
            if s.progress.best_epoch >= 1 else ""
        return Diverged(
            f"{head}. Nothing of epoch {epoch} was saved: the checkpoint of epoch {last} is "
            f"kept{best}. Continue from it with a lower learning rate: --resume {lower} "
            "(or lower).")
    return Diverged(
        f"{head}. No epoch had finished, so there is no checkpoint to continue from: train "
        f"again with a lower learning rate, e.g. {lower}.")


def epoch_lr(tc: TrainConfig, epoch: int) -> float:
    """The learning rate of ``epoch`` (1-based) under ``tc.lr_schedule``."""
    if tc.lr_schedule == "constant":
        return tc.lr
    progress = min(epoch - 1, tc.lr_horizon) / tc.lr_horizon
    return tc.lr_min + (tc.lr - tc.lr_min) * 0.5 * (1.0 + math.cos(math.pi * progress))


class BatchLoss(nn.Module):
    """A batch's training loss as a module's ``forward``, so that
    DistributedDataParallel can wrap it (DDP synchronises the gradients of what runs
    through ``forward``). The loss is the mean over the batch's supervised positions:
    every real position for next-item models, the masked ones for cloze."""

    def __init__(self, model: nn.Module, config: LossConfig, by_lookup: bool = False) -> None:
        super().__init__()
        # by_lookup: read only the targets' and negatives' vectors (a sharded table must)
        self.model, self.config, self.by_lookup = model, config, by_lookup
        # An ID table may be looked up too under sampled softmax, with the same draws and
        # values: see `looks_up`. A content tower keeps the whole pass: its ID dropout
        # draws one mask per pass, which two lookups would draw twice.
        tower = getattr(model, "item_tower", None)
        self.id_table = config.name == "sampled_softmax" and getattr(tower, "mode", "") == "id"

    def looks_up(self, targets: torch.Tensor) -> bool:
        """Whether the loss of ``targets`` ``(B, L)`` reads only the rows it needs: when
        they are fewer than the catalog. Normalising the whole table (and its backward)
        costs O(catalog) per slice: 3.4x the step's time at 1M items. On ML-1M a batch
        reads 12x the catalog's rows, the two paths were within noise (0.91-1.15x over
        six runs), and the whole pass stays, so that the presets' runs stay bit-identical
        to those recorded. `benchmarks/train_large_catalog.py` measures both."""
        if self.by_lookup:
            return True
        if not self.id_table:
            return False
        draws = self.config.num_negatives * (
            targets.shape[0] if self.config.negatives_per == "sequence" else targets.numel())
        return targets.numel() + draws < cast(RetrievalModel, self.model).item_tower.num_items

    def forward(self, batch: SequenceBatch, generator: torch.Generator | None = None,
                pool: torch.Tensor | None = None) -> torch.Tensor:
        if batch.targets is None:
            raise ValueError("a training batch needs targets")
        model = cast(Trainable, self.model)
        hidden = model.encode_train(batch)  # (B, L, D)
        if self.looks_up(batch.targets):
            c, tables = self.config, cast(RetrievalModel, self.model)
            return sampled_softmax_by_lookup(
                hidden, batch.targets, tables.item_vectors_of, tables.item_tower.num_items,
                c.temperature, c.num_negatives, generator, pool,
                per_position=c.negatives_per == "position")
        return next_item_loss(self.config, hidden, batch.targets, model.item_vectors(),
                              generator, pool)


def train_step(loss: nn.Module, optimizer: torch.optim.Optimizer, batch: SequenceBatch,
               slices: int = 1, generator: torch.Generator | None = None,
               pool: torch.Tensor | None = None, world: World | None = None) -> float:
    """One optimiser step on ``batch`` with ``loss`` (a `BatchLoss`, or DDP around one);
    returns the loss. The batch runs as ``slices`` length-sorted slices
    (`split_by_length`), each slice's mean loss weighted by its share of the supervised
    positions: the summed gradients are the whole padded batch's. Data-parallel, the
    share is of the *global* batch's positions and the weight is multiplied by the
    world size, which DDP's averaging divides out again: the synchronised gradient is
    the one-process gradient of the whole global batch."""
    world = world or World()
    optimizer.zero_grad(set_to_none=True)
    parts = split_by_length(batch, slices)
    counts = [supervised_positions(part) for part in parts]
    total = world.sum_int(sum(counts))
    todo = [(part, count) for part, count in zip(parts, counts, strict=True) if count]
    loss_sum = 0.0
    for i, (part, count) in enumerate(todo):
        last = i == len(todo) - 1
        no_sync = getattr(loss, "no_sync", None)
        # Under DDP, gradients are synchronised once, in the last slice's backward.
        with no_sync() if no_sync is not None and not last else contextlib.nullcontext():
            value = loss(part, generator, pool) * (count / total)
            (value * world.size).backward()
        loss_sum += value.item()
    optimizer.step()
    return loss_sum


def supervised_positions(batch: SequenceBatch) -> int:
    if batch.targets is None:
        raise ValueError("a training batch needs targets")
    return int((batch.targets > 0).sum())


def batch_loss(model: nn.Module, batch: SequenceBatch, config: RunConfig,
               generator: torch.Generator | None = None,
               pool: torch.Tensor | None = None) -> torch.Tensor:
    """The mean loss of one batch over its supervised positions (`BatchLoss`)."""
    loss: torch.Tensor = BatchLoss(model, config.loss)(batch, generator, pool)
    return loss


# ---- validation and selection ------------------------------------------------------------
def validate_and_select(session: Session, record: dict[str, Any]) -> None:
    """Validate when due (every ``eval_every`` epochs and at the last), keep the weights
    when they are the best so far, count passes without a gain (patience), and write
    the epoch's record to metrics.jsonl. Without a validation split nothing is
    selected: the latest weights are kept and every epoch is recorded. Data-parallel,
    every rank computes the same metrics (`evaluate_on`), so every rank decides alike;
    rank 0 writes."""
    s, tc, p = session, session.config.train, session.progress
    epoch = int(record["epoch"])
    main = s.world.is_main
    if s.split.valid is None:
        p.best_epoch = epoch
        save_kept(s)
        if main:
            s.run.append_metrics(record)
        log.info("epoch %d loss %.4f %.1fs", epoch, record.get("loss", math.nan),
                 record.get("epoch_seconds", 0.0))
        return
    if epoch % tc.eval_every and epoch != tc.epochs:  # a line per epoch all the same
        log.info("epoch %d loss %.4f %.1fs", epoch, record.get("loss", math.nan),
                 record.get("epoch_seconds", 0.0))
        return
    started = time.perf_counter()
    try:
        valid = evaluate_on(s, s.kept, s.split.valid)
    except NonFiniteScores as err:  # finite weights whose products overflow
        raise _diverged(s, epoch, str(err)) from None
    record |= {"valid": valid, "eval_seconds": time.perf_counter() - started,
               "train_seconds": p.train_seconds}
    if valid[SELECT_ON] > p.best:
        p.best, p.best_epoch, p.bad_evals = valid[SELECT_ON], epoch, 0
        save_kept(s)
    else:
        p.bad_evals += 1
    log.info("epoch %d loss %.4f valid %s %.4f (best %.4f @ %d) %.1fs", epoch,
             record.get("loss", math.nan), SELECT_ON, valid[SELECT_ON], p.best, p.best_epoch,
             record.get("epoch_seconds", 0.0))
    if main:
        s.run.append_metrics(record)


def save_kept(session: Session) -> None:
    """Rank 0 writes the kept weights; with a sharded table, every rank writes its rows
    of it beside them."""
    s = session
    if s.table is None:
        if s.world.is_main:
            s.run.save_weights(s.kept.state_dict())
        return
    sharded.save_table(s.table, s.run)
    if s.world.is_main:
        s.run.save_weights(sharded.dense_state(s.kept))


def evaluate_on(session: Session, model: nn.Module, evalset: EvalSet) -> dict[str, float]:
    """Full-ranking metrics of ``model`` on ``evalset``; data-parallel, each rank ranks
    its shard of the users (with rank_users, ``evalset`` is already just its own users)
    and every rank gets the metrics of all of them. With a
    sharded table every rank reads the catalog in blocks (`sharded`)."""
    s, tc = session, session.config.train
    scorer = cast(Scorer, model)
    if not s.world.distributed and s.table is None:
        return evaluate(scorer, evalset, s.config.model.max_len, tc.eval_batch_size, s.device)
    if s.rank_users:  # the evaluation set holds this rank's users only
        mine = evalset
    else:
        keep = np.zeros(len(evalset), dtype=bool)
        keep[s.world.shard(len(evalset))] = True
        mine = evalset.subset(keep)
    if s.table is not None:
        ranks = sharded.rank_targets_sharded(model, mine, s.dataset.num_items,
                                             s.config.model.max_len, tc.eval_batch_size,
                                             s.device, s.world)
    else:
        ranks = rank_targets(scorer, mine, s.config.model.max_len, tc.eval_batch_size,
                             s.device)
    return ranking_metrics(np.concatenate(s.world.gather(ranks)))


def save_checkpoint(session: Session) -> None:
    """Rank 0 writes the checkpoint, with every rank's random generators. With a sharded
    table every rank first writes its rows and their optimiser state as a part of the
    epoch's checkpoint; checkpoint.pt, written once all parts are on disk, names them,
    and only then are the previous epoch's parts deleted: a run killed while it saves
    resumes from the checkpoint before."""
    s = session
    if s.optimizer is None:
        return
    rngs = s.world.gather((s.rng.bit_generator.state, s.generator.get_state(),
                           torch.get_rng_state()))
    epoch, parts = s.progress.epoch, None
    if s.table is not None:
        s.run.save_checkpoint_part(epoch, s.world.rank, sharded.checkpoint_part(s.loss, s.table))
        s.world.barrier()  # every part is written before checkpoint.pt names them
        parts = {"epoch": epoch, "world_size": s.world.size}
    if s.world.is_main:
        s.checkpoint.save(s.model, s.optimizer, s.averaged, s.progress, s.rng, s.generator,
                          rngs if s.world.distributed else None,
                          None if parts is None else sharded.dense_state(s.model), parts)
        if parts is not None:
            s.run.drop_checkpoint_parts(keep=epoch)


# ---- finish ------------------------------------------------------------------------------
def finish(session: Session) -> Path:
    """Score the kept weights on validation and test (and the warm and cold slices of a
    cold-items split) and write results.json."""
    s = session
    s.world.barrier()  # rank 0 has written the kept weights
    if s.table is None:
        s.model.load_state_dict(s.run.load_weights(s.device))
    else:
        sharded.load_dense_state(s.model, s.run.load_weights(s.device))
        sharded.load_table(s.table, s.run)
    s.model.eval()

    def scores(evalset: EvalSet) -> dict[str, float]:
        return evaluate_on(s, s.model, evalset)

    valid = None if s.split.valid is None else scores(s.split.valid)
    slices = {}
    if s.split.cold_items is not None:  # cold-start: targets never seen in training
        cold = s.split.cold_items[s.split.test.targets]
        for name, keep in (("warm", ~cold), ("cold", cold)):
            part = s.split.test.subset(keep)
            users = s.world.sum_int(len(part)) if s.rank_users else len(part)
            slices[name] = {"users": users, **scores(part)}
    test = scores(s.split.test)
    if s.world.is_main:
        s.run.write_results({
            "dataset": s.config.data.dataset,
            "model": s.config.model.name,
            "protocol": s.split.protocol,
            "selected_on": f"valid {SELECT_ON}" if valid is not None else "none: last epoch",
            "best_epoch": s.progress.best_epoch,
            "epochs": s.progress.epoch,
            "train_seconds": s.progress.train_seconds,
            "valid": valid,
            **test,
            **slices,
        })
    s.world.barrier()  # results.json is there for every rank to read
    return s.run.folder
