"""Replay, the measurement of the living system (issue 39, item 4): a real log with
timestamps replayed in time order through ``modrec serve``, prequentially.

ml-100k (timestamps, titles, genres): all events sorted by time (ties: the dataset's
order, i.e. by user, then the file's order within a user); the cut at the
``--cut`` time quantile (0.7). The events before the cut, with the catalog of the
items seen before it, become a dataset (saved under the work folder) on which ONE
SASRec run with an ID+content tower is trained (``--encoders``: MiniLM titles, and
genres and release year as multi-hot tags, through ``modrec embed``). Then, for each
later event in order and per variant, against a service started on a new state seeded
from that run:

1. (variants b and c) ``POST /v1/items`` with the event's item (title, genres, year) if it
   first appears after the cut and was not posted yet;
2. ``POST /v1/recommend`` for the user, k=10, seen items excluded (the service's
   default; ml-100k has no re-watches, so the target is never a seen item): hit = the
   event's item in the top 10, NDCG@10 = 1/log2(rank+2) (rank from 0);
3. ``POST /v1/events`` with the event (user, item, timestamp): one request each,
   sequentially, so a recommendation sees exactly the events before it.

Variants: (a) the frozen model and frozen catalog (a new item is unknown to the
service; its events are still stored); (b) the frozen model with the new items
entering live; (c) (b) plus the learning loop: every tenth of the replay the replay
waits while ``modrec embed -d STATE --encoder ENCODERS`` and ``modrec train -d STATE
--init-from CURRENT`` make the next run from the state the service holds, and
``POST /v1/admin/reload`` swaps it in (the retraining time is reported apart from the
replay's throughput). ``--id-dropout`` (default 0) makes the initial run drop that
share of items' ID vectors in training, to train the content path, all a new item has,
to stand alone; with the tags it costs more than it buys. Users first seen after the
cut are cold users: they are kept (the service answers them from popularity until they
have events) and their share is reported.

    export MODREC_DATA_DIR=/work/shared/data
    python benchmarks/replay.py [--events 5000] [--variants a,b,c]
"""

from __future__ import annotations

from modrec import threads as _threads  # noqa: F401  first: its OpenMP policy, before torch

# isort: split

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from kit import ROOT, machine, markdown_table, write_section
from live_items import request, serve

SECTION = "replay"
COMMAND = "python benchmarks/replay.py"
WORK = ROOT / "runs" / "replay"
K = 10
FIELDS = ["title", "genres", "release_year"]  # the catalog columns a new item is posted with
# The content the tower reads: MiniLM titles, genres and release year as multi-hot tags.
# Titles alone left a new item's vector far from its viewers' (see docs/benchmarks.md,
# replay-text-only): year and genre are what the ml-100k audience of 1998 chose by.
ENCODERS = "text,tags:genres,tags:release_year"
VARIANTS = {"a": "frozen model, frozen catalog", "b": "frozen model, items enter live",
            "c": "items enter live + retrain every tenth and reload"}


# ---- the log and the cut ---------------------------------------------------------------
@dataclass
class Log:
    """The events in time order, split at the cut, and every item's catalog fields."""

    before: pd.DataFrame  # user_id, item_id, timestamp
    after: pd.DataFrame  # the same, plus new_item and cold_user
    catalog: pd.DataFrame  # item_id + FIELDS, every item of the dataset
    cut_time: int


def time_ordered(dataset: Any) -> pd.DataFrame:
    """Every event as external ids with its timestamp, sorted by time; the sort is
    stable, so ties keep the dataset's order (by user, then the file's order)."""
    frame = dataset.interactions
    users = dataset.users["user_id"].to_numpy() if "user_id" in dataset.users else None
    items = dataset.items.set_index("item")["item_id"]
    events = pd.DataFrame({
        "user_id": (users[frame["user"].to_numpy()] if users is not None
                    else frame["user"].astype(str).to_numpy()),
        "item_id": items.loc[frame["item"].to_numpy()].to_numpy(),
        "timestamp": frame["timestamp"].to_numpy(dtype=np.int64)})
    return events.sort_values("timestamp", kind="stable").reset_index(drop=True)


