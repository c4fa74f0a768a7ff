"""Micro-video recommendation on MicroLens-50k: SASRec with ID, title-text and ID+text
item towers, under the MicroLens protocol and modrec's, plus cold items; written into
docs/benchmarks.md beside the MicroLens-100k published rows.

    python benchmarks/microlens.py [--protocols microlens,modrec,cold]
                                   [--towers id,content,id+content]
                                   [--max-epochs 200] [--runs runs/microlens]

Protocols:
- ``microlens``: the paper's (each user's last 13 events, leave-one-out, full ranking over
  all videos with the history masked, a model reading 10 items:
  ``configs/microlens-50k/sasrec-microlens.yaml``);
- ``modrec``: every event, leave-one-out, histories up to 50 (``sasrec.yaml``);
- ``cold``: modrec's protocol on the ``cold-items`` split (a seeded 10% of the videos
  never seen in training), test targets reported warm and cold.

Text = all-MiniLM-L6-v2 vectors of each video's title (English translations of the
Chinese originals), frozen and projected by the tower. The epoch is selected on
validation NDCG@10; test is read once, at the end. Every row is one `modrec train`
command, printed below the table; a finished run is read back, not retrained.
"""

from __future__ import annotations

from modrec import threads as _threads  # noqa: F401  first: its OpenMP policy, before torch

# isort: split

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
from kit import ROOT, machine, markdown_table, write_section

from modrec.config import build_config
from modrec.content import EmbeddingStore, embed
from modrec.data import load_dataset
from modrec.data.splits import cold_items_split
from modrec.train import train

PRESETS = {"microlens": ("sasrec-microlens", "loo"), "modrec": ("sasrec", "loo"),
           "cold": ("sasrec", "cold-items")}
PUBLISHED = [  # MicroLens-100k, the paper's protocol (data/README.md): HR@10, NDCG@10
    ["MicroLens-100k (published)", "SASRec, IDs", ".0909", ".0517", "", ""],
    ["MicroLens-100k (published)", "SASRec, BERT title vectors", ".0916", ".0490", "", ""],
    ["MicroLens-100k (published)", "SASRec, end-to-end video encoder", ".0948", ".0515", "",
     ""],
]


def random_guess_hr10(dataset_name: str) -> float:
    """Expected HR@10 of a uniformly random ranking on the cold test targets."""
    split = cold_items_split(load_dataset(dataset_name))
    cold = split.test.subset(split.cold_items[split.test.targets])
    candidates = np.array([split.num_items - len(np.unique(cold.histories[i]))
                           for i in range(len(cold))])
    return float(np.mean(np.minimum(1.0, 10 / candidates)))


def run(protocol: str, tower: str, runs: Path, max_epochs: int) -> tuple[dict, str]:
    preset, split = PRESETS[protocol]
    overrides = [f"data.split={split}", f"model.item_tower={tower}",
                 f"train.epochs={max_epochs}"]
    if tower != "id":
        overrides.append('model.encoders=["text"]')
    out = runs / f"{protocol}-{tower}"
    if not (out / "results.json").exists():
        started = time.perf_counter()
        train(build_config("microlens-50k", preset, None, overrides), out, resume=True)
        print(f"{protocol} {tower}: {time.perf_counter() - started:.0f} s", flush=True)
    sets = "" if tower == "id" else " --encoder text"
    command = (f"modrec train -d microlens-50k -m {preset} --split {split} --item-tower "
               f"{tower}{sets} --epochs {max_epochs} --out {out}")
    return json.loads((out / "results.json").read_text()), command


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocols", default="microlens,modrec,cold")
    parser.add_argument("--towers", default="id,content,id+content")
    parser.add_argument("--max-epochs", type=int, default=200)
    parser.add_argument("--runs", default="runs/microlens")
    parser.add_argument("--doc", default=str(ROOT / "docs" / "benchmarks.md"))
    parser.add_argument("--section", default="microlens", help="of docs/benchmarks.md: "
                        "another name keeps the rows of an earlier run of other protocols")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]

    dataset = load_dataset("microlens-50k")
    embed(dataset, ["text"], EmbeddingStore.for_dataset(dataset))
    rows: list[list[object]] = []
    cold_rows: list[list[object]] = []
    commands: list[str] = []
    for protocol in args.protocols.split(","):
        for tower in args.towers.split(","):
            result, command = run(protocol, tower, Path(args.runs), args.max_epochs)
            commands.append(command)
            minutes = f"{result['train_seconds'] / 60:.0f}"
            if protocol == "cold":
                cold_rows.append([tower, result["warm"]["hr@10"], result["warm"]["ndcg@10"],
                                  result["cold"]["users"], result["cold"]["hr@10"],
                                  result["cold"]["ndcg@10"], result["cold"]["hr@50"],
                                  result["best_epoch"], minutes])
            else:
                rows.append([f"MicroLens-50k, {protocol} protocol", f"SASRec, {tower}",
                             f"{result['hr@10']:.4f}", f"{result['ndcg@10']:.4f}",
                             result["best_epoch"], minutes])
    lines = [
        "### Micro-video recommendation: MicroLens-50k, ID and title-text item towers",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} on {machine()} with `python "
        f"benchmarks/microlens.py --protocols {args.protocols} --towers {args.towers} "
        f"--max-epochs {args.max_epochs}"
        + (f" --section {args.section}" if args.section != "microlens" else "")
        + f"`; load average {load_before:.1f} before, "
        f"{os.getloadavg()[0]:.1f} after. The published rows are for MicroLens-100k "
        "(100,000 users, 19,738 videos); the file here is the 50k subset (50,000 users, "
        "19,220 videos, 359,708 events), so they compare in kind, not digit for digit. "
        "The MicroLens protocol keeps each user's last 13 events (leave-one-out, a model "
        "reading 10 items, full ranking with the history masked); modrec's keeps every "
        "event (histories up to 50). Text = all-MiniLM-L6-v2 vectors of the titles.",
        "",
        markdown_table(["data", "model", "test HR@10", "test NDCG@10", "best epoch",
                        "train min"], [*PUBLISHED, *rows]),
    ]
    if cold_rows:
        guess = random_guess_hr10("microlens-50k")
        lines += [
            "",
            f"Cold videos (`cold-items`: a seeded 10% of the videos never seen in training; "
            f"a uniformly random ranking has cold HR@10 {guess:.4f}):",
            "",
            markdown_table(["item tower", "warm HR@10", "warm NDCG@10", "cold users",
                            "cold HR@10", "cold NDCG@10", "cold HR@50", "best epoch",
                            "train min"], cold_rows),
        ]
    lines += ["", "Commands (one per row):", "", "```", *commands, "```"]
    body = "\n".join(lines)
    write_section(Path(args.doc), args.section, body)
    print(body)


if __name__ == "__main__":
    main()
