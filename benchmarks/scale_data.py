"""How the cost of import, one training epoch and full evaluation grows with the data:
synthetic MovieLens-20M-shaped logs of 1M, 5M and 20M events, written into
docs/scaling.md with a plot.

    python benchmarks/scale_data.py [--events 1000000,5000000,20000000]

Each log has ML-20M's shape scaled to its size: 27,000 items, users in proportion to
the events (138,000 at 20M, so the mean history stays ~145 events), history lengths
drawn from a log-normal with a floor of 20 (ML-20M's minimum), items drawn from a
Zipf-like law (rank r with weight r^-0.9, the head of MovieLens's popularity curve)
without repeats within a user, and timestamps increasing within each user. It is a CSV
of ``user,item,timestamp`` under ``runs/scale-data/`` (reused when present).

Each stage runs in its own process under ``/usr/bin/time -v`` so that its wall time
and peak resident memory are its own:

1. import: ``modrec.data.load_dataset`` of the CSV into the canonical dataset (cache
   cleared first);
2. train: ``modrec train -d CSV -m sasrec --epochs 1`` (the default SASRec config:
   dim 50, max_len 200, 2 blocks, sampled softmax with 128 negatives), which also
   validates and tests with full ranking over every item; its ``metrics.jsonl`` gives
   the epoch's and the evaluation's own seconds.

``--readers`` measures the importers instead (the largest ``--events`` size): the log
is also written as Parquet (same rows, int64 columns, row groups of 1M rows), and each
reader in ``--reader-list`` (pandas ``csv``/``parquet``, DuckDB ``csv-large``/
``parquet-large``; ``parquet-large@512MB`` sets ``MODREC_IMPORT_MEMORY``) loads its file
in its own process under ``/usr/bin/time -v``, with a fresh cache, so the time includes
writing the dataset to the cache; every reader must give the same fingerprint.
"""

from __future__ import annotations

from modrec import threads as _threads  # noqa: F401  first: its OpenMP policy, before torch

# isort: split

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from kit import ROOT, cpu_name, machine, markdown_table, write_section

ITEMS = 27_000
USERS_AT_20M = 138_000


