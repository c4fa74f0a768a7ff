"""Content classification: multi-label item tagging from stored embeddings.

Three modes over the same held-out items (a seeded 20% of the labelled items; 10% of
the rest is a validation part for early stopping and the decision threshold):

* ``trained``   a linear or small-MLP one-vs-rest classifier on the concatenated,
                per-encoder L2-normalised embeddings (binary cross-entropy, AdamW);
* ``zero-shot`` cosine between an item's text vector and each label's name embedded by
                the same text encoder (``template`` phrases the label);
* ``knn``       labels of the k most similar labelled training items, weighted by
                cosine similarity (retrieval-augmented);
* ``llm``       a language model reads each item's text and scores every label
                (`modrec.content.annotate`: P("yes") per label, or one forward pass
                per item, or generated JSON); few-shot examples come from the training
                items only. Only the validation and test items are asked, and the
                answers are cached, so ``test_items`` / ``valid_items`` (a seeded
                sample: the first of the shuffled parts) bound the cost.
* ``ensemble``  the ``llm`` scores and the ``trained`` head's probabilities averaged,
                ``w * llm + (1 - w) * trained``, with the weight chosen on the
                validation sample together with the threshold (the head itself stops
                on the whole validation part, as in ``trained``). The language model
                is asked only about validation and test items, as in ``llm``.

Each predicts the labels scoring above one global threshold, chosen on the validation
part to maximise micro-F1, plus the top-scoring label (every item has at least one).
Reported on the held-out items: micro-F1, macro-F1 and mAP (mean over labels of the
average precision of ranking the held-out items). ``test_items`` limits every mode to
the same sample of them, so a costly mode compares with the others on the same items.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import average_precision_score, f1_score
from torch import nn

from modrec.content.encoders.tags import split_tags
from modrec.content.store import EmbeddingStore, content_matrix, normalize_rows
from modrec.data import Dataset
from modrec.errors import UsageError

if TYPE_CHECKING:
    from modrec.content.annotate import LabelPrompting

log = logging.getLogger(__name__)

Mode = Literal["trained", "zero-shot", "knn", "llm", "ensemble"]
MODES: tuple[Mode, ...] = ("trained", "zero-shot", "knn", "llm", "ensemble")


@dataclass(frozen=True)
class LabelledItems:
    items: np.ndarray  # item indices with at least one kept label
    labels: list[str]  # label names, columns of targets
    targets: np.ndarray  # float32 (M, C) multi-hot


def label_matrix(dataset: Dataset, field: str, max_labels: int = 50,
                 min_count: int = 10) -> LabelledItems:
    """Multi-hot labels from a ``|``-separated item column, keeping the ``max_labels``
    most frequent labels that occur on at least ``min_count`` items."""
    if field not in dataset.items.columns:
        columns = ", ".join(c for c in dataset.items.columns if c not in ("item", "item_id"))
        raise UsageError(f"dataset {dataset.name!r} has no item column {field!r} to use as "
                         f"labels; item columns: {columns}")
    tags = [split_tags(v) for v in dataset.items[field]]
    counts: dict[str, int] = {}
    for item_tags in tags:
        for tag in set(item_tags):
            counts[tag] = counts.get(tag, 0) + 1
    kept = sorted((t for t, c in counts.items() if c >= min_count), key=lambda t: (-counts[t], t))
    labels = sorted(kept[:max_labels])
    if not labels:
        raise UsageError(f"no label of {field!r} occurs on {min_count} or more items")
    column = {t: i for i, t in enumerate(labels)}
    targets = np.zeros((len(tags), len(labels)), np.float32)
    for position, item_tags in enumerate(tags):
        for tag in item_tags:
            if tag in column:
                targets[position, column[tag]] = 1.0
    has = targets.sum(1) > 0
    items = dataset.items["item"].to_numpy()[has]
    return LabelledItems(items.astype(np.int64), labels, targets[has])


def features(store: EmbeddingStore, encoders: list[str], items: np.ndarray) -> np.ndarray:
    """Concatenated, per-encoder L2-normalised embeddings of ``items``."""
    return content_matrix(store, encoders)[items]


def split_items(count: int, seed: int, test_fraction: float = 0.2,
                valid_fraction: float = 0.1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positions of train / validation / test items."""
    order = np.random.default_rng(seed).permutation(count)
    n_test = int(round(count * test_fraction))
    n_valid = int(round((count - n_test) * valid_fraction))
    return order[n_test + n_valid:], order[n_test:n_test + n_valid], order[:n_test]


