"""Training with the ID item table sharded by TorchRec (``model.item_table: sharded``).

The model is the plain one; its item tower's ID table is a `ShardableTable` (a TorchRec
``EmbeddingCollection`` on the ``meta`` device, `models/sharded_items.py`). `shard`
wraps the batch loss in TorchRec's ``DistributedModelParallel``: its planner places the
table's rows (row-wise: each rank a contiguous block; table-wise: one rank all of them),
each rank allocates only its own rows, and everything else in the model is wrapped in
``DistributedDataParallel`` as in a plain data-parallel run. The loop keeps its shape:

* set-up checks what a sharded table cannot do yet (`check_settings`) and that a
  resume runs on as many ranks as wrote the checkpoint (`check_resume`);
* lookups: the encoder embeds the history, the loss the targets and the sampled
  negatives (`losses.sampled_softmax_by_lookup`); each lookup is an all-to-all that
  fetches the rows from the ranks holding them, so no rank reads the whole table;
* the table learns in its backward (TorchRec's fused optimiser: row-wise Adagrad, the
  one fused optimiser that runs on CPUs and GPUs alike, at ``train.table_lr``); AdamW
  steps the rest, which DDP synchronises. TorchRec divides the table's gradients by
  the world size as DDP averages the rest, so the loop's loss weighting holds for both;
* evaluation reads the catalog in blocks (`rank_targets_blockwise`), every rank its
  own users;
* the best table is saved in parts, each rank writing its rows (`save_table`), and so
  is the checkpoint's: each rank its rows and the fused optimiser's state for them
  (`checkpoint_part`), which a resume on as many ranks puts back (`restore_part`).

Without torchrun this is a world of one: a one-process group is made for TorchRec.
TorchRec logs "optimizer already collected" at ERROR level when it shards a model: the
item tower is reachable from the model and from its encoder, and it keeps the one
optimiser it finds twice.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from modrec.config import RunConfig
from modrec.data.splits import EvalSet
from modrec.distributed import World
from modrec.errors import ConfigError
from modrec.eval.evaluator import LookupScorer, rank_targets_blockwise
from modrec.models.sharded_items import TABLE, ShardableTable, require_torchrec
from modrec.runs import RunDir, RunError
from modrec.train.checkpoint import Checkpoint

EVAL_BLOCK = 65536  # catalog rows per evaluation block: 16 MiB of vectors at D = 64


def table_of(model: nn.Module) -> ShardableTable | None:
    """The model's sharded item table, if it has one."""
    return next((m for m in model.modules() if isinstance(m, ShardableTable)), None)


def check_settings(config: RunConfig, model: nn.Module) -> None:
    """What a sharded item table cannot do yet, said before anything runs."""
    problems = []
    if table_of(model) is None:
        problems.append(f"model {config.model.name!r} has no ID item table to shard")
    if config.model.dim % 4:
        problems.append(f"model.dim must be a multiple of 4 for FBGEMM's kernels, not "
                        f"{config.model.dim}")
    if config.loss.name != "sampled_softmax":
        problems.append("the loss must be sampled_softmax (a full softmax scores every "
                        "item at every step, which needs the whole table)")
    if config.train.ema_decay is not None:
        problems.append("train.ema_decay would copy the whole table; leave it unset")
    if problems:
        raise ConfigError("model.item_table=sharded: " + "; ".join(problems))


def check_resume(checkpoint: Checkpoint, world: World) -> None:
    """A sharded run resumes on as many processes as wrote its checkpoint: each rank's
    rows and their optimiser state are a part of their own, cut by that world's plan."""
    parts = checkpoint.table_parts()
    if parts is None:
        raise ConfigError(
            f"{checkpoint.path} holds no sharded item table (it was written by a run "
            "without model.item_table=sharded); resume with that run's settings, or train "
            "into a new --out")
    if parts["world_size"] != world.size:
        raise ConfigError(
            f"{checkpoint.path} was written by {parts['world_size']} processes and this run "
            f"has {world.size}: each process saved its own rows of the item table, so the "
            f"run resumes on {parts['world_size']} (torchrun --nproc_per_node "
            f"{parts['world_size']} ... --resume; --nnodes x --nproc_per_node in all), or "
            "trains into a new --out")


