"""Train several ML-1M variants side by side on one accelerator, each to early stopping
on validation NDCG@10, and report them; the choice between variants is made on
validation, never on test.

    python benchmarks/sweep.py run --device cuda --parallel 14 --deadline-minutes 8
    python benchmarks/sweep.py report [--doc docs/benchmarks.md]

``run`` starts one ``modrec train -d ml-1m -m PRESET --set ...`` process per variant
(at most ``--parallel`` at once), logs each into its run directory, and stops whatever
is still training at the deadline (its best weights so far stay in ``model.pt``).
``report`` reads the run directories: finished runs give test metrics at their best
validation epoch; a run stopped at the deadline gives its best validation NDCG@10 so
far and is marked unfinished. The variants ask one question each about the training
recipe: does drawing negatives for every position (as the HSTU repository does)
instead of once per sequence, or the full softmax, change what a model reaches?
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

from kit import markdown_table, write_section

PER_POSITION = ["loss.negatives_per=position", "loss.num_negatives=128"]
SOFTMAX = ["loss.name=softmax", "train.patience=10"]
# name: (preset, overrides). Each preset's own run, retrained here, is the control.
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "hstu-large": ("hstu-large", []),
    "hstu-large-position128": ("hstu-large", PER_POSITION),
    "hstu-large-position512": ("hstu-large", ["loss.negatives_per=position"]),
    "hstu-large-softmax": ("hstu-large", SOFTMAX),
    "hstu": ("hstu", []),
    "hstu-position128": ("hstu", PER_POSITION),
    "hstu-softmax": ("hstu", SOFTMAX),
    "sasrec": ("sasrec", []),
    "sasrec-position128": ("sasrec", PER_POSITION),
    "sasrec-softmax": ("sasrec", SOFTMAX),
    "gru4rec-position128": ("gru4rec", PER_POSITION),
    "gru4rec-softmax": ("gru4rec", SOFTMAX),
    "bert4rec-position128": ("bert4rec", PER_POSITION),
    "bert4rec-softmax": ("bert4rec", SOFTMAX),
}


def command(name: str, device: str, runs: Path, extra: list[str]) -> list[str]:
    preset, overrides = VARIANTS[name]
    sets = [arg for o in [*overrides, *extra, f"train.device={device}"] for arg in ("--set", o)]
    return [sys.executable, "-m", "modrec.cli", "train", "-d", "ml-1m", "-m", preset,
            *sets, "--out", str(runs / name), "--no-progress"]


def run(names: list[str], device: str, runs: Path, parallel: int, deadline: float,
        extra: list[str]) -> None:
    runs.mkdir(parents=True, exist_ok=True)
    (runs / "sweep.json").write_text(json.dumps(
        {"command": "python benchmarks/sweep.py " + " ".join(sys.argv[1:])}))
    # Convert (and cache) the dataset once, before the processes race to do it.
    from modrec.data import load_dataset
    load_dataset("ml-1m")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    waiting, running = list(names), {}
    stop_at = time.monotonic() + deadline
    while waiting or running:
        while waiting and len(running) < parallel:
            name = waiting.pop(0)
            (runs / name).mkdir(parents=True, exist_ok=True)
            log = (runs / name / "log.txt").open("w")
            running[name] = subprocess.Popen(command(name, device, runs, extra), env=env,
                                             stdout=log, stderr=subprocess.STDOUT)
            print(f"started {name}", flush=True)
        for name, proc in list(running.items()):
            if proc.poll() is not None:
                print(f"{name} ended (exit {proc.returncode})", flush=True)
                del running[name]
        if time.monotonic() > stop_at:
            for name, proc in running.items():
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                print(f"{name} stopped at the deadline", flush=True)
            break
        time.sleep(2)


def summarise(folder: Path) -> dict:
    lines = (folder / "metrics.jsonl").read_text().splitlines() \
        if (folder / "metrics.jsonl").exists() else []
    passes = [r for r in map(json.loads, lines) if "valid" in r]
    best = max(passes, key=lambda r: r["valid"]["ndcg@10"], default=None)
    config = json.loads((folder / "config.json").read_text())
    row = {"name": folder.name, "epochs": len(passes),
           "best_epoch": best["epoch"] if best else None,
           "valid_ndcg@10": best["valid"]["ndcg@10"] if best else None,
           "epoch_seconds": (sum(r["epoch_seconds"] for r in passes) / len(passes)
                             if passes else None),
           "device": config["train"]["device"], "loss": config["loss"],
           "finished": (folder / "results.json").exists(),
           "curve": [(r["epoch"], r["valid"]["ndcg@10"]) for r in passes]}
    if row["finished"]:
        results = json.loads((folder / "results.json").read_text())
        row |= {k: results[k] for k in ("hr@10", "ndcg@10", "hr@50", "ndcg@50")}
    return row


def plot_validation(rows: list[dict], path: Path) -> None:
    """Validation NDCG@10 against epoch, one panel per architecture."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = sorted({VARIANTS[r["name"]][0] for r in rows if r["name"] in VARIANTS})
    fig, axes = plt.subplots(1, len(families), figsize=(3.2 * len(families), 3.2),
                             sharey=True, squeeze=False)
    for ax, family in zip(axes[0], families, strict=True):
        for row in rows:
            if VARIANTS.get(row["name"], ("",))[0] != family:
                continue
            epochs, ndcg = zip(*row["curve"], strict=True) if row["curve"] else ((), ())
            ax.plot(epochs, ndcg, label=row["name"].removeprefix(family).lstrip("-") or "preset",
                    linewidth=1)
        ax.set_title(family)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("validation NDCG@10")
    axes[0][0].set_ylim(0.08, None)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(runs: Path, doc: Path) -> list[dict]:
    rows = [summarise(f) for f in sorted(runs.iterdir()) if (f / "config.json").exists()]
    order = list(VARIANTS)
    rows.sort(key=lambda r: order.index(r["name"]) if r["name"] in order else len(order))
    fmt = lambda v: "–" if v is None else f"{v:.4f}"  # noqa: E731
    table = markdown_table(
        ["variant", "valid NDCG@10 (best)", "best epoch / epochs", "test HR@10",
         "test NDCG@10", "test HR@50", "test NDCG@50", "s / epoch"],
        [[r["name"] + ("" if r["finished"] else " (stopped at deadline)"),
          fmt(r["valid_ndcg@10"]), f"{r['best_epoch']} / {r['epochs']}",
          fmt(r.get("hr@10")), fmt(r.get("ndcg@10")), fmt(r.get("hr@50")),
          fmt(r.get("ndcg@50")),
          f"{r['epoch_seconds']:.1f}" if r["epoch_seconds"] else "–"] for r in rows])
    devices = sorted({r["device"] for r in rows})
    made = json.loads((runs / "sweep.json").read_text())["command"] \
        if (runs / "sweep.json").exists() else "python benchmarks/sweep.py run"
    chart = doc.parent / "sweep-ml-1m.png"
    plot_validation(rows, chart)
    body = (
        f"`{made}` then `python benchmarks/sweep.py report`. ML-1M, leave-one-out, full ranking, "
        f"history masked; test metrics at the best validation epoch (finished runs only). "
        f"Devices: {', '.join(devices)}; the {len(rows)} runs shared the device at once, "
        f"so seconds per epoch are not solo timings. Variant overrides, on top of the "
        f"named preset in configs/ml-1m/:\n\n"
        + "\n".join(f"- `{n}`: `-m {p}` " + " ".join(f"`--set {o}`" for o in ov)
                    for n, (p, ov) in VARIANTS.items() if any(r['name'] == n for r in rows))
        + "\n\n" + table + f"\n\n![validation NDCG@10 by epoch]({chart.name})\n")
    write_section(doc, "sweep-ml-1m", "## ML-1M training-recipe sweep\n\n" + body)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["run", "report"])
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help="comma-separated names from VARIANTS")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--parallel", type=int, default=len(VARIANTS))
    parser.add_argument("--deadline-minutes", type=float, default=60.0)
    parser.add_argument("--runs", default="runs/sweep")
    parser.add_argument("--doc", default="docs/benchmarks.md")
    parser.add_argument("--extra-set", action="append", default=[], metavar="KEY=VALUE",
                        help="an override for every variant (e.g. train.epochs=1 to try)")
    args = parser.parse_args()
    runs = Path(args.runs)
    if args.action == "run":
        names = args.variants.split(",")
        unknown = [n for n in names if n not in VARIANTS]
        if unknown:
            raise SystemExit(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
        run(names, args.device, runs, args.parallel, args.deadline_minutes * 60,
            args.extra_set)
    rows = report(runs, Path(args.doc))
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
