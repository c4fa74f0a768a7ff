"""A synthetic run with a large catalog, for timing the model service's start-up
(`benchmarks/serve_load.py --synthetic-run`): above 100,000 items the service builds an
HNSW graph over the item vectors at every start, and that build is what a large
catalog costs.

The dataset is a table of (user, item) pairs in which every one of ``--items`` items
occurs at least once (a catalog is the set of items that occur, so 1,000,000 distinct
items need at least 1,000,000 interactions), plus ``--extra`` interactions drawn from a
power law over the items (Zipf-like: item rank r drawn with weight r^-alpha), shuffled
and dealt out to ``--users`` users in equal-length histories. A small SASRec is then
trained on it for one epoch with ``modrec train`` itself; what it learns does not
matter here, only the shapes of what the service loads.

    .venv/bin/python benchmarks/serve_synthetic.py --items 1000000 \
        --out runs/serve-bench/synthetic-1m

At 10 million items (the serving-memory target: `benchmarks/serve_load.py --parts
synthetic --synthetic-index "--index ivfpq"`), fewer, longer histories keep the one epoch short
(only each user's last 20 events are trained on; every item is still in the catalog) and
smaller evaluation blocks keep each block's scores near 640 MB:

    .venv/bin/python benchmarks/serve_synthetic.py --items 10000000 --extra 2000000 \
        --users 5000 --set train.eval_batch_size=16 --out runs/serve-bench/synthetic-10m
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def write_pairs(path: Path, items: int, extra: int, users: int, alpha: float,
                seed: int) -> dict[str, int]:
    rng = np.random.default_rng(seed)
    ranks = np.arange(1, items + 1, dtype=np.float64)
    weights = ranks ** -alpha
    popular = rng.choice(items, size=extra, p=weights / weights.sum())
    pairs = np.concatenate([np.arange(items), popular])
    rng.shuffle(pairs)
    per_user = len(pairs) // users
    pairs = pairs[:per_user * users]  # equal lengths; the cut drops < users of the extras
    missing = items - len(np.unique(pairs))
    if missing:  # the cut dropped an item's only occurrence: put it back in place of an extra
        present = np.zeros(items, bool)
        present[pairs] = True
        absent = np.flatnonzero(~present)
        counts = np.bincount(pairs, minlength=items)
        spare = np.flatnonzero(counts[pairs] > 1)[:len(absent)]
        pairs[spare] = absent
    user = np.repeat(np.arange(users), per_user)
    frame = pd.DataFrame({"uid": user.astype(np.int64), "iid": pairs.astype(np.int64)})
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)
    return {"interactions": len(frame), "items": int(frame["iid"].nunique()),
            "users": int(frame["uid"].nunique()), "per_user": per_user}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--extra", type=int, default=200_000,
                        help="interactions beyond one per item, power-law over the items")
    parser.add_argument("--users", type=int, default=30_000)
    parser.add_argument("--alpha", type=float, default=1.0, help="power-law exponent")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/serve-bench/synthetic-1m", help="run folder")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="more settings for modrec train, e.g. train.eval_batch_size=16 "
                        "(at 10M items a block of 128 users' scores is 5 GB)")
    parser.add_argument("--data", help="the CSV to write (default: runs/serve-bench/data/"
                        "<out's name>.csv)")
    args = parser.parse_args()

    out = Path(args.out)
    data = Path(args.data) if args.data else out.parent / "data" / f"{out.name}.csv"
    started = time.perf_counter()
    shape = write_pairs(data, args.items, args.extra, args.users, args.alpha, args.seed)
    print(f"wrote {data}: {shape} in {time.perf_counter() - started:.1f} s", flush=True)

    command = [str(ROOT / ".venv" / "bin" / "modrec"), "train", "-d", str(data),
               "--columns", "user=uid,item=iid", "-m", "sasrec", "--epochs", "1",
               "--set", "model.max_len=20", "--set", "model.num_blocks=1",
               "--no-progress", "--out", str(out)]
    for setting in args.set:
        command += ["--set", setting]
    print("$ " + shlex.join(command), flush=True)
    started = time.perf_counter()
    subprocess.run(command, check=True, env=os.environ.copy())
    print(f"trained in {time.perf_counter() - started:.0f} s; serve it with "
          f"benchmarks/serve_load.py --synthetic-run {out}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
