"""``modrec serve --workers N``: N processes answering on one port, and the supervisor
that keeps them running.

Why processes: a worker computes with one torch thread (`modrec.threads`) and its
Python (HTTP parsing, JSON, the routes) holds the GIL, so one process uses about one
core however many there are; N processes use N.

How they share:

* **the port**: the supervisor listens on it, accepts each connection and hands it to
  the next worker in turn (round robin, over a Unix socket pair: ``SCM_RIGHTS``), as
  Node's cluster module does by default. Not one socket that every worker accepts on
  (gunicorn's and uvicorn's ``--workers``): asyncio's accept loop takes every connection
  waiting at once, so a few keep-alive clients land on one worker; measured here, wrk's
  4 connections all went to the same one of 2 workers in 2 of 3 tries. A worker is
  handed connections only once its models are loaded, so a connection never meets a
  worker that would answer 503; the connections of a worker that dies are cut (its
  clients connect again, to the others). To uvicorn, a worker's end of the pair is its
  listening socket (`_Handed`);
* **the models and the index: one copy per worker**, loaded from the run folder (the
  HNSW and IVF graphs from the index cache, which the first worker writes: workers start
  after the first is ready). Not shared through memory maps, because every worker adds
  the items that arrive live to its own index and tower, and a memory map shared
  between processes would need a lock across them for every search. The price is
  memory: each worker holds torch, the model and the index (424 MiB for the ML-1M HSTU
  run, most of it torch itself);
* **the state file** (SQLite in WAL mode, made for several processes): events, and the
  items added or retired live, which each worker reads before it answers
  (`modrec.serve.live.LiveItems.sync`);
* **a folder** for the metrics of every worker, which workers serve, and the runs the
  last reloads chose (`modrec.serve.shared`).

The supervisor starts the first worker (it seeds a new state and fills the index cache),
then the others once it serves; restarts a worker that dies, saying so in the log (a
worker that dies young waits longer each time before it starts again, up to a minute);
passes SIGHUP on to every worker (each reloads its models); and on SIGTERM or Ctrl-C
stops them all gracefully (each finishes the requests it has begun) before it exits.
Micro-batching is per worker: requests that one worker receives share its model calls.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from typing import Any

from modrec.errors import ModrecError
from modrec.serve.recommender import ServeConfig
from modrec.serve.settings import AppSettings
from modrec.serve.shared import SharedFolder

log = logging.getLogger(__name__)

STOP_TIMEOUT_S = 30.0  # a worker still busy this long after SIGTERM is killed
START_TIMEOUT_S = 3600.0  # the first worker's start (a large catalog's graph build)
LIVED_LONG_S = 30.0  # a worker that ran this long before dying restarts at once
MAX_BACKOFF_S = 60.0
FAILED_START = 3  # a worker's exit status when its models would not load


class WorkerFailed(ModrecError):
    """The first worker could not start; the message is its reason."""


@dataclasses.dataclass
class WorkerSpec:
    """What a worker process needs to serve (it is pickled into the new process)."""

    models: dict[str, str]
    state: str  # an SQLite file, or a PostgreSQL URL (`open_state`)
    config: ServeConfig
    settings: AppSettings
    host: str
    port: int
    log_level: str
    access_log: bool
    seed: bool
    threads: int  # torch threads per worker


def supervise(spec: WorkerSpec, workers: int) -> None:
    """Serve with ``workers`` processes until SIGTERM or Ctrl-C; raises `WorkerFailed`
    when the first one cannot start (its models do not load)."""
    shared = SharedFolder.create(workers)
    # Read by prometheus_client when a worker imports it: the new processes inherit it.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(shared.metrics)
    spec = dataclasses.replace(spec, settings=dataclasses.replace(spec.settings,
                                                                  shared=shared))
    sock: socket.socket | None = None
    try:
        sock = _listen(spec.host, spec.port)
        _Supervisor(spec, shared, sock).run()
    finally:
        if sock is not None:
            sock.close()
        shared.remove()
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)


def _listen(host: str, port: int) -> socket.socket:
    """The supervisor's listening socket (IPv6 when ``host`` is one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise OSError(err.errno, f"cannot listen on {host}:{port} ({err.strerror}); "
                      "choose another --port or --host") from None
    sock.listen(2048)
    sock.setblocking(False)
    return sock


