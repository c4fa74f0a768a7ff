"""The model service as a process (what ``modrec serve`` runs): the runs checked before
anything starts, the HTTP app under uvicorn, SIGHUP reloading every model, and a start-up
whose models fail to load ending the process with the reason instead of answering 503.
With ``workers`` above 1, a supervisor and that many worker processes on one port
(`modrec.serve.workers`), each serving as `serve_loaded` does."""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import socket
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import uvicorn

from modrec.serve.app import AppSettings, create_app
from modrec.serve.postgres_state import PostgresUserState
from modrec.serve.recommender import ServeConfig
from modrec.serve.service import ModelService
from modrec.serve.state import SQLiteUserState
from modrec.threads import thread_summary

log = logging.getLogger(__name__)


def check_runs(models: Mapping[str, str | Path]) -> None:
    """Refuse a folder that is not a run (or bundle) with weights, and a config.json
    modrec cannot read, before the service starts: cheap checks, so that a typo is
    named at once rather than after the state is opened and the server is up."""
    from modrec.runs import RunDir

    for name, folder in models.items():
        run = RunDir(folder)
        if not run.config_file.exists():
            raise FileNotFoundError(f"model {name!r}: {folder} is not a run directory or "
                                    "bundle (no config.json)")
        run.read_config()
        if not run.weights_file.exists():
            raise FileNotFoundError(f"model {name!r}: {folder} has no model.pt; train it "
                                    "first")


@dataclasses.dataclass(frozen=True)
class Listen:
    """Where and how uvicorn listens and logs."""

    host: str = "127.0.0.1"
    port: int = 8000
    log_level: str = "info"
    access_log: bool = False


def run_service(models: Mapping[str, str | Path], state: SQLiteUserState | PostgresUserState,
                config: ServeConfig, settings: AppSettings, listen: Listen,
                seed: bool = True, workers: int = 1) -> None:
    """Serve ``models`` ({name: run folder}, the default first) over ``state`` until the
    process is stopped (Ctrl-C, SIGTERM). The models load in the background (``/readyz``
    answers 503 until then); if loading fails, the server stops and the error is raised
    here. SIGHUP reloads every model from its folder in a thread of its own: one that no
    longer loads keeps serving its old weights, the others still reload. ``seed``: copy
    the default run's dataset histories into a new state first. ``workers`` above 1:
    that many processes on the port, each loading the models (`modrec.serve.workers`)."""
    if workers > 1:
        import torch

        from modrec.serve.workers import WorkerSpec, supervise

        # what each worker opens: the file, or the URL as given (its password too)
        where = state.url if isinstance(state, PostgresUserState) else str(state.path)
        supervise(WorkerSpec({name: str(folder) for name, folder in models.items()},
                             where, config, settings, listen.host, listen.port,
                             listen.log_level, listen.access_log, seed,
                             torch.get_num_threads()), workers)
        return
    holder: dict[str, ModelService] = {}
    failed: list[Exception] = []

    def load() -> ModelService:
        service = ModelService.from_runs(models, state, config, seed=seed)
        holder["service"] = service
        return service

    def stop(err: Exception) -> None:  # nothing to serve: stop, and say why below
        failed.append(err)
        server.should_exit = True

    app = create_app(load, dataclasses.replace(settings,
                                               on_failure=[*settings.on_failure, stop]))
    server = _server(app, listen)
    previous = signal.signal(signal.SIGHUP, _reloader(holder.get))
    log.info("serving %s on http://%s:%d (state %s; %s)", ", ".join(
        f"{n}={f}" for n, f in models.items()), listen.host, listen.port,
        state.path, thread_summary())
    try:
        server.run()
    finally:
        signal.signal(signal.SIGHUP, previous)
    if failed:  # e.g. weights it refuses to load: exit with the reason, not a 503 forever
        raise failed[0]


def serve_loaded(service: ModelService, settings: AppSettings, listen: Listen,
                 sockets: list[socket.socket]) -> None:
    """Serve a loaded service on ``sockets`` (already listening) until SIGTERM or
    SIGINT; SIGHUP reloads every model as in `run_service` (a worker's life)."""
    server = _server(create_app(service, settings), listen)
    previous = signal.signal(signal.SIGHUP, _reloader(lambda key: service))
    log.info("serving %s (pid %d; %s)", ", ".join(
        f"{n}={m.folder}" for n, m in service.models.items()), os.getpid(), thread_summary())
    try:
        server.run(sockets=sockets)
    finally:
        signal.signal(signal.SIGHUP, previous)


def _server(app: Any, listen: Listen) -> uvicorn.Server:
    return uvicorn.Server(uvicorn.Config(app, host=listen.host, port=listen.port,
                                         log_level=listen.log_level,
                                         access_log=listen.access_log))


def _reloader(get: Callable[[str], ModelService | None]) -> Callable[[int, Any], None]:
    """A SIGHUP handler: every model of the service (``get("service")``, None while it
    loads) reloaded from its folder, in a thread of its own."""
    def reload_all(signum: int, frame: Any) -> None:
        service = get("service")
        if service is None:
            return
        log.info("SIGHUP: reloading %s", ", ".join(service.models))
        # one model that fails to load keeps its old weights; the others still reload
        threading.Thread(target=service.reload_all, name="modrec-reload", daemon=True).start()

    return reload_all
