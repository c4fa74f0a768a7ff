"""Single-label classification of items from stored embeddings (issue 36, item 4): one
class per item (a clip is a fight or not), a head trained on the store's vectors, its
accuracy measured by k-fold cross-validation, grouped when clips share a source, and
the head saved and applied to new items.

Features: the per-step sequences of the one encoder named when it stores them
(`EmbeddingStore.sequences`: I3D's steps, ``(M, S, D)``), else the encoders' vectors
side by side, each L2-normalised (`content_matrix`), as sequences of one step. The
heads are those of `modrec.content.video.heads`: ``mean`` (masked mean, then an MLP:
the only one that makes sense over one step) and the temporal ones.

Cross-validation: per fold, the learning rate and the stopping epoch are chosen on a
validation part carved from the training folds only (grouped the same way), and the
test fold is predicted once. The saved head is trained the same way on every labelled
item, and saved as a safetensors file naming its classes and encoders
(`modrec.content.video.saved_head`), which `apply_saved_head` applies to any catalog's
store that holds the same encoders' vectors.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modrec.content.store import EmbeddingStore, content_matrix, store_name
from modrec.content.video.heads import (
    HeadSettings,
    TrainedHead,
    grouped_validation,
    select_head,
)
from modrec.content.video.saved_head import SavedHead, save_head
from modrec.data import Dataset
from modrec.errors import UsageError

LEARNING_RATES = (1e-3, 3e-4)  # tried per fold; the better on validation is kept


@dataclass(frozen=True)
class Labelled:
    """The items that have a class, in the catalog's order."""

    items: np.ndarray  # (M,) item indices
    ids: list[str]
    classes: list[str]  # sorted class names; y indexes them
    y: np.ndarray  # (M,) int64
    groups: np.ndarray | None  # (M,) group names, or None


@dataclass(frozen=True)
class Features:
    steps: np.ndarray  # (M, S, D) float32, zero after each row's length
    lengths: np.ndarray  # (M,) int64; 0 where the item has no stored vector
    encoders: list[dict[str, str]]  # name and version of each encoder read
    kind: str  # "steps" (one encoder's sequences) or "vectors" (S = 1)


def labelled_items(dataset: Dataset, field: str, groups: str | None = None) -> Labelled:
    """The items whose ``field`` holds one class (empty ones are left out), with their
    ``groups`` column when given."""
    items = dataset.items
    for column in [field] + ([groups] if groups else []):
        if column not in items.columns:
            have = ", ".join(c for c in items.columns if c not in ("item", "item_id"))
            raise UsageError(f"dataset {dataset.name!r} has no item column {column!r}; item "
                             f"columns: {have}")
    values = items[field].map(lambda v: "" if v is None or v != v else str(v).strip())
    multi = items["item_id"][values.str.contains("|", regex=False)]
    if len(multi):
        raise UsageError(f"--single-label: item {multi.iloc[0]!r} has several labels in "
                         f"{field!r} ({len(multi)} such items); classify them without "
                         "--single-label (multi-label), or keep one class per item")
    keep = (values != "").to_numpy()
    classes = sorted(set(values[keep]))
    if len(classes) < 2:
        raise UsageError(f"{field!r} holds {len(classes)} class(es) ({', '.join(classes)}); "
                         "a classifier needs two or more")
    index = {c: k for k, c in enumerate(classes)}
    group_values = (items[groups].astype(str).to_numpy()[keep] if groups else None)
    return Labelled(items["item"].to_numpy(np.int64)[keep],
                    items["item_id"].astype(str).to_numpy()[keep].tolist(), classes,
                    np.array([index[v] for v in values[keep]], np.int64), group_values)


def stored_features(store: EmbeddingStore, encoders: list[str], items: np.ndarray,
                    kind: str | None = None) -> Features:
    """The features of ``items`` (see the module docstring); ``kind`` forces "steps" or
    "vectors" (a saved head's). Items without a stored vector get length 0."""
    names = [store_name(e) for e in encoders]
    if not names:
        raise UsageError("name the stored embeddings to classify from (--encoder NAME)")
    infos = [store.info(n) for n in names]
    sequences = len(infos) == 1 and infos[0].steps > 0
    kind = kind or ("steps" if sequences else "vectors")
    if kind == "steps":
        if not sequences:
            raise UsageError(f"the head reads step sequences, and {', '.join(names)} stores "
                             "none: name the one sequence encoder it was trained on")
        steps, lengths = store.sequences(names[0])
        x = np.asarray(steps[items], dtype=np.float32)  # (M, S, D)
        found = lengths[items].astype(np.int64)
    else:
        x = content_matrix(store, names)[items][:, None, :]  # (M, 1, C)
        usable = np.logical_and.reduce([store.done(n) & ~store.failed(n) for n in names])
        found = usable[items].astype(np.int64)
    return Features(x, found, [{"name": i.name, "version": i.version} for i in infos], kind)