class _Handed(socket.socket):
    """A worker's end of the socket pair on which the supervisor hands it accepted
    connections, passed to uvicorn as its listening socket: asyncio calls ``accept`` on
    it when it is readable, and each call takes one connection (the byte it came with,
    and its descriptor)."""

    _orphaned = False

    def listen(self, backlog: int = 0) -> None:
        """Nothing to listen on: connections arrive accepted."""

    def accept(self) -> tuple[socket.socket, Any]:
        data, fds, _, _ = socket.recv_fds(self, 1, 1)  # BlockingIOError when none waits
        if not fds:
            if not data and not self._orphaned:  # the supervisor is gone: stop too
                self._orphaned = True
                log.error("the supervisor is gone; stopping")
                signal.raise_signal(signal.SIGTERM)
            raise ConnectionAbortedError("no connection handed over")
        # Family and protocol read from the descriptor: asyncio turns Nagle's algorithm off
        # only on a socket that says it is TCP (with the protocol left 0, every answer
        # waited for the client's delayed ACK: 80 requests/s at 48 ms instead of 400).
        conn = socket.socket(fileno=fds[0])
        return conn, conn.getpeername()


class _Supervisor:
    def __init__(self, spec: WorkerSpec, shared: SharedFolder, sock: socket.socket) -> None:
        self.spec, self.shared, self.sock = spec, shared, sock
        self.context = multiprocessing.get_context("spawn")  # no fork of a torch process
        self.slots: list[BaseProcess | None] = [None] * shared.workers
        # the supervisor's end of each worker's socket pair (connections go through it)
        self.channels: list[socket.socket | None] = [None] * shared.workers
        self.turn = 0  # the next worker to hand a connection to, round robin
        self.started_at = [0.0] * shared.workers
        self.backoff = [0.0] * shared.workers
        self.stopping = threading.Event()

    def _start(self, slot: int, seed: bool) -> BaseProcess:
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        process = self.context.Process(
            target=_work, args=(dataclasses.replace(self.spec, seed=seed), theirs, slot),
            name=f"modrec-worker-{slot}", daemon=False)
        process.start()
        theirs.close()  # the worker has its own copy
        mine.setblocking(False)
        self.channels[slot] = mine
        self.slots[slot], self.started_at[slot] = process, time.monotonic()
        log.info("worker %d started (pid %d)", slot, process.pid)
        return process

    def run(self) -> None:
        previous = {sig: signal.signal(sig, self._signal)
                    for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)}
        try:
            # The first alone: it seeds a new state and writes the index cache, which
            # the others then read instead of doing it again at the same time.
            first = self._start(0, self.spec.seed)
            self._wait_ready(first)
            if self.stopping.is_set():  # stopped while the first was starting
                return
            for slot in range(1, len(self.slots)):
                self._start(slot, seed=False)
            log.info("serving on http://%s:%d with %d workers (supervisor pid %d)",
                     self.spec.host, self.spec.port, len(self.slots), os.getpid())
            self._keep_running()
        finally:
            self._stop_all()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _signal(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGHUP:
            log.info("SIGHUP: every worker reloads its models")
            # Only those that serve: one still starting loads the runs as they are now,
            # and SIGHUP would end it before it has a handler for it.
            ready = set(self.shared.ready())
            for process in self.slots:
                if process is not None and process.pid in ready and process.is_alive():
                    os.kill(process.pid, signal.SIGHUP)
        else:
            self.stopping.set()

    def _wait_ready(self, process: BaseProcess) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while process.pid not in self.shared.ready():
            if self.stopping.is_set():
                return
            if not process.is_alive():
                reason = self.shared.path / f"failed-{process.pid}"
                raise WorkerFailed(reason.read_text() if reason.exists() else
                                   f"the first worker exited with status {process.exitcode} "
                                   "before it served; see the log above")
            if time.monotonic() > deadline:
                raise WorkerFailed(f"the first worker did not serve within "
                                   f"{START_TIMEOUT_S:.0f} s")
            process.join(0.05)

    def _hand_out(self) -> None:
        """Every connection waiting on the port, each to the next serving worker."""
        ready = set(self.shared.ready())
        serving = [slot for slot, p in enumerate(self.slots)
                   if p is not None and p.pid in ready and self.channels[slot] is not None]
        while serving:
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:  # e.g. out of descriptors: try again on the next wake
                log.warning("accepting a connection failed: %s", err)
                return
            with conn:
                for _ in serving:  # a worker that cannot take it: the next one
                    slot = serving[self.turn % len(serving)]
                    self.turn += 1
                    try:
                        socket.send_fds(self.channels[slot], [b"c"], [conn.fileno()])  # type: ignore[arg-type]
                        break
                    except OSError:  # its buffer full (busy) or its end closed (dying)
                        continue
                else:
                    log.warning("no worker could take a connection; it was closed")

    def _keep_running(self) -> None:
        restart_at: dict[int, float] = {}  # slot -> when its worker starts again
        while not self.stopping.is_set():
            now = time.monotonic()
            for slot, process in enumerate(self.slots):
                if process is not None and not process.is_alive():
                    restart_at[slot] = now + self._died(slot, process, now)
            for slot, when in list(restart_at.items()):
                if now >= when:
                    del restart_at[slot]
                    self._start(slot, seed=False)
            live = [p.sentinel for p in self.slots if p is not None]
            timeout = min([0.5, *(when - now for when in restart_at.values())])
            woke = wait([*live, self.sock], timeout=max(0.0, timeout))
            # A worker that died first: it is buried above before anything is handed out.
            if self.sock in woke and not set(live) & set(woke):
                self._hand_out()

    def _died(self, slot: int, process: BaseProcess, now: float) -> float:
        """Forget a dead worker and say so; returns how long to wait before replacing
        it (0 when it had served a while, longer each time it dies young)."""
        self._bury(process)
        lived = now - self.started_at[slot]
        self.backoff[slot] = 0.0 if lived >= LIVED_LONG_S else min(
            MAX_BACKOFF_S, max(1.0, 2 * self.backoff[slot]))
        log.error("worker %d (pid %d) died after %.0f s (%s); starting another%s",
                  slot, process.pid, lived, _exit_reason(process.exitcode),
                  f" in {self.backoff[slot]:.0f} s" if self.backoff[slot] else "")
        self.slots[slot] = None
        channel, self.channels[slot] = self.channels[slot], None
        if channel is not None:
            channel.close()
        return self.backoff[slot]

    def _bury(self, process: BaseProcess) -> None:
        """Forget a dead worker: /readyz no longer lists it, and its live gauges go."""
        from prometheus_client import multiprocess

        assert process.pid is not None
        self.shared.forget(process.pid)
        multiprocess.mark_process_dead(process.pid, str(self.shared.metrics))

    def _stop_all(self) -> None:
        self.sock.close()  # no new connections; each worker finishes those it has
        running = [p for p in self.slots if p is not None and p.is_alive()]
        for process in running:
            assert process.pid is not None
            os.kill(process.pid, signal.SIGTERM)  # uvicorn finishes what it has begun
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for process in running:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                log.warning("worker pid %d still busy %.0f s after SIGTERM: killing it",
                            process.pid, STOP_TIMEOUT_S)
                process.kill()
                process.join()
        for channel in self.channels:
            if channel is not None:
                channel.close()
        if running:
            log.info("stopped %d workers", len(running))


def _exit_reason(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit status {code}"


def _work(spec: WorkerSpec, channel: socket.socket, slot: int) -> None:
    """A worker process: load the models, then serve the connections the supervisor
    hands over ``channel`` until SIGTERM."""
    logging.basicConfig(level=logging.INFO,
                        format=f"%(levelname)s worker {slot} %(name)s: %(message)s",
                        stream=sys.stderr)
    logging.getLogger("faiss").setLevel(logging.WARNING)
    from modrec.serve.process import Listen, serve_loaded
    from modrec.serve.service import ModelService
    from modrec.serve.state import open_state
    from modrec.threads import apply_threads

    apply_threads(spec.threads, serving=True)
    assert spec.settings.shared is not None
    shared = spec.settings.shared
    # The runs the last reloads chose, where there were any (a worker that replaces a
    # dead one serves what the others serve now).
    desired = shared.models()
    models = {**spec.models, **{name: d.folder for name, d in desired.items()}}
    state = None
    try:
        state = open_state(spec.state)
        service = ModelService.from_runs(models, state, spec.config, seed=spec.seed)
    except Exception as err:  # noqa: BLE001 - the supervisor reports it and stops
        log.error("the models did not load: %s: %s", type(err).__name__, err)
        (shared.path / f"failed-{os.getpid()}").write_text(
            str(err) if isinstance(err, ModrecError | OSError | ValueError)
            else f"{type(err).__name__}: {err}")
        if state is not None:
            state.close()
        sys.exit(FAILED_START)
    settings = dataclasses.replace(spec.settings, reloads_applied={
        name: d.seq for name, d in desired.items()})
    try:
        serve_loaded(service, settings, Listen(spec.host, spec.port, spec.log_level,
                                               spec.access_log),
                     sockets=[_Handed(fileno=channel.detach())])
    finally:
        state.close()
