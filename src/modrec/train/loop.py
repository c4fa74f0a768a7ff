"""The one training loop: every model, every dataset.

``train(config, out_dir)`` reads the data, builds the model, and repeats: an epoch of
next-item batches, a validation pass every ``eval_every`` epochs, early stopping on
validation NDCG@10. The best weights and the latest resumable checkpoint are kept in
the run directory; at the end the best weights are scored on the test split.

Run directory::

    config.json      the full RunConfig plus the dataset's description (and, for a run
                     resumed with other training settings, what changed at which epoch)
    model.pt         best weights (state dict; the averaged ones with train.ema_decay)
    checkpoint.pt    latest epoch: weights (and their average, with train.ema_decay),
                     optimiser, counters, RNG state (for --resume)
    metrics.jsonl    one line per validation pass
    results.json     test metrics at the best validation epoch, with the protocol

``refit(run_dir, out_dir)`` retrains a finished run with the validation items added to
training, for the epoch count its validation chose.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from modrec.atomic import replace_atomic, write_text_atomic
from modrec.content.store import EmbeddingStore, content_matrix
from modrec.data import Dataset, Split, load_dataset, make_split
from modrec.data.batches import (
    SequenceBatch,
    cloze_batches,
    next_item_batches,
    split_by_length,
    training_examples,
    training_times,
)
from modrec.eval import evaluate
from modrec.models import Model, RetrievalModel, build_model
from modrec.models.popularity import Popularity
from modrec.runs import load_tensors
from modrec.train.config import (
    RESUMABLE_SECTIONS,
    RunConfig,
    TrainConfig,
    config_changes,
    config_from_dict,
    load_config,
)
from modrec.train.losses import next_item_loss

log = logging.getLogger(__name__)

SELECT_ON = "ndcg@10"


@dataclass
class Run:
    """A trained run loaded back from its folder."""

    folder: Path
    config: RunConfig
    dataset: Dataset
    split: Split
    model: Model


def save_atomic(obj: Any, path: Path) -> None:
    replace_atomic(path, lambda tmp: torch.save(obj, tmp))


def train(config: RunConfig, out_dir: str | Path, resume: bool = False,
          progress: bool = True) -> Path:
    """Train to early stopping (or ``config.train.epochs``) and write ``out_dir``."""
    out = Path(out_dir)
    tc = config.train
    if out.exists() and (out / "results.json").exists() and not resume:
        raise FileExistsError(
            f"{out} already holds a finished run; choose another --out or pass --resume"
        )
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(tc.seed)
    rng = np.random.default_rng(tc.seed)
    generator = torch.Generator(device=tc.device).manual_seed(tc.seed)

    dataset = load_dataset(config.data.dataset, config.data.format)
    split = make_split(dataset, config.data.split)
    content = None
    if config.model.item_tower != "id":
        content = torch.from_numpy(content_matrix(EmbeddingStore.for_dataset(dataset),
                                                  config.model.encoders))
        config.model.content_dim = content.shape[1]
    model = build_model(config.model, dataset.num_items, content,
                        dataset.has_timestamps).to(tc.device)
    pool = None  # the items training may use as negatives (None: all)
    if isinstance(model, RetrievalModel):
        model.item_tower.set_known(known_items(split).to(tc.device))
        if split.cold_items is not None:  # withheld items stay unseen, even as negatives
            pool = torch.from_numpy(np.flatnonzero(~split.cold_items[1:]) + 1).to(tc.device)
    checkpoint = out / "checkpoint.pt"
    saved = load_tensors(checkpoint) if resume and checkpoint.exists() else None
    resumed = [] if saved is None else resume_history(out, config, saved["state"]["epoch"])
    write_text_atomic(out / "config.json", json.dumps(
        {**config.to_dict(), "dataset_info": dataset.describe(), "protocol": split.protocol,
         **({"resumed": resumed} if resumed else {})},
        indent=2))

    if isinstance(model, Popularity):  # nothing to learn by gradient
        model.fit(split.train.items)
        if split.valid is not None:
            valid = evaluate(model, split.valid, config.model.max_len, tc.eval_batch_size,
                             tc.device)
            _append_metrics(out, {"epoch": 0, "valid": valid})
        save_atomic(model.state_dict(), out / "model.pt")
        return _finish(out, model, split, config, best_epoch=0, epochs=0, train_seconds=0.0)

    windows, lengths = training_examples(split.train, config.model.max_len)
    times = training_times(split.train, config.model.max_len)
    optimizer = torch.optim.AdamW(model.parameters(), lr=tc.lr, betas=tc.betas,
                                  weight_decay=tc.weight_decay)
    # With train.ema_decay, the weights validated and kept are a moving average of the
    # trained ones (`kept`); the trained ones go on being optimised as usual.
    averaged = (None if tc.ema_decay is None else
                AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(tc.ema_decay)))
    kept = model if averaged is None else cast(Model, averaged.module)  # a deep copy
    state = {"epoch": 0, "best": -math.inf, "best_epoch": -1, "bad_evals": 0,
             "train_seconds": 0.0}
    if saved is not None:
        load_weights(model, saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        if averaged is not None and saved.get("ema") is not None:
            averaged.load_state_dict(saved["ema"])
        state = saved["state"]
        rng.bit_generator.state = saved["numpy_rng"]
        generator.set_state(saved["torch_rng"])
        torch.set_rng_state(saved["cpu_rng"])
        saved = None  # no second copy of the weights and moments while training
        log.info("resumed %s at epoch %d", out, state["epoch"])

    # Without a validation set nothing is selected: train tc.epochs, keep the last.
    selecting = split.valid is not None
    while state["epoch"] < tc.epochs and state["bad_evals"] < tc.patience:
        epoch = int(state["epoch"]) + 1
        for group in optimizer.param_groups:
            group["lr"] = epoch_lr(tc, epoch)
        model.train()
        started = time.perf_counter()
        losses, seen = [], 0
        batches = (
            cloze_batches(windows, config.model.max_len, tc.batch_size, rng,
                          config.model.mask_rate, dataset.num_items + 1)
            if model.objective == "cloze"
            else next_item_batches(windows, lengths, tc.batch_size, rng, times=times)
        )
        total = math.ceil(len(windows) / tc.batch_size)
        bar = tqdm(batches, total=total, desc=f"epoch {epoch}", disable=not progress,
                   leave=False, unit="batch")
        for batch in bar:
            losses.append(train_step(model, optimizer, batch.to(tc.device), config,
                                     generator, pool))
            if averaged is not None:
                averaged.update_parameters(model)
            seen += len(batch.lengths)
            bar.set_postfix(loss=f"{losses[-1]:.3f}",
                            seq_per_s=f"{seen / (time.perf_counter() - started):.0f}")
        seconds = time.perf_counter() - started
        state["train_seconds"] += seconds
        state["epoch"] = epoch
        record: dict[str, Any] = {"epoch": epoch, "loss": float(np.mean(losses)),
                                  "lr": optimizer.param_groups[0]["lr"], "epoch_seconds": seconds,
                                  "sequences_per_second": len(windows) / seconds}
        if not selecting:
            state["best_epoch"] = epoch
            log.info("epoch %d loss %.4f %.1fs", epoch, record["loss"], seconds)
            _append_metrics(out, record)
            if epoch == tc.epochs:
                save_atomic(kept.state_dict(), out / "model.pt")
        elif epoch % tc.eval_every == 0 or epoch == tc.epochs:
            assert split.valid is not None
            started = time.perf_counter()
            valid = evaluate(kept, split.valid, config.model.max_len, tc.eval_batch_size,
                             tc.device)
            record |= {"valid": valid, "eval_seconds": time.perf_counter() - started,
                       "train_seconds": state["train_seconds"]}
            if valid[SELECT_ON] > state["best"]:
                state |= {"best": valid[SELECT_ON], "best_epoch": epoch, "bad_evals": 0}
                save_atomic(kept.state_dict(), out / "model.pt")
            else:
                state["bad_evals"] += 1
            log.info("epoch %d loss %.4f valid %s %.4f (best %.4f @ %d) %.1fs", epoch,
                     record["loss"], SELECT_ON, valid[SELECT_ON], state["best"],
                     state["best_epoch"], seconds)
            _append_metrics(out, record)
        save_atomic({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                     "ema": None if averaged is None else averaged.state_dict(),
                     "state": state, "numpy_rng": rng.bit_generator.state,
                     "torch_rng": generator.get_state(), "cpu_rng": torch.get_rng_state()},
                    checkpoint)

    load_weights(model, load_tensors(out / "model.pt"))
    return _finish(out, model, split, config, int(state["best_epoch"]), int(state["epoch"]),
                   state["train_seconds"])


def epoch_lr(tc: TrainConfig, epoch: int) -> float:
    """The learning rate of ``epoch`` (1-based) under ``tc.lr_schedule``."""
    if tc.lr_schedule == "constant":
        return tc.lr
    progress = min(epoch - 1, tc.lr_horizon) / tc.lr_horizon
    return tc.lr_min + (tc.lr - tc.lr_min) * 0.5 * (1.0 + math.cos(math.pi * progress))


def refit(run_dir: str | Path, out_dir: str | Path, resume: bool = False,
          progress: bool = True) -> Path:
    """Retrain a finished leave-one-out run from scratch with each user's validation
    item added to training, for the number of epochs its validation chose, and score
    the last epoch on test.

    The model then learns from the same items as the HSTU repository's trainer (which
    has no validation split), while the epoch count is still chosen on validation
    rather than on test. Settings are the run's own (its config.json)."""
    source = Path(run_dir)
    if not (source / "results.json").exists():
        raise FileNotFoundError(
            f"{source} has no results.json: refit needs a finished run. Train it to the "
            f"end first (modrec train ... --out {source} --resume).")
    config = load_config(source / "config.json")
    if config.data.split != "loo":
        raise ValueError(
            f"{source} used the {config.data.split!r} split; refit adds the leave-one-out "
            "validation item to training, so it needs a run trained with --split loo")
    best = int(json.loads((source / "results.json").read_text())["best_epoch"])
    raw = config.to_dict()
    raw["data"]["split"] = "loo-no-valid"
    # A decaying learning rate keeps the source run's horizon, so that the refit sees
    # the rates the chosen epochs saw rather than a schedule squeezed into fewer epochs.
    raw["train"]["lr_decay_epochs"] = config.train.lr_horizon
    raw["train"]["epochs"] = best
    out = train(config_from_dict(raw), out_dir, resume=resume, progress=progress)
    results = json.loads((out / "results.json").read_text())
    results["selected_on"] = (f"epochs: best validation {SELECT_ON} of {source} (epoch "
                              f"{best}); refit on training plus validation items")
    results["refit_of"] = str(source)
    write_text_atomic(out / "results.json", json.dumps(results, indent=2))
    return out


