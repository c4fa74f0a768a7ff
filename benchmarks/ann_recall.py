"""Retrieval alone: exact, HNSW, IVF-Flat and IVF-PQ search over one catalog.

    python benchmarks/ann_recall.py [--vectors random|model:RUN_DIR|text:FILE]
                                    [--kinds exact,hnsw,ivf,ivfpq] [--items 1000000]
                                    [--dim 64] [--queries 1000] [--k 100]
                                    [--ef-search 128,256,512] [--m 32] [--ef-construction 200]
                                    [--nprobe 8,16,32,64] [--nlist N] [--pq-m M]
                                    [--rerank 4] [--cache DIR] [--section NAME]

Where the vectors come from (``--vectors``, see ``benchmarks/ann_vectors.py``): random
unit vectors, the hardest case for an approximate index (no clusters to exploit, every
direction equally likely); a trained run's item vectors; or sentence embeddings of real
text. Every index is `modrec.serve.index.ItemIndex`, the code path the service runs, so
the times include its exclusion handling (with nothing excluded). Measured in one run, on
one machine, per kind:

- build time (every core), and the resident memory the index added to the process
  (``VmRSS`` after the build less before it; the catalog matrix itself was resident
  before, as it is in the service, which keeps its item matrix);
- top-k recall against exact search over the same queries, per ``ef_search`` (HNSW) or
  ``nprobe`` (IVF), one query per call;
- queries/s one query per call, 1 OpenMP thread (the service's setting: one user per
  request), and in one batched call with every core.

``--cache`` keeps built HNSW/IVF indexes for later runs (another ``--k`` or knob).
Prints a Markdown table, then one JSON line with every number, and writes the table to
docs/benchmarks.md under ``--section`` unless ``--no-write``.
"""

from __future__ import annotations

from modrec import threads as _threads  # noqa: F401  first: its OpenMP policy, before torch

# isort: split

import argparse
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from ann_vectors import catalog_and_queries
from kit import ROOT, cpu_name, write_section

from modrec.serve.index import IndexConfig, ItemIndex

log = logging.getLogger("ann_recall")
KNOB = {"exact": None, "hnsw": "ef_search", "ivf": "nprobe", "ivfpq": "nprobe"}


