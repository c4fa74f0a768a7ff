"""``modrec datasets``: the named datasets and whether each is here."""

from __future__ import annotations

import argparse
from typing import Any

from modrec.cli.common import Subparsers


def add_parsers(sub: Subparsers) -> None:
    p = sub.add_parser("datasets", help="list named datasets and whether each is present")
    p.set_defaults(func=cmd_datasets)


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
