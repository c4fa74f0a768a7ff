"""The labelled-clips workflow on fight-surveillance through the CLI, as a user runs it
(issue 36, item 4): a ``path,label,group`` CSV imported as a catalog, embedded with
I3D, then classified with grouped 5-fold cross-validation; written into the
``fight-classify`` section of docs/benchmarks.md with the confusion matrix beside it
(docs/fight-classify-confusion.png).

    python benchmarks/fight_classify.py catalog    # runs/fight-classify/clips.csv
    python benchmarks/fight_classify.py embed      # modrec embed (I3D), timed
    python benchmarks/fight_classify.py classify   # modrec classify, the section
    python benchmarks/fight_classify.py section    # the section again from the records

Groups are the clips' source videos (videos.txt, read as benchmarks/fight_heads.py
reads it): clips of one source share scene, camera and people, so they stay in one
fold. The embed step is the slow one (I3D on 300 clips: minutes on a CPU); run it
niced. Each step reruns the CLI; the embed job resumes where it stopped.
"""

from __future__ import annotations

from modrec import threads as _threads  # noqa: F401  first: its OpenMP policy, before torch

# isort: split

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from typing import Any

import torch
from fight_heads import I3D_SPEC, clips
from kit import DOC, ROOT, machine, markdown_table, write_section

OUT = ROOT / "runs" / "fight-classify"
CSV = OUT / "clips.csv"
STORE = OUT / "store"
TIMES = OUT / "timings.json"
CONFUSION = ROOT / "docs" / "fight-classify-confusion.png"  # the best head's, copied
# The stored sequences' name in the store: the spec with ':' and '=' made dashes.
I3D_NAME = "video-i3d-frames-32-stride-1-clips-1"
HEADS = ("mean", "attention", "gru", "transformer", "tcn")  # content/video/heads.py


def modrec(*args: str) -> list[str]:
    return [sys.executable, "-m", "modrec", *args]


def embed_command() -> list[str]:
    return modrec("embed", "-d", str(CSV), "--format", "video-csv", "--encoder", I3D_SPEC,
                  "--store", str(STORE), "--allow-outside-paths", "--no-progress")


def classify_command(head: str, extra: list[str]) -> list[str]:
    return modrec("classify", "-d", str(CSV), "--format", "video-csv", "--labels", "label",
                  "--single-label", "--encoder", I3D_NAME, "--groups", "group",
                  "--folds", "5", "--head", head, "--store", str(STORE), *extra, "--json")


def write_csv() -> None:
    """id,path,label,group: one row per clip (absolute paths: the CSV lives in runs/)."""
    ids, files, labels, groups = clips()
    OUT.mkdir(parents=True, exist_ok=True)
    lines = ["id,path,label,group"] + [
        f"{i},{f},{'fight' if y else 'noFight'},video{g}"
        for i, f, y, g in zip(ids, files, labels, groups, strict=True)]
    CSV.write_text("\n".join(lines) + "\n")
    print(f"{len(ids)} clips, {len(set(groups.tolist()))} groups -> {CSV}")


def shown(command: list[str]) -> str:
    """A command as the reader types it (``modrec`` for ``python -m modrec``, paths
    relative to the checkout)."""
    words = ["modrec" if w == "-m" else w for w in command[1:] if w != "modrec"]
    return " ".join(w.replace(f"{ROOT}/", "") for w in words)


