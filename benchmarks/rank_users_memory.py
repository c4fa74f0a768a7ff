"""Memory per rank of a data-parallel SASRec run of one epoch, with and without
``data.rank_users`` (each rank reading only its block of users).

    torchrun --nproc_per_node 2 benchmarks/rank_users_memory.py FILE --out DIR [--rank-users]

FILE is a ``user,item,timestamp`` CSV (``benchmarks/scale_data.py`` writes them), read
with ``--format csv-large``; import it once beforehand (one process, ``load_dataset``)
so that neither run's peak is the import's. Each rank runs `modrec.train.loop`'s
pieces (set-up, one epoch, validation, the final validation and test) and writes
``DIR/rank<r>.json``: the interactions it holds, resident memory after set-up, after
the epoch and at the end, its peak (``ru_maxrss``), and the seconds of each stage.

    python benchmarks/rank_users_memory.py CACHED_FOLDER --probe [--users START:STOP]

instead reads a cached dataset folder in one process, whole or one block of users, and
prints resident memory after reading, splitting (leave-one-out) and cutting the
training windows: the data's own part of a rank's memory.
"""

from __future__ import annotations

from modrec import threads as _threads  # noqa: F401  first: its OpenMP policy, before torch

# isort: split

import argparse
import dataclasses
import json
import resource
import time
from pathlib import Path

from modrec.config import build_config
from modrec.train import loop


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def probe(folder: Path, users: str | None) -> None:
    from modrec.data import Dataset, make_split
    from modrec.data.batches import TrainingExamples
    from modrec.data.dataset import read_user_block

    stages = {"start": rss_mib()}
    if users is None:
        dataset = Dataset.read(folder)
    else:
        start, stop = (int(x) for x in users.split(":"))
        dataset = read_user_block(folder, start, stop)
    stages["read"] = rss_mib()
    split = make_split(dataset, "loo")
    stages["split"] = rss_mib()
    examples = TrainingExamples.of(split.train, 200)
    stages["windows"] = rss_mib()
    print(json.dumps({"users": users or "all", "interactions": len(dataset.interactions),
                      "windows": len(examples), "rss_mib": stages, "peak_mib": peak_mib()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--rank-users", action="store_true")
    parser.add_argument("--probe", action="store_true")
    parser.add_argument("--users", help="START:STOP, with --probe (default: every user)")
    args = parser.parse_args()
    if args.probe:
        probe(Path(args.file), args.users)
        return
    config = build_config(args.file, "sasrec", overrides=[
        "train.epochs=1", f"data.rank_users={str(args.rank_users).lower()}"])
    config = dataclasses.replace(config, data=dataclasses.replace(
        config.data, format="csv-large",
        columns={"user": "user", "item": "item", "timestamp": "timestamp"}))
    if args.out is None:
        parser.error("--out is required (except with --probe)")
    out: dict[str, object] = {"rank_users": args.rank_users}
    started = time.perf_counter()
    session = loop.setup(config, args.out / "run", show_progress=False)
    out |= {"rank": session.world.rank, "world": session.world.size,
            "interactions_held": len(session.dataset.interactions),
            "windows_held": len(session.examples),
            "setup_s": time.perf_counter() - started, "rss_after_setup_mib": rss_mib(),
            "peak_after_setup_mib": peak_mib()}
    record = loop.train_epoch(session)
    out |= {"epoch_s": record["epoch_seconds"], "rss_after_epoch_mib": rss_mib(),
            "peak_after_epoch_mib": peak_mib()}
    started = time.perf_counter()
    loop.validate_and_select(session, record)
    loop.finish(session)
    results = json.loads((args.out / "run" / "results.json").read_text())
    out |= {"eval_s": time.perf_counter() - started, "rss_end_mib": rss_mib(),
            "peak_mib": peak_mib(), "test_ndcg@10": results["ndcg@10"],
            "valid_ndcg@10": results["valid"]["ndcg@10"], "loss": record["loss"]}
    (args.out / f"rank{out['rank']}.json").write_text(json.dumps(out, indent=1))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
