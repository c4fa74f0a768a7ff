"""``modrec <verb>``: argument parsing only; each verb calls one public function.

Every verb that reports numbers accepts ``--json`` and then prints them as one JSON
object on the last line of standard output (progress and logs go to standard error).

Misuse is answered with one message naming the problem and exit status 2 (argparse's
own usage errors included), never a traceback. An exception nobody anticipated is a
bug: it is named in one line with exit status 1, and ``-v`` shows its traceback. A
command that fails removes the run folder or store it had just created when nothing in
it is worth keeping (a run keeps its checkpoint, to be continued with ``--resume``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import re
import shutil
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from modrec.threads import apply_threads, thread_summary

log = logging.getLogger("modrec")

# What misuse and the world (missing files, full disks, corrupt folders, an optional
# package not installed, such as TorchRec for a sharded item table) raise: the message
# is for the user. Anything else is a bug in modrec.
USER_ERRORS = (ValueError, KeyError, OSError, RuntimeError, ImportError)


def _at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number no smaller than ``minimum``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value
    parse.__name__ = f"integer >= {minimum}"
    return parse


def _port(text: str) -> int:
    value = _at_least(1)(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"a TCP port is at most 65535, got {value}")
    return value


def _milliseconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number of at least 0, got {text}")
    return value


def _device(text: str) -> str:
    """An argparse type: a torch device this machine has (cpu, cuda, cuda:N, mps), checked
    before any work, so that a missing GPU is named at once, not deep inside an encoder."""
    form = re.fullmatch(r"cpu|mps|cuda(?::(\d+))?", text)
    if form is None:
        raise argparse.ArgumentTypeError(f"unknown device {text!r}; expected cpu, cuda, "
                                         "cuda:N (the N-th GPU) or mps")
    if text == "cpu":
        return text
    import torch

    if text == "mps":
        if not torch.backends.mps.is_available():
            raise argparse.ArgumentTypeError(
                "mps: no Apple GPU here (MPS needs macOS on Apple silicon); use cpu or cuda")
        return text
    if torch.version.cuda is None and torch.version.hip is None:
        raise argparse.ArgumentTypeError(
            f"{text}: this torch build ({torch.__version__}) has no CUDA support; install a "
            "CUDA build of PyTorch (https://pytorch.org/get-started/locally/ gives the pip "
            "command for your CUDA version), or use --device cpu")
    count = torch.cuda.device_count()
    if count == 0:
        raise argparse.ArgumentTypeError(
            f"{text}: torch {torch.__version__} has CUDA support but sees no GPU (check the "
            "driver with nvidia-smi, and CUDA_VISIBLE_DEVICES), or use --device cpu")
    if form.group(1) is not None and int(form.group(1)) >= count:
        raise argparse.ArgumentTypeError(
            f"{text}: {count} GPU{'s' if count > 1 else ''} visible here (cuda:0 to "
            f"cuda:{count - 1})")
    return text


def _dataset_arg(text: str, format: str | None = None) -> str:
    """A named dataset as given; a path made absolute (so that a run records where its
    data was, whatever the directory it is later resumed or refitted from); anything
    else refused with the directory a relative path was looked for in."""
    from modrec.data import NAMED

    if text in NAMED and format is None:
        return text
    path = Path(text).expanduser()
    if path.exists():
        return str(path.resolve())
    where = "" if path.is_absolute() else f" (relative paths start from {Path.cwd()})"
    raise ValueError(f"{text!r} is neither a named dataset ({', '.join(NAMED)}) nor an "
                     f"existing path{where}; `modrec datasets` lists the named ones")


@contextlib.contextmanager
def _removed_on_failure(folder: Path, worth_keeping: Callable[[Path], bool],
                        how_to_continue: str) -> Iterator[None]:
    """If the command fails, remove ``folder`` when this command created it and it
    holds nothing ``worth_keeping``: a failed command leaves no half-made folder."""
    existed = folder.exists()
    try:
        yield
    except BaseException:
        if not existed and folder.is_dir():
            if worth_keeping(folder):
                log.warning("%s keeps what was done before the failure; %s", folder,
                            how_to_continue)
            else:
                shutil.rmtree(folder, ignore_errors=True)
        raise


def _resumable(folder: Path) -> bool:
    """--resume continues from checkpoint.pt alone (without it, it starts over)."""
    return (folder / "checkpoint.pt").exists()


def _columns(text: str | None) -> dict[str, str] | None:
    if not text:
        return None
    pairs = [p.split("=", 1) for p in text.split(",")]
    if any(len(p) != 2 for p in pairs):
        raise ValueError(f"--columns {text!r}: expected role=column pairs, e.g. user=uid,item=iid")
    return {role.strip(): column.strip() for role, column in pairs}


def _print_metrics(title: str, metrics: dict[str, float]) -> None:
    keys = [k for k in metrics if "@" in k or k == "mrr"]
    print(title)
    print("  " + "  ".join(f"{k:>9}" for k in keys))
    print("  " + "  ".join(f"{metrics[k]:>9.4f}" for k in keys))


def cmd_datasets(args: argparse.Namespace) -> dict[str, Any]:
    from modrec import paths
    from modrec.data import list_datasets

    rows = list_datasets()
    if not args.json:
        print(f"data directory: {paths.data_dir()}  (set MODREC_DATA_DIR to change it)")
        for row in rows:
            mark = "present" if row["present"] else "missing"
            print(f"  {row['name']:<18} {mark:<8} {row['description']}")
    return {"data_dir": str(paths.data_dir()), "datasets": rows}


def cmd_train(args: argparse.Namespace) -> dict[str, Any]:
    from modrec.config import build_config
    from modrec.train import train

    overrides = list(args.set or [])
    if args.epochs is not None:
        overrides.append(f"train.epochs={args.epochs}")
    if args.format is not None:
        overrides.append(f"data.format={args.format}")
    if args.columns is not None:
        overrides.append(f"data.columns={json.dumps(_columns(args.columns))}")
    if args.split is not None:
        overrides.append(f"data.split={args.split}")
    if args.item_tower is not None:
        overrides.append(f"model.item_tower={args.item_tower}")
    if args.encoder is not None:
        overrides.append(f"model.encoders={json.dumps(args.encoder.split(','))}")
    dataset = None if args.dataset is None else _dataset_arg(args.dataset, args.format)
    if args.config is not None and not Path(args.config).is_file():
        raise FileNotFoundError(f"--config {args.config}: no such file")
    config = build_config(dataset, args.model, args.config, overrides)
    out = Path(args.out or f"runs/{Path(config.data.dataset).name}-{config.model.name}")
    log.info("training %s on %s -> %s", config.model.name, config.data.dataset, out)
    with _removed_on_failure(out, _resumable, "continue it with the same command plus --resume"):
        train(config, out, resume=args.resume, progress=not args.no_progress)
    return _report_run(out, args.json)


def cmd_refit(args: argparse.Namespace) -> dict[str, Any]:
    from modrec.train import refit

    out = Path(args.out or f"{str(args.run_dir).rstrip('/')}-refit")
    log.info("refitting %s on training plus validation items -> %s", args.run_dir, out)
    with _removed_on_failure(out, _resumable, "continue it with the same command plus --resume"):
        refit(args.run_dir, out, resume=args.resume, progress=not args.no_progress)
    return _report_run(out, args.json)


def _report_run(out: Path, as_json: bool) -> dict[str, Any]:
    from modrec.runs import RunDir

    results = RunDir(out).results()
    results["run_dir"] = str(out)
    if not as_json:
        _print_metrics(f"test ({results['protocol']}), epoch {results['best_epoch']}, "
                       f"selected on {results['selected_on']}:",
                       {k: v for k, v in results.items() if isinstance(v, float)})
        for part in ("warm", "cold"):
            if part in results:
                _print_metrics(f"test, {part} targets ({results[part]['users']} users):",
                               results[part])
        print(f"run directory: {out}")
    return results


def cmd_evaluate(args: argparse.Namespace) -> dict[str, Any]:
    from modrec.runs import load_run

    run = load_run(args.run_dir)
    valid = None if run.split.valid is None else run.evaluate(run.split.valid)
    test = run.evaluate(run.split.test)
    if not args.json:
        print(f"protocol: {run.split.protocol}")
        if valid is not None:
            _print_metrics("valid:", valid)
        _print_metrics("test:", test)
    return {"run_dir": str(args.run_dir), "protocol": run.split.protocol, "valid": valid,
            "test": test}


def cmd_recommend(args: argparse.Namespace) -> dict[str, Any]:
    from modrec.serve.recommender import Query, Recommender

    if args.k < 1:
        raise ValueError(f"k must be at least 1, got {args.k}")
    recommender = Recommender.from_run(args.run_dir)
    dataset = recommender.run.dataset
    sequences = dataset.sequences()
    user = dataset.user_index(str(args.user))
    history = sequences[user].astype("int64")
    times = None if sequences.times is None else sequences.times_of(user)
    [answer] = recommender.recommend([Query(history, times, args.k, history, "user")])
    recs: dict[str, Any] = {"user_id": str(args.user), "history_length": int(len(history)),
            "history_tail": [recommender.catalog.describe(int(i)) for i in history[-5:][::-1]],
            "items": answer.items}
    if not args.json:
        print(f"user {args.user}: most recent items")
        for item in recs["history_tail"]:
            print(f"    {item.get('title') or item['item_id']}")
        print(f"top {args.k} recommendations (history excluded):")
        for rank, item in enumerate(answer.items, start=1):
            print(f"  {rank:>2}. {item.get('title') or item['item_id']}  ({item['score']:.3f})")
    return recs


def cmd_export(args: argparse.Namespace) -> dict[str, Any]:
    from modrec.runs import export_bundle

    out = export_bundle(args.run_dir, args.out, unfinished=args.unfinished)
    bundle = json.loads((out / "bundle.json").read_text())
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    if not args.json:
        print(f"bundle: {out} ({size / 1e6:.1f} MB; embeddings: "
              f"{', '.join(bundle['embeddings']) or 'none'})")
        if not bundle["finished"]:
            print(f"unfinished: training had reached epoch {bundle['epoch_reached']}; the "
                  "bundle records it, and loading it warns")
        print(f"serve it: modrec serve {out}")
    return {"bundle": str(out), "bytes": size, **bundle}


def _models(args: argparse.Namespace) -> dict[str, str]:
    """``RUN_DIR`` and ``--model NAME=RUN_DIR`` as {name: folder}, the default first."""
    models: dict[str, str] = {}
    if args.run_dir:
        models[Path(args.run_dir).name or "default"] = args.run_dir
    for spec in args.model or []:
        name, sep, folder = spec.partition("=")
        if not sep or not name or not folder:
            raise ValueError(f"--model {spec!r}: expected NAME=RUN_DIR")
        if name in models:
            raise ValueError(f"--model {name!r} is given twice")
        models[name] = folder
    if not models:
        raise ValueError("name a run to serve: modrec serve RUN_DIR, or --model NAME=RUN_DIR")
    from modrec.runs import RunDir

    for name, folder in models.items():  # cheap checks before the service starts
        run = RunDir(folder)
        if not run.config_file.exists():
            raise FileNotFoundError(f"model {name!r}: {folder} is not a run directory or "
                                    "bundle (no config.json)")
        run.read_config()
        if not run.weights_file.exists():
            raise FileNotFoundError(f"model {name!r}: {folder} has no model.pt; train it "
                                    "first")
    return models


def cmd_serve(args: argparse.Namespace) -> dict[str, Any]:
    import signal
    import threading

    import uvicorn

    from modrec.serve import ModelService, ServeConfig
    from modrec.serve.app import AppSettings, create_app
    from modrec.serve.index import IndexConfig
    from modrec.serve.state import SQLiteUserState

    models = _models(args)
    api_key = None
    if args.api_key_file:
        api_key = Path(args.api_key_file).read_text().strip()
        if not api_key:
            raise ValueError(f"{args.api_key_file} is empty; put the API key in it")
    config = ServeConfig(index=IndexConfig(exact_below=args.exact_below,
                                           ef_search=args.ef_search), max_k=args.max_k)
    state_path = Path(args.state)
    state = SQLiteUserState(state_path)  # a --state it cannot use is refused before anything
    if args.seed_state:  # seed and exit: a deploy step before the first start
        with state:
            written = ModelService.from_runs(models, state, config, seed=False).seed_state()
            events = state.events()
        if not args.json:
            print(f"user state {state_path}: {written} events seeded, {events} in all")
        return {"state": str(state_path), "seeded": written, "events": events}

    holder: dict[str, ModelService] = {}
    failed: list[Exception] = []

    def load() -> ModelService:
        service = ModelService.from_runs(models, state, config, seed=not args.no_seed)
        holder["service"] = service
        return service

    def reload_all(signum: int, frame: Any) -> None:
        service = holder.get("service")
        if service is None:
            return
        log.info("SIGHUP: reloading %s", ", ".join(service.models))
        # one model that fails to load keeps its old weights; the others still reload
        threading.Thread(target=service.reload_all, name="modrec-reload", daemon=True).start()

    def stop(err: Exception) -> None:  # nothing to serve: stop, and say why below
        failed.append(err)
        server.should_exit = True

    app = create_app(load, AppSettings(api_key=api_key, batch_window_ms=args.batch_window_ms,
                                       max_batch=args.max_batch, max_k=args.max_k,
                                       on_failure=[stop]))
    server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port,
                                           log_level=args.log_level,
                                           access_log=args.access_log))
    previous = signal.signal(signal.SIGHUP, reload_all)
    log.info("serving %s on http://%s:%d (state %s; %s)", ", ".join(
        f"{n}={f}" for n, f in models.items()), args.host, args.port, state_path,
        thread_summary())
    try:
        server.run()
    finally:
        signal.signal(signal.SIGHUP, previous)
        state.close()
    if failed:  # e.g. weights it refuses to load: exit with the reason, not a 503 forever
        raise failed[0]
    return {"served": list(models)}


def _media_root(source: str, format: str | None) -> Path | None:
    """The folder a catalog's media paths start from: None for a named dataset (its
    media live in the data directory), else the catalog file's folder."""
    from modrec.data import NAMED

    if source in NAMED and format is None:
        return None
    return Path(source) if Path(source).is_dir() else Path(source).parent


