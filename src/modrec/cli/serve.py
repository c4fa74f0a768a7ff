"""``modrec serve``: trained runs as an HTTP model service (`modrec.serve.process`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from modrec.cli.common import Subparsers, at_least, log, milliseconds, port, threads_argument
from modrec.errors import UsageError


def add_parsers(sub: Subparsers) -> None:
    p = sub.add_parser(
        "serve", help="an HTTP model service over trained runs",
        description="Serve trained runs over HTTP: POST /v1/recommend, /v1/events, "
        "/v1/search, /v1/items (new items), /v1/media; DELETE /v1/items/ID; GET "
        "/v1/users/ID/history, /v1/items/ID, /v1/items/ID/similar, "
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
    p.add_argument("--port", type=port, default=8000)
    p.add_argument("--workers", type=at_least(1), default=1,
                   help="processes answering on the port, each with its own copy of the "
                   "models and one torch thread (default 1: one process); a supervisor "
                   "restarts one that dies, SIGHUP reaches them all, and /metrics counts "
                   "them all. About one per core")
    p.add_argument("--state", default="modrec-state.db",
                   help="users' event histories and live items: an SQLite file (created "
                   "when missing), or a postgresql://USER@HOST/DB URL that replicas "
                   "share (its tables created and migrated by modrec; the password in "
                   "PGPASSWORD or ~/.pgpass)")
    p.add_argument("--api-key-file", help="a file holding the API key that writes "
                   "(events, items, media, reload) must send as 'Authorization: Bearer KEY'")
    p.add_argument("--batch-window-ms", type=milliseconds, default=0.0,
                   help="how long a recommend request that finds the model idle waits for "
                   "others to share its call (default 0: it goes at once; requests that "
                   "arrive while the model is busy always share its next call)")
    p.add_argument("--max-batch", type=at_least(1), default=64,
                   help="most requests in one model call (1: no micro-batching)")
    p.add_argument("--max-k", type=at_least(1), default=1000,
                   help="most items one request may ask for")
    p.add_argument("--exact-below", type=at_least(0), default=100_000,
                   help="with --index auto, catalogs smaller than this are searched "
                   "exactly; larger ones through an HNSW graph")
    p.add_argument("--ef-search", type=at_least(1), default=512, help="HNSW search beam")
    p.add_argument("--media-dir", help="the folder whose files new items (POST /v1/items) "
                   "may name as image, video or audio, and where POST /v1/media stores "
                   "uploads; paths outside it are refused (default: no media)")
    p.add_argument("--load-encoders", action="store_true", help="load the content encoders "
                   "for new items at start-up (default: on the first new item)")
    p.add_argument("--max-items", type=at_least(1), default=100,
                   help="most new items in one POST /v1/items")
    p.add_argument("--max-upload-mb", type=at_least(1), default=512,
                   help="largest media file POST /v1/media takes, in MiB")
    p.add_argument("--no-seed", action="store_true", help="do not copy the default run's "
                   "dataset histories into a new state")
    p.add_argument("--seed-state", action="store_true", help="seed the state from the "
                   "default run's dataset, then exit")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning",
                                                           "error"])
    p.add_argument("--access-log", action="store_true", help="log every request")
    _index_arguments(p)
    threads_argument(p)
    p.set_defaults(func=cmd_serve)


def _index_arguments(p: argparse.ArgumentParser) -> None:
    """The retrieval index's kind and knobs (`modrec.serve.index.IndexConfig`); those not
    given keep IndexConfig's defaults, and those given for another kind are refused."""
    p.add_argument("--index", choices=["auto", "exact", "hnsw", "ivf", "ivfpq"],
                   default="auto", help="the item index: exact, hnsw (graph), ivf "
                   "(IVF-Flat), ivfpq (IVF-PQ, compressed), or auto (default: by catalog "
                   "size, --exact-below, and --index-memory-mib)")
    p.add_argument("--index-memory-mib", type=float, help="with --index auto, the most "
                   "memory the index may take: the first of hnsw, ivf, ivfpq that fits")
    p.add_argument("--nlist", type=at_least(1), help="ivf/ivfpq lists (default about "
                   "4 * sqrt(items))")
    p.add_argument("--nprobe", type=at_least(1), help="ivf/ivfpq lists a query scans "
                   "(default 64): more is slower and finds more of the true top k")
    p.add_argument("--pq-m", type=at_least(1), help="ivfpq bytes per item; must divide "
                   "the vectors' dim (default: its largest divisor up to dim / 4)")
    p.add_argument("--rerank", type=at_least(1), help="ivfpq candidates re-scored exactly "
                   "from the float vectors, as a multiple of k plus the excluded items "
                   "(default 4; 1: none)")


