"""A killed extraction resumes without corruption (issue 30, promise 3).

Encodes the ml-100k titles (``modrec embed --encoder text``: MiniLM, 1,682 items) into
a store once straight through, then again while SIGKILLing the job at moments drawn
from a seeded RNG and rerunning it after every kill. Two kinds of kill:

- ``commit``: the script polls the store folder and kills as soon as the temporary
  sibling of a mask (``.text.<digest>.failed.npy.tmp`` or ``...done.npy.tmp``) appears,
  at that process's first to fifth commit: inside the mask commit;
- ``batch``: at a uniformly drawn time (start-up, a batch being encoded, a commit).

After each kill the store must validate (`EmbeddingStore.validate`: ids, shapes,
dtypes, masks, manifest consistent), and the next run must announce that it encodes
exactly the rows the store lacks (its log line ``text: N of 1682 items to encode (A
already stored)`` against the done mask left by the kill). At the end every row must be
done, none failed, and the matrix must equal the uninterrupted run's (to float noise:
batches are cut differently after a resume).

    MODREC_DATA_DIR=... python benchmarks/kill_embed.py               # 10 kills
    python benchmarks/kill_embed.py --kills 20 --seed 3 --json

Exit status 1 when a check fails.
"""

from __future__ import annotations

from modrec import threads as _threads  # noqa: F401  first: its OpenMP policy, before torch

# isort: split

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from modrec.content import EmbeddingStore
from modrec.data import load_dataset

ANNOUNCED = re.compile(r"text: (\d+) of (\d+) items to encode \((\d+) already stored\)")


@dataclass
class Kill:
    number: int
    kind: str
    planned: str
    after_s: float
    landed: str
    done_after: int  # rows marked done once the kill had struck
    announced_todo: int | None  # what the killed process said it would encode
    leftovers: list[str]
    problems: list[str] = field(default_factory=list)


def embed_command(store: Path, batch_size: int) -> list[str]:
    return [sys.executable, "-m", "modrec", "embed", "-d", "ml-100k", "--encoder", "text",
            "--store", str(store), "--batch-size", str(batch_size), "--no-progress",
            "--json"]


def wait_for(process: subprocess.Popen[bytes], paths: list[Path], occurrence: int,
             limit_s: float) -> Path | None:
    """Poll until one of ``paths`` has appeared ``occurrence`` times in all (fresh
    appearances only); None if the process ended or the time ran out first."""
    seen = 0
    present = {p: p.exists() for p in paths}
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline and process.poll() is None:
        for path in paths:
            now = path.exists()
            if now and not present[path]:
                seen += 1
                if seen >= occurrence:
                    return path
            present[path] = now
        time.sleep(0.0002)
    return None


def check(folder: Path, ids: list[str]) -> tuple[list[str], int, dict[str, int]]:
    """Validate the store: problems, rows done, the summary."""
    if not (folder / "manifest.json").exists():
        return [], 0, {}
    try:
        summary = EmbeddingStore(folder, ids).validate().get("text", {})
    except Exception as err:  # noqa: BLE001 - any failure is a finding
        return [f"{type(err).__name__}: {err}"], -1, {}
    return [], int(summary.get("done", 0)), summary


def temporaries(folder: Path) -> dict[str, int]:
    """The store's temporary files (interrupted writes) with their modification times."""
    if not folder.exists():
        return {}
    return {p.name: p.stat().st_mtime_ns for p in folder.glob(".*")}


def landed(leftovers: list[str], todo: int | None) -> str:
    for mask in ("failed", "done"):
        if any(name.endswith(f".{mask}.npy.tmp") for name in leftovers):
            return f"inside the commit of the {mask} mask"
    if leftovers:
        return f"inside the write of {', '.join(leftovers)}"
    if todo is None:
        return "start-up (imports, model)"
    return "encoding a batch, or between commits"


