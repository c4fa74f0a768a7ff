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
    from modrec.cli.common import columns
    from modrec.content.columns import ItemColumns, with_item_columns
    from modrec.data import load_dataset

    format = getattr(args, "format", None)  # classify reads any path; the others named ones
    dataset = load_dataset(dataset_source(args.dataset, format), format,
                           columns(getattr(args, "columns", None)))
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
    from modrec.content.video.heads import HEADS

    p = sub.add_parser("classify", help="item classification from embeddings or a language "
                       "model: multi-label tags, or one class per item (--single-label: "
                       "cross-validated, saved, applied to new items)")
    dataset_arguments(p)
    p.add_argument("--labels", help="item column of |-separated labels (one class per item "
                   "with --single-label); with --apply, optional: the true classes to "
                   "score the predictions against")
    p.add_argument("--encoder", help="comma-separated stored embeddings (every mode but llm); "
                   "--single-label reads one sequence encoder's steps (video:i3d) when it "
                   "stores them")
    p.add_argument("--mode", choices=["trained", "zero-shot", "knn", "llm", "ensemble"],
                   default="trained", help="ensemble: llm and trained averaged, the "
                   "weight chosen on validation items")
    p.add_argument("--test-items", type=at_least(1), help="evaluate on a seeded sample of "
                   "this many held-out items (the same for every mode)")
    p.add_argument("--valid-items", type=at_least(1), help="choose the threshold (and stop "
                   "training) on a seeded sample of this many validation items")
    p.add_argument("--head", choices=["linear", "mlp", *HEADS], help="trained mode: linear "
                   "or mlp (default); --single-label: mean (default: a masked mean, then "
                   "an MLP) or a temporal head over step sequences (attention, gru, "
                   "transformer, tcn)")
    p.add_argument("-k", type=at_least(1), default=20, help="neighbours in knn mode")
    p.add_argument("--template", type=template, default="{label}",
                   help="zero-shot label phrasing, e.g. 'a {label} movie'")
    p.add_argument("--max-labels", type=at_least(1), default=50,
                   help="most frequent labels kept")
    p.add_argument("--min-count", type=at_least(1), default=10, help="items a label needs")
    p.add_argument("--seed", type=int, default=0)
    single = p.add_argument_group("one class per item (--single-label, --apply)")
    single.add_argument("--single-label", action="store_true",
                        help="each item has one class: a softmax head, k-fold "
                        "cross-validated (accuracy, per-class F1, confusion matrix)")
    single.add_argument("--groups", metavar="COLUMN", help="items sharing a value (clips "
                        "of one source video) stay in one fold: grouped cross-validation")
    single.add_argument("--folds", type=at_least(2), default=5)
    single.add_argument("--save", metavar="PATH", help="train the head on every labelled "
                        "item after the cross-validation and save it (safetensors)")
    single.add_argument("--confusion", metavar="PNG", help="plot the out-of-fold confusion "
                        "matrix")
    single.add_argument("--apply", metavar="PATH", help="apply a saved head to the "
                        "dataset's items (their stored embeddings) instead of training")
    single.add_argument("--column", help="with --apply: keep each item's predicted class "
                        "(and every class's probability) as this computed item column, "
                        "read by tags:COLUMN, --labels COLUMN and the other verbs")
    store_argument(p)
    _llm_arguments(p, required=False)
    p.set_defaults(func=cmd_classify)


def cmd_classify(args: argparse.Namespace) -> dict[str, Any]:
    from modrec.content import EmbeddingStore
    from modrec.content.classify import classify

    if args.apply or args.single_label:
        return _classify_single(args)
    single_only = [f"--{n}" for n in ("groups", "save", "confusion", "column")
                   if getattr(args, n)]
    if single_only:
        raise UsageError(f"{', '.join(single_only)} go with --single-label or --apply")
    if not args.labels:
        raise UsageError("classify needs --labels COLUMN (the item column to learn)")
    if args.head not in (None, "linear", "mlp"):
        raise UsageError(f"--head {args.head} is a single-label head; multi-label "
                         "classification takes linear or mlp (or add --single-label)")
    if args.mode in ("llm", "ensemble") and not args.llm:
        raise UsageError(f"--mode {args.mode} needs --llm SPEC ({LLM_SPEC})")
    if args.mode != "llm" and not args.encoder:
        raise UsageError(f"--mode {args.mode} needs --encoder (the stored embeddings to use)")
    dataset = _dataset(args, args.store)
    how = _label_prompting(args) if args.mode in ("llm", "ensemble") else None
    encoders = args.encoder.split(",") if args.encoder and args.mode != "llm" else []
    result = classify(dataset, args.labels, encoders, args.mode,
                      EmbeddingStore.for_dataset(dataset, args.store),
                      head=args.head or "mlp", k=args.k,
                      template=args.template, seed=args.seed, max_labels=args.max_labels,
                      min_count=args.min_count, llm=how, test_items=args.test_items,
                      valid_items=args.valid_items)
    if not args.json:
        print(f"{result['mode']} on {result['labels']} labels of {args.labels!r}, "
              f"{result['items']['test']} held-out items:")
        print(f"  micro-F1 {result['micro_f1']:.4f}  macro-F1 {result['macro_f1']:.4f}  "
              f"mAP {result['map']:.4f}")
    return result