def shard(loss: nn.Module, world: World, device: str, sharding: str, table_lr: float,
          optimizer: str = "EXACT_ROWWISE_ADAGRAD") -> nn.Module:
    """``loss`` (the batch loss around the model) with its item table sharded across
    the world's ranks by TorchRec's planner (``sharding``: "row_wise" or "table_wise")
    and the rest data-parallel. The model inside ``loss`` is changed in place: its table
    becomes this rank's shard. ``optimizer``: the table's fused optimiser, an FBGEMM
    ``EmbOptimType`` name (a test steps with EXACT_SGD to read the gradient off)."""
    require_torchrec()
    from fbgemm_gpu.split_embedding_configs import EmbOptimType
    from torchrec.distributed.embedding import EmbeddingCollectionSharder
    from torchrec.distributed.model_parallel import (
        DefaultDataParallelWrapper,
        DistributedModelParallel,
    )
    from torchrec.distributed.planner import (
        EmbeddingShardingPlanner,
        ParameterConstraints,
        Topology,
    )

    if not dist.is_initialized():  # one process: TorchRec still wants a process group
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo",
                                store=dist.HashStore(), rank=0, world_size=1)
    # CPU kernels fuse only (row-wise) Adagrad and SGD into the backward; row-wise
    # Adagrad keeps one accumulator per row, not per value, and runs on GPUs as well.
    sharders: list[Any] = [EmbeddingCollectionSharder(fused_params={
        "optimizer": EmbOptimType[optimizer], "learning_rate": table_lr})]
    planner = EmbeddingShardingPlanner(
        topology=Topology(world_size=world.size,
                          local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", world.size)),
                          compute_device="cuda" if device.startswith("cuda") else "cpu"),
        constraints={TABLE: ParameterConstraints(sharding_types=[sharding])})
    plan = planner.collective_plan(loss, sharders, dist.GroupMember.WORLD)
    # static_graph off: a batch's slices and the validation lookups differ step to step.
    return DistributedModelParallel(
        loss, device=torch.device(device), plan=plan, sharders=sharders,
        data_parallel_wrapper=DefaultDataParallelWrapper(static_graph=False))


def dense_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters the dense optimiser steps: all but the sharded table's (which
    its fused optimiser updates in the backward)."""
    table = table_of(model)
    inside = set() if table is None else {id(p) for p in table.parameters()}
    return [p for p in model.parameters() if id(p) not in inside]


def dense_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict without the sharded table (saved in parts instead)."""
    prefixes = _prefixes(model)
    return {k: v for k, v in model.state_dict().items() if not k.startswith(prefixes)}


def load_dense_state(model: nn.Module, state: dict[str, Any]) -> None:
    """Load `dense_state` back; the table keeps its rows (`load_table` reads those)."""
    current = model.state_dict()
    prefixes = _prefixes(model)
    # TorchRec's load hook wants the table's entries present: give it its own.
    table = {k: v for k, v in current.items() if k.startswith(prefixes)}
    model.load_state_dict({**state, **table})


def _prefixes(model: nn.Module) -> tuple[str, ...]:
    """Every name the table goes by in the state dict (the item tower is reachable from
    the model and from its encoder)."""
    return tuple(f"{name}." for name, m in model.named_modules(remove_duplicate=False)
                 if isinstance(m, ShardableTable))


def save_table(table: ShardableTable, run: RunDir) -> None:
    """Every rank writes the rows it holds (a part per shard, named by its first row)."""
    for start, rows in table.local_rows():
        run.save_table_rows(start, rows)


@torch.no_grad()
def load_table(table: ShardableTable, run: RunDir) -> None:
    """Every rank reads back the rows it holds (the same plan wrote them)."""
    for start, rows in table.local_rows():
        rows.copy_(run.load_table_rows(start, rows.device))