def cmd_embed(args: argparse.Namespace) -> dict[str, Any]:
    from modrec.content import EmbeddingStore, embed
    from modrec.content.embed_job import extraction_world, open_store
    from modrec.data import load_dataset

    source = _dataset_arg(args.dataset, args.format)
    dataset = load_dataset(source, args.format, _columns(args.columns))
    media_root = _media_root(source, args.format)
    folder = EmbeddingStore.folder_for(dataset, args.store)
    world = extraction_world()  # under torchrun: the ranks share the items, rank 0 reports
    with _removed_on_failure(folder, lambda f: (f / "manifest.json").exists(),
                             "run the command again: it encodes only what is missing"):
        store = open_store(dataset, folder, world)
        reports = embed(dataset, args.encoder.split(","), store, batch_size=args.batch_size,
                        device=args.device, progress=not args.no_progress, dtype=args.dtype,
                        allow_outside=args.allow_outside_paths, media_root=media_root,
                        world=world)
    if not args.json and world.is_main:
        for r in reports:
            print(f"  {r.encoder:<10} dim {r.dim:<5} encoded {r.encoded:>6} of {r.items} "
                  f"({r.already} already stored)  {r.items_per_second:8.1f} items/s  "
                  f"failures {r.failures}")
        print(f"store: {store.folder}")
    return {"dataset": dataset.name, "store": str(store.folder),
            "encoders": [r.to_dict() for r in reports]}


