"""``modrec train`` and ``modrec refit``: a run folder trained, then its test results."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from modrec.cli.common import (
    Subparsers,
    at_least,
    columns,
    dataset_arguments,
    dataset_source,
    log,
    no_progress_argument,
    print_metrics,
    removed_on_failure,
    threads_argument,
)

CONTINUE = "continue it with the same command plus --resume"


def add_parsers(sub: Subparsers) -> None:
    _add_train(sub)
    _add_refit(sub)


def _add_train(sub: Subparsers) -> None:
    p = sub.add_parser("train", help="train a model and evaluate it with full ranking")
    dataset_arguments(p, required=False)
    p.add_argument("-m", "--model", help="popularity, gru4rec, sasrec, bert4rec, hstu, or a "
                   "preset from configs/<dataset>/ (e.g. hstu-large)")
    p.add_argument("--config", help="YAML file layered over configs/<dataset>/<model>.yaml")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a setting, e.g. --set train.lr=3e-4 (repeatable)")
    p.add_argument("--epochs", type=at_least(1),
                   help="maximum epochs (early stopping may end sooner)")
    p.add_argument("--split", choices=["loo", "temporal", "cold-items", "loo-no-valid"],
                   help="evaluation split (default: the config's, leave-one-out)")
    p.add_argument("--item-tower", choices=["id", "content", "id+content"],
                   help="item representation; content needs `modrec embed` first")
    p.add_argument("--encoder", help="comma-separated stored embeddings for the item tower")
    p.add_argument("--out", help="run directory (default runs/<dataset>-<model>)")
    p.add_argument("--resume", action="store_true", help="continue from checkpoint.pt in --out")
    p.add_argument("--init-from", metavar="RUN", help="start from this run's weights and "
                   "model settings (-m may be left out; items matched by id, new items "
                   "fresh, a fresh optimiser), e.g. to train the served run further on "
                   "-d STATE.db, the service's events")
    no_progress_argument(p)
    threads_argument(p)
    p.set_defaults(func=cmd_train)


def _overrides(args: argparse.Namespace) -> list[str]:
    """The options that are settings, as ``--set`` overrides after the given ones."""
    overrides = list(args.set or [])
    if args.epochs is not None:
        overrides.append(f"train.epochs={args.epochs}")
    if args.format is not None:
        overrides.append(f"data.format={args.format}")
    if args.columns is not None:
        overrides.append(f"data.columns={json.dumps(columns(args.columns))}")
    if args.split is not None:
        overrides.append(f"data.split={args.split}")
    if args.item_tower is not None:
        overrides.append(f"model.item_tower={args.item_tower}")
    if args.encoder is not None:
        overrides.append(f"model.encoders={json.dumps(args.encoder.split(','))}")
    if args.init_from is not None:  # absolute: the run records where it started from
        overrides.append(f"train.init_from={json.dumps(str(Path(args.init_from).resolve()))}")
    return overrides


def cmd_train(args: argparse.Namespace) -> dict[str, Any]:
    from modrec.config import build_config
    from modrec.train import train

    overrides, model = _overrides(args), args.model
    if args.init_from is not None:
        from modrec.train.init_from import model_settings

        # the source's architecture under what is set here (-m may then be left out)
        name, settings = model_settings(args.init_from)
        if model in (None, name):
            model, overrides = name, [*settings, *overrides]
    dataset = None if args.dataset is None else dataset_source(args.dataset, args.format)
    if args.config is not None and not Path(args.config).is_file():
        raise FileNotFoundError(f"--config {args.config}: no such file")
    config = build_config(dataset, model, args.config, overrides)
    out = Path(args.out or f"runs/{Path(config.data.dataset).name}-{config.model.name}")
    log.info("training %s on %s -> %s", config.model.name, config.data.dataset, out)
    with removed_on_failure(out, _resumable, CONTINUE):
        train(config, out, resume=args.resume, progress=not args.no_progress)
    return _report_run(out, args.json)


def _add_refit(sub: Subparsers) -> None:
    p = sub.add_parser("refit", help="retrain a finished run with its validation items "
                       "added to training, for the epochs its validation chose; report test")
    p.add_argument("run_dir", help="a finished run trained with the loo split")
    p.add_argument("--out", help="run directory (default RUN_DIR-refit)")
    p.add_argument("--resume", action="store_true", help="continue from checkpoint.pt in --out")
    no_progress_argument(p)
    threads_argument(p)
    p.set_defaults(func=cmd_refit)


def cmd_refit(args: argparse.Namespace) -> dict[str, Any]:
    from modrec.train import refit

    out = Path(args.out or f"{str(args.run_dir).rstrip('/')}-refit")
    log.info("refitting %s on training plus validation items -> %s", args.run_dir, out)
    with removed_on_failure(out, _resumable, CONTINUE):
        refit(args.run_dir, out, resume=args.resume, progress=not args.no_progress)
    return _report_run(out, args.json)


def _resumable(folder: Path) -> bool:
    """--resume continues from checkpoint.pt alone (without it, it starts over)."""
    return (folder / "checkpoint.pt").exists()


def _report_run(out: Path, as_json: bool) -> dict[str, Any]:
    from modrec.runs import RunDir

    results = RunDir(out).results()
    results["run_dir"] = str(out)
    if not as_json:
        print_metrics(f"test ({results['protocol']}), epoch {results['best_epoch']}, "
                      f"selected on {results['selected_on']}:",
                      {k: v for k, v in results.items() if isinstance(v, float)})
        for part in ("warm", "cold"):
            if part in results:
                print_metrics(f"test, {part} targets ({results[part]['users']} users):",
                              results[part])
        print(f"run directory: {out}")
    return results
