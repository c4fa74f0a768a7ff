"""Training-step time of ml-1m presets at two git revisions, measured in one run.

    python benchmarks/speed_revisions.py --base REV [--head HEAD] [--models hstu-large]
        [--batches 20] [--rounds 3]

For a change that should make training faster (or must not make it slower): each
revision's ``src/`` and ``configs/`` are exported with ``git archive`` and timed in
its own process on the preset's real ML-1M training data, batched and stepped as that
revision's training loop does it (from 11c47ef on: shuffled batches run as length
slices), the two revisions alternating round after round so that both see the same
machine load. From 2026-12-03 on, a revision is set up by its own `modrec.train.setup`;
earlier ones (back to 11c47ef) the same way from their own helpers. Reported: the mean
seconds per training step (forward, backward, optimiser), the median of the rounds, and
base / head. (A mean, not a median step: batches of long histories cost far more, and they set the
epoch time.) The revisions must share the training API used below (a few weeks apart
at most). Written into docs/speed-revisions.md.
"""

from __future__ import annotations

from modrec import threads as _threads  # noqa: F401  first: its OpenMP policy, before torch

# isort: split

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from kit import machine, markdown_table, write_section

ROOT = Path(__file__).resolve().parents[1]

# Run inside the exported revision: time `batches` training steps after 3 of warm-up.
TIMER = """
import json, sys, tempfile, time
from itertools import islice
import numpy as np, torch

name, count = sys.argv[1], int(sys.argv[2])
try:  # from 2026-12-03 on: the training loop's own set-up, batches and step
    from modrec.config import build_config
    from modrec.train import setup
    from modrec.train.loop import train_step

    session = setup(build_config("ml-1m", name), tempfile.mkdtemp(), show_progress=False)
    model, optimizer, config = session.trainable, session.optimizer, session.config
    batches = model.training_batches(session.examples, config.train.batch_size,
                                     np.random.default_rng(0))
    generator = torch.Generator().manual_seed(0)
    if hasattr(session, "loss"):  # from 2026-12-03 (data parallelism) on
        step = lambda batch: train_step(session.loss, optimizer, batch,
                                        config.train.length_slices, generator, session.pool)
    else:
        step = lambda batch: train_step(model, optimizer, batch, config, generator,
                                        session.pool)
except ImportError:  # earlier revisions: the same, assembled from their own helpers
    from modrec.data import load_dataset, make_split
    from modrec.data.batches import cloze_batches, next_item_batches, training_examples
    from modrec.models import build_model
    from modrec.train.config import build_config
    from modrec.train.loop import known_items, train_step

    torch.manual_seed(0)
    config = build_config("ml-1m", name)
    dataset = load_dataset("ml-1m")
    split = make_split(dataset, config.data.split)
    model = build_model(config.model, dataset.num_items)
    model.item_tower.set_known(known_items(split))
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.train.lr,
                                  betas=config.train.betas,
                                  weight_decay=config.train.weight_decay)
    windows, lengths = training_examples(split.train, config.model.max_len)
    rng = np.random.default_rng(0)
    if model.objective == "cloze":
        batches = cloze_batches(windows, config.model.max_len, config.train.batch_size, rng,
                                config.model.mask_rate, dataset.num_items + 1)
    else:
        batches = next_item_batches(windows, lengths, config.train.batch_size, rng)
    generator = torch.Generator().manual_seed(0)
    step = lambda batch: train_step(model, optimizer, batch, config, generator)
seconds = []
for batch in islice(batches, count + 3):
    started = time.perf_counter()
    step(batch)
    seconds.append(time.perf_counter() - started)
print(json.dumps(seconds[3:]))
"""


def export(revision: str, into: Path) -> str:
    """``src/`` and ``configs/`` of ``revision`` under ``into``; returns the commit id."""
    commit = subprocess.run(["git", "rev-parse", "--verify", f"{revision}^{{commit}}"],
                            cwd=ROOT, check=True, capture_output=True, text=True).stdout.strip()
    archive = subprocess.run(["git", "archive", commit, "src", "configs"], cwd=ROOT,
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return commit


def step_seconds(source: Path, model: str, batches: int) -> list[float]:
    env = {**os.environ, "PYTHONPATH": str(source / "src")}
    done = subprocess.run([sys.executable, "-c", TIMER, model, str(batches)], env=env,
                          capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"timing {model} at {source.name} failed:\n{done.stderr}")
    return list(json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="the revision to compare against")
    parser.add_argument("--head", default="HEAD")
    parser.add_argument("--models", default="hstu-large")
    parser.add_argument("--batches", type=int, default=20, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        sources, commits = {}, {}
        for side in ("base", "head"):
            sources[side] = Path(tmp) / side
            sources[side].mkdir()
            commits[side] = export(getattr(args, side), sources[side])
        rows = []
        for model in args.models.split(","):
            times: dict[str, list[float]] = {"base": [], "head": []}  # mean per round
            for round_ in range(args.rounds):
                for side in ("base", "head"):
                    times[side].append(float(np.mean(
                        step_seconds(sources[side], model, args.batches))))
                print(f"{model} round {round_ + 1}: base {times['base'][-1]:.3f} "
                      f"head {times['head'][-1]:.3f} s/step", flush=True)
            base, head = float(np.median(times["base"])), float(np.median(times["head"]))
            rows.append([model, f"{base:.3f}", f"{head:.3f}", f"{base / head:.2f}x"])

    table = markdown_table(["preset", "base s / step", "head s / step", "speed-up"], rows)
    # One section per base revision, so that each change keeps its own measurement.
    base_id = commits["base"][:7]
    write_section(ROOT / "docs" / "speed-revisions.md", f"speed-revisions-{base_id}", f"""
## Training-step time between two revisions (base {base_id})

Command: `python benchmarks/speed_revisions.py --base {args.base} --head {args.head}
--models {args.models} --batches {args.batches} --rounds {args.rounds}`: base
{commits['base'][:7]}, head {commits['head'][:7]}. Each revision's `src/` and `configs/` in its
own process, the two alternating for {args.rounds} rounds of {args.batches} training steps
(after 3 of warm-up) on the preset's ML-1M training data, batched and stepped as each
revision's training loop does it; mean seconds per step in a round, median over rounds.
Machine: {machine()}.

{table}
""")


if __name__ == "__main__":
    main()
