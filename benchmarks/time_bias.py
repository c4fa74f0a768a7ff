"""HSTU with and without its time bias, on a dataset with timestamps, written into
docs/benchmarks.md.

    python benchmarks/time_bias.py [--dataset ml-100k] [--seeds 0,1,2]

HSTU's relative attention bias has a term per position distance and, when the data has
timestamps, a term per (log-)bucket of elapsed time. The ML-1M files here carry no
timestamps, so this measures the time term where it can be fed: each seed trains the
same model twice, ``model.time_bias`` on and off, to early stopping on validation
NDCG@10, and reports test metrics at the selected epoch. Everything else is the
dataset's ``hstu`` preset.
"""

from __future__ import annotations

from modrec import threads as _threads  # noqa: F401  first: its OpenMP policy, before torch

# isort: split

import argparse
import json
import statistics
import time
from pathlib import Path

from kit import machine, markdown_table, write_section

from modrec.config import build_config
from modrec.train import train

SETTINGS = ["train.epochs=300", "train.patience=10", "train.eval_every=1"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--runs", default="runs/time-bias")
    parser.add_argument("--doc", default="docs/benchmarks.md")
    args = parser.parse_args()

    seeds = [int(s) for s in args.seeds.split(",")]
    results: dict[bool, list[dict]] = {True: [], False: []}
    commands = []
    for seed in seeds:
        for time_bias in (False, True):
            overrides = [*SETTINGS, f"train.seed={seed}", f"model.time_bias={time_bias}"]
            out = Path(args.runs) / f"{args.dataset}-hstu-time{int(time_bias)}-seed{seed}"
            if not (out / "results.json").exists():
                train(build_config(args.dataset, "hstu", overrides=overrides), out,
                      resume=True)
            result = json.loads((out / "results.json").read_text())
            valid = [json.loads(line)["valid"]["ndcg@10"]
                     for line in (out / "metrics.jsonl").open()]
            results[time_bias].append({**result, "valid_ndcg@10": max(valid)})
            commands.append(f"modrec train -d {args.dataset} -m hstu --out {out} "
                            + " ".join(f"--set {o}" for o in overrides))
            print(out, round(result["ndcg@10"], 4), flush=True)

    def cell(rows: list[dict], key: str) -> str:
        values = [r[key] for r in rows]
        return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"

    keys = ["valid_ndcg@10", "hr@10", "ndcg@10", "hr@50", "ndcg@50"]
    table = markdown_table(
        ["time bias", "best epoch (per seed)", *[f"{k} (mean ± sd)" for k in keys]],
        [[("on" if on else "off"), ", ".join(str(r["best_epoch"]) for r in results[on]),
          *[cell(results[on], k) for k in keys]] for on in (False, True)],
    )
    body = (
        f"## HSTU time bias ({args.dataset})\n\n"
        f"`python benchmarks/time_bias.py --dataset {args.dataset} --seeds {args.seeds}`"
        f" on {machine()}, {time.strftime('%Y-%m-%d')}.\n\n"
        f"HSTU ({args.dataset}'s `hstu` preset) with its relative "
        "time bias on and off, seeds "
        f"{args.seeds}; validation selects the epoch, test reported (leave-one-out, full "
        "ranking, history masked). Mean ± standard deviation over seeds.\n\n"
        f"{table}\n\nRuns:\n\n" + "\n".join(f"    {c}" for c in commands) + "\n"
    )
    write_section(Path(args.doc), f"time-bias-{args.dataset}", body)
    print(body)


if __name__ == "__main__":
    main()