def cmd_transcribe(args: argparse.Namespace) -> dict[str, Any]:
    from modrec.content.columns import ItemColumns
    from modrec.content.video_text import VideoTextSettings, describe_videos
    from modrec.data import load_dataset

    source = _dataset_arg(args.dataset, args.format)
    dataset = load_dataset(source, args.format, _columns(args.columns))
    settings = VideoTextSettings(
        parts=tuple(p.strip() for p in args.parts.split(",") if p.strip()),
        model=args.model, language=args.language, threads=args.threads or 0,
        device=args.device, frames=args.frames, top_labels=args.top_labels,
        ocr_lang=args.ocr_lang, allow_outside=args.allow_outside_paths,
        media_root=_media_root(source, args.format), progress=not args.no_progress)
    columns = ItemColumns.for_dataset(dataset, args.store)
    reports = describe_videos(dataset, settings, columns)
    if not args.json:
        for r in reports:
            if r.skipped:
                print(f"  {r.column:<13} skipped: {r.skipped}")
                continue
            speed = (f"  {r.media_seconds / r.seconds:.1f}x real time"
                     if r.media_seconds and r.seconds else "")
            print(f"  {r.column:<13} made {r.made:>5} of {r.items} ({r.cached} already "
                  f"made)  {r.seconds:7.1f} s{speed}  failures {r.failures}")
        print(f"columns: {columns.folder} (read by `modrec embed --encoder text:video_text`)")
    return {"dataset": dataset.name, "folder": str(columns.folder),
            "columns": [r.to_dict() for r in reports]}


