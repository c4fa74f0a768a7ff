"""Top-k recommendations from a trained run. The HTTP service (a later step) wraps
this object; it reads the run directory and nothing else from training."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from modrec.data.dataset import Sequences
from modrec.eval.evaluator import mask_seen, user_vectors
from modrec.runs import Run


@torch.no_grad()
def top_k(run: Run, histories: list[np.ndarray], k: int,
          times: list[np.ndarray] | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Best ``k`` unseen items for each history: per history, (item indices, scores),
    fewer than ``k`` when fewer items are unseen. ``times``, when each history item
    happened, is needed by models trained with a time bias (HSTU with timestamps)."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if any(len(h) == 0 for h in histories):
        raise ValueError("every history needs at least one item to recommend from")
    run.model.eval()
    max_len = run.config.model.max_len
    users = user_vectors(run.scorer, [h[-max_len:] for h in histories], "cpu",
                         None if times is None else [t[-max_len:] for t in times])  # (B, D)
    scores = users @ run.scorer.item_vectors().T  # (B, N + 1)
    mask_seen(scores, Sequences.from_lists(histories), np.arange(len(histories)))
    k = min(k, run.dataset.num_items)
    best = torch.topk(scores, k, dim=1)
    # Seen items score -inf: with fewer than k unseen items they would fill the list.
    return [(items[np.isfinite(values)], values[np.isfinite(values)])
            for items, values in zip(best.indices.numpy(), best.values.numpy(), strict=True)]


def describe_items(run: Run, indices: np.ndarray) -> list[dict[str, Any]]:
    """Catalog rows (external id and any title/genres) for item indices."""
    table = run.dataset.items.set_index("item")
    columns = [c for c in ("title", "genres") if c in table.columns]
    rows = []
    for i in indices:
        row = table.loc[int(i)]
        rows.append({"item": int(i), "item_id": str(row["item_id"]),
                     **{c: (None if row[c] is None or row[c] != row[c] else str(row[c]))
                        for c in columns}})
    return rows


def recommend_for_user(run: Run, user_id: str, k: int = 10) -> dict[str, Any]:
    """Recommendations for a known user from everything they did in the dataset."""
    user = run.dataset.user_index(user_id)
    sequences = run.dataset.sequences()
    history = sequences[user]
    times = None if sequences.times is None else [sequences.times_of(user)]
    [(items, scores)] = top_k(run, [history], k, times)
    recs = describe_items(run, items)
    for rec, score in zip(recs, scores, strict=True):
        rec["score"] = float(score)
    return {"user_id": user_id, "history_length": int(len(history)),
            "history_tail": describe_items(run, history[-5:][::-1]), "items": recs}