def announced(output: str) -> int | None:
    match = ANNOUNCED.search(output)
    return None if match is None else int(match.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, help="default: a new temporary folder")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args()
    if "MODREC_DATA_DIR" not in os.environ:
        parser.error("set MODREC_DATA_DIR to the data directory (ml-100k)")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="kill-embed-"))
    work.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    ids = load_dataset("ml-100k").items["item_id"].astype(str).tolist()
    digest = EmbeddingStore(work / "probe", ids).digest
    straight, killed = work / "straight", work / "killed"

    # The straight run also times the start-up: until the first batch's commit.
    started = time.monotonic()
    process = subprocess.Popen(embed_command(straight, args.batch_size),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(process, [straight / f".text.{digest}.done.npy.tmp"], 2, 600.0)
    startup_s = time.monotonic() - started
    if process.wait() != 0:
        raise SystemExit("the uninterrupted run failed")
    straight_s = time.monotonic() - started
    print(f"straight run: {straight_s:.1f}s ({startup_s:.1f}s to the first commit)",
          file=sys.stderr)
    masks = [killed / f".text.{digest}.failed.npy.tmp", killed / f".text.{digest}.done.npy.tmp"]

    kills: list[Kill] = []
    rerun_problems: list[str] = []
    log = work / "killed.log"
    done_before = 0
    kinds = ("commit", "batch")
    while len(kills) < args.kills:
        kind = kinds[len(kills) % 2]
        offset = log.stat().st_size if log.exists() else 0
        earlier = temporaries(killed)
        with log.open("ab") as f:
            process = subprocess.Popen(embed_command(killed, args.batch_size), stdout=f,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        t0 = time.monotonic()
        if kind == "batch":
            # half in start-up, half at most a few seconds into the batches
            delay = float(rng.uniform(0.3, startup_s + 4.0))
            planned = f"{delay:.2f}s after start"
            try:
                process.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                pass
            hit = process.poll() is None
        else:
            occurrence = int(rng.integers(1, 6))
            planned = f"mask write #{occurrence}"
            hit = wait_for(process, masks, occurrence, 300.0) is not None
        if not hit:
            process.wait()
            if process.returncode == 0:
                print("the job finished before the next kill", file=sys.stderr)
                todo = announced(log.read_bytes()[offset:].decode(errors="replace"))
                if todo != len(ids) - done_before:
                    rerun_problems.append(f"the last run announced {todo} rows to encode, "
                                          f"the store lacked {len(ids) - done_before}")
                done_before = len(ids)
                break
            rerun_problems.append(f"the job failed with status {process.returncode}")
            break
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        after_s = time.monotonic() - t0
        output = log.read_bytes()[offset:].decode(errors="replace")
        now = temporaries(killed)  # only what this process left counts as its own
        leftovers = sorted(name for name, stamp in now.items() if earlier.get(name) != stamp)
        problems, done, _ = check(killed, ids)
        todo = announced(output)
        if todo is not None and todo != len(ids) - done_before:
            problems.append(f"announced {todo} rows to encode, the store lacked "
                            f"{len(ids) - done_before}")
        if done < done_before:
            problems.append(f"done rows fell from {done_before} to {done}")
        where = landed(leftovers, todo)
        kills.append(Kill(len(kills) + 1, kind, planned, round(after_s, 3), where, done, todo,
                          leftovers, problems))
        print(f"kill {len(kills):>2} ({kind}, {planned}) at {after_s:.2f}s: {where}; "
              f"{done} rows done{'; PROBLEMS: ' + '; '.join(problems) if problems else ''}",
              file=sys.stderr)
        done_before = max(done, done_before)

    final = subprocess.run(embed_command(killed, args.batch_size), capture_output=True,
                           text=True)
    report: dict[str, Any] = {"kills": [asdict(k) for k in kills], "kills_delivered": len(kills),
                              "inside_mask_commits": sum(k.landed.startswith("inside")
                                                         for k in kills),
                              "workdir": str(work), "seed": args.seed}
    problems = [p for k in kills for p in k.problems] + rerun_problems
    if final.returncode != 0:
        problems.append(f"the final rerun failed: {final.stderr.strip()[-300:]}")
    else:
        [encoder] = json.loads(final.stdout.strip().splitlines()[-1])["encoders"]
        report["final_rerun"] = {k: encoder[k] for k in ("encoded", "already_stored",
                                                         "failures")}
        if encoder["already_stored"] != done_before or encoder["encoded"] != len(ids) - done_before:
            problems.append(f"final rerun encoded {encoder['encoded']} with "
                            f"{encoder['already_stored']} stored; expected "
                            f"{len(ids) - done_before} with {done_before}")
        a, b = EmbeddingStore(straight, ids), EmbeddingStore(killed, ids)
        summary = b.validate()["text"]
        report["final_store"] = summary
        if summary["done"] != len(ids) or summary["failed"] or summary["pending"]:
            problems.append(f"final store not complete: {summary}")
        difference = float(np.abs(np.asarray(a.matrix("text"), np.float64)
                                  - np.asarray(b.matrix("text"), np.float64)).max())
        report["max_abs_difference_to_straight"] = difference
        if difference > 1e-4:
            problems.append(f"matrix differs from the uninterrupted run by {difference:.2e}")
        report["leftovers_at_end"] = sorted(p.name for p in killed.glob(".*"))
    report["problems"] = problems
    report["ok"] = not problems
    if args.json:
        print(json.dumps(report))
    else:
        print("| # | kind | aimed at | after | landed | rows done | announced to encode | "
              "checks |")
        print("|---|---|---|---|---|---|---|---|")
        for k in kills:
            print(f"| {k.number} | {k.kind} | {k.planned} | {k.after_s:.2f}s | {k.landed} | "
                  f"{k.done_after} | {k.announced_todo} | "
                  f"{'; '.join(k.problems) or 'validates'} |")
        print()
        print(f"kills: {len(kills)}, inside mask commits: {report['inside_mask_commits']}; "
              f"final rerun: {report.get('final_rerun')}; largest difference to the "
              f"uninterrupted matrix: {report.get('max_abs_difference_to_straight', 'n/a')}")
        print("OK" if report["ok"] else f"FAILED: {problems}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
