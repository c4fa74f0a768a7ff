"""One process against two (torchrun, gloo) on the same training: best validation
NDCG@10 and the time per epoch, written into docs/scaling.md.

    python benchmarks/scale_ddp.py [--dataset ml-1m] [--preset sasrec] [--epochs 40]

Both runs are ``modrec train -d DATASET -m PRESET --epochs N`` with the same seed and the
same global batch (``train.batch_size``: each of two ranks steps on half of every
batch); the two-process run is launched by ``torchrun --nproc_per_node 2 -m modrec
train``. On a 2-core machine one process uses both cores (2 torch threads) and each of
two processes one, so the comparison is of the same hardware divided two ways. The runs
go to ``runs/scale/``; a finished run is reused.
"""

from __future__ import annotations

from modrec import threads as _threads  # noqa: F401  first: its OpenMP policy, before torch

# isort: split

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from kit import ROOT, machine, markdown_table, write_section


def run(command: list[str], env: dict[str, str], out: Path) -> float:
    if (out / "results.json").exists():
        print(f"reusing {out}", flush=True)
        return float("nan")
    print(" ".join(command), flush=True)
    started = time.perf_counter()
    subprocess.run(command, check=True, env=env)
    return time.perf_counter() - started


def summary(out: Path) -> dict[str, float]:
    records = [json.loads(line) for line in (out / "metrics.jsonl").open()]
    valid = [r["valid"]["ndcg@10"] for r in records if "valid" in r]
    seconds = sorted(r["epoch_seconds"] for r in records)
    results = json.loads((out / "results.json").read_text())
    return {"best_valid": max(valid), "best_epoch": results["best_epoch"],
            "epoch_seconds": seconds[len(seconds) // 2], "test_ndcg": results["ndcg@10"],
            "test_hr": results["hr@10"], "epochs": len(records)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml-1m")
    parser.add_argument("--preset", default="sasrec")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--runs", default="runs/scale")
    args = parser.parse_args()
    runs = Path(args.runs)
    common = ["train", "-d", args.dataset, "-m", args.preset, "--epochs", str(args.epochs),
              "--no-progress"]
    one, two = (runs / f"{args.dataset}-{args.preset}-{n}p" for n in (1, 2))
    env = {**os.environ}
    run([sys.executable, "-m", "modrec", *common, "--out", str(one)],
        {**env, "OMP_NUM_THREADS": "2"}, one)
    run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--master_port", "29533", "-m", "modrec", *common, "--out", str(two)],
        {**env, "OMP_NUM_THREADS": "1"}, two)
    a, b = summary(one), summary(two)
    gap = (b["best_valid"] - a["best_valid"]) / a["best_valid"]
    rows = [[f"1 process, {a['epochs']} epochs", f"{a['best_valid']:.4f}", a["best_epoch"],
             f"{a['test_hr']:.4f} / {a['test_ndcg']:.4f}", f"{a['epoch_seconds']:.1f}"],
            [f"2 processes (gloo), {b['epochs']} epochs", f"{b['best_valid']:.4f}",
             b["best_epoch"], f"{b['test_hr']:.4f} / {b['test_ndcg']:.4f}",
             f"{b['epoch_seconds']:.1f}"]]
    table = markdown_table(["run", "best valid NDCG@10", "best epoch",
                            "test HR@10 / NDCG@10", "s / epoch (median)"], rows)
    body = f"""
## {args.dataset} {args.preset}: one process against two

Command: `python benchmarks/scale_ddp.py --dataset {args.dataset} --preset {args.preset}
--epochs {args.epochs}`, {time.strftime('%Y-%m-%d')}, {machine()}. Both runs:
`modrec train -d {args.dataset} -m {args.preset} --epochs {args.epochs}` (the preset's
seed and global batch); the second under `torchrun --nproc_per_node 2` (gloo), each rank
stepping on half of every global batch. One process has both cores (2 torch threads),
each of the two processes one.

{table}

Best validation NDCG@10 of two processes relative to one: {gap:+.1%} (target: within
2%). The two runs differ only in dropout masks (each rank draws its own) and float
summation order, so their curves wander apart within the preset's epoch-to-epoch noise.
Time per epoch, two processes over one: {b['epoch_seconds'] / a['epoch_seconds']:.2f}x
on the same two cores. This is not scaling (no cores were added): it says that the
gradient all-reduce (gloo over loopback) costs little, and that on these small matrices
two single-threaded processes use two cores better than one process with two threads.
"""
    write_section(ROOT / "docs" / "scaling.md", f"ddp-{args.dataset}-{args.preset}", body)
    print(body)


if __name__ == "__main__":
    main()
