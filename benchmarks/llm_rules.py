"""What was tried to turn the language model's cached genre scores into labels, and the
ceiling of search reranking; written into docs/llm.md (section ``llm-rules``).

    python benchmarks/llm_rules.py

Reads the answers `llm_labels.py` cached (yes/no and choice, zero-shot, on the 50
validation and 200 test movies), so it asks the model nothing; the model file is opened
only for its fingerprint, which names the cache. Every rule is chosen on the validation
movies and then applied once to the test movies.
"""

from __future__ import annotations

from modrec import threads as _threads  # noqa: F401  first: its OpenMP policy, before torch

# isort: split

import time
from pathlib import Path

import numpy as np
from kit import markdown_table, write_section
from llm_labels import bundled_qwen
from sklearn.metrics import average_precision_score, f1_score

from modrec.content import EmbeddingStore
from modrec.content.annotate import LabelPrompting, annotate_labels
from modrec.content.classify import _best_threshold, _predict, label_matrix, split_items
from modrec.content.search import TextSearch
from modrec.data import load_dataset
from modrec.llm import open_llm


def main() -> None:
    dataset = load_dataset("ml-1m")
    data = label_matrix(dataset, "genres")
    train, valid, test = split_items(len(data.items), 0)
    valid, test = valid[:50], test[:200]
    y = data.targets
    llm = open_llm(f"local:{bundled_qwen()}", threads=1)
    scores = {}
    for method in ("yesno", "choice"):
        rows = np.concatenate([valid, test])
        s = np.zeros(y.shape)
        s[rows], report = annotate_labels(
            dataset, "genres", data.labels, data.items[rows],
            LabelPrompting(llm, method=method, noun="movie", progress=False))  # type: ignore[arg-type]
        if report.asked:
            raise SystemExit(f"{method}: {report.asked} answers were not cached; run "
                             "benchmarks/llm_labels.py first")
        scores[method] = s

    def micro(predicted: np.ndarray, part: np.ndarray) -> float:
        return float(f1_score(y[part], predicted, average="micro", zero_division=0))

    def mean_ap(s: np.ndarray, part: np.ndarray) -> float:
        positive = y[part].sum(0) > 0
        return float(average_precision_score(y[part][:, positive], s[part][:, positive],
                                             average="macro"))

    def by_threshold(name: str, s: np.ndarray) -> list[object]:
        t = _best_threshold(s[valid], y[valid])
        return [name, micro(_predict(s[valid], t), valid), micro(_predict(s[test], t), test),
                mean_ap(s, test)]

    def top(s: np.ndarray, m: int) -> np.ndarray:
        chosen = np.zeros_like(s)
        np.put_along_axis(chosen, np.argsort(-s, 1)[:, :m], 1, 1)
        return chosen

    yes, choice = scores["yesno"], scores["choice"]
    logit = np.log(np.clip(yes, 1e-6, 1 - 1e-6) / np.clip(1 - yes, 1e-6, 1))
    mu, sd = logit[valid].mean(0), logit[valid].std(0) + 1e-6
    rows = [by_threshold("yesno, one global threshold (shipped)", yes),
            by_threshold("yesno, log-odds z-scored per genre (validation statistics)",
                         (logit - mu) / sd),
            by_threshold("yesno, log-odds centred per genre (validation means)", logit - mu)]
    rows += [[f"yesno, top {m} genres per movie", micro(top(yes[valid], m), valid),
              micro(top(yes[test], m), test), mean_ap(yes, test)] for m in (1, 2, 3)]
    rows += [by_threshold("choice, one global threshold (shipped)", choice)]
    rows += [by_threshold(f"{w} yesno + {1 - w} choice", w * yes + (1 - w) * choice)
             for w in (0.25, 0.5, 0.75)]
    rows += [by_threshold("geometric mean of yesno and choice", np.sqrt(yes * choice))]

    t = _best_threshold(yes[valid], y[valid])
    subsets = [[f"first {n} test movies", micro(_predict(yes[test[:n]], t), test[:n]),
                mean_ap(yes, test[:n])] for n in (50, 100)]

    both = np.concatenate([valid, test])
    bias = [[label, f"{yes[both, j].mean():.2f}", f"{(yes[both, j] > 0.5).mean():.0%}",
             f"{y[both, j].mean():.0%}"] for j, label in enumerate(data.labels)]

    body = "\n".join([
        "### Decision rules tried on the cached answers (200 test movies)",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} with `python benchmarks/llm_rules.py` from "
        "the answers of the `llm-labels` run (Qwen2.5-Coder-1.5B, prompts "
        "labels-yesno-v3 and labels-choice-v1, zero-shot); each rule's threshold is chosen "
        "on the 50 validation movies.",
        "",
        markdown_table(["rule", "validation micro-F1", "test micro-F1", "test mAP"], rows),
        "",
        "The shipped yesno rule on the first test movies (the samples of the 50-movie "
        "v2 table and the 4-shot table):",
        "",
        markdown_table(["yesno, zero-shot", "micro-F1", "mAP"], subsets),
        "",
        "P(\"yes\") per genre over the 250 movies against how many carry the genre:",
        "",
        markdown_table(["genre", "mean P(yes)", "P(yes) > 0.5", "true"], bias),
        "",
        f"Search: a perfect reordering of MiniLM's top 50 for each genre query ('a {{label}} "
        f"movie', every relevant movie of the 50 first) reaches mAP "
        f"{_rerank_ceiling(dataset, data):.4f} over the catalog.",
    ])
    write_section(Path("docs/llm.md"), "llm-rules", body)
    print(body)


def _rerank_ceiling(dataset, data, top: int = 50) -> float:  # type: ignore[no-untyped-def]
    """mAP of the genre queries when the top ``top`` are reordered by the true labels."""
    engine = TextSearch(dataset, EmbeddingStore.for_dataset(dataset), "text")
    scores = engine.scores([f"a {label} movie" for label in data.labels])
    relevant = np.zeros((len(data.labels), dataset.num_items), np.float32)
    relevant[:, data.items - 1] = data.targets.T
    ranked = np.isfinite(scores[0])
    aps = []
    for q in range(len(data.labels)):
        s = scores[q].copy()
        head = np.argsort(-s, kind="stable")[:top]
        s[head] = s[head].min() + 10 + relevant[q, head] * 10 - np.arange(top) * 1e-3
        aps.append(average_precision_score(relevant[q, ranked], s[ranked]))
    return float(np.mean(aps))


if __name__ == "__main__":
    main()
