"""Text -> item search over the embedding store: the query is embedded by the same
text encoder that filled the store, items are ranked by cosine similarity.

``search_map`` measures relevance: each label (a genre, a tag) is a query, the items
carrying it are the relevant ones, and the mean average precision over the whole
catalog ranking is reported.

Reranking (``rerank=``, a language model): the top ``rerank_top`` items of each query
are graded 0-3 by the model (`modrec.content.annotate.grade_relevance`, cached) and
reordered by grade, ties kept in embedding order; the rest of the ranking is unchanged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from sklearn.metrics import average_precision_score

from modrec.content.classify import label_matrix
from modrec.content.store import EmbeddingStore, normalize_rows
from modrec.data import Dataset
from modrec.errors import UsageError

if TYPE_CHECKING:
    from modrec.llm import LanguageModel


class TextSearch:
    """Holds the normalised item matrix and the query encoder, for repeated queries."""

    def __init__(self, dataset: Dataset, store: EmbeddingStore | None = None,
                 encoder: str = "text") -> None:
        from modrec.content.encoders.text import embeds_queries, query_encoder

        self.dataset = dataset
        store = store or EmbeddingStore.for_dataset(dataset)
        info = store.info(encoder)
        if not embeds_queries(info.version):
            raise UsageError(f"{encoder!r} embeds {info.reads}, not text; search needs a "
                             "text encoder's vectors (modrec embed --encoder text, or "
                             "text:COLUMN) or a CLIP-style model's (clip:MODEL)")
        self.encoded = store.done(encoder)[1:] & ~store.failed(encoder)[1:]
        if not self.encoded.any():
            raise UsageError(
                f"no item has a usable {info.name!r} vector in {store.folder} (the embed "
                f"job failed or was stopped before its first batch); run `modrec embed "
                f"--encoder {info.name}` and check its failures")
        self.encoder = query_encoder(info.version)
        items = np.asarray(store.matrix(encoder)[1:], dtype=np.float32)  # (N, D)
        self.items = normalize_rows(items)

    def scores(self, queries: list[str]) -> np.ndarray:
        """``(Q, N)`` cosine of each query with every item (items without a vector: -inf)."""
        scores = self.encoder.encode(queries) @ self.items.T
        scores[:, ~self.encoded] = -np.inf
        return scores

    def search(self, query: str, k: int = 10, llm: LanguageModel | None = None,
               rerank_top: int = 50, noun: str = "item") -> list[dict[str, Any]]:
        """The top ``k`` items; with ``llm``, the top ``rerank_top`` reordered by the
        model's relevance grade first (the score is then the rerank order's)."""
        if k < 1:
            raise UsageError(f"k must be at least 1, got {k}")
        scores = self.scores([query])
        if llm is not None:
            scores = rerank(self.dataset, [query], scores, llm, max(rerank_top, k), noun)
        scores = scores[0]
        top = np.argsort(-scores, kind="stable")[:k]
        top = top[np.isfinite(scores[top])]  # items without a vector are not results
        items = self.dataset.items
        columns = [c for c in ("item_id", "title") if c in items.columns]
        return [{"item": int(i + 1), **{c: str(items[c].iloc[i]) for c in columns},
                 "score": float(scores[i])} for i in top]


def rerank(dataset: Dataset, queries: list[str], scores: np.ndarray, llm: LanguageModel,
           top: int = 50, noun: str = "item", progress: bool = True) -> np.ndarray:
    """``scores`` (Q, N) with each query's top ``top`` items reordered by the model's
    relevance grade; they stay above every other item."""
    from modrec.content.annotate import grade_relevance

    scores = scores.copy()
    heads = np.argsort(-scores, axis=1, kind="stable")[:, :top]  # (Q, top) item positions
    pairs = [(query, int(i) + 1) for q, (query, row) in enumerate(zip(queries, heads,
                                                                       strict=True))
             for i in row if np.isfinite(scores[q, i])]
    grades, _ = grade_relevance(dataset, llm, pairs, noun=noun, progress=progress)
    graded = {pair: g for pair, g in zip(pairs, np.nan_to_num(grades), strict=True)}
    for q, (query, row) in enumerate(zip(queries, heads, strict=True)):
        floor = scores[q, row].min()
        for rank, i in enumerate(row):
            if (query, int(i) + 1) in graded:  # grade first, then the embedding order
                scores[q, i] = floor + 10.0 * (1 + graded[(query, int(i) + 1)]) - rank * 1e-3
    return scores


def search_map(dataset: Dataset, field: str, template: str = "{label}",
               store: EmbeddingStore | None = None, encoder: str = "text",
               max_labels: int = 50, min_count: int = 10,
               llm: LanguageModel | None = None, rerank_top: int = 50,
               noun: str = "item") -> dict[str, Any]:
    labelled = label_matrix(dataset, field, max_labels, min_count)
    engine = TextSearch(dataset, store, encoder)
    queries = [template.format(label=label) for label in labelled.labels]
    scores = engine.scores(queries)
    if llm is not None:
        scores = rerank(dataset, queries, scores, llm, rerank_top, noun)
    relevant = np.zeros((len(labelled.labels), dataset.num_items), np.float32)
    relevant[:, labelled.items - 1] = labelled.targets.T
    ranked = np.isfinite(scores[0])
    per_label = {label: float(average_precision_score(relevant[i, ranked], scores[i, ranked]))
                 for i, label in enumerate(labelled.labels)}
    # what a user sees first: the share of relevant items among each query's top 10
    top10 = np.argsort(-np.where(np.isfinite(scores), scores, -np.inf), axis=1,
                       kind="stable")[:, :10]
    precision = np.take_along_axis(relevant, top10, axis=1).mean(1)
    return {"dataset": dataset.name, "field": field, "template": template,
            "rerank": None if llm is None else {"llm": llm.spec, "top": rerank_top},
            "queries": len(per_label), "map": float(np.mean(list(per_label.values()))),
            "precision_at_10": float(precision.mean()), "ap": per_label}
