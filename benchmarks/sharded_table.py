"""A synthetic catalog too big to copy into every process, trained with the ID item
table sharded by TorchRec, written into docs/scaling.md.

    torchrun --nproc_per_node 2 benchmarks/sharded_table.py [--items 10000000] [--dim 64]
        [--steps 300] [--sharding row_wise]

Each rank builds the model exactly as ``modrec train --set model.item_table=sharded``
does (`build_model`, `BatchLoss` by lookup, `train.sharded.shard`, AdamW on the rest)
and takes ``--steps`` optimiser steps with `train_step`, on its rows of global batches
of synthetic sequences: items drawn from a power law (P(i) ~ 1/i, the head of a real
catalog's popularity), lengths uniform up to ``--max-len``. The sampled-softmax
negatives are uniform over the whole catalog, so every step touches rows on every
rank. Then each rank ranks ``--eval-users`` synthetic users against the full catalog
read in blocks (`rank_targets_blockwise`). Reported per rank: the table rows it holds
and their size, the resident memory before and after sharding and at its peak
(``ru_maxrss``), and the step and evaluation times.

No dataset is built: a 10M-item `Dataset` (ids, a snapshot, the split) is a separate
cost from the table's, which is what this measures.
"""

from __future__ import annotations

from modrec import threads as _threads  # noqa: F401  first: its OpenMP policy, before torch

# isort: split

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from kit import git_revision, machine, markdown_table, write_section

from modrec.config import LossConfig, TrainConfig
from modrec.data.batches import SequenceBatch
from modrec.data.dataset import Sequences
from modrec.data.splits import EvalSet
from modrec.distributed import World
from modrec.models import ModelConfig, build_model
from modrec.train import sharded
from modrec.train.loop import BatchLoss, train_step

SCALING_HEADER = ("# Scaling\n\nHow modrec's training grows past one process and one "
                  "machine's memory. Every number\nwas measured by the command written "
                  "beside it, on the machine its section names.\n")


def rss_mib() -> float:
    """This process's resident memory now (``/proc/self/statm``), MiB."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 2**20


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # KiB on Linux


def power_law(rng: np.random.Generator, items: int, shape: tuple[int, ...]) -> np.ndarray:
    """Item indices 1..items with P(i) ~ 1/i (log-uniform)."""
    return np.minimum((items + 1.0) ** rng.random(shape), items).astype(np.int64)


def batch(rng: np.random.Generator, items: int, rows: int, max_len: int) -> SequenceBatch:
    """``rows`` sequences of next-item examples, right-padded: (B, L) inputs, targets."""
    lengths = rng.integers(2, max_len + 1, rows)
    seqs = power_law(rng, items, (rows, max_len + 1))
    keep = np.arange(max_len)[None, :] < lengths[:, None]  # (B, L)
    inputs = torch.from_numpy(np.where(keep, seqs[:, :-1], 0))
    targets = torch.from_numpy(np.where(keep, seqs[:, 1:], 0))
    return SequenceBatch(inputs, torch.from_numpy(lengths), targets)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=10_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=128, help="the global batch")
    parser.add_argument("--max-len", type=int, default=50)
    parser.add_argument("--eval-users", type=int, default=256, help="per rank")
    parser.add_argument("--sharding", default="row_wise", choices=["row_wise", "table_wise"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--doc", default="docs/scaling.md")
    args = parser.parse_args()

    world = World.from_env(args.device)
    device = world.device(args.device)
    torch.set_num_threads(max(1, (torch.get_num_threads()) // world.size))
    torch.manual_seed(0)
    rng = np.random.default_rng([0, world.rank])
    started_rss = rss_mib()
    config = ModelConfig(name="sasrec", dim=args.dim, max_len=args.max_len,
                         item_table="sharded", item_sharding=args.sharding)
    model = build_model(config, args.items)  # the table is on "meta": nothing allocated
    built_rss = rss_mib()
    loss = sharded.shard(BatchLoss(model, LossConfig(), by_lookup=True), world, device,
                         args.sharding, TrainConfig().table_lr)
    sharded_rss = rss_mib()
    optimizer = torch.optim.AdamW(sharded.dense_parameters(model), lr=1e-3)
    table = sharded.table_of(model)
    assert table is not None
    generator = torch.Generator(device=device).manual_seed(world.rank)

    rows = args.batch_size // world.size
    times, losses = [], []
    for _ in range(args.steps):
        part = batch(rng, args.items, rows, args.max_len).to(device)
        world.barrier()  # time the step, not the other rank's lag
        started = time.perf_counter()
        losses.append(train_step(loss, optimizer, part, 1, generator, None, world))
        times.append(time.perf_counter() - started)
    trained_rss = rss_mib()

    # Full-ranking evaluation of synthetic users against the whole catalog, in blocks.
    histories = [power_law(rng, args.items, (int(n),))
                 for n in rng.integers(1, args.max_len + 1, args.eval_users)]
    evalset = EvalSet(np.arange(args.eval_users), Sequences.from_lists(histories),
                      power_law(rng, args.items, (args.eval_users,)))
    world.barrier()
    started = time.perf_counter()
    ranks = sharded.rank_targets_sharded(model, evalset, args.items, args.max_len, 128, device,
                                         world)
    eval_seconds = time.perf_counter() - started

    warm = times[min(10, len(times) - 1):]  # the first steps build kernels and caches
    mine = {"rank": world.rank, **sharded.shard_sizes(table), "start_rss": started_rss,
            "built_rss": built_rss, "sharded_rss": sharded_rss, "trained_rss": trained_rss,
            "peak_rss": peak_rss_mib(), "step_median": statistics.median(warm),
            "step_mean": statistics.mean(warm), "first_loss": float(np.mean(losses[:10])),
            "last_loss": float(np.mean(losses[-10:])), "eval_seconds": eval_seconds,
            "eval_users": len(ranks), "threads": torch.get_num_threads()}
    report = world.gather(mine)
    if world.is_main:
        write_report(args, report, device)
    world.barrier()


def write_report(args: argparse.Namespace, report: list[dict], device: str) -> None:
    command = (f"torchrun --nproc_per_node {len(report)} benchmarks/sharded_table.py "
               f"--items {args.items} --dim {args.dim} --steps {args.steps} "
               f"--batch-size {args.batch_size} --max-len {args.max_len} "
               f"--eval-users {args.eval_users} --sharding {args.sharding}"
               + (f" --device {args.device}" if args.device != "cpu" else ""))
    rows = args.items + 1
    whole = rows * args.dim * 4 / 2**20
    table = markdown_table(
        ["rank", "table rows held", "table MiB held", "RSS after build (MiB)",
         "RSS after sharding", "RSS after training", "peak RSS (MiB)",
         "step median (ms)", "step mean (ms)", f"evaluation, {args.eval_users} users (s)"],
        [[r["rank"], f"{r['rows']:,}", f"{r['mib']:,.0f}", f"{r['built_rss']:,.0f}",
          f"{r['sharded_rss']:,.0f}", f"{r['trained_rss']:,.0f}", f"{r['peak_rss']:,.0f}",
          f"{1000 * r['step_median']:.0f}", f"{1000 * r['step_mean']:.0f}",
          f"{r['eval_seconds']:.1f}"] for r in report])
    held = ("Neither process holds the whole table" if max(r["rows"] for r in report) < rows
            else "One process holds the whole table (table-wise places it on one rank)")
    growth = ", ".join(f"rank {r['rank']} {r['peak_rss'] - r['start_rss']:,.0f} MiB"
                       for r in report)
    backend = "NCCL" if device.startswith("cuda") else "gloo"
    first = statistics.mean(r["first_loss"] for r in report)
    last = statistics.mean(r["last_loss"] for r in report)
    body = f"""## Sharded item table (TorchRec, {args.sharding.replace("_", "-")})