def _index_config(args: argparse.Namespace) -> Any:
    """`IndexConfig` from the flags given (a `ConfigError` names a bad one)."""
    from modrec.serve.index import index_config

    given = {"kind": args.index, "exact_below": args.exact_below,
             "ef_search": args.ef_search, "memory_mib": args.index_memory_mib,
             "nlist": args.nlist, "nprobe": args.nprobe, "pq_m": args.pq_m,
             "rerank": args.rerank}
    return index_config(**{k: v for k, v in given.items() if v is not None})


def _models(args: argparse.Namespace) -> dict[str, str]:
    """``RUN_DIR`` and ``--model NAME=RUN_DIR`` as {name: folder}, the default first."""
    models: dict[str, str] = {}
    if args.run_dir:
        models[Path(args.run_dir).name or "default"] = args.run_dir
    for spec in args.model or []:
        name, sep, folder = spec.partition("=")
        if not sep or not name or not folder:
            raise UsageError(f"--model {spec!r}: expected NAME=RUN_DIR")
        if name in models:
            raise UsageError(f"--model {name!r} is given twice")
        models[name] = folder
    if not models:
        raise UsageError("name a run to serve: modrec serve RUN_DIR, or --model NAME=RUN_DIR")
    return models


def _api_key(args: argparse.Namespace) -> str | None:
    if not args.api_key_file:
        return None
    api_key = Path(args.api_key_file).read_text().strip()
    if not api_key:
        raise UsageError(f"{args.api_key_file} is empty; put the API key in it")
    return api_key


def _media_dir(value: str | None) -> str | None:
    """``--media-dir`` as an absolute folder, refused unless it is one."""
    if value is None:
        return None
    folder = Path(value).resolve()
    if not folder.is_dir():
        raise UsageError(f"--media-dir {value}: not a folder; name the folder whose files "
                         "new items may name (it must exist)")
    return str(folder)


def _check_workers(workers: int) -> None:
    """Warn when the workers outnumber the cores: they would take turns on them."""
    from modrec.threads import usable_cores

    if workers > usable_cores():
        log.warning("--workers %d on %d usable cores: the workers will take turns; one "
                    "per core is usually fastest", workers, usable_cores())


def cmd_serve(args: argparse.Namespace) -> dict[str, Any]:
    from modrec.serve import ModelService, ServeConfig
    from modrec.serve.app import AppSettings
    from modrec.serve.process import Listen, check_runs, run_service
    from modrec.serve.state import open_state

    models = _models(args)
    check_runs(models)  # cheap checks before the service starts
    api_key = _api_key(args)
    media_dir = _media_dir(args.media_dir)
    config = ServeConfig(index=_index_config(args), max_k=args.max_k,
                         media_dir=media_dir, load_encoders=args.load_encoders)
    state = open_state(args.state)  # a --state it cannot use is refused before anything
    state_path = state.path  # a PostgreSQL URL without its password
    if args.seed_state:  # seed and exit: a deploy step before the first start
        with state:
            written = ModelService.from_runs(models, state, config, seed=False).seed_state()
            events = state.events()
        if not args.json:
            print(f"user state {state_path}: {written} events seeded, {events} in all")
        return {"state": str(state_path), "seeded": written, "events": events}
    settings = AppSettings(api_key=api_key, batch_window_ms=args.batch_window_ms,
                           max_batch=args.max_batch, max_k=args.max_k,
                           max_items=args.max_items,
                           max_upload_bytes=args.max_upload_mb * 1024 * 1024)
    _check_workers(args.workers)
    try:
        run_service(models, state, config, settings,
                    Listen(args.host, args.port, args.log_level, args.access_log),
                    seed=not args.no_seed, workers=args.workers)
    finally:
        state.close()
    return {"served": list(models)}