def _with_computed(dataset: Any, store: str | None = None) -> Any:
    """The dataset with the item columns `modrec transcribe` computed into its store
    folder, so that --labels and text encoders name them like the catalog's own."""
    from modrec.content.columns import ItemColumns, with_item_columns

    return with_item_columns(dataset, ItemColumns.for_dataset(dataset, store))


def _label_prompting(args: argparse.Namespace) -> Any:
    """The language model and method the annotate and classify verbs were given."""
    from modrec.content.annotate import LabelPrompting
    from modrec.llm import open_llm

    llm = open_llm(args.llm, threads=args.threads, context=args.context,
                   concurrency=max(args.workers, 1))
    return LabelPrompting(llm, method=args.method, noun=args.noun, examples=args.examples,
                          encoder=args.example_encoder, text=args.text,
                          workers=args.workers,
                          progress=not args.no_progress,
                          out=Path(args.out) if getattr(args, "out", None) else None)


def cmd_annotate(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np

    from modrec.content.annotate import annotate_labels
    from modrec.content.classify import label_matrix
    from modrec.data import load_dataset

    dataset = _with_computed(load_dataset(_dataset_arg(args.dataset)))
    if args.task == "relevance":
        return _annotate_relevance(args, dataset)
    if not args.labels:
        raise ValueError("--task labels needs --labels COLUMN (the label vocabulary)")
    vocabulary = label_matrix(dataset, args.labels, args.max_labels, args.min_count).labels
    items = np.random.default_rng(args.seed).permutation(dataset.num_items)[:args.items] + 1
    how = _label_prompting(args)
    items = np.sort(items)
    scores, report = annotate_labels(dataset, args.labels, vocabulary, items, how)
    if not args.json:
        print(f"{report.task}: {report.asked} items asked, {report.cached} already in "
              f"{report.path} ({report.seconds:.1f} s)")
    result = {"dataset": dataset.name, "labels_field": args.labels, "labels": vocabulary,
              "llm": how.llm.spec, "method": how.method, "examples": how.examples,
              **report.to_dict()}
    if args.column:  # the answers as an item column the other verbs read
        from modrec.content.columns import write_label_column
        from modrec.llm import load_prompt

        version = (f"{load_prompt(f'labels-{how.method}').version}:examples={how.examples}")
        result["item_column"] = write_label_column(
            dataset, args.column, vocabulary, items, scores, how.llm.fingerprint, version,
            how.text, args.threshold)
        if not args.json:
            print(f"item column {args.column!r}: {len(items)} items "
                  f"(e.g. --encoder tags:{args.column}, --labels {args.column})")
    return result


def _annotate_relevance(args: argparse.Namespace, dataset: Any) -> dict[str, Any]:
    """Grade the top ``--top`` text-search results of every query (``--query``, or each
    label of ``--labels`` through ``--template``)."""
    import numpy as np

    from modrec.content import EmbeddingStore
    from modrec.content.annotate import grade_relevance
    from modrec.content.classify import label_matrix
    from modrec.content.search import TextSearch
    from modrec.llm import open_llm

    queries = list(args.query or [])
    if args.labels:
        queries += [args.template.format(label=label) for label in
                    label_matrix(dataset, args.labels, args.max_labels, args.min_count).labels]
    if not queries:
        raise ValueError("--task relevance needs --query TEXT (repeatable) or --labels COLUMN")
    engine = TextSearch(dataset, EmbeddingStore.for_dataset(dataset), args.example_encoder)
    scores = engine.scores(queries)
    pairs = [(query, int(i) + 1) for q, query in enumerate(queries)
             for i in np.argsort(-scores[q], kind="stable")[:args.top]
             if np.isfinite(scores[q, i])]
    llm = open_llm(args.llm, threads=args.threads, context=args.context,
                   concurrency=max(args.workers, 1))
    grades, report = grade_relevance(dataset, llm, pairs, args.noun,
                                     Path(args.out) if args.out else None, args.workers,
                                     not args.no_progress, text=args.text)
    if not args.json:
        print(f"relevance: {report.asked} pairs graded, {report.cached} already in "
              f"{report.path} ({report.seconds:.1f} s); mean grade {np.nanmean(grades):.2f}")
    return {"dataset": dataset.name, "queries": len(queries), "llm": llm.spec,
            **report.to_dict()}


def cmd_classify(args: argparse.Namespace) -> dict[str, Any]:
    from modrec.content import EmbeddingStore
    from modrec.content.classify import classify
    from modrec.data import load_dataset

    if args.mode in ("llm", "ensemble") and not args.llm:
        raise ValueError(f"--mode {args.mode} needs --llm SPEC (local:PATH.gguf or "
                         "openai:URL#MODEL)")
    if args.mode != "llm" and not args.encoder:
        raise ValueError(f"--mode {args.mode} needs --encoder (the stored embeddings to use)")
    dataset = _with_computed(load_dataset(_dataset_arg(args.dataset)), args.store)
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


def cmd_search(args: argparse.Namespace) -> dict[str, Any]:
    from modrec.content import EmbeddingStore
    from modrec.content.search import TextSearch, search_map
    from modrec.data import load_dataset

    if args.rerank == "llm" and not args.llm:
        raise ValueError("--rerank llm needs --llm SPEC (local:PATH.gguf or openai:URL#MODEL)")
    llm = None
    if args.rerank == "llm":
        from modrec.llm import open_llm

        llm = open_llm(args.llm, threads=args.threads, context=args.context)
    dataset = _with_computed(load_dataset(_dataset_arg(args.dataset)), args.store)
    store = EmbeddingStore.for_dataset(dataset, args.store)
    if args.labels:  # evaluate: every label is a query
        result = search_map(dataset, args.labels, args.template, store, args.encoder,
                            llm=llm, rerank_top=args.rerank_top, noun=args.noun)
        if not args.json:
            print(f"{result['queries']} label queries on {args.labels!r}: "
                  f"mAP {result['map']:.4f}")
        return result
    if not args.query:
        raise ValueError("give a query, or --labels FIELD to measure search quality")
    hits = TextSearch(dataset, store, args.encoder).search(args.query, args.k, llm,
                                                          args.rerank_top, args.noun)
    if not args.json:
        for rank, hit in enumerate(hits, start=1):
            print(f"  {rank:>2}. {hit.get('title') or hit['item_id']}  ({hit['score']:.3f})")
    return {"dataset": dataset.name, "query": args.query, "items": hits}


def _outside_paths_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--allow-outside-paths", action="store_true",
                   help="read media files wherever the catalog's paths lead (by default only "
                   "inside the catalog's own folder; relative paths start there)")


