"""``modrec <verb>``: argument parsing only; each verb calls one public function.

Every verb that reports numbers accepts ``--json`` and then prints them as one JSON
object on the last line of standard output (progress and logs go to standard error).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger("modrec")


def _columns(text: str | None) -> dict[str, str] | None:
    if not text:
        return None
    pairs = [p.split("=", 1) for p in text.split(",")]
    if any(len(p) != 2 for p in pairs):
        raise ValueError(f"--columns {text!r}: expected role=column pairs, e.g. user=uid,item=iid")
    return {role.strip(): column.strip() for role, column in pairs}


def _print_metrics(title: str, metrics: dict[str, float]) -> None:
    keys = [k for k in metrics if "@" in k or k == "mrr"]
    print(title)
    print("  " + "  ".join(f"{k:>9}" for k in keys))
    print("  " + "  ".join(f"{metrics[k]:>9.4f}" for k in keys))


def cmd_datasets(args: argparse.Namespace) -> dict[str, Any]:
    from modrec import paths
    from modrec.data import list_datasets

    rows = list_datasets()
    if not args.json:
        print(f"data directory: {paths.data_dir()}  (set MODREC_DATA_DIR to change it)")
        for row in rows:
            mark = "present" if row["present"] else "missing"
            print(f"  {row['name']:<18} {mark:<8} {row['description']}")
    return {"data_dir": str(paths.data_dir()), "datasets": rows}


def cmd_train(args: argparse.Namespace) -> dict[str, Any]:
    from modrec.train import build_config, train

    overrides = list(args.set or [])
    if args.epochs is not None:
        overrides.append(f"train.epochs={args.epochs}")
    if args.format is not None:
        overrides.append(f"data.format={args.format}")
    config = build_config(args.dataset, args.model, args.config, overrides)
    out = Path(args.out or f"runs/{Path(config.data.dataset).name}-{config.model.name}")
    log.info("training %s on %s -> %s", config.model.name, config.data.dataset, out)
    train(config, out, resume=args.resume, progress=not args.no_progress)
    results = json.loads((out / "results.json").read_text())
    results["run_dir"] = str(out)
    if not args.json:
        _print_metrics(f"test ({results['protocol']}), best epoch {results['best_epoch']}:",
                       {k: v for k, v in results.items() if isinstance(v, float)})
        print(f"run directory: {out}")
    return results


def cmd_evaluate(args: argparse.Namespace) -> dict[str, Any]:
    from modrec.eval import evaluate
    from modrec.train import load_run

    run = load_run(args.run_dir)
    max_len, batch = run.config.model.max_len, run.config.train.eval_batch_size
    valid = evaluate(run.model, run.split.valid, max_len, batch)
    test = evaluate(run.model, run.split.test, max_len, batch)
    if not args.json:
        _print_metrics(f"valid ({run.split.protocol}):", valid)
        _print_metrics("test:", test)
    return {"run_dir": str(args.run_dir), "protocol": run.split.protocol, "valid": valid,
            "test": test}


def cmd_recommend(args: argparse.Namespace) -> dict[str, Any]:
    from modrec.serve import recommend_for_user
    from modrec.train import load_run

    run = load_run(args.run_dir)
    recs = recommend_for_user(run, str(args.user), args.k)
    if not args.json:
        print(f"user {args.user}: most recent items")
        for item in recs["history_tail"]:
            print(f"    {item.get('title') or item['item_id']}")
        print(f"top {args.k} recommendations (history excluded):")
        for rank, item in enumerate(recs["items"], start=1):
            print(f"  {rank:>2}. {item.get('title') or item['item_id']}  ({item['score']:.3f})")
    return recs


def cmd_bench(args: argparse.Namespace) -> dict[str, Any]:
    from modrec.bench import bench

    result = bench(args.dataset, args.models.split(","), Path(args.runs), Path(args.doc),
                   progress=not args.no_progress)
    if not args.json:
        for row in result["rows"]:
            print(f"  {row['preset']:<12} HR@10 {row['hr@10']:.4f}  NDCG@10 {row['ndcg@10']:.4f}"
                  f"  epochs {row['epochs']}  {row['train_seconds'] / 60:.1f} min")
        print(f"report: {result['doc']}  chart: {result['chart']}")
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="modrec", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="verb", required=True)

    p = sub.add_parser("datasets", help="list named datasets and whether each is present")
    p.set_defaults(func=cmd_datasets)

    p = sub.add_parser("train", help="train a model and evaluate it with full ranking")
    p.add_argument("-d", "--dataset", help="named dataset or path to a file/folder")
    p.add_argument("-m", "--model", help="popularity, gru4rec, sasrec, bert4rec, hstu, or a "
                   "preset from configs/<dataset>/ (e.g. hstu-large)")
    p.add_argument("--config", help="YAML file layered over configs/<dataset>/<model>.yaml")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a setting, e.g. --set train.lr=3e-4 (repeatable)")
    p.add_argument("--epochs", type=int, help="maximum epochs (early stopping may end sooner)")
    p.add_argument("--format", help="importer format of a path: sequences, pairs, recbole, "
                   "csv, parquet, movielens")
    p.add_argument("--out", help="run directory (default runs/<dataset>-<model>)")
    p.add_argument("--resume", action="store_true", help="continue from checkpoint.pt in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="re-evaluate a run's best weights")
    p.add_argument("run_dir")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("recommend", help="top-k items for one user of a run's dataset")
    p.add_argument("run_dir")
    p.add_argument("--user", required=True, help="the user's id as in the source data")
    p.add_argument("-k", type=int, default=10)
    p.set_defaults(func=cmd_recommend)

    p = sub.add_parser("bench", help="train presets to early stopping and write the report")
    p.add_argument("dataset")
    p.add_argument("--models", default="sasrec,gru4rec,bert4rec,hstu,hstu-large",
                   help="comma-separated presets (configs/<dataset>/<preset>.yaml)")
    p.add_argument("--runs", default="runs/bench", help="where the run directories go")
    p.add_argument("--doc", default="docs/benchmarks.md", help="the Markdown report")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_bench)

    for verb in sub.choices.values():
        verb.add_argument("--json", action="store_true",
                          help="print the results as one JSON object on the last line")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        result = args.func(args)
    except (ValueError, KeyError, FileNotFoundError, FileExistsError, RuntimeError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"modrec {args.verb}: error: {message}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
