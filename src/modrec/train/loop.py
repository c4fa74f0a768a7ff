"""The one training loop, for every model and dataset, in named pieces::

    session = setup(config, out_dir)       # config -> data -> split -> model -> optimiser
    while not session.stopped:             #   (-> the checkpoint's state, with resume)
        record = train_epoch(session)      # one shuffled pass over the training windows
        validate_and_select(session, record)   # validation, best weights, patience
        save_checkpoint(session)
    finish(session)                        # the best weights scored on test

`train` is exactly that. Early stopping is on validation NDCG@10; the run directory
(see `modrec.runs`) keeps the best weights, the latest checkpoint, one metrics line
per validation pass and the test results. Benchmark scripts build on the same pieces.

``refit(run_dir, out_dir)`` retrains a finished run with the validation items added
to training, for the epoch count its validation chose.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from modrec.config import (
    RESUMABLE_SECTIONS,
    ModelConfig,
    RunConfig,
    TrainConfig,
    config_changes,
    config_from_dict,
)
from modrec.content.store import EmbeddingStore, content_matrix
from modrec.data import Dataset, Split, load_dataset, make_split
from modrec.data.batches import SequenceBatch, TrainingExamples, split_by_length
from modrec.eval import evaluate
from modrec.models import Scorer, Trainable, build_model
from modrec.runs import RunDir
from modrec.train.checkpoint import Checkpoint, Progress
from modrec.train.losses import next_item_loss

log = logging.getLogger(__name__)

SELECT_ON = "ndcg@10"


@dataclass
class Session:
    """Everything one training run holds while it runs."""

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
    show_progress: bool = True

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
    run's config.json and dataset snapshot. ``config`` itself is never changed."""
    run = RunDir(out_dir)
    if run.finished and not resume:
        raise FileExistsError(
            f"{run.folder} already holds a finished run; choose another --out or pass --resume")
    tc = config.train
    torch.manual_seed(tc.seed)  # the initial weights
    rng = np.random.default_rng(tc.seed)
    generator = torch.Generator(device=tc.device).manual_seed(tc.seed)

    dataset = load_dataset(config.data.dataset, config.data.format, config.data.columns)
    split = make_split(dataset, config.data.split)
    content = content_for(config.model, dataset)
    if content is not None:  # the content width follows from the store
        config = dataclasses.replace(
            config, model=dataclasses.replace(config.model, content_dim=content.shape[1]))
    model = build_model(config.model, dataset.num_items, content,
                        dataset.has_timestamps).to(tc.device)
    known = split.known_items()
    set_known = getattr(model, "set_known", None)  # an item tower's untrained rows
    if set_known is not None:
        set_known(torch.from_numpy(known).to(tc.device))
    pool = None
    if split.cold_items is not None:  # withheld items stay unseen, even as negatives
        pool = torch.from_numpy(np.flatnonzero(~split.cold_items[1:]) + 1).to(tc.device)

    checkpoint = Checkpoint(run.checkpoint_file)
    resuming = resume and checkpoint.exists()
    resumed = (resume_history(run, config, dataset, checkpoint.progress().epoch)
               if resuming else [])
    run.create()
    run.write_config(config, {
        "dataset_info": {**dataset.describe(), "fingerprint": dataset.fingerprint()},
        "protocol": split.protocol, **({"resumed": resumed} if resumed else {})})
    run.write_snapshot(dataset, known)

    optimizer, averaged = None, None
    fit = getattr(model, "fit", None)
    if fit is not None:  # nothing to learn by gradient
        fit(split.train)
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=tc.lr, betas=tc.betas,
                                      weight_decay=tc.weight_decay)
        # With train.ema_decay, the weights validated and kept are a moving average of
        # the trained ones; the trained ones go on being optimised as usual.
        if tc.ema_decay is not None:
            averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(tc.ema_decay))
    progress = Progress()
    if resuming and optimizer is not None:
        progress = checkpoint.restore(model, optimizer, averaged, rng, generator)
        log.info("resumed %s at epoch %d", run.folder, progress.epoch)
    run.keep_metrics_until(progress.epoch if resuming else -1)
    return Session(config, run, dataset, split, model,
                   model if averaged is None else averaged.module, optimizer, averaged,
                   TrainingExamples.of(split.train, config.model.max_len), pool, rng,
                   generator, checkpoint, progress, show_progress)


def content_for(model: ModelConfig, dataset: Dataset) -> torch.Tensor | None:
    """``(N + 1, C)``: the stored embeddings a content item tower reads (None for IDs)."""
    if model.item_tower == "id":
        return None
    return torch.from_numpy(content_matrix(EmbeddingStore.for_dataset(dataset),
                                           model.encoders))