def _llm_arguments(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument("--llm", required=required, metavar="SPEC",
                   help="local:PATH.gguf (llama.cpp in process) or openai:URL#MODEL (an "
                   "OpenAI-compatible server: vLLM, llama.cpp, TGI, Ollama)")
    p.add_argument("--method", choices=["yesno", "choice", "json"], default="yesno",
                   help="yesno: P(yes) per label; choice: one pass per item over all "
                   "labels; json: generated labels, schema-constrained")
    p.add_argument("--examples", type=_at_least(0), default=0,
                   help="few-shot: the N nearest labelled items (by stored text vectors) "
                   "shown with their labels")
    p.add_argument("--example-encoder", default="text",
                   help="the stored text embeddings that find few-shot examples")
    p.add_argument("--noun", default="item", help="what the prompt calls an item (movie)")
    p.add_argument("--text", default="text", metavar="COLUMN", help="the item column the "
                   "model reads (default: text, else the title; video_text after "
                   "modrec transcribe)")
    p.add_argument("--threads", type=_at_least(1), help="llama.cpp threads (1 when another "
                   "process is busy: spinning threads slow each other down)")
    p.add_argument("--context", type=_at_least(256), default=4096,
                   help="llama.cpp context length in tokens")
    p.add_argument("--workers", type=_at_least(1), default=1,
                   help="requests in flight (a server answers several at once)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="modrec", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="verb", required=True)

    p = sub.add_parser("datasets", help="list named datasets and whether each is present")
    p.set_defaults(func=cmd_datasets)

    p = sub.add_parser("train", help="train a model and evaluate it with full ranking")
    p.add_argument("-d", "--dataset", help="named dataset or path to a file/folder")
    p.add_argument("-m", "--model", help="popularity, gru4rec, sasrec, bert4rec, hstu, or a "
                   "preset from configs/<dataset>/ (e.g. hstu-large)")
    p.add_argument("--config", help="YAML file layered over configs/<dataset>/<model>.yaml")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a setting, e.g. --set train.lr=3e-4 (repeatable)")
    p.add_argument("--epochs", type=_at_least(1),
                   help="maximum epochs (early stopping may end sooner)")
    p.add_argument("--format", help="importer format of a path: sequences, pairs, recbole, "
                   "csv, csv-large (DuckDB, out of core), parquet, parquet-large (DuckDB; "
                   "a file or a folder of them), movielens; the -large ones are chosen "
                   "by themselves from 1 GiB")
    p.add_argument("--columns", metavar="ROLE=COLUMN,...",
                   help="which columns of a table hold the user, item, timestamp and rating, "
                   "when their names are not recognised: user=uid,item=iid,timestamp=ts")
    p.add_argument("--split", choices=["loo", "temporal", "cold-items", "loo-no-valid"],
                   help="evaluation split (default: the config's, leave-one-out)")
    p.add_argument("--item-tower", choices=["id", "content", "id+content"],
                   help="item representation; content needs `modrec embed` first")
    p.add_argument("--encoder", help="comma-separated stored embeddings for the item tower")
    p.add_argument("--out", help="run directory (default runs/<dataset>-<model>)")
    p.add_argument("--resume", action="store_true", help="continue from checkpoint.pt in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("refit", help="retrain a finished run with its validation items "
                       "added to training, for the epochs its validation chose; report test")
    p.add_argument("run_dir", help="a finished run trained with the loo split")
    p.add_argument("--out", help="run directory (default RUN_DIR-refit)")
    p.add_argument("--resume", action="store_true", help="continue from checkpoint.pt in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_refit)

    p = sub.add_parser("evaluate", help="re-evaluate a run's best weights")
    p.add_argument("run_dir")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("recommend", help="top-k items for one user of a run's dataset")
    p.add_argument("run_dir")
    p.add_argument("--user", required=True, help="the user's id as in the source data")
    p.add_argument("-k", type=int, default=10)
    p.set_defaults(func=cmd_recommend)

    p = sub.add_parser("export", help="a self-contained bundle of a run for serving")
    p.add_argument("run_dir")
    p.add_argument("--out", required=True, help="the bundle folder (new or empty)")
    p.add_argument("--unfinished", action="store_true", help="export a run whose training "
                   "has not finished (its best weights so far; bundle.json records it)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "serve", help="an HTTP model service over trained runs",
        description="Serve trained runs over HTTP: POST /v1/recommend, /v1/events, "
        "/v1/search; GET /v1/users/ID/history, /v1/items/ID, /v1/items/ID/similar, "
        "/healthz, /readyz, /metrics; the schema at /openapi.json, interactive docs at "
        "/docs, a page to try it at /. SIGHUP reloads every model from its folder (one "
        "that no longer loads keeps serving its old weights).")
    p.add_argument("run_dir", nargs="?", help="a run folder or bundle (the default model, "
                   "named after its folder)")
    p.add_argument("--model", action="append", metavar="NAME=RUN_DIR",
                   help="serve another run under NAME (repeatable); the first model given "
                   "is the default")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default "
                   "loopback only)")
    p.add_argument("--port", type=_port, default=8000)
    p.add_argument("--state", default="modrec-state.db",
                   help="SQLite file of users' event histories (created when missing)")
    p.add_argument("--api-key-file", help="a file holding the API key that writes "
                   "(events, reload) must send as 'Authorization: Bearer KEY'")
    p.add_argument("--batch-window-ms", type=_milliseconds, default=0.0,
                   help="how long a recommend request that finds the model idle waits for "
                   "others to share its call (default 0: it goes at once; requests that "
                   "arrive while the model is busy always share its next call)")
    p.add_argument("--max-batch", type=_at_least(1), default=64,
                   help="most requests in one model call (1: no micro-batching)")
    p.add_argument("--max-k", type=_at_least(1), default=1000,
                   help="most items one request may ask for")
    p.add_argument("--exact-below", type=_at_least(0), default=100_000,
                   help="catalogs smaller than this are searched exactly; larger ones "
                   "through an HNSW graph")
    p.add_argument("--ef-search", type=_at_least(1), default=512, help="HNSW search beam")
    p.add_argument("--no-seed", action="store_true", help="do not copy the default run's "
                   "dataset histories into a new state")
    p.add_argument("--seed-state", action="store_true", help="seed the state from the "
                   "default run's dataset, then exit")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning",
                                                           "error"])
    p.add_argument("--access-log", action="store_true", help="log every request")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("embed", help="encode item content into the dataset's embedding store")
    p.add_argument("-d", "--dataset", required=True, help="named dataset or path")
    p.add_argument("--format", help="importer format of a path")
    p.add_argument("--columns", metavar="ROLE=COLUMN,...",
                   help="user=uid,item=iid,...: a table's columns, when not recognised")
    p.add_argument("--encoder", required=True, help="comma-separated: text, image, video, "
                   "audio, tags[:COLUMN], text:COLUMN[:MODEL] (any item column, a computed "
                   "transcript or video_text included), a dataset's precomputed vectors "
                   "(vggish), or MODALITY:MODEL (text:sentence-transformers/all-mpnet-base-v2)")
    p.add_argument("--store", help="store folder (default $MODREC_EMBEDDINGS_DIR/<dataset>)")
    p.add_argument("--batch-size", type=_at_least(1), default=64)
    p.add_argument("--dtype", choices=["float32", "float16"], default="float32")
    p.add_argument("--device", type=_device, default="cpu",
                   help="cpu, cuda, cuda:N or mps")
    _outside_paths_argument(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("transcribe", help="what videos say and show as item columns: "
                       "transcript, frame_labels, ocr, video_text (resumable, cached)")
    p.add_argument("-d", "--dataset", required=True, help="named dataset or path (its "
                   "items need a video column of file paths)")
    p.add_argument("--format", help="importer format of a path")
    p.add_argument("--columns", metavar="ROLE=COLUMN,...",
                   help="user=uid,item=iid,...: a table's columns, when not recognised")
    p.add_argument("--parts", default="transcript,frame_labels,ocr",
                   help="comma-separated: transcript (Whisper), frame_labels (ImageNet "
                   "labels of sampled frames), ocr (Tesseract; skipped when absent)")
    p.add_argument("--model", help="Whisper model: a size faster-whisper downloads (base, "
                   "small, large-v3, ...), a Hugging Face repository, or a local folder "
                   "(default: the bundled tiny.en, English only)")
    p.add_argument("--language", help="spoken language code (default: detected; an .en "
                   "model hears English only)")
    p.add_argument("--threads", type=_at_least(1), help="Whisper's CPU threads")
    p.add_argument("--frames", type=_at_least(1), default=4,
                   help="frames sampled per video for labels and OCR")
    p.add_argument("--top-labels", type=_at_least(1), default=5,
                   help="most ImageNet labels kept per video")
    p.add_argument("--ocr-lang", default="eng", help="Tesseract language(s), e.g. eng+chi_sim")
    p.add_argument("--store", help="store folder (default $MODREC_EMBEDDINGS_DIR/<dataset>); "
                   "the columns go to its columns/ folder")
    p.add_argument("--device", type=_device, default="cpu",
                   help="cpu, cuda, cuda:N or mps")
    _outside_paths_argument(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_transcribe)

    p = sub.add_parser("annotate", help="label items with a language model (zero- or "
                       "few-shot), resumably, into an annotation file")
    p.add_argument("-d", "--dataset", required=True)
    p.add_argument("--task", choices=["labels", "relevance"], default="labels",
                   help="labels: score each label of --labels per item; relevance: grade "
                   "0-3 the top --top text-search results of each query")
    p.add_argument("--labels", help="item column whose |-separated labels make the "
                   "vocabulary (relevance: each label is a query, through --template)")
    p.add_argument("--query", action="append", help="relevance: a query (repeatable)")
    p.add_argument("--template", default="{label}", help="relevance: how a label becomes "
                   "a query")
    p.add_argument("--top", type=_at_least(1), default=20,
                   help="relevance: search results graded per query")
    p.add_argument("--items", type=_at_least(1), help="a seeded sample of this many items "
                   "(default: every item)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="annotation file (JSON lines; default: in the dataset's "
                   "embedding store folder, named by model, prompt and task)")
    p.add_argument("--max-labels", type=_at_least(1), default=50)
    p.add_argument("--min-count", type=_at_least(1), default=10)
    p.add_argument("--column", help="labels: also keep the labels scoring at least "
                   "--threshold (and each item's best) as this computed item column, "
                   "read by tags:COLUMN, --labels COLUMN and the other verbs")
    p.add_argument("--threshold", type=float, default=0.5, help="labels: the score a "
                   "label needs to enter --column (classify --mode llm reports a threshold "
                   "chosen on validation items)")
    _llm_arguments(p, required=True)
    p.set_defaults(func=cmd_annotate)

    p = sub.add_parser("classify", help="multi-label item classification from embeddings "
                       "or a language model")
    p.add_argument("-d", "--dataset", required=True)
    p.add_argument("--labels", required=True, help="item column of |-separated labels")
    p.add_argument("--encoder", help="comma-separated stored embeddings (every mode but llm)")
    p.add_argument("--mode", choices=["trained", "zero-shot", "knn", "llm", "ensemble"],
                   default="trained", help="ensemble: llm and trained averaged, the "
                   "weight chosen on validation items")
    p.add_argument("--test-items", type=_at_least(1), help="evaluate on a seeded sample of "
                   "this many held-out items (the same for every mode)")
    p.add_argument("--valid-items", type=_at_least(1), help="choose the threshold (and stop "
                   "training) on a seeded sample of this many validation items")
    p.add_argument("--head", choices=["linear", "mlp"], default="mlp", help="trained mode")
    p.add_argument("-k", type=_at_least(1), default=20, help="neighbours in knn mode")
    p.add_argument("--template", default="{label}", help="zero-shot label phrasing, "
                   "e.g. 'a {label} movie'")
    p.add_argument("--max-labels", type=_at_least(1), default=50,
                   help="most frequent labels kept")
    p.add_argument("--min-count", type=_at_least(1), default=10, help="items a label needs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--store", help="store folder (default $MODREC_EMBEDDINGS_DIR/<dataset>)")
    _llm_arguments(p, required=False)
    p.set_defaults(func=cmd_classify)

    p = sub.add_parser("search", help="rank items by text relevance to a query")
    p.add_argument("-d", "--dataset", required=True)
    p.add_argument("query", nargs="?")
    p.add_argument("-k", type=_at_least(1), default=10)
    p.add_argument("--encoder", default="text", help="the stored text embeddings to search")
    p.add_argument("--labels", help="measure instead: each label of this column is a query")
    p.add_argument("--template", default="{label}", help="how a label becomes a query")
    p.add_argument("--store", help="store folder (default $MODREC_EMBEDDINGS_DIR/<dataset>)")
    p.add_argument("--rerank", choices=["none", "llm"], default="none",
                   help="llm: a language model grades the top --rerank-top items 0-3 and "
                   "they are reordered by grade (graded pairs are cached)")
    p.add_argument("--rerank-top", type=_at_least(1), default=50)
    p.add_argument("--llm", metavar="SPEC", help="local:PATH.gguf or openai:URL#MODEL")
    p.add_argument("--noun", default="item", help="what the prompt calls an item (movie)")
    p.add_argument("--threads", type=_at_least(1), help="llama.cpp threads")
    p.add_argument("--context", type=_at_least(256), default=4096)
    p.set_defaults(func=cmd_search)

    for name, verb in sub.choices.items():
        if name in ("train", "refit", "evaluate", "recommend", "serve", "embed"):
            verb.add_argument("--threads", type=_at_least(1), help=(
                "torch's CPU threads: default 1 for serve (a worker per core scales "
                "better), else the cores this process may use; MODREC_THREADS sets "
                "the default (see modrec.threads)"))
        verb.add_argument("--json", action="store_true",
                          help="print the results as one JSON object on the last line")
        # -v after the verb too; SUPPRESS keeps `modrec -v VERB` from being reset
        verb.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                          help="debug logging, and the traceback of an error")
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:  # --help, or a usage error argparse has printed
        return stop.code if isinstance(stop.code, int) else 2
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if not args.verbose:  # FAISS logs which CPU builds it could not load, as exceptions
        logging.getLogger("faiss").setLevel(logging.WARNING)
    try:
        # llama.cpp's and Whisper's --threads (annotate, transcribe...) bound torch too
        threads = apply_threads(getattr(args, "threads", None), serving=args.verb == "serve")
        log.debug("torch computes with %d threads", threads)
        result = args.func(args)
        # strict JSON: no NaN or Infinity, which many parsers reject
        text = json.dumps(_json_safe(result), default=str, allow_nan=False) if args.json else ""
    except KeyboardInterrupt:
        print(f"modrec {args.verb}: interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"modrec {args.verb}: error: {message}", file=sys.stderr)
        if args.verbose:
            traceback.print_exc()
        return 2
    except Exception as err:  # noqa: BLE001 - a bug: named in one line, traceback on -v
        print(f"modrec {args.verb}: internal error: {type(err).__name__}: {err}"
              + ("" if args.verbose else " (run with -v for the traceback)"), file=sys.stderr)
        if args.verbose:
            traceback.print_exc()
        return 1
    if args.json and os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 alone
        print(text)
    return 0


def _json_safe(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


if __name__ == "__main__":
    sys.exit(main())