def resume_history(out: Path, config: RunConfig, epoch: int) -> list[dict[str, Any]]:
    """The run's earlier resumes plus this one (at ``epoch``, when settings changed),
    for its config.json. Only training settings may change: a resume with another
    model, loss or data would continue one model as another, so it stops here, before
    anything in ``out`` is rewritten."""
    if not (out / "config.json").exists():
        return []
    history: list[dict[str, Any]] = json.loads((out / "config.json").read_text()).get(
        "resumed", [])
    changes = config_changes(load_config(out / "config.json"), config)
    fixed = {key: change for key, change in changes.items()
             if key.split(".")[0] not in RESUMABLE_SECTIONS}
    if fixed:
        listed = "; ".join(f"{key} {old!r} -> {new!r}" for key, (old, new) in fixed.items())
        raise ValueError(
            f"{out} was trained with other settings ({listed}); resuming would continue "
            f"one model as another. Resume with the settings in {out / 'config.json'}, or "
            "train into a new --out.")
    if changes:
        log.info("resuming %s with changed training settings: %s", out,
                 ", ".join(f"{key} {old!r} -> {new!r}" for key, (old, new) in changes.items()))
        history.append({"epoch": epoch,
                        "changed": {key: list(change) for key, change in changes.items()}})
    return history


