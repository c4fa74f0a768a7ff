"""Importer fuzzing, long: the CI property tests' generators, run for thousands of inputs.

Every format (sequences, pairs, RecBole atomic and pre-split, CSV/TSV, Parquet,
MovieLens) meets every mutation family (truncation, wrong column counts, bad timestamps,
empty files, headers only, CRLF, a BOM, invalid UTF-8, NUL bytes, non-ASCII digits,
enormous values, blank and NaN ids, duplicate rows, a directory where a file should
be, a line of another width, and stacked combinations) through ``import_path`` (format
named or guessed) and ``load_dataset``. Printed per format and family: inputs tried,
valid loads, clean `DataFormatError`s, other exceptions and wrong answers (an error
without file, line or expectation; a valid input refused; a dataset for an input that
cannot be represented), with the first example of each kind that is not clean.

    python benchmarks/fuzz_importers.py                  # 5,950 inputs, about a minute
    python benchmarks/fuzz_importers.py --total 20000 --seed 7
    python benchmarks/fuzz_importers.py --formats pairs csv --families nul bom

Exit status 1 when any input ended in another exception or a wrong answer.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from types import ModuleType

from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

REPO = Path(__file__).resolve().parents[1]


def _fuzz_cases() -> ModuleType:
    """tests/data/fuzz_cases.py, imported by path: tests/ is not an installed package."""
    path = REPO / "tests" / "data" / "fuzz_cases.py"
    spec = importlib.util.spec_from_file_location("fuzz_cases", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["fuzz_cases"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def run_cell(fc: ModuleType, fmt: str, family: str, examples: int, seed_value: int,
             root: Path) -> tuple[Counter[str], dict[str, str]]:
    """``examples`` generated inputs of one format and family: outcome counts and the
    first example of each outcome that is not a valid load or a clean error."""
    counts: Counter[str] = Counter()
    first: dict[str, str] = {}

    @settings(max_examples=examples, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @seed(seed_value)
    @given(data=st.data())
    def body(data: st.DataObject) -> None:
        case = data.draw(fc.cases(fmt, family))
        with tempfile.TemporaryDirectory(dir=root) as tmp:
            outcome = fc.run_case(case, Path(tmp))
        counts[outcome.kind] += 1
        if outcome.kind not in ("valid", "clean") and outcome.kind not in first:
            first[outcome.kind] = f"{case.describe()}\n    -> {outcome.detail.strip()}"

    body()
    return counts, first


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--total", type=int, default=5950,
                        help="inputs in all, spread evenly over formats x families")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--formats", nargs="*")
    parser.add_argument("--families", nargs="*")
    parser.add_argument("--json", type=Path, help="also write the counts here")
    args = parser.parse_args(argv)
    fc = _fuzz_cases()
    formats = args.formats or list(fc.FORMATS)
    families = args.families or list(fc.FAMILIES)
    per_cell = max(1, math.ceil(args.total / (len(formats) * len(families))))
    command = "python benchmarks/fuzz_importers.py " + " ".join(argv or sys.argv[1:])
    print(f"$ {command.strip()}\n{per_cell} inputs per format and family, seed {args.seed}\n")

    header = f"{'format':<17} {'family':<17} {'tried':>6} {'valid':>6} {'clean':>6} " \
             f"{'other':>6} {'wrong':>6}"
    print(header)
    print("-" * len(header))
    totals: Counter[str] = Counter()
    by_format: dict[str, Counter[str]] = {}
    examples: list[str] = []
    rows = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="modrec-fuzz-") as tmp:
        for fmt in formats:
            by_format[fmt] = Counter()
            for family in families:
                counts, first = run_cell(fc, fmt, family, per_cell, args.seed, Path(tmp))
                tried = sum(counts.values())
                wrong = counts["bad_error"] + counts["bad_valid"]
                print(f"{fmt:<17} {family:<17} {tried:>6} {counts['valid']:>6} "
                      f"{counts['clean']:>6} {counts['other']:>6} {wrong:>6}", flush=True)
                totals.update(counts)
                by_format[fmt].update(counts)
                rows.append({"format": fmt, "family": family, "tried": tried, **counts})
                examples += [f"[{fmt} / {family} / {kind}] {text}" for kind, text in first.items()]
    seconds = time.perf_counter() - started

    def line(label: str, counts: Counter[str]) -> str:
        tried = sum(counts.values())
        return (f"{label:<17} {tried:>6} tried, {counts['valid']:>6} valid loads, "
                f"{counts['clean']:>6} clean DataFormatErrors, {counts['other']:>3} other "
                f"exceptions, {counts['bad_error'] + counts['bad_valid']:>3} wrong answers")

    print("\nper format:")
    for fmt, counts in by_format.items():
        print("  " + line(fmt, counts))
    print("  " + line("all", totals) + f"  ({seconds:.0f} s)")
    if examples:
        print("\nfirst example of each outcome that is not clean:")
        for text in examples:
            print("  " + text)
    if args.json:
        args.json.write_text(json.dumps({"command": command.strip(), "seed": args.seed,
                                         "seconds": round(seconds, 1), "cells": rows,
                                         "totals": dict(totals)}, indent=2))
    return 1 if totals["other"] or totals["bad_error"] or totals["bad_valid"] else 0


if __name__ == "__main__":
    sys.exit(main())