def timed(command: list[str]) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(command, check=True, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    return time.perf_counter() - started, done.stdout


def record(key: str, value: Any) -> dict[str, Any]:
    times = json.loads(TIMES.read_text()) if TIMES.exists() else {}
    times[key] = value
    TIMES.write_text(json.dumps(times, indent=1))
    return times


def embed() -> None:
    seconds, out = timed(embed_command())
    print(out)
    record("embed", {"seconds": seconds, "load": os.getloadavg(),
                     "command": shown(embed_command()), "report": out.strip().splitlines()})


def classify() -> None:
    results = []
    for head in HEADS:
        extra = ["--save", str(OUT / f"head-{head}.safetensors"),
                 "--confusion", str(OUT / f"confusion-{head}.png")]
        load = os.getloadavg()[0]
        seconds, out = timed(classify_command(head, extra))
        result = json.loads(out.strip().splitlines()[-1])
        result.update(seconds=seconds, load=load, command=shown(classify_command(head, extra)))
        print(json.dumps(result), flush=True)
        results.append(result)
    best = max(results, key=lambda r: r["accuracy"])
    shutil.copyfile(best["confusion_png"], CONFUSION)
    record("classify", results)
    section()


def section() -> None:
    """The docs section from the recorded runs (runs/fight-classify/timings.json)."""
    times = json.loads(TIMES.read_text())
    write_section(DOC, "fight-classify", report(times["classify"], times.get("embed")))


def report(results: list[dict[str, Any]], embedded: dict[str, Any] | None) -> str:
    rows = []
    for r in results:
        f1 = r["per_class_f1"]
        rows.append([r["head"], f"{100 * r['accuracy']:.1f} ± {100 * r['accuracy_std']:.1f}",
                     f"{f1['fight']:.3f}", f"{f1['noFight']:.3f}",
                     f"{r['train_seconds']:.1f}", f"{r['seconds']:.0f}", f"{r['load']:.1f}"])
    embed_line = "Embedding: not timed in this run."
    if embedded:
        done = embedded["report"][0].split()
        embed_line = (f"Embedding (the `modrec embed` line above, niced): "
                      f"{embedded['seconds'] / 60:.1f} min for the 300 clips, "
                      f"{embedded['seconds'] / 300:.1f} s a clip ({done[4]} encoded, "
                      f"{done[-1]} failures), load average {embedded['load'][0]:.1f} at "
                      "the end (other developers' jobs).")
    best = max(results, key=lambda r: r["accuracy"])
    return "\n".join([
        "## fight-classify: the labelled-clips workflow on fight-surveillance (issue 36, "
        "item 4)", "",
        "    python benchmarks/fight_classify.py catalog    # clips.csv: id,path,label,group",
        "    python benchmarks/fight_classify.py embed",
        "    python benchmarks/fight_classify.py classify", "",
        f"Machine: {machine().split(',')[0]}, torch {torch.__version__}; `classify` trains "
        "on one torch thread (its default). Shared with other developers' jobs (load "
        "averages beside each row). Every number comes from the CLI, as a user runs it:",
        "",
        *[f"    {r['command']}" for r in results],
        f"    {shown(embed_command())}", "",
        embed_line, "",
        "Grouped, stratified 5-fold cross-validation by source video (the `group` column): "
        "accuracy is the mean ± standard deviation over the five test folds, per-class F1 "
        "over the pooled out-of-fold predictions. In each fold the learning rate (1e-3 or "
        "3e-4) and the stopping epoch are chosen on a grouped fifth of the training folds; "
        "the test fold is predicted once. train s: all the head training in the command "
        "(the five folds, then the final head trained the same way on every clip and "
        "saved with --save); command s: the whole command, loading included. Training "
        "a fight head from stored features takes well under the 10 minutes the issue "
        "allows.", "",
        markdown_table(["head", "accuracy %", "F1 fight", "F1 noFight", "train s",
                        "command s", "load"], rows), "",
        f"Best: {best['head']}, {100 * best['accuracy']:.1f}%, short of the issue's goal "
        "of 92%. `fight-heads` measured the same heads on I3D sequences of the same spec "
        "with the same folds at 82.5% (mean) and 83.1% (tcn), from another embedding run; "
        "the points between the two tables are within one fold's spread and not "
        "explained further. Confusion matrix of the best row's out-of-fold predictions "
        f"(rows: true class): ![confusion]({CONFUSION.name})",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("step", choices=["catalog", "embed", "classify", "section"])
    args = parser.parse_args(argv)
    {"catalog": write_csv, "embed": embed, "classify": classify, "section": section}[
        args.step]()
    return 0


if __name__ == "__main__":
    sys.exit(main())