def candidates(head: str, seed: int) -> list[HeadSettings]:
    return [HeadSettings(head=head, hidden=128, dropout=0.3, lr=lr,  # type: ignore[arg-type]
                         epochs=100, patience=20, seed=seed) for lr in LEARNING_RATES]


def _validation(y: np.ndarray, groups: np.ndarray | None, rows: np.ndarray,
                seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A fifth of ``rows`` for validation: grouped when there are groups (fewer parts
    when there are fewer than five groups), else stratified."""
    if groups is not None:
        parts = min(5, len(set(groups[rows].tolist())))
        if parts < 2:
            raise UsageError("the training items come from one group only; validation needs "
                             "two or more groups (or no --groups)")
        return grouped_validation(y, groups, rows, parts, seed)
    from sklearn.model_selection import train_test_split

    present = np.bincount(y[rows])
    present = present[present > 0]
    stratify = y[rows] if present.min() >= 2 else None
    # At least one validation item per class when stratified (sklearn needs it).
    size = max(round(0.2 * len(rows)), len(present) if stratify is not None else 1)
    train, valid = train_test_split(rows, test_size=size, random_state=seed, stratify=stratify)
    return np.asarray(train), np.asarray(valid)


def train_final(features: Features, data: Labelled, head: str, seed: int = 0) -> TrainedHead:
    """The head on every labelled item (a validation fifth chooses and stops it)."""
    rows = np.arange(len(data.y))
    train, valid = _validation(data.y, data.groups, rows, seed)
    return select_head(features.steps, features.lengths, data.y, train, valid,
                       candidates(head, seed))


def cross_validate(features: Features, data: Labelled, head: str, folds: int = 5,
                   seed: int = 0) -> dict[str, Any]:
    """Out-of-fold predictions and their scores (see the module docstring)."""
    from sklearn.metrics import confusion_matrix, f1_score
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    y, classes = data.y, data.classes
    smallest = int(np.bincount(y, minlength=len(classes)).min())
    if data.groups is not None:
        count = len(set(data.groups.tolist()))
        if count < folds:
            raise UsageError(f"{count} groups cannot make {folds} folds; pass --folds "
                             f"{max(count, 2)} or fewer, or leave out --groups")
        splits = StratifiedGroupKFold(folds, shuffle=True, random_state=seed).split(
            y, y, data.groups)
    else:
        if smallest < folds:
            raise UsageError(f"the smallest class has {smallest} items, too few for {folds} "
                             f"folds; pass --folds {max(smallest, 2)} or fewer")
        splits = StratifiedKFold(folds, shuffle=True, random_state=seed).split(y, y)
    predicted = np.full(len(y), -1)
    probabilities = np.zeros((len(y), len(classes)), np.float32)
    accuracy, seconds = [], 0.0
    for train_rows, test_rows in splits:
        train, valid = _validation(y, data.groups, train_rows, seed)
        best = select_head(features.steps, features.lengths, y, train, valid,
                           candidates(head, seed))
        seconds += best.seconds  # the chosen candidate's; the other ran as long or less
        probabilities[test_rows] = best.probabilities(features.steps[test_rows],
                                                      features.lengths[test_rows])
        predicted[test_rows] = probabilities[test_rows].argmax(1)
        accuracy.append(float((predicted[test_rows] == y[test_rows]).mean()))
    f1 = f1_score(y, predicted, labels=range(len(classes)), average=None, zero_division=0)
    return {"folds": folds, "grouped": data.groups is not None,
            "accuracy": float(np.mean(accuracy)), "accuracy_std": float(np.std(accuracy)),
            "fold_accuracy": accuracy,
            "per_class_f1": {c: float(v) for c, v in zip(classes, f1, strict=True)},
            "macro_f1": float(np.mean(f1)),
            "confusion": confusion_matrix(y, predicted, labels=range(len(classes))).tolist(),
            "predicted": predicted, "probabilities": probabilities}


def plot_confusion(matrix: list[list[int]], classes: list[str], path: Path,
                   title: str) -> Path:
    """The confusion matrix (rows: true class, columns: predicted) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    counts = np.asarray(matrix)
    size = 1.2 + 0.6 * len(classes)
    figure, axes = plt.subplots(figsize=(size + 1.5, size + 0.5))
    axes.imshow(counts, cmap="Blues")
    axes.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    axes.set_yticks(range(len(classes)), classes)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title, fontsize=9)
    for (row, column), value in np.ndenumerate(counts):
        dark = value > counts.max() / 2
        axes.text(column, row, str(value), ha="center", va="center",
                  color="white" if dark else "black")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