def resume_history(run: RunDir, config: RunConfig, dataset: Dataset,
                   epoch: int) -> list[dict[str, Any]]:
    """The run's earlier resumes plus this one (at ``epoch``, when settings changed),
    for its config.json. Only training settings may change: a resume with another
    model, loss or data would continue one model as another, so it stops here, before
    anything in the run is rewritten."""
    if not run.config_file.exists():
        return []
    extras = run.config_extras()
    history: list[dict[str, Any]] = extras.get("resumed", [])
    before = extras.get("dataset_info", {}).get("fingerprint")
    if before is not None and before != dataset.fingerprint():
        raise ValueError(
            f"{run.folder} was trained on other data than {config.data.dataset!r} holds now "
            "(its interactions or ids changed); resuming would continue on different "
            "data. Train into a new --out.")
    changes = config_changes(run.read_config(), config)
    fixed = {key: change for key, change in changes.items()
             if key.split(".")[0] not in RESUMABLE_SECTIONS}
    if fixed:
        listed = "; ".join(f"{key} {old!r} -> {new!r}" for key, (old, new) in fixed.items())
        raise ValueError(
            f"{run.folder} was trained with other settings ({listed}); resuming would "
            f"continue one model as another. Resume with the settings in {run.config_file}, "
            "or train into a new --out.")
    if changes:
        log.info("resuming %s with changed training settings: %s", run.folder,
                 ", ".join(f"{key} {old!r} -> {new!r}" for key, (old, new) in changes.items()))
        history.append({"epoch": epoch,
                        "changed": {key: list(change) for key, change in changes.items()}})
    return history


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
    batches = s.trainable.training_batches(s.examples, tc.batch_size, s.rng)
    bar = tqdm(batches, total=math.ceil(len(s.examples) / tc.batch_size), desc=f"epoch {epoch}",
               disable=not s.show_progress, leave=False, unit="batch")
    for batch in bar:
        losses.append(train_step(s.trainable, s.optimizer, batch.to(tc.device), s.config,
                                 s.generator, s.pool))
        if s.averaged is not None:
            s.averaged.update_parameters(s.model)
        seen += len(batch.lengths)
        bar.set_postfix(loss=f"{losses[-1]:.3f}",
                        seq_per_s=f"{seen / (time.perf_counter() - started):.0f}")
    seconds = time.perf_counter() - started
    s.progress.train_seconds += seconds
    s.progress.epoch = epoch
    return {"epoch": epoch, "loss": float(np.mean(losses)), "lr": epoch_lr(tc, epoch),
            "epoch_seconds": seconds, "sequences_per_second": len(s.examples) / seconds}


def epoch_lr(tc: TrainConfig, epoch: int) -> float:
    """The learning rate of ``epoch`` (1-based) under ``tc.lr_schedule``."""
    if tc.lr_schedule == "constant":
        return tc.lr
    progress = min(epoch - 1, tc.lr_horizon) / tc.lr_horizon
    return tc.lr_min + (tc.lr - tc.lr_min) * 0.5 * (1.0 + math.cos(math.pi * progress))


def train_step(model: Trainable, optimizer: torch.optim.Optimizer, batch: SequenceBatch,
               config: RunConfig, generator: torch.Generator | None = None,
               pool: torch.Tensor | None = None) -> float:
    """One optimiser step on ``batch``; returns its loss. The batch runs as
    ``train.length_slices`` length-sorted slices (`split_by_length`), each slice's mean
    loss weighted by its share of the supervised positions: the summed gradients are
    the whole padded batch's."""
    optimizer.zero_grad(set_to_none=True)
    parts = split_by_length(batch, config.train.length_slices)
    counts = [supervised_positions(part) for part in parts]
    total = sum(counts)
    loss_sum = 0.0
    for part, count in zip(parts, counts, strict=True):
        if count == 0:
            continue
        loss = batch_loss(model, part, config, generator, pool) * (count / total)
        loss.backward()
        loss_sum += loss.item()
    optimizer.step()
    return loss_sum


def supervised_positions(batch: SequenceBatch) -> int:
    if batch.targets is None:
        raise ValueError("a training batch needs targets")
    return int((batch.targets > 0).sum())


def batch_loss(model: Trainable, batch: SequenceBatch, config: RunConfig,
               generator: torch.Generator | None = None,
               pool: torch.Tensor | None = None) -> torch.Tensor:
    """The mean loss of one batch over its supervised positions (every real position
    for next-item models, the masked ones for cloze)."""
    if batch.targets is None:
        raise ValueError("a training batch needs targets")
    hidden = model.encode_train(batch)  # (B, L, D)
    return next_item_loss(config.loss, hidden, batch.targets, model.item_vectors(), generator,
                          pool)