`{command}`

{time.strftime('%Y-%m-%d')}, {machine(device)} per process, {len(report)} processes,
{backend}, revision {git_revision()}. A synthetic catalog of {args.items:,} items
(+ padding) x dim {args.dim}: the whole table is {rows:,} rows, {whole:,.0f} MiB of float32.
SASRec (2 blocks, max_len {args.max_len}) with `model.item_table=sharded`
(`{args.sharding}`), global batch {args.batch_size}, 128 sampled negatives per sequence
drawn from the whole catalog, {args.steps} steps; items drawn with P(i) ~ 1/i.

{table}

- {held}: each holds the rows in its line of the table above. Peak resident memory
  above the post-import baseline ({report[0]['start_rss']:,.0f} MiB on rank 0):
  {growth}, against {whole:,.0f} MiB for the whole table alone. Building the model
  allocated no table (the collection is created on `meta`); TorchRec allocated each
  rank's shard when it sharded the model (RSS after build vs after sharding).
- A step: the history, target and negative lookups (three all-to-alls of ids and rows),
  the encoder, the loss, DDP's all-reduce of the dense gradients and the fused
  row-wise Adagrad on the rows touched. The training loss went from {first:.2f} (first 10
  steps) to {last:.2f} (last 10), mean over ranks.
- Evaluation ranks each user against all {args.items:,} items, reading the catalog in
  blocks of {sharded.EVAL_BLOCK:,} rows (each an all-to-all from the rank that holds
  them), so no rank ever holds more than one block beyond its own shard.
- For comparison, a local table in every process would need {whole:,.0f} MiB for the
  weights, as much again for their gradient and twice as much for AdamW's two moments:
  about {4 * whole / 1024:,.1f} GiB per process (computed, not run).
"""
    doc = Path(args.doc)
    if not doc.exists():
        doc.parent.mkdir(parents=True, exist_ok=True)
        doc.write_text(SCALING_HEADER)
    write_section(doc, f"sharded-table-{args.sharding}", body)
    print(body, file=sys.stderr)


if __name__ == "__main__":
    main()
