"""A killed training run resumes to the same result (issue 30, promise 2).

Trains SASRec on ml-100k (small settings) once straight through, then again while
SIGKILLing ``modrec train`` at moments drawn from a seeded RNG and resuming with
``--resume`` after every kill. Three kinds of kill:

- ``checkpoint``: the script polls the run folder and kills as soon as checkpoint.pt's
  temporary sibling (``.checkpoint.pt.tmp``) appears, at the first, second or third
  checkpoint of that process: inside the checkpoint write;
- ``weights``: the same for model.pt (``.model.pt.tmp``), written when validation
  improves;
- ``random``: at a uniformly drawn time during start-up, an epoch or an evaluation.

After each kill the folder must load: config.json parses as a RunConfig, every line of
metrics.jsonl is a complete JSON record (no torn lines), checkpoint.pt loads as a
checkpoint, and `load_run` loads model.pt when there is one. At the end the resumed
run's test metrics, per-epoch validation and weights must match the uninterrupted
run's within the tolerances of
tests/train/test_training.py::test_resume_continues_to_the_same_result (test NDCG@10
within 3e-4, validation NDCG@10 within 1e-3, every weight within 2% of its tensor's
largest entry).

    MODREC_DATA_DIR=... python benchmarks/kill_train.py             # 12 kills, ~3 minutes
    python benchmarks/kill_train.py --kills 20 --seed 3 --epochs 12 --json

Exit status 1 when a check fails.
"""

from __future__ import annotations

from modrec import threads as _threads  # noqa: F401  first: its OpenMP policy, before torch

# isort: split

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from modrec.runs import RunDir, load_run
from modrec.train.checkpoint import Checkpoint

SETTINGS = ["--set", "model.max_len=50", "--set", "model.num_blocks=1",
            "--set", "train.batch_size=128"]
KINDS = ("checkpoint", "random", "weights", "checkpoint", "random", "checkpoint")


@dataclass
class Kill:
    number: int
    kind: str
    planned: str  # what the script aimed at
    after_s: float  # seconds after the process started
    landed: str  # where it fell, judged from the folder afterwards
    checkpoint_epoch: int | None  # the checkpoint's epoch after the kill (None: none yet)
    metrics_lines: int
    leftovers: list[str]  # temporary files the kill left behind
    problems: list[str] = field(default_factory=list)  # failed checks (should be none)


def train_command(out: Path, epochs: int) -> list[str]:
    return [sys.executable, "-m", "modrec", "train", "-d", "ml-100k", "-m", "sasrec",
            *SETTINGS, "--epochs", str(epochs), "--out", str(out), "--resume",
            "--no-progress"]


