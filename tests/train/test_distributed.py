"""Data-parallel training on two gloo processes, spawned inside the test: the gradient
is the one-process gradient, every rank decides alike, rank 0 alone writes, a
distributed run resumes, and ``torchrun -m modrec train`` runs end to end."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from modrec.config import build_config
from modrec.data import leave_one_out, load_dataset
from modrec.data.batches import Shard, TrainingExamples
from modrec.models import build_model
from modrec.train.loop import BatchLoss, train_step
from support import spawn_gloo, torchrun_train

# two processes each (torchrun or torch.multiprocessing): `-m 'not distributed'` skips them
pytestmark = pytest.mark.distributed

SMALL = ["model.max_len=30", "model.num_blocks=1", "train.batch_size=64"]


def _step_weights(model: torch.nn.Module, batch: Any, loss: torch.nn.Module,
                  world: Any = None) -> torch.Tensor:
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)  # weights - gradient
    train_step(loss, optimizer, batch, 4, world=world)
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def _model_and_batch(name: str) -> tuple[Any, Any, Any]:
    config = build_config("ml-100k", name, overrides=[*SMALL, "loss.name=softmax",
                                                      "model.dropout=0.0"])
    dataset = load_dataset("ml-100k")
    torch.manual_seed(0)
    model = build_model(config.model, dataset.num_items)
    examples = TrainingExamples.of(leave_one_out(dataset).train, 30)
    return config, model, examples


def _global_batch(model: Any, examples: Any) -> Any:
    return next(model.training_batches(examples, 64, np.random.default_rng(1)))


def _rows(batch: Any, rows: slice) -> Any:
    from modrec.data.batches import SequenceBatch

    return SequenceBatch(batch.inputs[rows], batch.lengths[rows], batch.targets[rows])


GRADIENT_MODELS = ("sasrec", "bert4rec", "hstu")


def _gradient_worker(rank: int, out: Path) -> None:
    from torch.nn.parallel import DistributedDataParallel

    from modrec.distributed import World

    world = World.from_env()
    for name in GRADIENT_MODELS:
        config, model, examples = _model_and_batch(name)
        batch = _rows(_global_batch(model, examples), slice(world.rank, None, world.size))
        ddp = DistributedDataParallel(BatchLoss(model, config.loss), broadcast_buffers=False)
        weights = _step_weights(model, batch, ddp, world)
        torch.save({"weights": weights, "rows": len(batch.lengths)},
                   out / f"{name}-rank{rank}.pt")


def test_ddp_gradient_equals_the_one_process_gradient(tmp_path: Path) -> None:
    """The global batch split over two ranks (rows 0, 2, ... and 1, 3, ..., each run
    in length slices) steps the weights exactly as one process on the whole batch:
    next-item (SASRec, HSTU) and cloze (BERT4Rec) training alike."""
    spawn_gloo(_gradient_worker, tmp_path)
    for name in GRADIENT_MODELS:
        ranks = [torch.load(tmp_path / f"{name}-rank{r}.pt", weights_only=True)
                 for r in (0, 1)]
        assert ranks[0]["rows"] + ranks[1]["rows"] == 64
        torch.testing.assert_close(ranks[0]["weights"], ranks[1]["weights"])  # in sync
        config, model, examples = _model_and_batch(name)
        single = _step_weights(model, _global_batch(model, examples),
                               BatchLoss(model, config.loss))
        torch.testing.assert_close(ranks[0]["weights"], single, rtol=1e-4, atol=1e-6,
                                   msg=name)


def test_ranks_cut_the_same_global_batches() -> None:
    """Every rank draws the same order and keeps its own rows: together, each global
    batch once; a last global batch smaller than the world is dropped."""
    from modrec.data.batches import batch_order

    lengths = np.ones(131, dtype=np.int64)
    parts = [batch_order(lengths, 64, np.random.default_rng(r), Shard(r, 3,
                                                                     np.random.default_rng(9)))
             for r in range(3)]
    whole = batch_order(lengths, 64, np.random.default_rng(9))
    assert len(whole) == 3 and len(whole[-1]) == 3 and all(len(p) == 3 for p in parts)
    for step in range(3):
        together = np.concatenate([parts[r][step] for r in range(3)])
        assert sorted(together.tolist()) == sorted(whole[step].tolist())


def _training_worker(rank: int, out: Path, overrides: list[str], resume: bool) -> None:
    from modrec.runs import RunDir
    from modrec.train import loop as loop_module
    from modrec.train import train

    decisions: list[dict[str, Any]] = []
    if rank == 1:  # rank 1 must never write into the run folder
        def refuse(*args: Any, **kwargs: Any) -> None:
            raise AssertionError("rank 1 wrote into the run folder")

        for method in ("write_config", "write_snapshot", "save_weights", "append_metrics",
                       "keep_metrics_until", "write_results"):
            setattr(RunDir, method, refuse)
    select = loop_module.validate_and_select

    def record(session: Any, epoch_record: dict[str, Any]) -> None:
        select(session, epoch_record)
        decisions.append({"epoch": session.progress.epoch, "best": session.progress.best,
                          "best_epoch": session.progress.best_epoch,
                          "bad_evals": session.progress.bad_evals,
                          "stopped": session.stopped})

    loop_module.validate_and_select = record
    config = build_config("ml-100k", "sasrec", overrides=overrides)
    train(config, out / "run", resume=resume, progress=False)
    (out / f"decisions{rank}.json").write_text(json.dumps(decisions))


def test_ranks_decide_alike_rank_0_writes_and_a_distributed_run_resumes(
        tmp_path: Path) -> None:
    overrides = [*SMALL, "train.patience=2", "train.epochs=2"]
    spawn_gloo(_training_worker, tmp_path, overrides, False)
    first = [json.loads((tmp_path / f"decisions{r}.json").read_text()) for r in (0, 1)]
    assert first[0] == first[1] and len(first[0]) == 2
    run = tmp_path / "run"
    assert json.loads((run / "config.json").read_text())["world_size"] == 2
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").open()] == [1, 2]
    # Resume the two-process run for two more epochs.
    spawn_gloo(_training_worker, tmp_path, [*SMALL, "train.patience=2", "train.epochs=4"], True)
    again = [json.loads((tmp_path / f"decisions{r}.json").read_text()) for r in (0, 1)]
    assert again[0] == again[1] and [d["epoch"] for d in again[0]] == [3, 4]
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").open()] == [1, 2, 3, 4]
    results = json.loads((run / "results.json").read_text())
    assert results["epochs"] == 4 and results["ndcg@10"] > 0.02


def test_torchrun_trains_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    results = torchrun_train(out, SMALL)
    assert results["epochs"] == 1 and results["ndcg@10"] > 0.01
    assert json.loads((out / "config.json").read_text())["world_size"] == 2