def split_log(dataset: Any, cut: float) -> Log:
    """The events before the ``cut`` time quantile and those from it on."""
    events = time_ordered(dataset)
    cut_time = int(np.quantile(events["timestamp"].to_numpy(), cut))
    return split_at(events, dataset.items, cut_time)


def split_at(events: pd.DataFrame, items: pd.DataFrame, cut_time: int) -> Log:
    """``events`` (time-ordered) before ``cut_time`` and from it on; ``items``: the
    dataset's catalog, whose FIELDS a new item is posted with."""
    before = events[events["timestamp"] < cut_time].reset_index(drop=True)
    after = events[events["timestamp"] >= cut_time].reset_index(drop=True)
    after = after.assign(new_item=~after["item_id"].isin(set(before["item_id"])),
                         cold_user=~after["user_id"].isin(set(before["user_id"])))
    catalog = items[["item_id", *FIELDS]].astype(str).reset_index(drop=True)
    return Log(before, after, catalog, cut_time)


def before_dataset(log: Log, folder: Path) -> Path:
    """The events before the cut and the catalog of the items seen before it, saved as
    a dataset modrec loads by path."""
    from modrec.data.dataset import build_dataset

    seen = log.catalog[log.catalog["item_id"].isin(set(log.before["item_id"]))]
    dataset = build_dataset("ml-100k-before-cut", log.before["user_id"].to_numpy(),
                            log.before["item_id"].to_numpy(),
                            timestamps=log.before["timestamp"].to_numpy(),
                            item_table=seen.reset_index(drop=True),
                            provenance={"source": "benchmarks/replay.py",
                                        "cut_time": log.cut_time})
    dataset.save(folder)
    return folder


def initial_run(data: Path, out: Path, encoders: list[str],
                overrides: list[str]) -> tuple[Path, float]:
    """``modrec embed --encoder ENCODERS`` on the before-cut dataset, then one SASRec run
    with an ID+content tower on them (reused when it exists); returns it and its
    seconds."""
    from modrec.config import build_config
    from modrec.content import EmbeddingStore, embed
    from modrec.data import load_dataset
    from modrec.train import train

    if (out / "model.pt").exists():
        return out, float("nan")
    started = time.perf_counter()
    dataset = load_dataset(str(data))
    embed(dataset, encoders, EmbeddingStore.for_dataset(dataset), progress=False)
    config = build_config(str(data), "sasrec", overrides=[
        "model.item_tower=id+content", f"model.encoders={json.dumps(encoders)}",
        *overrides])
    return train(config, out, progress=False), time.perf_counter() - started