def load_weights(model: Model, state: dict[str, Any]) -> None:
    """Load a state dict. ``known`` is derived from the split, never loaded (runs from
    before 2026-11-30 saved it with content towers)."""
    model.load_state_dict({k: v for k, v in state.items() if not k.endswith("tower.known")})


def known_items(split: Split) -> torch.Tensor:
    """``(N + 1,)`` bool: the items that occur in the training sequences."""
    known = torch.zeros(split.num_items + 1, dtype=torch.bool)
    known[torch.from_numpy(split.train.items.astype(np.int64))] = True
    return known


def train_step(model: RetrievalModel, optimizer: torch.optim.Optimizer, batch: SequenceBatch,
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


def batch_loss(model: RetrievalModel, batch: Any, config: RunConfig,
               generator: torch.Generator | None = None,
               pool: torch.Tensor | None = None) -> torch.Tensor:
    """The mean loss of one batch over its supervised positions: every real position
    for next-item models, the masked positions for cloze (BERT4Rec)."""
    if model.objective == "cloze":
        hidden = model.encode_masked(batch.inputs, batch.lengths)  # (B, L, D)
    else:
        hidden = model.encode(batch.inputs, batch.lengths, batch.times)  # (B, L, D)
    return next_item_loss(config.loss, hidden, batch.targets, model.item_vectors(), generator,
                          pool)


def _append_metrics(out: Path, record: dict[str, Any]) -> None:
    with (out / "metrics.jsonl").open("a") as f:
        f.write(json.dumps(record) + "\n")


def _finish(out: Path, model: Model, split: Split, config: RunConfig, best_epoch: int,
            epochs: int, train_seconds: float) -> Path:
    tc = config.train
    valid = (None if split.valid is None else
             evaluate(model, split.valid, config.model.max_len, tc.eval_batch_size, tc.device))
    test = evaluate(model, split.test, config.model.max_len, tc.eval_batch_size, tc.device)
    slices = {}
    if split.cold_items is not None:  # cold-start: targets never seen in training
        cold = split.cold_items[split.test.targets]
        for name, keep in (("warm", ~cold), ("cold", cold)):
            part = split.test.subset(keep)
            slices[name] = {"users": len(part), **evaluate(
                model, part, config.model.max_len, tc.eval_batch_size, tc.device)}
    results = {
        "dataset": config.data.dataset,
        "model": config.model.name,
        "protocol": split.protocol,
        "selected_on": f"valid {SELECT_ON}" if valid is not None else "none: last epoch",
        "best_epoch": best_epoch,
        "epochs": epochs,
        "train_seconds": train_seconds,
        "valid": valid,
        **test,
        **slices,
    }
    write_text_atomic(out / "results.json", json.dumps(results, indent=2))
    return out


def load_run(folder: str | Path, device: str = "cpu") -> Run:
    """Read a run directory back: config, data, split and the best weights."""
    folder = Path(folder)
    if not (folder / "config.json").exists():
        raise FileNotFoundError(f"{folder} is not a run directory (no config.json)")
    if not (folder / "model.pt").exists():
        raise FileNotFoundError(f"{folder} has no model.pt yet; train it first")
    config = load_config(folder / "config.json")
    dataset = load_dataset(config.data.dataset, config.data.format)
    split = make_split(dataset, config.data.split)
    model = build_model(config.model, dataset.num_items, timestamps=dataset.has_timestamps)
    load_weights(model, load_tensors(folder / "model.pt", device))
    if isinstance(model, RetrievalModel):
        model.item_tower.set_known(known_items(split))
    model.to(device).eval()
    return Run(folder, config, dataset, split, model)
