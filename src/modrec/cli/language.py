"""``modrec annotate``, ``modrec classify`` and ``modrec search``: items labelled, classified
and searched by text, from stored embeddings or a language model."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from modrec.cli.common import (
    Subparsers,
    at_least,
    dataset_arguments,
    dataset_source,
    no_progress_argument,
    store_argument,
    template,
    threads_argument,
)
from modrec.errors import UsageError

LLM_SPEC = "local:PATH.gguf or openai:URL#MODEL"


def add_parsers(sub: Subparsers) -> None:
    _add_annotate(sub)
    _add_classify(sub)
    _add_search(sub)


def _llm_arguments(p: argparse.ArgumentParser, required: bool) -> None:
    """The language model and how it is asked, for annotate and classify."""
    p.add_argument("--llm", required=required, metavar="SPEC",
                   help="local:PATH.gguf (llama.cpp in process) or openai:URL#MODEL (an "
                   "OpenAI-compatible server: vLLM, llama.cpp, TGI, Ollama)")
    p.add_argument("--method", choices=["yesno", "choice", "json"], default="yesno",
                   help="yesno: P(yes) per label; choice: one pass per item over all "
                   "labels; json: generated labels, schema-constrained")
    p.add_argument("--examples", type=at_least(0), default=0,
                   help="few-shot: the N nearest labelled items (by stored text vectors) "
                   "shown with their labels")
    p.add_argument("--example-encoder", default="text",
                   help="the stored text embeddings that find few-shot examples")
    p.add_argument("--noun", default="item", help="what the prompt calls an item (movie)")
    p.add_argument("--text", default="text", metavar="COLUMN", help="the item column the "
                   "model reads (default: text, else the title; video_text after "
                   "modrec transcribe)")
    threads_argument(p, help="llama.cpp threads (1 when another process is busy: spinning "
                     "threads slow each other down)")
    p.add_argument("--context", type=at_least(256), default=4096,
                   help="llama.cpp context length in tokens")
    p.add_argument("--workers", type=at_least(1), default=1,
                   help="requests in flight (a server answers several at once)")
    no_progress_argument(p)


def _open_llm(args: argparse.Namespace) -> Any:
    from modrec.llm import open_llm

    return open_llm(args.llm, threads=args.threads, context=args.context,
                    concurrency=max(args.workers, 1))


def _label_prompting(args: argparse.Namespace) -> Any:
    """The language model and method the annotate and classify verbs were given."""
    from modrec.content.annotate import LabelPrompting

    return LabelPrompting(_open_llm(args), method=args.method, noun=args.noun,
                          examples=args.examples, encoder=args.example_encoder,
                          text=args.text, workers=args.workers,
                          progress=not args.no_progress,
                          out=Path(args.out) if getattr(args, "out", None) else None)


def _dataset(args: argparse.Namespace, store: str | None = None) -> Any:
    """``--dataset`` with the item columns `modrec transcribe` computed into its store
    folder, so that --labels and text encoders name them like the catalog's own."""
    from modrec.content.columns import ItemColumns, with_item_columns
    from modrec.data import load_dataset

    dataset = load_dataset(dataset_source(args.dataset))
    return with_item_columns(dataset, ItemColumns.for_dataset(dataset, store))