def _own(tensor: torch.Tensor) -> torch.Tensor:
    """A view's values alone (saving a view would save its whole storage), on the CPU."""
    tensor = tensor.detach()
    if tensor.untyped_storage().nbytes() != tensor.nbytes:
        tensor = tensor.clone()
    return tensor.cpu()


def _optimizer_shards(loss: nn.Module) -> list[tuple[str, int, torch.Tensor]]:
    """The fused optimiser's state held by this rank: (name, first row, tensor) for each
    local shard of each state (row-wise Adagrad: one sum of squared gradients a row).
    The tensors are views of the state FBGEMM steps: writing them writes the state."""
    fused = getattr(loss, "fused_optimizer", None)
    if fused is None:
        raise TypeError("expected the DistributedModelParallel that `shard` returns")
    found = []
    for param, states in fused.state_dict()["state"].items():
        for key, value in states.items():
            name = f"{param}/{key}"
            if hasattr(value, "local_shards"):  # a ShardedTensor
                found += [(name, int(shard.metadata.shard_offsets[0]), shard.tensor)
                          for shard in value.local_shards()]
            elif isinstance(value, torch.Tensor):
                found.append((name, 0, value))
            else:
                raise TypeError(f"the table's optimiser state {name} is a "
                                f"{type(value).__name__}; expected tensors to checkpoint")
    return found


def checkpoint_part(loss: nn.Module, table: ShardableTable) -> dict[str, Any]:
    """This rank's part of a checkpoint: its rows of the table and the fused optimiser's
    state for them, each with its first row (``loss``: what `shard` returned)."""
    return {"rows": [(start, _own(rows)) for start, rows in table.local_rows()],
            "optimizer": [(name, start, _own(t)) for name, start, t in _optimizer_shards(loss)]}


@torch.no_grad()
def restore_part(loss: nn.Module, table: ShardableTable, part: dict[str, Any]) -> None:
    """Put `checkpoint_part`'s rows and optimiser state back into this rank's shard; the
    shard must be the one that wrote it (same rows, same shapes)."""
    saved_rows = {int(start): rows for start, rows in part["rows"]}
    saved_states = {(name, int(start)): t for name, start, t in part["optimizer"]}
    here = [(f"rows {start}", rows, saved_rows.pop(start, None))
            for start, rows in table.local_rows()]
    here += [(f"{name} {start}", t, saved_states.pop((name, start), None))
             for name, start, t in _optimizer_shards(loss)]
    wrong = [what for what, t, saved in here if saved is None or saved.shape != t.shape]
    if wrong or saved_rows or saved_states:
        raise RunError(
            "the checkpoint's table parts do not match this rank's shard (the sharding "
            f"plan changed: {', '.join(wrong) or 'parts this rank no longer holds'}); "
            "resume with the settings and number of processes the run was trained with, "
            "or train into a new --out")
    for _, tensor, saved in here:
        tensor.copy_(saved)


def shard_sizes(table: ShardableTable) -> dict[str, float]:
    """This rank's share of the table: rows and MiB."""
    parts = [rows for _, rows in table.local_rows()]
    return {"rows": sum(len(r) for r in parts),
            "mib": sum(r.nbytes for r in parts) / 2**20}


def rank_targets_sharded(model: nn.Module, evalset: EvalSet, num_items: int, max_len: int,
                         batch_size: int, device: str, world: World) -> np.ndarray:
    """Ranks of this rank's users (``evalset`` is its shard of them) against the whole
    catalog, read in blocks; every rank calls it, as the lookups are collective."""
    blocks = max(world.gather(-(-len(evalset) // batch_size)))
    lookup: LookupScorer = model  # type: ignore[assignment]  # RetrievalModel
    return rank_targets_blockwise(lookup, evalset, num_items, max_len, batch_size, device,
                                  EVAL_BLOCK, blocks)
