"""``python benchmarks/bench.py DATASET --models a,b``: train model presets to early
stopping and write the table (test metrics at the best validation epoch, epochs, wall
time) and a chart of validation NDCG@10 against training time into a Markdown report.

Each preset runs exactly as ``modrec train -d DATASET -m PRESET`` would, into
``RUNS/DATASET-PRESET``; a finished run directory is reused while its settings are the
preset's (delete it to retrain), and an interrupted one, or one whose preset has since
changed only its training settings (patience, epochs), resumes.

Training every preset takes hours, more than one sitting on a small machine, so each
finished run is also kept in a record folder (``benchmarks/records`` by default, under
version control): its ``config.json``, ``results.json`` and ``metrics.jsonl``, without
weights, and where and when it ran. A preset with no run directory but a record of its
current settings is reported from the record; delete the record to train it again.
"""

from __future__ import annotations

from modrec import threads as _threads  # noqa: F401  first: its OpenMP policy, before torch

# isort: split

import argparse
import json
import logging
import shutil
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kit import PUBLISHED, git_revision, machine, markdown_table, write_section

from modrec.config import RunConfig, build_config, config_changes, load_config
from modrec.train import train

log = logging.getLogger(__name__)

METRICS = ("hr@10", "ndcg@10", "hr@50", "ndcg@50", "hr@200", "ndcg@200", "mrr")


RECORD_FILES = ("config.json", "results.json", "metrics.jsonl")


def finished_as(run: Path, config: RunConfig) -> bool:
    """Whether ``run`` holds a finished run made with exactly ``config``'s settings."""
    return (run / "results.json").exists() and not config_changes(
        load_config(run / "config.json"), config)


def same_results(run: Path, record: Path) -> bool:
    return (record / "results.json").exists() and (
        (run / "results.json").read_bytes() == (record / "results.json").read_bytes())


def keep_record(run: Path, record: Path) -> None:
    """Copy a finished run's settings, per-epoch metrics and results (not its weights)
    into ``record``, with the host, date and code revision it was recorded from."""
    record.mkdir(parents=True, exist_ok=True)
    for name in RECORD_FILES:
        shutil.copyfile(run / name, record / name)
    (record / "recorded.json").write_text(json.dumps({
        "machine": machine(), "recorded_at": datetime.now(UTC).isoformat(
            timespec="seconds"), "revision": git_revision(), "run_dir": str(run)},
        indent=2) + "\n")


def run_presets(dataset: str, presets: list[str], runs: Path, records: Path | None = None,
                progress: bool = True, train_missing: bool = True) -> list[dict[str, Any]]:
    """Train (or reuse) each preset; one row of results per preset. With
    ``train_missing=False`` a preset with neither a finished run nor a record of its
    current settings is left out rather than trained."""
    rows = []
    for preset in presets:
        out = runs / f"{dataset}-{preset}"
        record = records / f"{dataset}-{preset}" if records is not None else None
        config = build_config(dataset, preset)
        source = out
        if finished_as(out, config):
            pass
        elif record is not None and finished_as(record, config) and not out.exists():
            log.info("bench: %s on %s from the record %s (delete it to retrain)", preset,
                     dataset, record)
            source = record
        elif not train_missing:
            log.info("bench: %s on %s has no finished run or record; left out", preset,
                     dataset)
            continue
        else:
            # An unfinished run, or one whose preset changed, resumes: that continues it
            # under new training settings (recorded in its config.json) and refuses
            # other changes with a message.
            log.info("bench: training %s on %s -> %s", preset, dataset, out)
            train(config, out, resume=True, progress=progress)
        # Re-recording an unchanged run would only move its date.
        if record is not None and source == out and not same_results(out, record):
            keep_record(out, record)
        results = json.loads((source / "results.json").read_text())
        curve = [(r["train_seconds"], r["valid"]["ndcg@10"])
                 for r in map(json.loads, (source / "metrics.jsonl").read_text().splitlines())
                 if "valid" in r and "train_seconds" in r]
        # By now the record, where there is one, holds this run and where it ran.
        recorded = (json.loads((record / "recorded.json").read_text())
                    if record is not None else {})
        host = recorded.get("machine", machine())
        when = str(recorded.get("recorded_at", datetime.now(UTC).isoformat()))[:10]
        rows.append({"preset": preset, "run_dir": str(source), "curve": curve,
                     "machine": host, "date": when,
                     **{k: results[k] for k in (*METRICS, "best_epoch", "epochs",
                                                "train_seconds", "protocol")}})
    return rows


