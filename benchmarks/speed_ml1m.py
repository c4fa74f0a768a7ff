"""Training and evaluation speed on MovieLens-1M at the paper setting (max length 200,
dim 50, 2 blocks, 1 head, batch 128, 128 sampled negatives), written into
docs/benchmarks.md.

    python benchmarks/speed_ml1m.py [--epochs 2] [--models sasrec,gru4rec] [--device cuda]

For each model it times full training epochs over all 6,040 users twice: as the
training loop runs them (shuffled batches, each run as ``train.length_slices``
length-sorted slices) and with every batch padded to 200 in one piece (the naive
reference), alternating so both see the same machine load; then the full-ranking
evaluation of all 6,040 users (best of three). The model is the ml-1m preset with the
paper's 128 negatives unless --negatives says otherwise.
"""

from __future__ import annotations

from modrec import threads as _threads  # noqa: F401  first: its OpenMP policy, before torch

# isort: split

import argparse
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from kit import machine, markdown_table, session_for, write_section

from modrec.data.batches import next_item_batches
from modrec.eval import rank_targets
from modrec.train.loop import train_step


def synchronize(device: str) -> None:
    if device.startswith("cuda"):  # GPU work is asynchronous: wait before reading a clock
        torch.cuda.synchronize()


def epoch_seconds(session, pad_to: int | None) -> float:
    """One epoch as the training loop steps it (`train_step` in length slices), or with
    every batch padded to ``pad_to`` in one piece."""
    config, device = session.config, session.config.train.device
    session.model.train()
    synchronize(device)
    started = time.perf_counter()
    if pad_to is not None:  # one slice, as wide as pad_to
        config = replace(config, train=replace(config.train, length_slices=1))
    examples = session.examples
    for batch in next_item_batches(examples.windows, examples.lengths, config.train.batch_size,
                                   session.rng, pad_to=pad_to):
        train_step(session.loss, session.optimizer, batch.to(device),
                   config.train.length_slices, session.generator, session.pool)
    synchronize(device)
    return time.perf_counter() - started


def _count_cpu_attention() -> None:
    """FlopCounterMode knows the GPU attention kernels but not the CPU flash kernel that
    ``scaled_dot_product_attention`` runs here; teach it, crediting a causal call with
    half the full count (the kernel skips the masked blocks)."""
    from torch.utils import flop_counter as fc

    aten = torch.ops.aten

    @fc.register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu)
    def _forward(query, key, value, dropout_p=0.0, is_causal=False, *args, out_shape=None,
                 **kwargs) -> int:
        return fc.sdpa_flop_count(query, key, value) // (2 if is_causal else 1)

    @fc.register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu_backward)
    def _backward(grad_out, query, key, value, out, logsumexp, dropout_p=0.0,
                  is_causal=False, *args, out_shape=None, **kwargs) -> int:
        return fc.sdpa_backward_flop_count(grad_out, query, key, value) // (
            2 if is_causal else 1)


_count_cpu_attention()


def epoch_flops(session) -> float:
    """Matrix FLOPs (forward + backward) of one epoch as the training loop runs it, in
    length slices, counted by torch's FlopCounterMode on the real batches (elementwise
    work is not counted, as usual)."""
    from torch.utils.flop_counter import FlopCounterMode

    session.model.train()
    examples, config = session.examples, session.config
    with FlopCounterMode(display=False) as counter:
        for batch in next_item_batches(examples.windows, examples.lengths,
                                       config.train.batch_size, np.random.default_rng(1)):
            train_step(session.loss, session.optimizer, batch.to(config.train.device),
                       config.train.length_slices, session.generator, session.pool)
    return float(counter.get_total_flops())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--models", default="sasrec,gru4rec,hstu,hstu-large")
    parser.add_argument("--negatives", type=int, default=128,
                        help="sampled negatives per sequence (the paper's count: 128)")
    parser.add_argument("--device", default="cpu", help="e.g. cuda")
    args = parser.parse_args()

    rows = []
    for name in args.models.split(","):
        # The preset as `modrec train -d ml-1m -m NAME` sets it up (set_known, AdamW
        # with the preset's betas and weight decay, its seed), with the paper's negatives.
        session = session_for("ml-1m", name, [f"loss.num_negatives={args.negatives}",
                                              f"train.device={args.device}"])
        config = session.config
        sliced, padded = [], []
        for _ in range(args.epochs):
            sliced.append(epoch_seconds(session, None))
            padded.append(epoch_seconds(session, config.model.max_len))
            print(f"{name}: length slices {sliced[-1]:.1f}s padded {padded[-1]:.1f}s", flush=True)
        evals = []
        for _ in range(3):
            synchronize(args.device)
            started = time.perf_counter()
            rank_targets(session.scorer, session.split.test, config.model.max_len,
                         device=args.device)
            evals.append(time.perf_counter() - started)
        b, p = float(np.median(sliced)), float(np.median(padded))
        flops = epoch_flops(session)
        rows.append([name, str(config.train.length_slices), f"{b:.1f}",
                     f"{len(session.examples) / b:.0f}", f"{flops / 1e9:.0f}",
                     f"{flops / b / 1e9:.1f}", f"{p:.1f}", f"{p / b:.2f}x",
                     f"{min(evals):.2f}"])
        print(rows[-1], flush=True)

    table = markdown_table(
        ["model", "slices", "s / epoch (length slices)", "sequences / s", "GFLOP / epoch",
         "achieved GFLOP/s", "s / epoch (padded to 200)", "slicing speed-up",
         "evaluate 6,040 users (s)"], rows)
    doc = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
    on_cpu = args.device == "cpu"
    section, where = ("ml1m-speed", "") if on_cpu else (f"ml1m-speed-{args.device}",
                                                        f" on {args.device}")
    device_flag = "" if on_cpu else f" --device {args.device}"
    write_section(doc, section, f"""
## MovieLens-1M: training and evaluation speed{where}

Command: `python benchmarks/speed_ml1m.py --epochs {args.epochs} --models {args.models}
--negatives {args.negatives}{device_flag}`. One epoch = every one of the 6,040 users'
training windows (last 200 items) once, shuffled batches of 128, each run as the
preset's `train.length_slices` length-sorted slices (or padded to 200 in one piece),
sampled softmax with {args.negatives} negatives per sequence; medians over
{args.epochs} epochs per variant, the two variants alternating. Evaluation = full
ranking of all 3,706 items for all 6,040 test users, history masked (best of 3).
GFLOP per epoch: matrix multiplications and attention, forward and backward, counted by
`torch.utils.flop_counter.FlopCounterMode` over one epoch in length slices (on a CPU, causal
attention credited at half the full count; on a GPU, the counter's own attention
formulas); achieved GFLOP/s =
that count / the median epoch time in length slices. Machine: {machine(args.device)},
{time.strftime("%Y-%m-%d %H:%M")}.

{table}
""")


if __name__ == "__main__":
    main()