def classify(dataset: Dataset, field: str, encoders: list[str], mode: Mode = "trained",
             store: EmbeddingStore | None = None, head: Literal["linear", "mlp"] = "mlp",
             k: int = 20, template: str = "{label}", seed: int = 0,
             max_labels: int = 50, min_count: int = 10, llm: LabelPrompting | None = None,
             test_items: int | None = None, valid_items: int | None = None) -> dict[str, Any]:
    if mode in ("llm", "ensemble") and llm is None:
        raise UsageError(f"the {mode} mode needs a language model (--llm SPEC)")
    if mode == "ensemble" and not encoders:
        raise UsageError("the ensemble mode needs stored embeddings for its trained head "
                         "(--encoder text)")
    store = store or EmbeddingStore.for_dataset(dataset)
    for name in encoders:
        if store.info(name).reads == field:
            raise UsageError(f"encoder {name!r} reads the label column {field!r} itself; "
                             "classifying from it would only copy the answer")
    data = label_matrix(dataset, field, max_labels, min_count)
    train, whole_valid, test = split_items(len(data.items), seed)
    valid, test = whole_valid[:valid_items], test[:test_items]  # seeded samples
    y = data.targets
    extra: dict[str, Any] = {}
    if mode in ("llm", "ensemble"):
        assert llm is not None
        from modrec.content.annotate import annotate_labels

        rows = np.concatenate([valid, test])
        if llm.store is None:
            llm.store = store  # few-shot examples from the store being evaluated
        scores = np.zeros(y.shape)
        scores[rows], report = annotate_labels(dataset, field, data.labels, data.items[rows],
                                               llm, pool=data.items[train],
                                               pool_name=f"train-seed{seed}")
        extra = {"llm": {"spec": llm.llm.spec, "fingerprint": llm.llm.fingerprint,
                         "method": llm.method, "examples": llm.examples, "noun": llm.noun},
                 "annotation": report.to_dict()}
        if mode == "ensemble":
            trained = _trained_scores(features(store, encoders, data.items), y, train,
                                      whole_valid, head, seed)
            weight = _best_weight(scores[valid], trained[valid], y[valid])
            scores = weight * scores + (1 - weight) * trained
            extra["ensemble_weight"] = weight
    else:
        x = features(store, encoders, data.items)
        if mode == "trained":
            scores = _trained_scores(x, y, train, valid, head, seed)
        elif mode == "knn":
            scores = _knn_scores(x, y, train, k)
        elif mode == "zero-shot":
            scores = _zero_shot_scores(store, encoders, data, template)
        else:
            raise UsageError(f"unknown mode {mode!r}; choose trained, zero-shot, knn or llm")
    threshold = _best_threshold(scores[valid], y[valid])
    predicted = _predict(scores[test], threshold)
    positives = y[test].sum(0) > 0
    return {
        "dataset": dataset.name, "labels_field": field, "encoders": encoders, "mode": mode,
        "head": head if mode in ("trained", "ensemble") else None, "labels": len(data.labels),
        "items": {"train": len(train), "valid": len(valid), "test": len(test)},
        "threshold": threshold, **extra,
        "micro_f1": float(f1_score(y[test], predicted, average="micro", zero_division=0)),
        "macro_f1": float(f1_score(y[test], predicted, average="macro", zero_division=0)),
        "map": float(average_precision_score(y[test][:, positives], scores[test][:, positives],
                                             average="macro")),
    }


def _predict(scores: np.ndarray, threshold: float) -> np.ndarray:
    predicted = scores >= threshold
    predicted[np.arange(len(scores)), scores.argmax(1)] = True
    return predicted.astype(np.float32)


