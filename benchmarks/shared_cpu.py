"""The model service and a training epoch beside a CPU-bound job, before and after the
thread policy (`modrec.threads`), measured in one run.

    export MODREC_DATA_DIR=/work/shared/data
    python benchmarks/shared_cpu.py [--base 5da05c1] [--seconds 15] [--rounds 1]

Two revisions: ``--base`` (before; exported with ``git archive``) and the working tree
(after), each started as ``python -m modrec`` with its own ``src/`` on PYTHONPATH and
its own defaults (no thread setting passed). Each is measured with three neighbours:

- ``none``: nothing else started by this script;
- ``busy``: a single-threaded Python busy loop, a CPU-bound job that takes one core;
- ``train``: another ``modrec train`` (ML-1M SASRec) of the same revision: a user
  training beside the service they serve from, the case issue 40 reported.

What is measured:

1. the service: ``modrec serve`` on a 3-epoch ML-1M SASRec run with a seeded state,
   wrk with 4 connections for ``--seconds`` on ``/v1/recommend`` (k=10) for random
   known users, so every request runs the model: requests/s, p50 and p99;
2. training: one ML-1M SASRec epoch (``modrec train -d ml-1m -m sasrec --epochs 1``),
   its ``epoch_seconds`` from metrics.jsonl.

Nothing is pinned: the processes share the machine's cores as a user's would. The other
processes' CPU use during each service measurement is reported beside it (the machine
is shared). Targets (issue 37, item 0): beside the busy loop on 2 cores, requests/s at
least a quarter of the figure with no neighbour, and p99 under 50 ms.
"""

from __future__ import annotations

from modrec import threads as _threads  # noqa: F401  first: its OpenMP policy, before torch

# isort: split

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kit import ROOT, cpu_name, git_revision, markdown_table, write_section
from serve_load import Server, describe_usage, lua_script, run_wrk
from speed_revisions import export

SECTION = "shared-cpu"
RUN = ROOT / "runs" / "shared-cpu" / "ml-1m-sasrec-3"
NEIGHBOURS = ("none", "busy", "train")


class Revision:
    def __init__(self, name: str, source: Path) -> None:
        self.name, self.source = name, source
        self.env = {**os.environ, "PYTHONPATH": str(source / "src")}
        for name in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT"):  # each revision's own policy
            self.env.pop(name, None)
        self.env.pop("MODREC_THREADS", None)
        self.modrec = [sys.executable, "-m", "modrec"]

    def train(self, out: Path, epochs: int) -> subprocess.Popen[bytes]:
        log = out.with_suffix(".log").open("wb")
        return subprocess.Popen([*self.modrec, "train", "-d", "ml-1m", "-m", "sasrec",
                                 "--epochs", str(epochs), "--out", str(out), "--no-progress"],
                                env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)


def start_neighbour(kind: str, revision: Revision, workdir: Path) -> subprocess.Popen[bytes] | None:
    if kind == "none":
        return None
    if kind == "busy":
        return subprocess.Popen([sys.executable, "-c", "while True: pass"])
    process = revision.train(workdir / f"neighbour-{revision.name}-{time.time_ns()}", 1000)
    time.sleep(5)  # past its imports: loading data and training are both CPU-bound
    return process


def stop(process: subprocess.Popen[bytes] | None) -> None:
    if process is not None:
        process.kill()
        process.wait()


def serve_figures(revision: Revision, neighbour: str, state: Path, seconds: int,
                  workdir: Path) -> dict[str, object]:
    server = Server(RUN, state, name=f"shared-cpu-{revision.name}-{neighbour}",
                    launcher=revision.modrec, env=revision.env)
    server.start()
    other = None
    try:
        other = start_neighbour(neighbour, revision, workdir)
        result = run_wrk(server, lua_script(6040, [], 0.0, seed=7), 4, seconds, None, workdir)
    finally:
        stop(other)
        server.stop()
    if any(result.errors.values()):
        print(f"  wrk errors: {result.errors}", file=sys.stderr)
    return {"rps": result.rps, "p50": result.p50_ms, "p99": result.p99_ms,
            "usage": describe_usage(result.usage), "command": result.command}