# ---- validation and selection ------------------------------------------------------------
def validate_and_select(session: Session, record: dict[str, Any]) -> None:
    """Validate when due (every ``eval_every`` epochs and at the last), keep the weights
    when they are the best so far, count passes without a gain (patience), and write
    the epoch's record to metrics.jsonl. Without a validation split nothing is
    selected: the latest weights are kept and every epoch is recorded."""
    s, tc, p = session, session.config.train, session.progress
    epoch = int(record["epoch"])
    if s.split.valid is None:
        p.best_epoch = epoch
        s.run.save_weights(s.kept.state_dict())
        log.info("epoch %d loss %.4f %.1fs", epoch, record.get("loss", math.nan),
                 record.get("epoch_seconds", 0.0))
        s.run.append_metrics(record)
        return
    if epoch % tc.eval_every and epoch != tc.epochs:
        return
    started = time.perf_counter()
    valid = evaluate(s.scorer, s.split.valid, s.config.model.max_len, tc.eval_batch_size,
                     tc.device)
    record |= {"valid": valid, "eval_seconds": time.perf_counter() - started,
               "train_seconds": p.train_seconds}
    if valid[SELECT_ON] > p.best:
        p.best, p.best_epoch, p.bad_evals = valid[SELECT_ON], epoch, 0
        s.run.save_weights(s.kept.state_dict())
    else:
        p.bad_evals += 1
    log.info("epoch %d loss %.4f valid %s %.4f (best %.4f @ %d) %.1fs", epoch,
             record.get("loss", math.nan), SELECT_ON, valid[SELECT_ON], p.best, p.best_epoch,
             record.get("epoch_seconds", 0.0))
    s.run.append_metrics(record)


def save_checkpoint(session: Session) -> None:
    s = session
    if s.optimizer is not None:
        s.checkpoint.save(s.model, s.optimizer, s.averaged, s.progress, s.rng, s.generator)


# ---- finish ------------------------------------------------------------------------------
def finish(session: Session) -> Path:
    """Score the kept weights on validation and test (and the warm and cold slices of a
    cold-items split) and write results.json."""
    s, tc = session, session.config.train
    s.model.load_state_dict(s.run.load_weights(tc.device))
    s.model.eval()

    def scores(evalset: Any) -> dict[str, float]:
        return evaluate(cast(Scorer, s.model), evalset, s.config.model.max_len,
                        tc.eval_batch_size, tc.device)

    valid = None if s.split.valid is None else scores(s.split.valid)
    slices = {}
    if s.split.cold_items is not None:  # cold-start: targets never seen in training
        cold = s.split.cold_items[s.split.test.targets]
        for name, keep in (("warm", ~cold), ("cold", cold)):
            part = s.split.test.subset(keep)
            slices[name] = {"users": len(part), **scores(part)}
    s.run.write_results({
        "dataset": s.config.data.dataset,
        "model": s.config.model.name,
        "protocol": s.split.protocol,
        "selected_on": f"valid {SELECT_ON}" if valid is not None else "none: last epoch",
        "best_epoch": s.progress.best_epoch,
        "epochs": s.progress.epoch,
        "train_seconds": s.progress.train_seconds,
        "valid": valid,
        **scores(s.split.test),
        **slices,
    })
    return s.run.folder


# ---- refit -------------------------------------------------------------------------------
def refit(run_dir: str | Path, out_dir: str | Path, resume: bool = False,
          progress: bool = True) -> Path:
    """Retrain a finished leave-one-out run from scratch with each user's validation
    item added to training, for the number of epochs its validation chose, and score
    the last epoch on test.

    The model then learns from the same items as the HSTU repository's trainer (which
    has no validation split), while the epoch count is still chosen on validation
    rather than on test. Settings are the run's own (its config.json)."""
    source = RunDir(run_dir)
    if not source.finished:
        raise FileNotFoundError(
            f"{source.folder} has no results.json: refit needs a finished run. Train it to "
            f"the end first (modrec train ... --out {source.folder} --resume).")
    config = source.read_config()
    if config.data.split != "loo":
        raise ValueError(
            f"{source.folder} used the {config.data.split!r} split; refit adds the "
            "leave-one-out validation item to training, so it needs a run trained with "
            "--split loo")
    best = int(source.results()["best_epoch"])
    raw = config.to_dict()
    raw["data"]["split"] = "loo-no-valid"
    # A decaying learning rate keeps the source run's horizon, so that the refit sees
    # the rates the chosen epochs saw rather than a schedule squeezed into fewer epochs.
    raw["train"]["lr_decay_epochs"] = config.train.lr_horizon
    raw["train"]["epochs"] = best
    out = RunDir(train(config_from_dict(raw), out_dir, resume=resume, progress=progress))
    results = out.results()
    results["selected_on"] = (f"epochs: best validation {SELECT_ON} of {source.folder} (epoch "
                              f"{best}); refit on training plus validation items")
    results["refit_of"] = str(source.folder)
    out.write_results(results)
    return out.folder