def validation(run: Path) -> str:
    """Where the run's validation NDCG@10 peaked, and whether it was still rising at the
    end (then later retrains also gain from the extra epochs, not only from new data)."""
    scores = [json.loads(line)["valid"]["ndcg@10"]
              for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    best = int(np.argmax(scores))
    return (f"validation NDCG@10 {scores[best]:.4f} at epoch {best + 1} of {len(scores)}"
            + (" (still rising when training stopped)" if best >= len(scores) - 2 else ""))


# ---- the replay ------------------------------------------------------------------------
@dataclass
class Result:
    variant: str
    hits: list[int] = field(default_factory=list)
    ndcg: list[float] = field(default_factory=list)
    ranks: list[int] = field(default_factory=list)  # from 0 in the top `deep`; -1: below
    replay_s: float = 0.0  # the replay's own time, retraining and reloading left out
    retrain_s: list[float] = field(default_factory=list)  # embed + train, each
    reload_s: list[float] = field(default_factory=list)
    posted_items: int = 0
    commands: list[str] = field(default_factory=list)

    def numbers(self) -> dict[str, Any]:
        return {"variant": self.variant, "hits": self.hits, "ndcg": self.ndcg,
                "ranks": self.ranks, "posted_items": self.posted_items}


def call(port: int, path: str, body: dict[str, Any]) -> Any:
    status, reply = request(port, "POST", path, body, timeout=600)
    if status != 200:
        raise RuntimeError(f"POST {path} answered {status}: {reply}")
    return reply


def score(port: int, user: str, item: str, deep: int) -> tuple[int, float, int]:
    """(hit, NDCG@10, rank) of ``item`` in the service's top 10 for ``user``; the rank
    (from 0) is looked for in the top ``deep`` (-1: below), whose first 10 are the top
    10 (exact search: a longer list only extends a shorter one)."""
    top = [row["item_id"] for row in call(port, "/v1/recommend",
                                          {"user_id": user, "k": max(K, deep)})["items"]]
    rank = top.index(item) if item in top else -1
    if not 0 <= rank < K:
        return 0, 0.0, rank
    return 1, 1.0 / math.log2(rank + 2), rank


def modrec(args: list[str]) -> str:
    """Run ``modrec ARGS`` (this checkout's src); returns the command as a user types it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    subprocess.run([sys.executable, "-m", "modrec", *args], check=True, env=env,
                   cwd=ROOT, stdout=subprocess.DEVNULL)
    return shlex.join(["modrec", *args])


def retrain(port: int, state: Path, current: Path, out: Path, epochs: int,
            encoders: list[str], result: Result) -> Path:
    """The learning loop once: embed the state's catalog, train from it starting at
    ``current``, reload the service to the new run."""
    started = time.perf_counter()
    commands = [modrec(["embed", "-d", str(state), "--encoder", ",".join(encoders),
                        "--no-progress"]),
                modrec(["train", "-d", str(state), "--init-from", str(current), "--epochs",
                        str(epochs), "--out", str(out), "--no-progress"])]
    result.retrain_s.append(time.perf_counter() - started)
    started = time.perf_counter()
    call(port, "/v1/admin/reload", {"run_dir": str(out)})
    result.reload_s.append(time.perf_counter() - started)
    if not result.commands:
        result.commands = [*commands, f"POST /v1/admin/reload {{\"run_dir\": \"{out}\"}}"]
    return out


def replay(run: Path, log: Log, variant: str, workdir: Path, *, encoders: list[str],
           retrain_epochs: int = 2, tenths: int = 10, deep: int = 100) -> Result:
    """Replay ``log.after`` through a service on a new state seeded from ``run``."""
    folder = workdir / f"variant-{variant}"
    (folder / "media").mkdir(parents=True, exist_ok=True)
    state = folder / "state.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{state}{suffix}").unlink(missing_ok=True)
    live, posted = variant in ("b", "c"), set[str]()
    # MiniLM loads at start-up where items will be posted, not in the first item's time
    server = serve(run, folder, state, *(["--load-encoders"] if live else []))
    server.start()
    result, current = Result(variant), run
    fields = log.catalog.set_index("item_id")
    n = len(log.after)
    boundaries = {n * t // tenths for t in range(1, tenths)} if variant == "c" else set()
    try:
        started = time.perf_counter()
        for i, event in enumerate(log.after.itertuples(index=False)):
            if i in boundaries:
                result.replay_s += time.perf_counter() - started
                current = retrain(server.port, state, current, folder / f"run-{i}",
                                  retrain_epochs, encoders, result)
                started = time.perf_counter()
            user, item = str(event.user_id), str(event.item_id)
            if live and event.new_item and item not in posted:
                row = fields.loc[item]
                call(server.port, "/v1/items", {"items": [
                    {"item_id": item, **{c: row[c] for c in FIELDS if row[c]}}]})
                posted.add(item)
            hit, gain, rank = score(server.port, user, item, deep)
            result.hits.append(hit)
            result.ndcg.append(gain)
            result.ranks.append(rank)
            call(server.port, "/v1/events", {"events": [
                {"user_id": user, "item_id": item, "timestamp": int(event.timestamp)}]})
        result.replay_s += time.perf_counter() - started
    finally:
        server.stop()
    result.posted_items = len(posted)
    return result


# ---- the report ------------------------------------------------------------------------
def summary(result: Result, after: pd.DataFrame) -> dict[str, Any]:
    hits, ndcg = np.asarray(result.hits), np.asarray(result.ndcg)
    new = after["new_item"].to_numpy()[:len(hits)]
    warm = ~after["cold_user"].to_numpy()[:len(hits)]

    def pair(mask: np.ndarray) -> tuple[float, float, int]:
        return ((float(hits[mask].mean()), float(ndcg[mask].mean()), int(mask.sum()))
                if mask.any() else (float("nan"), float("nan"), 0))

    ranks = np.asarray(result.ranks)
    return {"all": pair(np.ones_like(new)), "new": pair(new), "rest": pair(~new),
            "warm": pair(warm), "events_s": len(hits) / max(result.replay_s, 1e-9),
            "new_deep": float((ranks[new] >= 0).mean()) if new.any() else float("nan")}


def plot(results: list[Result], path: Path, window: int) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(8, 4))
    for result in results:
        series = pd.Series(result.ndcg).rolling(window, min_periods=1).mean()
        ax.plot(np.arange(1, len(series) + 1), series, label=f"({result.variant}) "
                f"{VARIANTS[result.variant]}")
    ax.set_xlabel("replayed event (time order, after the cut)")
    ax.set_ylabel(f"prequential NDCG@10 (mean of the last {window})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def report(results: list[Result], log: Log, made: list[str], args: argparse.Namespace,
           plotted: bool) -> str:
    after = log.after.iloc[:len(results[0].hits)]
    rows, sums = [], {}
    for result in results:
        s = sums[result.variant] = summary(result, log.after)
        retrain = (f"{np.mean(result.retrain_s):.0f} s x {len(result.retrain_s)} "
                   f"(reload {np.mean(result.reload_s):.1f} s)" if result.retrain_s else "-")
        rows.append([f"({result.variant}) {VARIANTS[result.variant]}", s["all"][2],
                     s["all"][0], s["all"][1], s["new"][0], s["new"][1], s["rest"][0],
                     s["rest"][1], s["warm"][1], s["new_deep"], f"{s['events_s']:.1f}",
                     retrain])
    table = markdown_table(["variant", "events", "HR@10", "NDCG@10", "HR@10 new items",
                            "NDCG@10 new items", "HR@10 rest", "NDCG@10 rest",
                            "NDCG@10 warm users",
                            f"new-item targets in the top {args.deep}", "replay events/s",
                            "retrain (embed + train) each"], rows)
    command = shlex.join(["python", "benchmarks/replay.py", *sys.argv[1:]])
    verdicts = targets(sums)
    lines = "\n".join(f"- {line}" for line in made)
    picture = (f"\n\n![prequential NDCG@10 over the replay]({args.section}-ml-100k.png)"
               if plotted else "")
    retrain_commands = next((r.commands for r in results if r.commands), [])
    return f"""## Replay of ml-100k through the service (`benchmarks/replay.py`)

`{command}` on {machine()}; load average when it ended: \
{' '.join(Path('/proc/loadavg').read_text().split()[:3])} (the machine's 2 cores are \
shared with other developers' jobs: events/s is only comparable within this table).

{lines}
- replayed: the first {len(after):,} of the {len(log.after):,} events after the cut \
({int(after['new_item'].sum()):,} on items first seen after the cut, \
{after['cold_user'].mean() * 100:.1f}% by users first seen after the cut, who are kept \
and answered from popularity until their first event); per event: POST /v1/items (b, c: \
the item's first appearance), POST /v1/recommend k=10 (seen items excluded; ml-100k has \
no re-watches), POST /v1/events, one request each, sequentially
- (c) waits for each retrain: {'; '.join(f'`{c}`' for c in retrain_commands) or '-'}

{table}

"new items": events whose item first appeared after the cut ((a) cannot recommend them: \
0 by construction); "rest": the other events; "warm users": users seen before the cut. \
Replay events/s leaves the retraining and reloading out.

Targets: {verdicts}{picture}
"""


def targets(sums: dict[str, dict[str, Any]]) -> str:
    parts = []
    if "a" in sums and "b" in sums:
        a, b = sums["a"]["new"][1], sums["b"]["new"][1]
        parts.append(f"(b) above (a) on new-item events: {'met' if b > a else 'MISSED'} "
                     f"(NDCG@10 {b:.4f} vs {a:.4f})")
    if "b" in sums and "c" in sums:
        b, c = sums["b"]["all"][1], sums["c"]["all"][1]
        parts.append(f"(c) >= 1.05 x (b) overall NDCG@10: "
                     f"{'met' if c >= 1.05 * b else 'MISSED'} ({c:.4f} vs {b:.4f}, "
                     f"{c / b:.2f}x)" if b > 0 else "(c) vs (b): (b) scored 0")
    return "; ".join(parts) + "."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default=str(WORK))
    parser.add_argument("--cut", type=float, default=0.7, help="time quantile of the cut")
    parser.add_argument("--events", type=int, default=0,
                        help="replay only the first N events after the cut (0: all)")
    parser.add_argument("--variants", default="a,b,c")
    parser.add_argument("--epochs", type=int, default=10,
                        help="of the initial run (early stopping on validation)")
    parser.add_argument("--retrain-epochs", type=int, default=2)
    parser.add_argument("--parts", type=int, default=10, help="(c) retrains after each "
                        "of this many equal parts of the replay but the last")
    parser.add_argument("--encoders", default=ENCODERS, help="the content tower's "
                        "encoders (comma-separated `modrec embed --encoder` specs) in the "
                        "initial run and every retrain")
    # 0 by default: with genre and year tags beside the titles, dropping half the ID
    # vectors in training lowered new-item HR@10 from 0.033 to 0.004 (an offline replay
    # of the same log by a diagnostic script not kept here) and overall NDCG@10 as
    # well; the tags place a new item without it.
    parser.add_argument("--id-dropout", type=float, default=0.0, help="model.id_dropout "
                        "of the initial run: the share of items whose ID vector training "
                        "drops, so that the content path alone (a new item's) is trained")
    parser.add_argument("--deep", type=int, default=100, help="also look for the target "
                        "in the top DEEP (the rank a miss had)")
    parser.add_argument("--section", default=SECTION, help="of docs/benchmarks.md; the "
                        "plot is docs/SECTION-ml-100k.png")
    parser.add_argument("--doc", default=str(ROOT / "docs" / "benchmarks.md"))
    args = parser.parse_args()
    from modrec.data import load_dataset

    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MODREC_EMBEDDINGS_DIR", str(workdir / "embeddings"))
    log = split_log(load_dataset("ml-100k"), args.cut)
    if args.events:
        log.after = log.after.iloc[:args.events].reset_index(drop=True)
    data = before_dataset(log, workdir / "before-cut")
    encoders = [e.strip() for e in args.encoders.split(",") if e.strip()]
    run, seconds = initial_run(data, workdir / "initial", encoders, [
        f"train.epochs={args.epochs}", f"model.id_dropout={args.id_dropout:g}"])
    made = [f"before the cut (time quantile {args.cut:g}, t < {log.cut_time}): "
            f"{len(log.before):,} events, {log.before['item_id'].nunique():,} items; "
            f"initial run: SASRec, `model.item_tower=id+content`, "
            f"`model.encoders={json.dumps(encoders)}`, "
            f"`model.id_dropout={args.id_dropout:g}`, up to {args.epochs} epochs, "
            f"best on validation ({seconds:.0f} s with embedding; {run}): "
            f"{validation(run)}"]
    results = []
    for variant in args.variants.split(","):
        results.append(replay(run, log, variant, workdir,
                              encoders=encoders, retrain_epochs=args.retrain_epochs,
                              tenths=args.parts,
                              deep=args.deep))
        print(json.dumps({"variant": variant, **summary(results[-1], log.after)}),
              flush=True)
    doc = Path(args.doc)
    plotted = plot(results, doc.parent / f"{args.section}-ml-100k.png", 500)
    body = report(results, log, made, args, plotted)
    print(body)
    write_section(doc, args.section, body)


if __name__ == "__main__":
    main()