def start(command: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as f:
        return subprocess.Popen(command, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)


def wait_for(process: subprocess.Popen[bytes], path: Path, occurrence: int,
             limit_s: float) -> bool:
    """Poll (every ~0.2 ms) until ``path`` has appeared ``occurrence`` times; False if
    the process ended or the time ran out first."""
    seen, present = 0, path.exists()  # a leftover of an earlier kill does not count
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline and process.poll() is None:
        now = path.exists()
        if now and not present:
            seen += 1
            if seen >= occurrence:
                return True
        present = now
        time.sleep(0.0002)
    return False


def inspect(folder: Path) -> tuple[list[str], int | None, int]:
    """The checks after a kill: problems found, the checkpoint's epoch, metrics lines."""
    problems: list[str] = []
    run = RunDir(folder)
    epoch = None
    if run.config_file.exists():
        try:
            run.read_config()
        except Exception as err:  # noqa: BLE001 - any failure is a finding
            problems.append(f"config.json: {err}")
    lines = 0
    if run.metrics_file.exists():
        raw = run.metrics_file.read_bytes()
        if raw and not raw.endswith(b"\n"):
            problems.append("metrics.jsonl does not end with a newline (torn last line)")
        for i, line in enumerate(raw.splitlines(), start=1):
            try:
                record = json.loads(line)
                assert isinstance(record, dict) and "epoch" in record
            except Exception:  # noqa: BLE001
                problems.append(f"metrics.jsonl line {i} is torn: {line[:60]!r}")
        lines = len(raw.splitlines())
    if run.checkpoint_file.exists():
        try:
            epoch = Checkpoint(run.checkpoint_file).progress().epoch
        except Exception as err:  # noqa: BLE001
            problems.append(f"checkpoint.pt: {err}")
    if run.weights_file.exists():
        try:
            load_run(folder)
        except Exception as err:  # noqa: BLE001
            problems.append(f"load_run: {type(err).__name__}: {err}")
    if run.results_file.exists():
        try:
            run.results()
        except Exception as err:  # noqa: BLE001
            problems.append(f"results.json: {err}")
    return problems, epoch, lines


def temporaries(folder: Path) -> dict[str, int]:
    """The hidden files and folders of the run folder (interrupted writes), with their
    modification times."""
    if not folder.exists():
        return {}
    return {p.name: p.stat().st_mtime_ns for p in folder.glob(".*")}


def landed(leftovers: list[str], after: int | None, output: str) -> str:
    """Where a kill fell: from the temporary files it left and what the process had
    logged (``output``: its own lines only)."""
    if ".checkpoint.pt.tmp" in leftovers:
        return f"inside the checkpoint write of epoch {(after or 0) + 1}"
    if ".model.pt.tmp" in leftovers:
        return "inside the model.pt write"
    if any(name.startswith(".dataset.") for name in leftovers):
        return "inside the dataset snapshot write"
    if any(name.endswith(".tmp") for name in leftovers):
        return f"inside the write of {leftovers}"
    if "training sasrec" not in output:
        return "start-up (imports)"
    epochs = [int(line.split()[3]) for line in output.splitlines()
              if line.startswith("INFO modrec.train.loop: epoch ")]
    if not epochs and "resumed" not in output and after is not None:
        return f"set-up (data, model, checkpoint of epoch {after})"
    if epochs and max(epochs) > (after or 0):
        return f"after validating epoch {max(epochs)}, before its checkpoint was in place"
    return f"training or validating epoch {(after or 0) + 1}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, help="default: a new temporary folder")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args()
    if "MODREC_DATA_DIR" not in os.environ:
        parser.error("set MODREC_DATA_DIR to the data directory (ml-100k)")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="kill-train-"))
    work.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)

    straight, killed = work / "straight", work / "killed"
    started = time.monotonic()
    subprocess.run(train_command(straight, args.epochs), check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    straight_s = time.monotonic() - started
    records = RunDir(straight).metrics()
    epoch_s = float(np.mean([r["epoch_seconds"] + r.get("eval_seconds", 0) for r in records]))
    startup_s = max(1.0, straight_s - sum(r["epoch_seconds"] + r.get("eval_seconds", 0)
                                          for r in records))
    print(f"straight run: {straight_s:.1f}s ({startup_s:.1f}s start-up, {epoch_s:.1f}s per "
          "epoch)", file=sys.stderr)

    kills: list[Kill] = []
    log = work / "killed.log"
    while len(kills) < args.kills:
        kind = KINDS[len(kills) % len(KINDS)]
        offset = log.stat().st_size if log.exists() else 0
        earlier = temporaries(killed)
        process = start(train_command(killed, args.epochs), log)
        t0 = time.monotonic()
        if kind == "random":
            delay = float(rng.uniform(0.2, startup_s + 1.5 * epoch_s))
            planned = f"{delay:.2f}s after start"
            try:
                process.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                pass
            hit = process.poll() is None
        else:
            target = ".checkpoint.pt.tmp" if kind == "checkpoint" else ".model.pt.tmp"
            occurrence = int(rng.integers(1, 4))
            planned = f"write #{occurrence} of {target.strip('.').removesuffix('.tmp')}"
            hit = wait_for(process, killed / target, occurrence, 120.0)
        if not hit:
            process.wait()
            if process.returncode == 0:
                print("the run finished before the next kill", file=sys.stderr)
                break
            continue  # a weights write that did not come (no improvement): try again
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        after_s = time.monotonic() - t0
        now = temporaries(killed)  # only what this process left counts as its own
        leftovers = sorted(name for name, stamp in now.items() if earlier.get(name) != stamp)
        problems, epoch, lines = inspect(killed)
        output = log.read_bytes()[offset:].decode(errors="replace")
        kill = Kill(len(kills) + 1, kind, planned, round(after_s, 3),
                    landed(leftovers, epoch, output), epoch, lines, leftovers, problems)
        kills.append(kill)
        print(f"kill {kill.number:>2} ({kind}, {planned}) at {after_s:.2f}s: {kill.landed}"
              f"{'; PROBLEMS: ' + '; '.join(problems) if problems else ''}", file=sys.stderr)

    resumes = 0
    while not (killed / "results.json").exists():  # resume to the end
        resumes += 1
        subprocess.run(train_command(killed, args.epochs), check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    final_problems, _, _ = inspect(killed)
    leftovers = sorted(p.name for p in killed.glob(".*"))
    report = compare(straight, killed)
    report |= {"kills": [asdict(k) for k in kills], "kills_delivered": len(kills),
               "inside_checkpoint_writes": sum(".checkpoint.pt.tmp" in k.leftovers
                                               for k in kills),
               "inside_weights_writes": sum(".model.pt.tmp" in k.leftovers for k in kills),
               "final_problems": final_problems, "leftovers_at_end": leftovers,
               "workdir": str(work), "seed": args.seed, "epochs": args.epochs}
    failures = ([p for k in kills for p in k.problems] + final_problems
                + report["mismatches"] + [f"leftover {name}" for name in leftovers])
    report["ok"] = not failures
    if args.json:
        print(json.dumps(report))
    else:
        print_report(report)
    return 0 if report["ok"] else 1


def compare(straight: Path, killed: Path) -> dict[str, Any]:
    a, b = RunDir(straight).results(), RunDir(killed).results()
    valid_a = [r["valid"]["ndcg@10"] for r in RunDir(straight).metrics()]
    valid_b = [r["valid"]["ndcg@10"] for r in RunDir(killed).metrics()]
    weights_a = torch.load(straight / "checkpoint.pt", weights_only=True)["model"]
    weights_b = torch.load(killed / "checkpoint.pt", weights_only=True)["model"]
    drift = max(float((w - weights_b[k]).abs().max() / w.abs().max())
                for k, w in weights_a.items() if w.is_floating_point())
    metrics = [k for k in a if "@" in k or k == "mrr"]
    mismatches = []
    if a["epochs"] != b["epochs"] or a["best_epoch"] != b["best_epoch"]:
        mismatches.append(f"epochs {a['epochs']}/{a['best_epoch']} vs "
                          f"{b['epochs']}/{b['best_epoch']}")
    if abs(a["ndcg@10"] - b["ndcg@10"]) > 3e-4:
        mismatches.append(f"test ndcg@10 {a['ndcg@10']:.6f} vs {b['ndcg@10']:.6f}")
    if len(valid_a) != len(valid_b) or max(
            abs(x - y) for x, y in zip(valid_a, valid_b, strict=True)) > 1e-3:
        mismatches.append(f"validation ndcg@10 per epoch {valid_a} vs {valid_b}")
    if drift >= 0.02:
        mismatches.append(f"weights drift {drift:.4f}")
    return {"straight": {k: a[k] for k in metrics}, "resumed": {k: b[k] for k in metrics},
            "max_test_metric_diff": max(abs(a[k] - b[k]) for k in metrics),
            "max_valid_ndcg10_diff": max(abs(x - y) for x, y in zip(valid_a, valid_b,
                                                                     strict=False)),
            "weights_drift": drift, "epochs": b["epochs"], "best_epoch": b["best_epoch"],
            "resumed_entries": len(RunDir(killed).config_extras().get("resumed", [])),
            "mismatches": mismatches}


def print_report(report: dict[str, Any]) -> None:
    print("| # | kind | aimed at | after | landed | checkpoint epoch | checks |")
    print("|---|---|---|---|---|---|---|")
    for k in report["kills"]:
        print(f"| {k['number']} | {k['kind']} | {k['planned']} | {k['after_s']:.2f}s | "
              f"{k['landed']} | {k['checkpoint_epoch']} | "
              f"{'; '.join(k['problems']) or 'loads, no torn lines'} |")
    print()
    print(f"kills: {report['kills_delivered']}, inside checkpoint writes: "
          f"{report['inside_checkpoint_writes']}, inside model.pt writes: "
          f"{report['inside_weights_writes']}")
    print(f"test ndcg@10 straight {report['straight']['ndcg@10']:.6f}, killed and resumed "
          f"{report['resumed']['ndcg@10']:.6f}; largest test metric difference "
          f"{report['max_test_metric_diff']:.2e}, validation ndcg@10 "
          f"{report['max_valid_ndcg10_diff']:.2e}, weights {report['weights_drift']:.2e}")
    print(f"leftovers at the end: {report['leftovers_at_end'] or 'none'}")
    print("OK" if report["ok"] else f"FAILED: {report['mismatches']} {report['final_problems']}")


if __name__ == "__main__":
    sys.exit(main())