def write_log(path: Path, events: int, seed: int = 0) -> dict[str, int]:
    """A ``user,item,timestamp`` CSV with about ``events`` rows (see the module text)."""
    rng = np.random.default_rng(seed)
    users = max(100, round(USERS_AT_20M * events / 20_000_000))
    lengths = np.maximum(20, rng.lognormal(mean=4.3, sigma=1.0, size=users)).astype(np.int64)
    lengths = np.minimum(lengths, ITEMS // 4)
    lengths = np.maximum(20, (lengths * events / lengths.sum()).astype(np.int64))
    weights = np.arange(1, ITEMS + 1, dtype=np.float64) ** -0.9
    weights /= weights.sum()
    with path.open("w") as f:
        f.write("user,item,timestamp\n")
        written = 0
        for user, length in enumerate(lengths.tolist()):
            # Gumbel top-k: ``length`` distinct items drawn by weight, in one pass
            keys = np.log(weights) - np.log(-np.log(rng.random(ITEMS)))
            items = np.argpartition(-keys, length)[:length]
            rng.shuffle(items)
            times = 978_300_000 + np.cumsum(rng.integers(1, 3_600, length))
            f.write("".join(f"{user}\t{i}\t{t}\n".replace("\t", ",")
                            for i, t in zip(items.tolist(), times.tolist(), strict=True)))
            written += length
    return {"users": users, "items": ITEMS, "events": written}


def timed(command: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """(wall seconds, peak RSS MiB, stdout) of ``command`` under /usr/bin/time -v."""
    started = time.perf_counter()
    done = subprocess.run(["/usr/bin/time", "-v", *command], env=env, capture_output=True,
                          text=True, check=False)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
    return wall, int(peak.group(1)) / 1024 if peak else float("nan"), done.stdout


def write_parquet(csv: Path, path: Path) -> None:
    """The CSV's rows as Parquet (int64 columns), streamed: never the whole log in memory."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    types = {name: pa.int64() for name in ("user", "item", "timestamp")}
    reader = pacsv.open_csv(csv, convert_options=pacsv.ConvertOptions(column_types=types))
    tmp = path.with_name(f".{path.name}.tmp")
    with pq.ParquetWriter(tmp, reader.schema) as writer:
        batches: list[pa.RecordBatch] = []
        for batch in reader:
            batches.append(batch)
            if sum(len(b) for b in batches) >= 1_000_000:
                writer.write_table(pa.Table.from_batches(batches), row_group_size=1_000_000)
                batches = []
        if batches:
            writer.write_table(pa.Table.from_batches(batches), row_group_size=1_000_000)
    tmp.rename(path)


def measure_readers(csv: Path, readers: list[str], repeat: int = 1) -> list[dict[str, object]]:
    """Each reader loading its file in its own process: wall, peak RSS, fingerprint;
    with ``repeat``, the readers take turns and each keeps its shortest time (and its
    largest peak), as other jobs on the machine only ever add time."""
    parquet = csv.with_suffix(".parquet")
    if not parquet.exists():
        print(f"writing {parquet}", flush=True)
        write_parquet(csv, parquet)
    columns = {"user": "user", "item": "item", "timestamp": "timestamp"}
    rows: list[dict[str, object]] = []
    for spec in [r for _ in range(repeat) for r in readers]:
        reader, _, memory = spec.partition("@")
        path = parquet if reader.startswith("parquet") else csv
        cache = Path(tempfile.mkdtemp(prefix="scale-data-cache-"))
        env = {**os.environ, "MODREC_CACHE_DIR": str(cache)}
        if memory:
            env["MODREC_IMPORT_MEMORY"] = memory
        load = (f"from modrec.data import load_dataset; "
                f"d = load_dataset({str(path)!r}, {reader!r}, {columns!r}); "
                f"print(d.fingerprint(), len(d.interactions))")
        loads = [os.getloadavg()[0]]
        wall, mib, out = timed([sys.executable, "-c", load], env)
        loads.append(os.getloadavg()[0])
        subprocess.run(["rm", "-rf", str(cache)], check=True)
        fingerprint, events = out.split()[-2:]
        row = {"reader": spec, "file": path.name, "mb": path.stat().st_size / 1e6,
               "wall_s": wall, "peak_mib": mib, "events": int(events),
               "fingerprint": fingerprint, "loads": loads}
        print(row, flush=True)
        rows.append(row)
    if len({r["fingerprint"] for r in rows}) != 1:
        sys.exit(f"the readers disagree: {rows}")
    best = []
    for spec in readers:
        mine = [r for r in rows if r["reader"] == spec]
        fastest = min(mine, key=lambda r: float(r["wall_s"]))  # type: ignore[arg-type]
        best.append({**fastest, "peak_mib": max(float(r["peak_mib"]) for r in mine),  # type: ignore[arg-type]
                     "walls": [float(r["wall_s"]) for r in mine],  # type: ignore[arg-type]
                     "loads": [x for r in mine for x in r["loads"]]})  # type: ignore[attr-defined]
    return best


def readers_section(args: argparse.Namespace, rows: list[dict[str, object]],
                    shape: dict[str, int]) -> str:
    events = int(rows[0]["events"])  # type: ignore[call-overload]
    loads = [x for r in rows for x in r["loads"]]  # type: ignore[attr-defined]
    table = markdown_table(
        ["reader", "file", "MB on disk", "wall (s), shortest", "every wall (s)",
         "peak RSS (MiB)", "bytes per event"],
        [[f"`{r['reader']}`", f"`{r['file']}`", f"{r['mb']:,.0f}", f"{r['wall_s']:.1f}",
          ", ".join(f"{w:.1f}" for w in r["walls"]),  # type: ignore[attr-defined]
          f"{r['peak_mib']:,.0f}", f"{r['peak_mib'] * 2**20 / events:.0f}"]  # type: ignore[operator]
         for r in rows])
    by = {r["reader"]: r for r in rows}
    compare = ""
    if "parquet" in by and "parquet-large" in by:
        pandas, duck = by["parquet"], by["parquet-large"]
        compare = f"""

From Parquet, DuckDB took {duck['wall_s'] / pandas['wall_s']:.2f}x the time of pandas
(`read_table`) and {duck['peak_mib'] / pandas['peak_mib']:.2f}x its peak memory. pandas
reads this file's three int64 columns without parsing text, so it is cheaper than its
CSV path; its memory goes to the ids, each event's user and item turned into a Python
string to be numbered. DuckDB numbers only the distinct ids in Python and keeps the rest in
its own columns, spilling past its limit; what remains is the result (16 bytes an
event), its copy while the dataset is written, and the interpreter with its libraries
(353 MiB before reading: `import modrec` loads torch too). A folder of Parquet files
(Spark's or DuckDB's parts) reads the same way, as one table in path order."""
    return f"""
## Out-of-core import: the same log as CSV and as Parquet, each reader

```bash
python benchmarks/scale_data.py --events {args.events} --readers --repeat {args.repeat} \\
    --reader-list {','.join(args.reader_list)}
```

{time.strftime('%Y-%m-%d')}, {cpu_name()}, shared with other jobs (load average
{min(loads):.1f} to {max(loads):.1f} during the runs: times are noisy, peaks are not);
the readers took turns {args.repeat} times, each in its own process under
`/usr/bin/time -v` with a fresh `MODREC_CACHE_DIR` (the time includes writing the
dataset to the cache).
{events:,} events ({shape['users']:,} users, {shape['items']:,} items); the Parquet
file holds the CSV's rows as int64 columns in row groups of 1,000,000. `reader@LIMIT`
sets `MODREC_IMPORT_MEMORY` (DuckDB's limit; 2GB otherwise). Each reader runs

```bash
C="{{'user': 'user', 'item': 'item', 'timestamp': 'timestamp'}}"
MODREC_CACHE_DIR=$(mktemp -d) /usr/bin/time -v python -c \\
    "from modrec.data import load_dataset; load_dataset('FILE', 'READER', $C)"
```

{table}

Every reader gave the same dataset (fingerprint `{rows[0]['fingerprint']}`).{compare}
"""


def measure(csv: Path, out: Path) -> dict[str, float]:
    cache = Path(tempfile.mkdtemp(prefix="scale-data-cache-"))
    env = {**os.environ, "MODREC_CACHE_DIR": str(cache)}
    columns = {"user": "user", "item": "item", "timestamp": "timestamp"}
    load = (f"from modrec.data import load_dataset; "
            f"d = load_dataset({str(csv)!r}, 'csv', {columns!r}); print(d.describe())")
    import_s, import_mib, _ = timed([sys.executable, "-c", load], env)
    if out.exists():
        subprocess.run(["rm", "-rf", str(out)], check=True)
    train_s, train_mib, _ = timed(
        [sys.executable, "-m", "modrec", "train", "-d", str(csv), "--format", "csv",
         "--columns", "user=user,item=item,timestamp=timestamp", "-m", "sasrec",
         "--epochs", "1", "--no-progress", "--out", str(out)], env)
    [record] = [json.loads(line) for line in (out / "metrics.jsonl").open()]
    results = json.loads((out / "results.json").read_text())
    return {"import_s": import_s, "import_mib": import_mib, "run_s": train_s,
            "run_mib": train_mib, "epoch_s": record["epoch_seconds"],
            "valid_eval_s": record.get("eval_seconds", float("nan")),
            "test_ndcg": results["ndcg@10"]}


def log_file(folder: Path, events: int) -> Path:
    """The CSV of ``events`` events in ``folder``, written first if it is not there."""
    csv = folder / f"ml20m-shaped-{events}.csv"
    shape_file = csv.with_suffix(".json")
    if not shape_file.exists():
        print(f"writing {csv}", flush=True)
        shape_file.write_text(json.dumps(write_log(csv, events)))
    return csv


def plot(rows: list[dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    events = [r["events"] / 1e6 for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label in (("import_s", "import"), ("epoch_s", "one SASRec epoch"),
                       ("valid_eval_s", "full evaluation (validation)")):
        left.plot(events, [r[key] for r in rows], marker="o", label=label)
    left.set(xlabel="events (millions)", ylabel="seconds", title="time")
    left.legend()
    for key, label in (("import_mib", "import"), ("run_mib", "train + evaluate")):
        right.plot(events, [r[key] / 1024 for r in rows], marker="o", label=label)
    right.set(xlabel="events (millions)", ylabel="peak RSS (GiB)", title="memory")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", default="1000000,5000000,20000000")
    parser.add_argument("--folder", type=Path, default=ROOT / "runs" / "scale-data")
    parser.add_argument("--readers", action="store_true",
                        help="measure the importers on the largest size instead")
    parser.add_argument("--reader-list", type=lambda s: s.split(","),
                        default=["parquet", "parquet-large", "parquet-large@512MB",
                                 "csv-large"])
    parser.add_argument("--repeat", type=int, default=1,
                        help="with --readers: how many times each reader runs")
    args = parser.parse_args()
    args.folder.mkdir(parents=True, exist_ok=True)
    if args.readers:
        events = max(int(e) for e in args.events.split(","))
        csv = log_file(args.folder, events)
        readers = measure_readers(csv, args.reader_list, args.repeat)
        body = readers_section(args, readers, json.loads(csv.with_suffix(".json").read_text()))
        write_section(ROOT / "docs" / "scaling.md", "scale-import", body)
        print(body)
        return
    rows = []
    for events in (int(e) for e in args.events.split(",")):
        csv = log_file(args.folder, events)
        shape = json.loads(csv.with_suffix(".json").read_text())
        print(f"measuring {csv} ({shape})", flush=True)
        row = {**shape, **measure(csv, args.folder / f"run-{events}")}
        print(row, flush=True)
        rows.append(row)
    figure = ROOT / "docs" / "scaling-data.png"
    plot(rows, figure)
    table = markdown_table(
        ["events", "users", "items", "import (s)", "import peak RSS (MiB)",
         "one epoch (s)", "full evaluation, validation (s)", "whole run (s)",
         "run peak RSS (MiB)"],
        [[f"{r['events']:,}", f"{r['users']:,}", f"{r['items']:,}", f"{r['import_s']:.0f}",
          f"{r['import_mib']:,.0f}", f"{r['epoch_s']:.0f}", f"{r['valid_eval_s']:.0f}",
          f"{r['run_s']:.0f}", f"{r['run_mib']:,.0f}"] for r in rows])
    body = f"""
## Data size: import, one epoch, full evaluation

`python benchmarks/scale_data.py --events {args.events}`, {time.strftime('%Y-%m-%d')},
{machine()}, one process. Synthetic MovieLens-20M-shaped logs (27,000 items, ~145
events per user, Zipf-like popularity; see the script). "Whole run" is `modrec train
--epochs 1`: import from the cache, one epoch, validation and test by full ranking,
writing the run folder.

{table}

![time and memory against events](scaling-data.png)

The import is the memory peak: {rows[-1]['import_mib'] * 2**20 / rows[-1]['events']:.0f}
bytes per event at {rows[-1]['events']:,} events, from parsing the whole CSV with pandas;
training and full evaluation then hold the canonical arrays ({rows[-1]['run_mib']:,.0f} MiB
at that size). Everything here is in memory: this one process holds every sequence.
Out-of-core import: the sections below; a data-parallel run whose ranks each hold only
their own users (`data.rank_users`): "Each rank its own users".
"""
    write_section(ROOT / "docs" / "scaling.md", "scale-data", body)
    print(body)


if __name__ == "__main__":
    main()
