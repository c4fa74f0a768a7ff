"""Item vectors for `benchmarks/ann_recall.py`: where the catalog comes from.

- ``random``: random unit vectors (``--items``, ``--dim``), the worst case for an
  approximate index: no clusters, every direction equally likely;
- ``model:RUN_DIR``: the item vectors a trained modrec run scores with (its item tower,
  row 0 the padding), the vectors the service would index;
- ``text:FILE``: sentence embeddings of real text, one sentence per line of ``FILE``,
  encoded with the bundled all-MiniLM-L6-v2 (modrec's ``text`` encoder, L2-normalised,
  384-d) and kept beside the file as ``FILE.<digest>.npy`` (encoding is the slow part).

Queries: for random vectors, other random unit vectors; for a run, the user vectors of
its test users (each history through the model, as the service computes them); for
text, held-out sentences (the catalog is the rest).
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path

import numpy as np

log = logging.getLogger("ann_recall")


def unit_vectors(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def text_vectors(file: Path, batch: int = 4096) -> np.ndarray:
    """``(lines, 384)`` MiniLM embeddings of ``file``'s lines, cached beside it."""
    digest = hashlib.sha256(file.read_bytes()).hexdigest()[:12]
    cache = file.with_name(f"{file.name}.{digest}.npy")
    if cache.exists():
        return np.load(cache, mmap_mode="r")
    from modrec.content.encoders.text import TextEncoder

    lines = [line for line in file.read_text().splitlines() if line.strip()]
    encoder = TextEncoder(batch_size=128)
    partial = cache.with_suffix(".partial.npy")  # resumable: rows done so far
    out = np.lib.format.open_memmap(partial, "r+" if partial.exists() else "w+",
                                    np.float32, (len(lines), encoder.dim))
    done = int(np.count_nonzero(np.abs(out).sum(axis=1)))
    start = time.perf_counter()
    for at in range(done - done % batch, len(lines), batch):
        out[at:at + batch] = encoder.encode(lines[at:at + batch])
        out.flush()
        rate = (at + batch - done) / (time.perf_counter() - start)
        log.info("encoded %d / %d sentences (%.0f/s)", at + batch, len(lines), rate)
    del out
    partial.rename(cache)
    return np.load(cache, mmap_mode="r")


def model_vectors(run_dir: Path, queries: int,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The run's item matrix ``(N + 1, D)`` (row 0 the padding) and the user vectors of
    ``queries`` of its test users (their histories through the model: what the service
    searches with)."""
    import torch

    from modrec.eval.evaluator import user_vectors
    from modrec.runs import load_run

    run = load_run(run_dir, "cpu")
    test = run.split.test
    users = rng.choice(len(test), min(queries, len(test)), replace=False)
    max_len = run.config.model.max_len
    with torch.no_grad():
        vectors = user_vectors(run.scorer, [test.histories[int(u)][-max_len:]
                                            for u in users]).float().numpy()
    return run.item_vectors(), np.ascontiguousarray(vectors)


def catalog_and_queries(source: str, items: int, dim: int, queries: int,
                        seed: int) -> tuple[np.ndarray, np.ndarray, str]:
    """(item matrix ``(N + 1, D)`` with a zero padding row, queries ``(Q, D)``, a
    description of the source)."""
    rng = np.random.default_rng(seed)
    kind, _, where = source.partition(":")
    if kind == "random":
        matrix = np.zeros((items + 1, dim), np.float32)
        matrix[1:] = unit_vectors(rng, items, dim)
        return matrix, unit_vectors(rng, queries, dim), f"{items:,} random unit vectors"
    if kind == "model":
        matrix, users = model_vectors(Path(where), queries, rng)
        return matrix, users, f"{len(matrix) - 1:,} item vectors of the run {where}"
    if kind == "text":
        vectors, what = text_vectors(Path(where)), f"MiniLM embeddings of {Path(where).name}"
    else:
        raise SystemExit(f"--vectors {source!r}: random, model:RUN_DIR or text:FILE")
    order = rng.permutation(len(vectors))
    held = np.sort(order[:queries])
    kept = np.sort(order[queries:])[:items] if items else np.sort(order[queries:])
    matrix = np.zeros((len(kept) + 1, vectors.shape[1]), np.float32)
    matrix[1:] = vectors[kept]
    return matrix, np.asarray(vectors[held], np.float32), f"{len(kept):,} {what}"