def epoch_seconds(revision: Revision, neighbour: str, workdir: Path) -> float:
    out = workdir / f"epoch-{revision.name}-{neighbour}-{time.time_ns()}"
    other = start_neighbour(neighbour, revision, workdir)
    try:
        code = revision.train(out, 1).wait()
    finally:
        stop(other)
    if code != 0:
        sys.exit(f"training at {revision.name} failed; see {out.with_suffix('.log')}")
    first = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    return float(first["epoch_seconds"])


def make_run(head: Revision) -> None:
    if (RUN / "results.json").exists():
        return
    print(f"training the served run {RUN} (3 epochs)", file=sys.stderr)
    RUN.parent.mkdir(parents=True, exist_ok=True)
    if head.train(RUN, 3).wait() != 0:
        sys.exit(f"training {RUN} failed; see {RUN.with_suffix('.log')}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="5da05c1", help="the revision before the policy")
    parser.add_argument("--seconds", type=int, default=15, help="wrk's duration")
    parser.add_argument("--rounds", type=int, default=1,
                        help="repeat everything; the median of the rounds is reported")
    parser.add_argument("--parts", default="serve,train")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    with tempfile.TemporaryDirectory(prefix="shared-cpu-") as tmp:
        workdir = Path(tmp)
        (workdir / "base").mkdir()
        commit = export(args.base, workdir / "base")[:7]
        revisions = [Revision(f"before ({commit})", workdir / "base"),
                     Revision(f"after ({git_revision() or 'working tree'})", ROOT)]
        make_run(revisions[1])
        state = workdir / "state.db"  # seeded once; recommend-only load never writes it
        seed = Server(RUN, state, name="shared-cpu-seed")
        seed.start()
        seed.stop()
        figures: dict[tuple[str, str], list[dict[str, object]]] = {}
        for round_ in range(args.rounds):
            for neighbour in NEIGHBOURS:
                for revision in revisions:  # alternating, so both see the same load
                    row: dict[str, object] = {}
                    if "serve" in parts:
                        row |= serve_figures(revision, neighbour, state, args.seconds, workdir)
                    if "train" in parts:
                        row["epoch"] = epoch_seconds(revision, neighbour, workdir)
                    print(f"round {round_ + 1} {revision.name} beside {neighbour}: {row}",
                          file=sys.stderr)
                    figures.setdefault((revision.name, neighbour), []).append(row)
    write_report(args, figures, parts)


def median(rows: list[dict[str, object]], key: str) -> float:
    return statistics.median(float(r[key]) for r in rows)  # type: ignore[arg-type]


def write_report(args: argparse.Namespace, figures: dict[tuple[str, str], list[dict[str, object]]],
                 parts: set[str]) -> None:
    header = ["revision", "beside"]
    if "serve" in parts:
        header += ["requests/s", "vs none", "p50 ms", "p99 ms"]
    if "train" in parts:
        header += ["epoch s", "vs none"]
    rows, usage = [], []
    for (name, neighbour), runs in figures.items():
        alone = figures[(name, "none")]
        row: list[object] = [name, neighbour]
        if "serve" in parts:
            rps = median(runs, "rps")
            row += [f"{rps:.0f}", f"{rps / median(alone, 'rps'):.2f}",
                    f"{median(runs, 'p50'):.1f}", f"{median(runs, 'p99'):.1f}"]
            usage.append(f"- {name}, beside {neighbour}: {runs[-1]['usage']}")
        if "train" in parts:
            epoch = median(runs, "epoch")
            row += [f"{epoch:.1f}", f"{epoch / median(alone, 'epoch'):.2f}x"]
        rows.append(row)
    body = (f"## The service and training beside a CPU-bound job\n\n"
            f"Measured {time.strftime('%Y-%m-%d')} on {cpu_name()}, "
            f"{os.cpu_count()} cores, nothing pinned, median of {args.rounds} round(s):\n"
            f"`python benchmarks/shared_cpu.py --base {args.base} --seconds {args.seconds} "
            f"--rounds {args.rounds}`. Service: `modrec serve` on a 3-epoch ML-1M SASRec "
            f"run, wrk -t1 -c4 on /v1/recommend for random known users; training: one "
            f"ML-1M SASRec epoch. Beside: `busy` is a one-thread busy loop, `train` another "
            f"`modrec train` of the same revision.\n\n"
            + markdown_table(header, rows)
            + ("\n\nCPU used during the last round's service measurements:\n\n"
               + "\n".join(usage) if usage else ""))
    write_section(ROOT / "docs" / "benchmarks.md", SECTION, body)
    print(body)


if __name__ == "__main__":
    main()