def _classify_single(args: argparse.Namespace) -> dict[str, Any]:
    """``--single-label`` (cross-validate, and with --save train and save) or ``--apply``."""
    from modrec.content import EmbeddingStore
    from modrec.content.single_label import apply_saved_head, evaluate_and_train
    from modrec.content.video.saved_head import SavedHead

    if args.mode != "trained":
        raise UsageError("--single-label and --apply train or apply a head: leave out --mode")
    if args.apply and (args.save or args.confusion or args.groups or args.encoder):
        raise UsageError("--apply uses a saved head, which names its encoders: --encoder, "
                         "--save, --confusion and --groups go with training "
                         "(--single-label without --apply)")
    if args.column and not args.apply:
        raise UsageError("--column keeps a saved head's predictions: train with --save PATH, "
                         "then run --apply PATH --column NAME")
    if args.threads is None:
        from modrec.threads import apply_threads

        # Batches of 32 short sequences: one thread is fastest, and on a busy machine
        # several threads wait on each other (benchmarks/fight_heads.py, --threads).
        apply_threads(1)
    dataset = _dataset(args, args.store)
    store = EmbeddingStore.for_dataset(dataset, args.store)
    if args.apply:
        saved = SavedHead.load(Path(args.apply))
        result = apply_saved_head(dataset, store, saved, args.labels)
        items, scores = result.pop("items_array"), result.pop("scores")
        if args.column:
            from modrec.content.columns import ItemColumns, write_class_column

            result["item_column"] = write_class_column(
                dataset, args.column, saved.classes, items, scores, result["missing"],
                saved.digest, f"single-label:{saved.meta['settings']['head']}",
                ",".join(e["name"] for e in saved.meta["encoders"]),
                ItemColumns.for_dataset(dataset, args.store))
        if not args.json:
            print(f"{Path(args.apply).name} on {result['items']} items of {dataset.name} "
                  f"({len(result['missing'])} without stored vectors)"
                  + (f"; accuracy {result['accuracy']:.4f} against {args.labels!r}"
                     if "accuracy" in result else ""))
            if args.column:
                print(f"item column {args.column!r}: {result['item_column']['file']}")
        return result
    if not args.labels or not args.encoder:
        raise UsageError("--single-label needs --labels COLUMN and --encoder NAME (the "
                         "stored embeddings to learn from)")
    head = args.head or "mean"
    if head in ("linear", "mlp"):
        raise UsageError(f"--head {head} is multi-label's; --single-label takes mean or a "
                         "temporal head (attention, gru, transformer, tcn)")
    result = evaluate_and_train(dataset, args.labels, args.encoder.split(","), store, head,
                                args.groups, args.folds, args.seed,
                                Path(args.save) if args.save else None,
                                Path(args.confusion) if args.confusion else None)
    if not args.json:
        print(f"{head} head on {result['items']} items, {len(result['classes'])} classes, "
              f"{args.folds}-fold{' grouped' if args.groups else ''} cross-validation:")
        print(f"  accuracy {result['accuracy']:.4f} ± {result['accuracy_std']:.4f}  "
              f"macro-F1 {result['macro_f1']:.4f}  ({result['train_seconds']:.1f} s training)")
        for name, f1 in result["per_class_f1"].items():
            print(f"  F1 {name}: {f1:.4f}")
        for item_id, why in list(result["missing"].items())[:10]:
            print(f"  left out {item_id}: {why}")
        if args.save:
            print(f"head: {args.save}")
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