def _best_weight(first: np.ndarray, second: np.ndarray, targets: np.ndarray) -> float:
    """The weight of ``first`` in ``w * first + (1 - w) * second`` (steps of 0.1) whose
    best threshold gives the highest micro-F1 on ``targets``; ties go to the smaller
    weight (the trained head's side)."""
    best, best_f1 = 0.0, -1.0
    for weight in np.linspace(0, 1, 11):
        mixed = weight * first + (1 - weight) * second
        f1 = f1_score(targets, _predict(mixed, _best_threshold(mixed, targets)),
                      average="micro", zero_division=0)
        if f1 > best_f1 + 1e-12:
            best, best_f1 = float(weight), float(f1)
    return best


def _best_threshold(scores: np.ndarray, targets: np.ndarray) -> float:
    candidates = np.quantile(scores, np.linspace(0.5, 0.995, 100))
    f1 = [f1_score(targets, _predict(scores, t), average="micro", zero_division=0)
          for t in candidates]
    return float(candidates[int(np.argmax(f1))])


def _trained_scores(x: np.ndarray, y: np.ndarray, train: np.ndarray, valid: np.ndarray,
                    head: str, seed: int, epochs: int = 300, patience: int = 20) -> np.ndarray:
    """Full-batch training (catalogs of thousands of items fit at once); the epoch with
    the best validation mAP is kept."""
    torch.manual_seed(seed)
    d, c = x.shape[1], y.shape[1]
    model: nn.Module = (nn.Linear(d, c) if head == "linear" else
                        nn.Sequential(nn.Dropout(0.2), nn.Linear(d, 512), nn.GELU(),
                                      nn.Dropout(0.5), nn.Linear(512, c)))
    # A linear head on unit-norm inputs needs large weights: a larger step gets there.
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2 if head == "linear" else 1e-3,
                                  weight_decay=1e-2)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    best, best_state, bad = -1.0, None, 0
    for _ in range(epochs):
        model.train()
        for batch in torch.randperm(len(train)).split(256):
            rows = torch.from_numpy(train)[batch]
            loss = F.binary_cross_entropy_with_logits(model(xt[rows]), yt[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            score = model(xt[valid]).numpy()
        keep = y[valid].sum(0) > 0
        value = average_precision_score(y[valid][:, keep], score[:, keep], average="macro")
        if value > best:
            best, bad = value, 0
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
        else:
            bad += 1
            if bad >= patience:
                break
    assert best_state is not None
    model.load_state_dict(best_state)
    model.eval()
    with torch.no_grad():
        return torch.sigmoid(model(xt)).numpy()


def _knn_scores(x: np.ndarray, y: np.ndarray, train: np.ndarray, k: int) -> np.ndarray:
    """Similarity-weighted label votes of the k nearest training items (an item is never
    its own neighbour)."""
    xn = normalize_rows(x)
    similarity = xn @ xn[train].T  # (M, T)
    similarity[train, np.arange(len(train))] = -np.inf
    nearest = np.argpartition(-similarity, k, axis=1)[:, :k]  # (M, k)
    weights = np.maximum(np.take_along_axis(similarity, nearest, 1), 0)  # (M, k)
    votes = (weights[:, :, None] * y[train][nearest]).sum(1)  # (M, C)
    return votes / np.maximum(weights.sum(1, keepdims=True), 1e-8)


def _zero_shot_scores(store: EmbeddingStore, encoders: list[str], data: LabelledItems,
                      template: str) -> np.ndarray:
    from modrec.content.encoders.text import embeds_queries, query_encoder

    texts = [n for n in encoders if embeds_queries(store.info(n).version)]
    if not texts:
        raise UsageError("zero-shot needs a text encoder's embeddings (e.g. --encoder text) "
                         "or a CLIP-style model's (clip:MODEL)")
    encoder = query_encoder(store.info(texts[0]).version)
    label_vectors = encoder.encode([template.format(label=label) for label in data.labels])
    items = normalize_rows(np.asarray(store.matrix(texts[0])[data.items], dtype=np.float32))
    return items @ label_vectors.T  # (M, C) cosine
