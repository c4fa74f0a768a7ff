"""``modrec evaluate``, ``modrec recommend`` and ``modrec export``: what a trained run
folder gives: its metrics again, one user's recommendations, a bundle for serving."""

from __future__ import annotations

import argparse
import json
from typing import Any

from modrec.cli.common import Subparsers, print_metrics, threads_argument
from modrec.errors import UsageError


def add_parsers(sub: Subparsers) -> None:
    _add_evaluate(sub)
    _add_recommend(sub)
    _add_export(sub)


def _add_evaluate(sub: Subparsers) -> None:
    p = sub.add_parser("evaluate", help="re-evaluate a run's best weights")
    p.add_argument("run_dir")
    threads_argument(p)
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args: argparse.Namespace) -> dict[str, Any]:
    from modrec.runs import load_run

    run = load_run(args.run_dir)
    valid = None if run.split.valid is None else run.evaluate(run.split.valid)
    test = run.evaluate(run.split.test)
    if not args.json:
        print(f"protocol: {run.split.protocol}")
        if valid is not None:
            print_metrics("valid:", valid)
        print_metrics("test:", test)
    return {"run_dir": str(args.run_dir), "protocol": run.split.protocol, "valid": valid,
            "test": test}


def _add_recommend(sub: Subparsers) -> None:
    p = sub.add_parser("recommend", help="top-k items for one user of a run's dataset")
    p.add_argument("run_dir")
    p.add_argument("--user", required=True, help="the user's id as in the source data")
    p.add_argument("-k", type=int, default=10)
    threads_argument(p)
    p.set_defaults(func=cmd_recommend)


def cmd_recommend(args: argparse.Namespace) -> dict[str, Any]:
    from modrec.serve.recommender import Query, Recommender

    if args.k < 1:
        raise UsageError(f"k must be at least 1, got {args.k}")
    recommender = Recommender.from_run(args.run_dir)
    dataset = recommender.run.dataset
    sequences = dataset.sequences()
    user = dataset.user_index(str(args.user))
    history = sequences[user].astype("int64")
    times = None if sequences.times is None else sequences.times_of(user)
    [answer] = recommender.recommend([Query(history, times, args.k, history, "user")])
    recs: dict[str, Any] = {"user_id": str(args.user), "history_length": int(len(history)),
            "history_tail": [recommender.catalog.describe(int(i)) for i in history[-5:][::-1]],
            "items": answer.items}
    if not args.json:
        print(f"user {args.user}: most recent items")
        for item in recs["history_tail"]:
            print(f"    {item.get('title') or item['item_id']}")
        print(f"top {args.k} recommendations (history excluded):")
        for rank, item in enumerate(answer.items, start=1):
            print(f"  {rank:>2}. {item.get('title') or item['item_id']}  ({item['score']:.3f})")
    return recs


def _add_export(sub: Subparsers) -> None:
    p = sub.add_parser("export", help="a self-contained bundle of a run for serving")
    p.add_argument("run_dir")
    p.add_argument("--out", required=True, help="the bundle folder (new or empty)")
    p.add_argument("--unfinished", action="store_true", help="export a run whose training "
                   "has not finished (its best weights so far; bundle.json records it)")
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> dict[str, Any]:
    from modrec.runs import export_bundle

    out = export_bundle(args.run_dir, args.out, unfinished=args.unfinished)
    bundle = json.loads((out / "bundle.json").read_text())
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    if not args.json:
        print(f"bundle: {out} ({size / 1e6:.1f} MB; embeddings: "
              f"{', '.join(bundle['embeddings']) or 'none'})")
        if not bundle["finished"]:
            print(f"unfinished: training had reached epoch {bundle['epoch_reached']}; the "
                  "bundle records it, and loading it warns")
        print(f"serve it: modrec serve {out}")
    return {"bundle": str(out), "bytes": size, **bundle}
