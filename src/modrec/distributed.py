"""Data parallelism under ``torchrun``: the process group from torchrun's environment,
and the few collective steps training and extraction need (`World`).

``torchrun --nproc_per_node 2 -m modrec train ...`` starts the same command in two
processes with ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT`` set; `World.from_env` joins them (gloo on a CPU, NCCL on GPUs, chosen
from the device). Without torchrun it is a world of one and nothing here communicates.
A top-level module, below every package that uses it: `modrec.train` (the loop) and
`modrec.content` (`modrec embed`, sharded by item: `modrec.content.embed`) both join a
world, and content must not import training.

How a training run divides among ranks (`modrec.train.loop` calls these):

* every rank holds the whole training set and draws the same batch order each epoch
  from a generator seeded by (seed, epoch); rank r keeps rows r, r + W, ... of every
  global batch, so the *global* batch is ``train.batch_size``, as in one process, and
  each rank steps on about ``batch_size / W`` sequences (the rule: keep
  ``train.batch_size`` and the learning rate as for one process);
* each rank weights its loss by its share of the global batch's supervised positions
  (`sum_int` of the counts), so the averaged DDP gradient equals the one-process
  gradient of the whole batch (a test checks it);
* validation and test are sharded by user, the per-user ranks gathered, and every rank
  computes the same metrics, so learning-rate, selection and early-stopping decisions
  are identical everywhere;
* only rank 0 writes the run folder.

With ``data.rank_users=true`` a rank holds only its own users instead of all of them
(`modrec.data.dataset.read_user_block`: a contiguous block of user indices, read from
the cached dataset's row groups), and the first rule changes: each rank draws *local*
batches of about ``batch_size / W`` of its own training sequences, in an order seeded by
(seed, epoch, rank), and every rank takes the same number of steps, the **smallest**
of the ranks' local batch counts (`min_int`), so a rank with more sequences leaves
the end of its shuffled order out of that epoch (other sequences each epoch). The loss
weighting, and so the rule that the averaged gradient is the mean over the global
batch (all ranks' local batches together), is unchanged. The items seen in training
are the union over ranks (`union`), and each rank evaluates its own users.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np
import torch
import torch.distributed as dist


@dataclasses.dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @staticmethod
    def from_env(device: str = "cpu") -> World:
        """Join the process group torchrun describes (a world of one without it)."""
        size = int(os.environ.get("WORLD_SIZE", "1"))
        if size <= 1:
            return World()
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
        return World(dist.get_rank(), dist.get_world_size(),
                     int(os.environ.get("LOCAL_RANK", "0")), str(dist.get_backend()))

    def device(self, device: str) -> str:
        """``cuda`` means this process's own GPU (``cuda:LOCAL_RANK``) under torchrun."""
        return f"cuda:{self.local_rank}" if device == "cuda" and self.distributed else device

    def sum_int(self, value: int) -> int:
        return int(self._all_reduce(np.array([value], np.int64), dist.ReduceOp.SUM)[0])

    def min_int(self, value: int) -> int:
        """The smallest ``value`` of any rank."""
        return int(self._all_reduce(np.array([value], np.int64), dist.ReduceOp.MIN)[0])

    def union(self, mask: np.ndarray) -> np.ndarray:
        """Element-wise OR of every rank's boolean ``mask`` (all of the same shape)."""
        return self._all_reduce(mask.astype(np.int32), dist.ReduceOp.MAX).astype(bool)

    def _all_reduce(self, values: np.ndarray, op: Any) -> np.ndarray:
        """``values`` reduced element-wise over the ranks by ``op`` (through this rank's
        GPU under NCCL, which reduces GPU tensors only)."""
        if not self.distributed:
            return values
        tensor = torch.from_numpy(values)
        if self.backend == "nccl":
            tensor = tensor.cuda(self.local_rank)
        dist.all_reduce(tensor, op=op)
        return tensor.cpu().numpy()

    def gather(self, value: Any) -> list[Any]:
        """Every rank's ``value``, in rank order, on every rank."""
        if not self.distributed:
            return [value]
        values: list[Any] = [None] * self.size
        dist.all_gather_object(values, value)
        return values

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank."""
        if not self.distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def shard(self, count: int) -> np.ndarray:
        """This rank's rows of ``count``: r, r + W, r + 2W, ..."""
        return np.arange(self.rank, count, self.size)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()
