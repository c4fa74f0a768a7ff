"""Retrieval alone: HNSW against exact inner-product search over a large catalog.

    python benchmarks/ann_recall.py [--items 1000000] [--dim 64] [--queries 1000]
                                    [--ef-search 128,256,512] [--m 32] [--ef-construction 200]
                                    [--k 100] [--cache DIR]

The catalog and the queries are random unit vectors, the hardest case for a graph index
(no clusters to exploit, every direction equally likely); trained item vectors are easier,
so a setting that holds here holds there. Both indexes are `modrec.serve.index.ItemIndex`,
the code path the service runs, so the times include its exclusion handling (with nothing
excluded). Measured in one run, on one machine:

- HNSW build time (every core);
- top-k recall of HNSW against exact search over the same queries, per ``ef_search``;
- queries/s one query per call, 1 OpenMP thread (the service's setting: one user per
  request), and in one batched call with every core;
- peak resident memory of the process (``ru_maxrss``), and the resident memory before
  any index was built (the libraries and the vectors), to read the indexes' share.

Several ``--ef-search`` values share one (slow) graph build, and ``--cache`` keeps the
graph for later runs (another ``--k`` or beam). Random unit vectors of dim 64 at 1,000,000
items need ``ef_search`` about 1024 for recall@100 0.95, where HNSW is only about 3x faster
than exact search on 2 cores (see modrec.serve.index.IndexConfig). Prints a Markdown table, then
one JSON line with every number.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np
from kit import ROOT, write_section

from modrec.serve.index import IndexConfig, ItemIndex

log = logging.getLogger("ann_recall")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def unit_vectors(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def rss_mib() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(index: ItemIndex, queries: np.ndarray, k: int, ef: int | None,
          batched: bool) -> tuple[np.ndarray, float]:
    """The item indices found (Q, k) and the queries answered per second."""
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--ef-search", default="128,256,512",
                        help="comma-separated HNSW search beams, measured on one build")
    parser.add_argument("--m", type=int, default=IndexConfig().hnsw_m)
    parser.add_argument("--ef-construction", type=int, default=IndexConfig().ef_construction)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", type=Path, default=None,
                        help="a folder to keep the HNSW graph in: a later run with the same "
                             "catalog and graph settings loads it instead of building it")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    efs = [int(v) for v in args.ef_search.split(",")]

    rng = np.random.default_rng(args.seed)
    items = np.zeros((args.items + 1, args.dim), np.float32)  # row 0: padding
    items[1:] = unit_vectors(rng, args.items, args.dim)
    queries = unit_vectors(rng, args.queries, args.dim)
    base_rss = rss_mib()

    exact = ItemIndex(items, IndexConfig(exact_below=args.items + 1))
    truth, exact_batched_qps = timed(exact, queries, args.k, None, batched=True)
    log.info("exact batched: %.0f queries/s", exact_batched_qps)
    found, exact_single_qps = timed(exact, queries, args.k, None, batched=False)
    log.info("exact single: %.0f queries/s (recall against batched %.4f)",
             exact_single_qps, recall(found, truth))
    del exact

    cached = None if args.cache is None else args.cache / (
        f"hnsw-{args.items}x{args.dim}-seed{args.seed}-m{args.m}-efc{args.ef_construction}.faiss")
    build_s: float | None = None
    start = time.perf_counter()
    if cached is not None and cached.exists():
        hnsw = ItemIndex.load(cached)
        log.info("HNSW graph loaded from %s in %.1f s", cached, time.perf_counter() - start)
    else:
        hnsw = ItemIndex(items, IndexConfig(exact_below=0, hnsw_m=args.m,
                                            ef_construction=args.ef_construction))
        build_s = time.perf_counter() - start
        log.info("HNSW build (M=%d, efConstruction=%d): %.1f s", args.m,
                 args.ef_construction, build_s)
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            hnsw.save(cached)
    del items  # the index holds its own copy

    rows: list[dict[str, Any]] = [{"index": "exact", "ef_search": None, "recall": 1.0,
                                   "single_qps": exact_single_qps,
                                   "batched_qps": exact_batched_qps}]
    for ef in efs:
        found, batched_qps = timed(hnsw, queries, args.k, ef, batched=True)
        batched_recall = recall(found, truth)
        found, single_qps = timed(hnsw, queries, args.k, ef, batched=False)
        rows.append({"index": "hnsw", "ef_search": ef, "recall": recall(found, truth),
                     "batched_recall": batched_recall, "single_qps": single_qps,
                     "batched_qps": batched_qps})
        log.info("%s", rows[-1])

    lines = [f"{args.items:,} random unit vectors, dim {args.dim}, {args.queries} queries, "
             f"top-{args.k}; {cpu_name()}, {len(os.sched_getaffinity(0))} cores. "
             f"HNSW M={args.m}, efConstruction={args.ef_construction}: "
             f"{'loaded' if build_s is None else f'built in {build_s:.0f} s'}. "
             f"Peak RSS {rss_mib():.0f} MiB ({base_rss:.0f} MiB before any index).", "",
             f"| index | ef_search | recall@{args.k} | queries/s, single | x exact | "
             "queries/s, batched | x exact |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['index']} | {r['ef_search'] or '-'} | {r['recall']:.4f} | "
              f"{r['single_qps']:.0f} | {r['single_qps'] / exact_single_qps:.1f} | "
              f"{r['batched_qps']:.0f} | {r['batched_qps'] / exact_batched_qps:.1f} |"
              for r in rows]
    table = "\n".join(lines)
    print(table, "\n")
    if not args.no_write:
        command = (f"python benchmarks/ann_recall.py --items {args.items} --dim {args.dim} "
                   f"--queries {args.queries} --k {args.k} --ef-search {args.ef_search}")
        write_section(ROOT / "docs" / "benchmarks.md", "ann-recall", f"""
## Retrieval: HNSW against exact search

`{command}`, {time.strftime('%Y-%m-%d')}. The service's own index code
(`modrec.serve.index.ItemIndex`); "single" is one query per call on one thread, as the
service asks; random unit vectors are the hardest case for a graph index (no clusters).

{table}
""")
    print(json.dumps({"items": args.items, "dim": args.dim, "queries": args.queries,
                      "k": args.k, "m": args.m, "ef_construction": args.ef_construction,
                      "build_s": None if build_s is None else round(build_s, 1),
                      "peak_rss_mib": round(rss_mib()),
                      "base_rss_mib": round(base_rss), "cpu": cpu_name(),
                      "rows": rows}))


if __name__ == "__main__":
    main()