# ---- the two jobs ---------------------------------------------------------------------
def evaluate_and_train(dataset: Dataset, field: str, encoders: list[str],
                       store: EmbeddingStore, head: str = "mean", groups: str | None = None,
                       folds: int = 5, seed: int = 0, save: Path | None = None,
                       confusion: Path | None = None) -> dict[str, Any]:
    """Cross-validate the head on the labelled items that have stored vectors, then
    (with ``save``) train it on all of them and save it; ``confusion``: a PNG of the
    out-of-fold confusion matrix. Items without vectors are left out and named."""
    data = labelled_items(dataset, field, groups)
    features = stored_features(store, encoders, data.items)
    missing = _missing(dataset, data, features)
    data, features = _with_vectors(data, features)
    started = time.perf_counter()
    result = cross_validate(features, data, head, folds, seed)
    train_seconds = time.perf_counter() - started
    result.pop("predicted"), result.pop("probabilities")
    counts = np.bincount(data.y, minlength=len(data.classes))
    summary: dict[str, Any] = {
        "dataset": dataset.name, "labels_field": field, "head": head, "features": features.kind,
        "encoders": features.encoders, "items": len(data.y), "missing": missing,
        "classes": {c: int(n) for c, n in zip(data.classes, counts, strict=True)},
        "groups": None if data.groups is None else len(set(data.groups.tolist())), **result}
    if save is not None:
        started = time.perf_counter()
        final = train_final(features, data, head, seed)
        train_seconds += time.perf_counter() - started
        save_head(save, final, data.classes, {
            "encoders": features.encoders, "kind": features.kind,
            "dim": int(features.steps.shape[2]), "max_steps": int(features.steps.shape[1]),
            "dataset": dataset.name, "labels_field": field, "cv_accuracy": result["accuracy"],
            "cv_accuracy_std": result["accuracy_std"]})
        summary["saved"] = str(save)
    summary["train_seconds"] = train_seconds
    if confusion is not None:
        title = (f"{dataset.name}: {head} head, {folds}-fold"
                 f"{' grouped' if groups else ''} CV, accuracy {100 * result['accuracy']:.1f}%")
        summary["confusion_png"] = str(plot_confusion(result["confusion"], data.classes,
                                                      confusion, title))
    return summary


def apply_saved_head(dataset: Dataset, store: EmbeddingStore, head: SavedHead,
                     labels: str | None = None) -> dict[str, Any]:
    """The saved head's class probabilities for every item with stored vectors, and its
    accuracy on them where ``labels`` names their true classes."""
    items = dataset.items["item"].to_numpy(np.int64)
    head.check_versions(store)
    features = stored_features(store, head.encoders, items, head.meta["kind"])
    has = features.lengths > 0
    scores = np.zeros((len(items), len(head.classes)), np.float32)
    if has.any():
        scores[has] = head.probabilities(features.steps[has], features.lengths[has])
    ids = dataset.items["item_id"].astype(str).to_numpy()
    problems = _problems(dataset)
    result: dict[str, Any] = {
        "dataset": dataset.name, "classes": head.classes, "items": int(has.sum()),
        "missing": {i: problems.get(i, "no stored vector") for i in ids[~has]},
        "items_array": items[has], "scores": scores[has]}
    if labels is not None:
        truth = dataset.items[labels].map(lambda v: "" if v is None or v != v else str(v))
        known = has & truth.isin(head.classes).to_numpy()
        if known.any():
            predicted = np.array(head.classes)[scores[known].argmax(1)]
            result["accuracy"] = float((predicted == truth.to_numpy()[known]).mean())
            result["accuracy_items"] = int(known.sum())
    return result


def _problems(dataset: Dataset) -> dict[str, str]:
    """Item id -> why its clip is unreadable (the video importers' ``problem`` column)."""
    if "problem" not in dataset.items.columns:
        return {}
    flagged = dataset.items[dataset.items["problem"].notna()]
    return dict(zip(flagged["item_id"].astype(str), flagged["problem"].astype(str),
                    strict=True))


def _missing(dataset: Dataset, data: Labelled, features: Features) -> dict[str, str]:
    problems = _problems(dataset)
    return {data.ids[k]: problems.get(data.ids[k], "no stored vector (not embedded yet, or "
                                      "its encoding failed)")
            for k in np.flatnonzero(features.lengths == 0)}


def _with_vectors(data: Labelled, features: Features) -> tuple[Labelled, Features]:
    keep = features.lengths > 0
    if not keep.any():
        raise UsageError(f"none of the {len(keep)} labelled items has stored "
                         f"{', '.join(e['name'] for e in features.encoders)} vectors; run "
                         "`modrec embed` first")
    empty = [c for k, c in enumerate(data.classes) if not (data.y[keep] == k).any()]
    if empty:
        raise UsageError(f"class(es) {', '.join(map(repr, empty))} have no item with stored "
                         "vectors; embed their clips (see the missing ones' problems) or "
                         "remove the class")
    longest = int(features.lengths[keep].max())
    return (Labelled(data.items[keep], [i for i, k in zip(data.ids, keep, strict=True) if k],
                     data.classes, data.y[keep],
                     None if data.groups is None else data.groups[keep]),
            Features(features.steps[keep, :longest], features.lengths[keep],
                     features.encoders, features.kind))