def _add_annotate(sub: Subparsers) -> None:
    p = sub.add_parser("annotate", help="label items with a language model (zero- or "
                       "few-shot), resumably, into an annotation file")
    dataset_arguments(p, formats=False)
    p.add_argument("--task", choices=["labels", "relevance"], default="labels",
                   help="labels: score each label of --labels per item; relevance: grade "
                   "0-3 the top --top text-search results of each query")
    p.add_argument("--labels", help="item column whose |-separated labels make the "
                   "vocabulary (relevance: each label is a query, through --template)")
    p.add_argument("--query", action="append", help="relevance: a query (repeatable)")
    p.add_argument("--template", type=template, default="{label}",
                   help="relevance: how a label becomes a query")
    p.add_argument("--top", type=at_least(1), default=20,
                   help="relevance: search results graded per query")
    p.add_argument("--items", type=at_least(1), help="a seeded sample of this many items "
                   "(default: every item)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="annotation file (JSON lines; default: in the dataset's "
                   "embedding store folder, named by model, prompt and task)")
    p.add_argument("--max-labels", type=at_least(1), default=50)
    p.add_argument("--min-count", type=at_least(1), default=10)
    p.add_argument("--column", help="labels: also keep the labels scoring at least "
                   "--threshold (and each item's best) as this computed item column, "
                   "read by tags:COLUMN, --labels COLUMN and the other verbs")
    p.add_argument("--threshold", type=float, default=0.5, help="labels: the score a "
                   "label needs to enter --column (classify --mode llm reports a threshold "
                   "chosen on validation items)")
    _llm_arguments(p, required=True)
    p.set_defaults(func=cmd_annotate)


def cmd_annotate(args: argparse.Namespace) -> dict[str, Any]:
    from modrec.content.annotate import annotate_labels, sample_items
    from modrec.content.classify import label_matrix

    dataset = _dataset(args)
    if args.task == "relevance":
        return _annotate_relevance(args, dataset)
    if not args.labels:
        raise UsageError("--task labels needs --labels COLUMN (the label vocabulary)")
    vocabulary = label_matrix(dataset, args.labels, args.max_labels, args.min_count).labels
    items = sample_items(dataset.num_items, args.items, args.seed)
    how = _label_prompting(args)
    scores, report = annotate_labels(dataset, args.labels, vocabulary, items, how)
    if not args.json:
        print(f"{report.task}: {report.asked} items asked, {report.cached} already in "
              f"{report.path} ({report.seconds:.1f} s)")
    result = {"dataset": dataset.name, "labels_field": args.labels, "labels": vocabulary,
              "llm": how.llm.spec, "method": how.method, "examples": how.examples,
              **report.to_dict()}
    if args.column:  # the answers as an item column the other verbs read
        from modrec.content.columns import write_label_column

        result["item_column"] = write_label_column(
            dataset, args.column, vocabulary, items, scores, how.llm.fingerprint,
            how.version(), how.text, args.threshold)
        if not args.json:
            print(f"item column {args.column!r}: {len(items)} items "
                  f"(e.g. --encoder tags:{args.column}, --labels {args.column})")
    return result


def _annotate_relevance(args: argparse.Namespace, dataset: Any) -> dict[str, Any]:
    """Grade the top ``--top`` text-search results of every query (``--query``, or each
    label of ``--labels`` through ``--template``)."""
    import numpy as np

    from modrec.content import EmbeddingStore
    from modrec.content.annotate import grade_relevance, relevance_pairs
    from modrec.content.classify import label_matrix
    from modrec.content.search import TextSearch

    queries = list(args.query or [])
    if args.labels:
        queries += [args.template.format(label=label) for label in
                    label_matrix(dataset, args.labels, args.max_labels, args.min_count).labels]
    if not queries:
        raise UsageError("--task relevance needs --query TEXT (repeatable) or --labels COLUMN")
    engine = TextSearch(dataset, EmbeddingStore.for_dataset(dataset), args.example_encoder)
    pairs = relevance_pairs(queries, engine.scores(queries), args.top)
    llm = _open_llm(args)
    grades, report = grade_relevance(dataset, llm, pairs, args.noun,
                                     Path(args.out) if args.out else None, args.workers,
                                     not args.no_progress, text=args.text)
    if not args.json:
        print(f"relevance: {report.asked} pairs graded, {report.cached} already in "
              f"{report.path} ({report.seconds:.1f} s); mean grade {np.nanmean(grades):.2f}")
    return {"dataset": dataset.name, "queries": len(queries), "llm": llm.spec,
            **report.to_dict()}


def _add_classify(sub: Subparsers) -> None:
    p = sub.add_parser("classify", help="multi-label item classification from embeddings "
                       "or a language model")
    dataset_arguments(p, formats=False)
    p.add_argument("--labels", required=True, help="item column of |-separated labels")
    p.add_argument("--encoder", help="comma-separated stored embeddings (every mode but llm)")
    p.add_argument("--mode", choices=["trained", "zero-shot", "knn", "llm", "ensemble"],
                   default="trained", help="ensemble: llm and trained averaged, the "
                   "weight chosen on validation items")
    p.add_argument("--test-items", type=at_least(1), help="evaluate on a seeded sample of "
                   "this many held-out items (the same for every mode)")
    p.add_argument("--valid-items", type=at_least(1), help="choose the threshold (and stop "
                   "training) on a seeded sample of this many validation items")
    p.add_argument("--head", choices=["linear", "mlp"], default="mlp", help="trained mode")
    p.add_argument("-k", type=at_least(1), default=20, help="neighbours in knn mode")
    p.add_argument("--template", type=template, default="{label}",
                   help="zero-shot label phrasing, e.g. 'a {label} movie'")
    p.add_argument("--max-labels", type=at_least(1), default=50,
                   help="most frequent labels kept")
    p.add_argument("--min-count", type=at_least(1), default=10, help="items a label needs")
    p.add_argument("--seed", type=int, default=0)
    store_argument(p)
    _llm_arguments(p, required=False)
    p.set_defaults(func=cmd_classify)


def cmd_classify(args: argparse.Namespace) -> dict[str, Any]:
    from modrec.content import EmbeddingStore
    from modrec.content.classify import classify

    if args.mode in ("llm", "ensemble") and not args.llm:
        raise UsageError(f"--mode {args.mode} needs --llm SPEC ({LLM_SPEC})")
    if args.mode != "llm" and not args.encoder:
        raise UsageError(f"--mode {args.mode} needs --encoder (the stored embeddings to use)")
    dataset = _dataset(args, args.store)
    how = _label_prompting(args) if args.mode in ("llm", "ensemble") else None
    encoders = args.encoder.split(",") if args.encoder and args.mode != "llm" else []
    result = classify(dataset, args.labels, encoders, args.mode,
                      EmbeddingStore.for_dataset(dataset, args.store), head=args.head, k=args.k,
                      template=args.template, seed=args.seed, max_labels=args.max_labels,
                      min_count=args.min_count, llm=how, test_items=args.test_items,
                      valid_items=args.valid_items)
    if not args.json:
        print(f"{result['mode']} on {result['labels']} labels of {args.labels!r}, "
              f"{result['items']['test']} held-out items:")
        print(f"  micro-F1 {result['micro_f1']:.4f}  macro-F1 {result['macro_f1']:.4f}  "
              f"mAP {result['map']:.4f}")
    return result


def _add_search(sub: Subparsers) -> None:
    p = sub.add_parser("search", help="rank items by text relevance to a query")
    dataset_arguments(p, formats=False)
    p.add_argument("query", nargs="?")
    p.add_argument("-k", type=at_least(1), default=10)
    p.add_argument("--encoder", default="text", help="the stored text embeddings to search")
    p.add_argument("--labels", help="measure instead: each label of this column is a query")
    p.add_argument("--template", type=template, default="{label}",
                   help="how a label becomes a query")
    store_argument(p)
    p.add_argument("--rerank", choices=["none", "llm"], default="none",
                   help="llm: a language model grades the top --rerank-top items 0-3 and "
                   "they are reordered by grade (graded pairs are cached)")
    p.add_argument("--rerank-top", type=at_least(1), default=50)
    p.add_argument("--llm", metavar="SPEC", help=LLM_SPEC)
    p.add_argument("--noun", default="item", help="what the prompt calls an item (movie)")
    threads_argument(p, help="llama.cpp threads")
    p.add_argument("--context", type=at_least(256), default=4096)
    p.set_defaults(func=cmd_search)


def cmd_search(args: argparse.Namespace) -> dict[str, Any]:
    from modrec.content import EmbeddingStore
    from modrec.content.search import TextSearch, search_map

    if args.rerank == "llm" and not args.llm:
        raise UsageError(f"--rerank llm needs --llm SPEC ({LLM_SPEC})")
    llm = None
    if args.rerank == "llm":
        from modrec.llm import open_llm

        llm = open_llm(args.llm, threads=args.threads, context=args.context)
    dataset = _dataset(args, args.store)
    store = EmbeddingStore.for_dataset(dataset, args.store)
    if args.labels:  # evaluate: every label is a query
        result = search_map(dataset, args.labels, args.template, store, args.encoder,
                            llm=llm, rerank_top=args.rerank_top, noun=args.noun)
        if not args.json:
            print(f"{result['queries']} label queries on {args.labels!r}: "
                  f"mAP {result['map']:.4f}")
        return result
    if not args.query:
        raise UsageError("give a query, or --labels FIELD to measure search quality")
    hits = TextSearch(dataset, store, args.encoder).search(args.query, args.k, llm,
                                                          args.rerank_top, args.noun)
    if not args.json:
        for rank, hit in enumerate(hits, start=1):
            print(f"  {rank:>2}. {hit.get('title') or hit['item_id']}  ({hit['score']:.3f})")
    return {"dataset": dataset.name, "query": args.query, "items": hits}
