"""Items annotated by a language model: label scores and relevance grades, as a
resumable job whose results are a file.

Label methods (``labels`` task):

* ``yesno``  per item and label, P("yes") against P("no") for "is LABEL one of this
             item's FIELD?" (prompt ``labels-yesno``). One short prompt tail per label
             after a shared prefix, all of an item's labels scored together
             (`score_all`: a local model decodes the tails as one batch after the
             prefix in its KV cache). Best on small models: the probability ranks where
             a generated answer only says yes or no.
* ``choice`` one forward pass per item: the probability that the answer to "which of
             these labels fits best?" starts with each label (``labels-choice``). About
             labels-times cheaper; the labels compete for one distribution.
* ``json``   the labels the model generates, constrained by a JSON schema to the
             offered ones (``labels-json``); a score of 1 for each, 0 otherwise.

Few-shot (``examples=k``): the k labelled items nearest to the item in the text
embedding store (``modrec embed --encoder text``), drawn only from the ``pool`` the
caller allows (the training items when evaluating), are written into the prompt with
their labels.

``relevance`` task: a query and an item, graded 0-3 as the expected grade under the
probabilities of the tokens "0".."3" (prompt ``relevance``).

Results: an `AnnotationFile` (JSON lines, one record per item or query-item pair, with
the model's fingerprint, the prompt version and the time), appended whole after every
answer, so a killed job resumes where it stopped and a rerun asks nothing twice. Its
default name (`annotation_path`) is keyed by everything that changes an answer: task,
field, method, prompt version, examples and their pool, and a digest of the model
fingerprint and label list.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from modrec.content.annotation_file import AnnotationFile
from modrec.content.catalog import item_inputs
from modrec.content.encoders.tags import split_tags
from modrec.content.store import EmbeddingStore, normalize_rows
from modrec.data import Dataset
from modrec.errors import UsageError
from modrec.llm import (
    LanguageModel,
    Prompt,
    expected_grade,
    load_prompt,
    option_probabilities,
    score_all,
)
from modrec.progress import Bar, progress_bar

log = logging.getLogger(__name__)

Method = Literal["yesno", "choice", "json"]
METHODS: tuple[Method, ...] = ("yesno", "choice", "json")
GRADES = ["0", "1", "2", "3"]


@dataclass
class LabelPrompting:
    """How a language model labels items: the model, the method, the noun a prompt
    calls an item ("movie"), few-shot examples (0: zero-shot), the text encoder whose
    stored vectors find the examples and the store holding them (None: the dataset's),
    where results go (None: `annotation_path`) and how many requests run at once
    (useful for servers only)."""

    llm: LanguageModel
    method: Method = "yesno"
    noun: str = "item"
    examples: int = 0
    encoder: str = "text"
    text: str = "text"  # the item column the model reads
    store: EmbeddingStore | None = None
    out: Path | None = None
    workers: int = 1
    progress: bool = True

    def version(self) -> str:
        """What an item column of these labels records as their version: the method's
        prompt version and the number of few-shot examples."""
        return f"{load_prompt(f'labels-{self.method}').version}:examples={self.examples}"


def sample_items(num_items: int, count: int | None, seed: int = 0) -> np.ndarray:
    """A seeded sample of ``count`` item indices in 1..``num_items`` (every item when
    ``count`` is None), sorted: the items an annotation job asks about."""
    return np.sort(np.random.default_rng(seed).permutation(num_items)[:count] + 1)


def annotation_path(dataset: Dataset, name: str, llm: LanguageModel, prompt: Prompt,
                    extra: Sequence[str] = ()) -> Path:
    """``$MODREC_EMBEDDINGS_DIR/<dataset>/annotations/<name>-<prompt version>-<digest>.jsonl``
    where the digest covers the model fingerprint and ``extra`` (labels, examples)."""
    digest = hashlib.sha256("\n".join([llm.fingerprint, *extra]).encode()).hexdigest()[:12]
    folder = EmbeddingStore.folder_for(dataset) / "annotations"
    return folder / f"{name}-{prompt.version}-{digest}.jsonl"


@dataclass
class AnnotateReport:
    task: str
    path: str
    items: int
    asked: int = 0  # answered by the model in this run
    cached: int = 0  # found in the file
    seconds: float = 0.0
    llm_stats: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        rate = self.asked / self.seconds if self.seconds > 0 else None
        return {"task": self.task, "file": self.path, "items": self.items,
                "asked": self.asked, "cached": self.cached, "seconds": round(self.seconds, 2),
                "items_per_second": None if rate is None else round(rate, 4),
                "llm": self.llm_stats}


def item_texts(dataset: Dataset, column: str = "text") -> dict[int, str]:
    """Each item's text by item index: ``column`` (``text`` falls back to the title; a
    computed column such as ``video_text`` once `with_item_columns` added it)."""
    return {int(i): str(v) for i, v in item_inputs(dataset, column).items()
            if isinstance(v, str) and v.strip()}


def _text_part(column: str) -> list[str]:
    """What a text column other than ``text`` adds to an annotation file's key, so that
    answers about different texts of the same items never share a file."""
    return [] if column == "text" else [f"text={column}"]


def _run(keys: list[str], ask: Callable[[str], dict[str, Any]], file: AnnotationFile,
         report: AnnotateReport, llm: LanguageModel, workers: int, progress: bool,
         ) -> dict[str, dict[str, Any]]:
    """Ask for every key the file lacks (``workers`` at a time), appending each answer."""
    records = file.records()
    todo = [k for k in dict.fromkeys(keys) if k not in records]
    report.cached = len(set(keys)) - len(todo)
    started = time.perf_counter()
    bar: Bar[object] = progress_bar(total=len(todo), desc=report.task, unit="item",
                                    enabled=progress)

    def keep(key: str, answer: dict[str, Any]) -> None:
        record = {"key": key, **answer, "model": llm.fingerprint,
                  "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        file.append(record)
        records[key] = record
        report.asked += 1
        report.seconds = time.perf_counter() - started
        bar.update(1)
        bar.set_postfix(items_per_s=f"{report.asked / report.seconds:.2f}")

    try:
        if workers <= 1:
            for key in todo:
                keep(key, ask(key))
        else:  # a server answers several requests at once
            pool = ThreadPoolExecutor(max_workers=workers)
            try:
                futures = {pool.submit(ask, key): key for key in todo}
                for future in as_completed(futures):
                    keep(futures[future], future.result())
            finally:  # on an error or Ctrl-C, ask nothing more
                pool.shutdown(wait=True, cancel_futures=True)
    finally:
        bar.close()
    report.llm_stats = dict(getattr(llm, "stats", {}))
    return records


def annotate_labels(dataset: Dataset, field_name: str, labels: list[str], items: np.ndarray,
                    how: LabelPrompting, pool: np.ndarray | None = None,
                    pool_name: str = "all") -> tuple[np.ndarray, AnnotateReport]:
    """``(len(items), C)`` scores in [0, 1] for ``labels`` of the item indices ``items``.
    ``pool``: the item indices few-shot examples may come from (default: every item
    with labels); an item is never its own example."""
    if how.method not in METHODS:
        raise UsageError(f"unknown method {how.method!r}; choose {', '.join(METHODS)}")
    prompt = load_prompt(f"labels-{how.method}")
    texts = item_texts(dataset, how.text)
    truth = {int(i): [t for t in split_tags(v) if t in set(labels)]
             for i, v in dataset.items.set_index("item")[field_name].items()}
    examples = _ExampleFinder(dataset, how, truth, texts, pool) if how.examples else None
    out = how.out or annotation_path(
        dataset, f"labels-{field_name}-{how.method}", how.llm, prompt,
        ["\t".join(labels), f"examples={how.examples}:{pool_name if how.examples else ''}",
         *_text_part(how.text)])
    file = AnnotationFile(out)
    report = AnnotateReport(f"labels {field_name} ({how.method})", str(out), len(items))
    values = {"noun": how.noun, "Noun": how.noun[:1].upper() + how.noun[1:],
              "field": field_name, "Field": field_name[:1].upper() + field_name[1:],
              "labels": ", ".join(labels)}

    def ask(key: str) -> dict[str, Any]:
        item = int(key)
        text = texts.get(item)
        if text is None:
            return {"scores": None, "error": "no text"}
        shots = examples.block(item, prompt, values) if examples else ""
        base = {**values, "text": text, "examples": shots}
        if how.method == "yesno":
            logprobs = score_all(how.llm, [prompt.render(**base, label=label)
                                           for label in labels], ["yes", "no"])
            scores = [float(p) for p in option_probabilities(logprobs)[:, 0]]
        elif how.method == "choice":
            scores = [float(p) for p in option_probabilities(
                how.llm.score(prompt.render(**base), labels))]
        else:
            reply = json.loads(how.llm.complete(prompt.render(**base), _labels_schema(labels)))
            chosen = set(reply.get("labels", []))
            scores = [1.0 if label in chosen else 0.0 for label in labels]
        return {"scores": dict(zip(labels, scores, strict=True)), "prompt": prompt.version}

    keys = [str(int(i)) for i in items]
    records = _run(keys, ask, file, report, how.llm, how.workers, how.progress)
    scores = np.full((len(items), len(labels)), np.nan)
    for row, key in enumerate(keys):
        answer = records[key].get("scores")
        if answer:
            scores[row] = [answer.get(label, np.nan) for label in labels]
    missing = int(np.isnan(scores).any(1).sum())
    if missing:
        log.warning("%d of %d items have no text to annotate; they score 0", missing, len(keys))
    return np.nan_to_num(scores, nan=0.0), report


def _labels_schema(labels: list[str]) -> dict[str, Any]:
    return {"type": "object", "additionalProperties": False, "required": ["labels"],
            "properties": {"labels": {"type": "array", "minItems": 1,
                                      "maxItems": min(len(labels), 6),
                                      "items": {"type": "string", "enum": labels}}}}


class _ExampleFinder:
    """The k nearest labelled items of the pool by stored text vectors."""

    def __init__(self, dataset: Dataset, how: LabelPrompting, truth: dict[int, list[str]],
                 texts: dict[int, str], pool: np.ndarray | None) -> None:
        store = how.store or EmbeddingStore.for_dataset(dataset)
        usable = store.done(how.encoder) & ~store.failed(how.encoder)
        self.vectors = normalize_rows(np.asarray(store.matrix(how.encoder), np.float32))
        candidates = np.arange(1, dataset.num_items + 1) if pool is None else np.asarray(pool)
        self.pool = np.array([i for i in candidates
                              if usable[i] and truth.get(int(i)) and int(i) in texts])
        if len(self.pool) == 0:
            raise UsageError("no labelled item with a stored text vector to take examples "
                             f"from; run `modrec embed --encoder {how.encoder}` first")
        self.k, self.truth, self.texts = how.examples, truth, texts

    def block(self, item: int, prompt: Prompt, values: dict[str, str]) -> str:
        similarity = self.vectors[self.pool] @ self.vectors[item]  # (P,)
        similarity[self.pool == item] = -np.inf
        nearest = self.pool[np.argsort(-similarity, kind="stable")[:self.k]]
        shots = [prompt.example.format(**{**values, "text": self.texts[int(i)],
                                          "labels": ", ".join(self.truth[int(i)])})
                 for i in nearest]
        return "Examples:\n\n" + "\n\n".join(shots) + "\n\nNow this one.\n\n"


def relevance_pairs(queries: list[str], scores: np.ndarray, top: int) -> list[tuple[str, int]]:
    """The (query, item index) pairs to grade: each query's ``top`` items by its row of
    ``scores`` (``(Q, N)``, item index - 1 per column, as `TextSearch.scores` gives
    them), best first, ties in item order; an item scored not finite (no usable vector)
    is never among them."""
    return [(query, int(i) + 1) for q, query in enumerate(queries)
            for i in np.argsort(-scores[q], kind="stable")[:top]
            if np.isfinite(scores[q, i])]


def grade_relevance(dataset: Dataset, llm: LanguageModel, pairs: list[tuple[str, int]],
                    noun: str = "item", out: Path | None = None, workers: int = 1,
                    progress: bool = True, text: str = "text",
                    ) -> tuple[np.ndarray, AnnotateReport]:
    """Expected grades in [0, 3] of (query, item index) pairs, cached like labels;
    the model reads the item column ``text``."""
    prompt = load_prompt("relevance")
    texts = item_texts(dataset, text)
    out = out or annotation_path(dataset, "relevance", llm, prompt, _text_part(text))
    file = AnnotationFile(out)
    report = AnnotateReport("relevance", str(out), len(pairs))
    Noun = noun[:1].upper() + noun[1:]

    def ask(key: str) -> dict[str, Any]:
        query, item = key.rsplit("\t", 1)
        text = texts.get(int(item))
        if text is None:
            return {"grade": None, "error": "no text"}
        logprobs = llm.score(prompt.render(query=query, noun=noun, Noun=Noun, text=text),
                             GRADES)
        return {"grade": expected_grade(logprobs), "prompt": prompt.version,
                "p": [round(float(p), 6) for p in option_probabilities(logprobs)]}

    keys = [f"{query}\t{int(item)}" for query, item in pairs]
    records = _run(keys, ask, file, report, llm, workers, progress)
    grades = np.array([records[k].get("grade") if records[k].get("grade") is not None
                       else np.nan for k in keys], dtype=np.float64)
    return grades, report