def plot_curves(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for row in rows:
        if len(row["curve"]) > 1:
            seconds, ndcg = zip(*row["curve"], strict=True)
            ax.plot([s / 60 for s in seconds], ndcg, label=row["preset"])
    ax.set_xlabel("training time (minutes, excluding evaluation)")
    ax.set_ylabel("validation NDCG@10")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if ax.get_lines():
        ax.legend()
    else:  # e.g. only the popularity baseline, which has no training curve
        ax.text(0.5, 0.5, "no training curves", ha="center", transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def results_table(dataset: str, rows: list[dict[str, Any]]) -> str:
    published = PUBLISHED.get(dataset, {})
    table = []
    for row in rows:
        table.append([row["preset"], *(row[k] for k in METRICS), row["best_epoch"],
                      row["epochs"], f"{row['train_seconds'] / 60:.1f}"])
        pub = published.get(row["preset"])
        if pub is not None:
            table.append([f"{row['preset']} (published)",
                          *("–" if v is None else f"{v:.4f}" for v in pub), "–", "–", "–",
                          "–"])
    return markdown_table(["model", "HR@10", "NDCG@10", "HR@50", "NDCG@50", "HR@200",
                           "NDCG@200", "MRR", "best epoch", "epochs", "train min"], table)


def bench(dataset: str, presets: list[str], runs: Path = Path("runs/bench"),
          doc: Path = Path("docs/benchmarks.md"),
          records: Path | None = Path("benchmarks/records"),
          progress: bool = True, train_missing: bool = True) -> dict[str, Any]:
    """Train the presets, write the report section and chart, return the rows."""
    rows = run_presets(dataset, presets, runs, records, progress, train_missing)
    if not rows:
        raise ValueError(f"none of {', '.join(presets)} has a finished run in {runs} or a "
                         f"record in {records}; run `python benchmarks/bench.py {dataset}` "
                         "without --no-train to train them")
    done = [row["preset"] for row in rows]
    missing = [p for p in presets if p not in done]
    not_run = (f"\n\nNot run yet with their current settings, so left out: "
               f"{', '.join(missing)} (`python benchmarks/bench.py {dataset} --models "
               f"{','.join(missing)}` trains them).") if missing else ""
    machines = sorted({row["machine"] for row in rows})
    if len(machines) == 1:
        where = f"Machine: {machines[0]}."
    else:
        where = "Machines: " + "; ".join(
            f"{', '.join(r['preset'] for r in rows if r['machine'] == m)} on {m}"
            for m in machines) + "."
    dates = sorted({row["date"] for row in rows})
    where += (f" Trained {dates[0]}." if len(dates) == 1 else
              f" Trained {dates[0]} to {dates[-1]}.")
    if records is not None:
        where += (f" Each run's settings, per-epoch validation metrics and results are "
                  f"kept in `{records}/{dataset}-PRESET/`.")
    name = f"bench-{dataset}-{'-'.join(presets)}"
    chart = doc.parent / f"{name}.png"
    doc.parent.mkdir(parents=True, exist_ok=True)
    plot_curves(rows, chart, f"{dataset}: validation NDCG@10 while training")
    write_section(doc, name, f"""
## {dataset}: {', '.join(presets)} trained to early stopping

Command: `python benchmarks/bench.py {dataset} --models {','.join(presets)}` (each row is
`modrec train -d {dataset} -m PRESET`, settings in `configs/{dataset}/PRESET.yaml`).
Protocol: {rows[0]['protocol']}; test metrics at the epoch with the best validation
NDCG@10 (selected on validation, never on test). {where}

{results_table(dataset, rows)}{not_run}

Published rows: the HSTU repository's README. Its SASRec, HSTU and HSTU-large rows
come from its own trainer (same protocol, but no validation split: not selected on
held-out data); its BERT4Rec and GRU4Rec rows are quoted from Klenitskiy & Vasilev
(RecSys 2023), who select on validation, train with the cross-entropy over all items
and use the ML-1M preprocessing of the SASRec and BERT4Rec papers (3,416 movies: our
`ml-1m-sasrec`).

![validation NDCG@10 against training time]({chart.name})
""")
    return {"dataset": dataset, "doc": str(doc), "chart": str(chart),
            "rows": [{k: v for k, v in r.items() if k != "curve"} for r in rows]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="train presets to early stopping and write "
                                     "the report")
    parser.add_argument("dataset")
    parser.add_argument("--models", default="sasrec,gru4rec,bert4rec,hstu,hstu-large",
                        help="comma-separated presets (configs/<dataset>/<preset>.yaml)")
    parser.add_argument("--runs", default="runs/bench", help="where the run directories go")
    parser.add_argument("--doc", default="docs/benchmarks.md", help="the Markdown report")
    parser.add_argument("--records", default="benchmarks/records",
                        help="where finished runs are kept without weights, and reused from "
                        "when their run directory is gone ('none': keep no records)")
    parser.add_argument("--no-train", action="store_true",
                        help="report only presets with a finished run or record; train nothing")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    records = None if args.records == "none" else Path(args.records)
    try:
        result = bench(args.dataset, args.models.split(","), Path(args.runs), Path(args.doc),
                       records, progress=not args.no_progress, train_missing=not args.no_train)
    except (ValueError, FileNotFoundError) as err:
        print(f"bench: error: {err}", file=sys.stderr)
        return 2
    for row in result["rows"]:
        print(f"  {row['preset']:<14} HR@10 {row['hr@10']:.4f}  NDCG@10 {row['ndcg@10']:.4f}"
              f"  epochs {row['epochs']}  {row['train_seconds'] / 60:.1f} min")
    print(f"report: {result['doc']}  chart: {result['chart']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
