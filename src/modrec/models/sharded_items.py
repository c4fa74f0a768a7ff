"""The ID item table as a TorchRec ``EmbeddingCollection``, for catalogs whose table
should not live whole in every process (``model.item_table: sharded``).

`ShardableTable` is the plain module: item index -> vector, like ``nn.Embedding``, but
its rows are a TorchRec table created on the ``meta`` device, so building the model
allocates nothing. `modrec.train.sharded` hands the model to TorchRec's
``DistributedModelParallel``, which swaps the collection for a sharded one and
allocates only this rank's rows. The model never asks which rank it runs on: it looks
items up, and TorchRec's all-to-all fetches the rows from the ranks that hold them.

TorchRec is imported lazily (`require_torchrec`), so modrec works without it; asking for
a sharded table without it installed is an error that names the install steps.

Shapes: ``...`` any id shape, D dim, n looked-up ids.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

TABLE = "item_ids"  # TorchRec's table name ("items" clashes with its own attribute names)
FEATURE = "item"

INSTALL = (
    "model.item_table=sharded needs TorchRec. On a CPU: "
    "`pip install fbgemm-gpu-cpu==1.8.0` then "
    "`pip install --no-deps torchrec==1.8.0` and "
    "`pip install tensordict pyre-extensions torchmetrics iopath` "
    "(torchrec's own pins would replace torch). On GPUs install the fbgemm-gpu and "
    "torchrec wheels built for your CUDA and torch instead (see README, 'Sharded item "
    "tables').")


def require_torchrec() -> Any:
    """The ``torchrec`` module, or an ImportError that says how to install it."""
    try:
        import torchrec
    except ImportError as err:
        raise ImportError(f"{INSTALL} ({err})") from None
    return torchrec


class ShardableTable(nn.Module):
    """``(N + 1)`` rows of ``dim``: item index -> vector, the rows in a TorchRec
    ``EmbeddingCollection`` (on ``meta`` until DistributedModelParallel shards it).

    Rows are drawn uniformly with the local table's standard deviation (0.02, as
    SASRec and HSTU start): TorchRec initialises each shard on the rank that holds it,
    from the table's ``weight_init_min``/``max``. Row 0 (padding) is not kept at zero
    in the table; lookups zero it instead."""

    def __init__(self, num_items: int, dim: int) -> None:
        super().__init__()
        torchrec = require_torchrec()
        self.num_items, self.dim = num_items, dim
        bound = 0.02 * math.sqrt(3.0)  # uniform(-b, b) has standard deviation b / sqrt(3)
        self.collection = torchrec.EmbeddingCollection(
            tables=[torchrec.EmbeddingConfig(
                name=TABLE, num_embeddings=num_items + 1, embedding_dim=dim,
                feature_names=[FEATURE], weight_init_min=-bound, weight_init_max=bound)],
            device=torch.device("meta"))

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        from torchrec import KeyedJaggedTensor

        flat = items.reshape(-1)  # (n,)
        # All the ids as one sequence of one feature: every rank then sends a batch of
        # one, whatever its number of ids, which is what TorchRec's all-to-all expects
        # of a sequence feature; the output keeps the ids' order.
        ids = KeyedJaggedTensor.from_lengths_sync(
            keys=[FEATURE], values=flat,
            lengths=torch.tensor([flat.numel()], dtype=torch.int32, device=flat.device))
        vectors = self.collection(ids)[FEATURE].values()  # (n, D)
        vectors = vectors * (flat > 0).unsqueeze(-1)  # padding is zero
        return vectors.view(*items.shape, self.dim)  # (..., D)

    def local_rows(self) -> list[tuple[int, torch.Tensor]]:
        """This rank's rows as (first row, ``(rows, D)`` view): empty when it holds none
        (table-wise, on the other ranks). Writing into a view writes the table."""
        weight = self.collection.state_dict()[f"embeddings.{TABLE}.weight"]
        if not hasattr(weight, "local_shards"):  # not sharded yet: a plain tensor
            return [(0, weight)]
        return [(int(shard.metadata.shard_offsets[0]), shard.tensor)
                for shard in weight.local_shards()]