def rss_mib() -> float:
    """Resident memory of this process now (VmRSS)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def timed(index: ItemIndex, queries: np.ndarray, k: int, knob: int | None,
          batched: bool) -> tuple[np.ndarray, float]:
    """The item indices found (Q, k) and the queries answered per second."""
    if index.kind in ("ivf", "ivfpq") and knob is not None:
        index.config.nprobe = knob
    ef = knob if index.kind == "hnsw" else None
    start = time.perf_counter()
    if batched:
        index.config.threads = None  # one caller, one large batch: every core
        results = index.search(queries, k, ef_search=ef)
    else:
        index.config.threads = 1  # the service's setting
        results = [index.search(queries[i:i + 1], k, ef_search=ef)[0]
                   for i in range(len(queries))]
    seconds = time.perf_counter() - start
    return np.stack([items for items, _ in results]), len(queries) / seconds


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(np.intersect1d(f, t)) / k
                          for f, t in zip(found, truth, strict=True)]))


def build(kind: str, items: np.ndarray, args: argparse.Namespace,
          name: str) -> tuple[ItemIndex, float | None, float]:
    """The index (loaded from ``--cache`` when there), its build seconds (None when
    loaded) and the resident MiB it added."""
    ivf, pq = kind in ("ivf", "ivfpq"), kind == "ivfpq"  # the settings each kind takes
    config = IndexConfig(kind=kind, hnsw_m=args.m,  # type: ignore[arg-type]
                         ef_construction=args.ef_construction,
                         nlist=args.nlist if ivf else None, pq_m=args.pq_m if pq else None,
                         rerank=args.rerank if pq else None)
    before = rss_mib()
    start = time.perf_counter()
    cached = None if args.cache is None or kind == "exact" else args.cache / (
        f"{name}-{kind}-m{args.m}-efc{args.ef_construction}-nlist{args.nlist}"
        f"-pq{args.pq_m}.faiss")
    if cached is not None and cached.exists():
        index = ItemIndex.load(cached, config, items)
        log.info("%s loaded from %s", kind, cached)
        return index, None, rss_mib() - before
    index = ItemIndex(items, config)
    seconds = time.perf_counter() - start
    log.info("%s built in %.1f s: %s", kind, seconds, index.settings())
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        index.save(cached)
    return index, seconds, rss_mib() - before


def measure(kind: str, items: np.ndarray, queries: np.ndarray, truth: np.ndarray,
            knobs: list[int | None], args: argparse.Namespace,
            name: str) -> list[dict[str, Any]]:
    index, build_s, mib = build(kind, items, args, name)
    rows = []
    for knob in knobs:
        found, batched_qps = timed(index, queries, args.k, knob, batched=True)
        batched_recall = recall(found, truth)
        found, single_qps = timed(index, queries, args.k, knob, batched=False)
        rows.append({"index": kind, "knob": KNOB[kind], "value": knob,
                     "recall": recall(found, truth), "batched_recall": batched_recall,
                     "single_qps": single_qps, "batched_qps": batched_qps,
                     "build_s": build_s, "index_mib": mib,
                     "settings": index.settings()})
        log.info("%s", rows[-1])
    return rows


def table(rows: list[dict[str, Any]], k: int) -> str:
    exact = rows[0]
    lines = [f"| index | setting | recall@{k} | queries/s, single | x exact | "
             "queries/s, batched | x exact | build (s) | index RSS (MiB) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        build_s = "loaded" if r["build_s"] is None else f"{r['build_s']:.0f}"
        setting = "-" if r["knob"] is None else f"{r['knob']} {r['value']}"
        lines.append(
            f"| {r['index']} | {setting} | {r['recall']:.4f} | {r['single_qps']:.0f} | "
            f"{r['single_qps'] / exact['single_qps']:.1f} | {r['batched_qps']:.0f} | "
            f"{r['batched_qps'] / exact['batched_qps']:.1f} | {build_s} | "
            f"{r['index_mib']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vectors", default="random",
                        help="random, model:RUN_DIR or text:FILE (see ann_vectors.py)")
    parser.add_argument("--kinds", default="exact,hnsw,ivf,ivfpq",
                        help="comma-separated index kinds; exact is always measured first")
    parser.add_argument("--items", type=int, default=1_000_000,
                        help="catalog size (random), or the most rows used (0: all)")
    parser.add_argument("--dim", type=int, default=64, help="dim of random vectors")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--ef-search", default="128,256,512",
                        help="comma-separated HNSW search beams, measured on one build")
    parser.add_argument("--nprobe", default="8,16,32,64",
                        help="comma-separated IVF lists scanned, measured on one build")
    parser.add_argument("--m", type=int, default=IndexConfig().hnsw_m)
    parser.add_argument("--ef-construction", type=int, default=IndexConfig().ef_construction)
    parser.add_argument("--nlist", type=int, default=None)
    parser.add_argument("--pq-m", type=int, default=None)
    parser.add_argument("--rerank", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", type=Path, default=None,
                        help="a folder to keep built indexes in: a later run with the same "
                             "catalog and settings loads them instead of building them")
    parser.add_argument("--section", default="ann-recall")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    kinds = [k for k in args.kinds.split(",") if k != "exact"]
    knobs: dict[str, list[int | None]] = {
        "hnsw": [int(v) for v in args.ef_search.split(",")],
        "ivf": [int(v) for v in args.nprobe.split(",")],
        "ivfpq": [int(v) for v in args.nprobe.split(",")]}

    items, queries, what = catalog_and_queries(args.vectors, args.items, args.dim,
                                               args.queries, args.seed)
    name = f"{args.vectors.replace('/', '_').replace(':', '_')}-{len(items) - 1}"
    base_rss = rss_mib()
    load_start = os.getloadavg()[0]
    exact, build_s, mib = build("exact", items, args, name)
    truth, batched_qps = timed(exact, queries, args.k, None, batched=True)
    _, single_qps = timed(exact, queries, args.k, None, batched=False)
    rows = [{"index": "exact", "knob": None, "value": None, "recall": 1.0,
             "batched_recall": 1.0, "single_qps": single_qps, "batched_qps": batched_qps,
             "build_s": build_s, "index_mib": mib, "settings": exact.settings()}]
    log.info("%s", rows[0])
    del exact
    for kind in kinds:
        rows += measure(kind, items, queries, truth, knobs[kind], args, name)

    head = (f"{what}, dim {items.shape[1]}, {len(queries)} queries, top-{args.k}; "
            f"{cpu_name()}, {len(os.sched_getaffinity(0))} cores. Resident memory "
            f"{base_rss:.0f} MiB before any index (the libraries and the catalog). "
            f"Load average {load_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the "
            "end (the machine is shared: other jobs ran beside this one).")
    text = head + "\n\n" + table(rows, args.k)
    print(text, "\n")
    if not args.no_write:
        command = " ".join(["python benchmarks/ann_recall.py",
                            *[f"--{key.replace('_', '-')} {value}" for key, value in
                              vars(args).items() if value is not None and key not in (
                                  "no_write", "cache", "seed")]])
        write_section(ROOT / "docs" / "benchmarks.md", args.section, f"""
### {what}

`{command}`, {time.strftime('%Y-%m-%d')}.

{text}
""")
    print(json.dumps({"vectors": args.vectors, "what": what, "dim": items.shape[1],
                      "queries": len(queries), "k": args.k, "base_rss_mib": round(base_rss),
                      "cpu": cpu_name(), "rows": rows}))


if __name__ == "__main__":
    main()
