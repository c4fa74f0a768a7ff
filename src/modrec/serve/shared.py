"""What the worker processes of one ``modrec serve --workers N`` share besides the port
and the state file: a folder the supervisor makes at start-up and removes at the end.

It holds

* ``metrics/``: prometheus_client's multiprocess files (``PROMETHEUS_MULTIPROC_DIR``),
  so that ``/metrics``, whichever worker answers it, counts every worker's requests;
* ``ready/PID``: one empty file per worker that serves (written once its models are
  loaded, removed when it stops or dies), which ``/readyz`` lists;
* ``models.json``: the run folder each model serves now, with a sequence number, kept
  by the worker that ``POST /v1/admin/reload`` reached. Every other worker reads it
  (`ReloadFollower`, four times a second) and loads the same run; a worker started
  later (one that replaces a dead one) loads what it names rather than the command
  line's runs. It lives here and not in the state file because it belongs to this
  start of the service: a restart of ``modrec serve`` serves the runs it is given.

Items added or retired live are not here: they are in the state file, which every
worker reads before it answers (`modrec.serve.live.LiveItems.sync`).
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modrec.atomic import write_text_atomic

if TYPE_CHECKING:
    from modrec.serve.recommender import Recommender

log = logging.getLogger(__name__)

POLL_S = 0.25  # how often a worker looks for a reload another worker did


@dataclasses.dataclass(frozen=True)
class Desired:
    """A model's run folder as the latest reload set it; ``seq`` orders the reloads."""

    folder: str
    seq: int


@dataclasses.dataclass(frozen=True)
class SharedFolder:
    path: Path
    workers: int  # how many the supervisor keeps running

    @classmethod
    def create(cls, workers: int) -> SharedFolder:
        path = Path(tempfile.mkdtemp(prefix="modrec-serve-"))
        for sub in ("metrics", "ready"):
            (path / sub).mkdir()
        return cls(path, workers)

    @property
    def metrics(self) -> Path:
        return self.path / "metrics"

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    # ---- which workers serve ---------------------------------------------------------
    def mark_ready(self, pid: int) -> None:
        (self.path / "ready" / str(pid)).touch()

    def forget(self, pid: int) -> None:
        (self.path / "ready" / str(pid)).unlink(missing_ok=True)

    def ready(self) -> list[int]:
        """The pids of the workers that serve, in order."""
        try:
            return sorted(int(p.name) for p in (self.path / "ready").iterdir())
        except OSError:  # the folder is gone: the service is stopping
            return []

    # ---- reloads ---------------------------------------------------------------------
    @contextmanager
    def _locked(self) -> Iterator[None]:
        with (self.path / "models.lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            yield

    def models(self) -> dict[str, Desired]:
        """Every model a reload has set, by name (empty before the first reload)."""
        try:
            data: dict[str, Any] = json.loads((self.path / "models.json").read_text())
        except FileNotFoundError:
            return {}
        return {name: Desired(str(entry["folder"]), int(entry["seq"]))
                for name, entry in data.items()}

    def record_reload(self, name: str, folder: str) -> int:
        """Set model ``name``'s run folder for every worker; returns the reload's number."""
        with self._locked():
            models = self.models()
            seq = 1 + max((d.seq for d in models.values()), default=0)
            models[name] = Desired(folder, seq)
            write_text_atomic(self.path / "models.json", json.dumps(
                {n: dataclasses.asdict(d) for n, d in models.items()}, indent=1))
        return seq


class ReloadFollower:
    """One worker's side of the reloads: `reload` for the one that received ``POST
    /v1/admin/reload`` (it reloads, then records the run for the others), and a thread
    that loads what another worker recorded. One lock orders both, so a worker never
    ends on an older run than the one recorded last."""

    def __init__(self, shared: SharedFolder, reload: Callable[[str, str | None], Recommender],
                 applied: dict[str, int]) -> None:
        """``reload(name, folder)`` is the service's; ``applied``: the reload number of
        each model as this worker loaded it."""
        self.shared, self._reload, self.applied = shared, reload, dict(applied)
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="modrec-follow",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def reload(self, name: str, folder: str | None) -> Recommender:
        """Reload model ``name`` here (from ``folder``, or its own again), then have every
        other worker do the same."""
        with self.lock:
            fresh = self._reload(name, folder)
            self.applied[name] = self.shared.record_reload(name, str(fresh.folder))
        return fresh

    def catch_up(self) -> None:
        """Load every model whose latest recorded reload this worker has not done."""
        with self.lock:
            for name, desired in self.shared.models().items():
                if desired.seq <= self.applied.get(name, 0):
                    continue
                log.info("model %r: another worker reloaded it from %s; loading it here",
                         name, desired.folder)
                try:
                    self._reload(name, desired.folder)
                except Exception as err:  # noqa: BLE001 - this worker keeps its old model
                    log.error("model %r: loading %s as another worker did failed; this "
                              "worker keeps serving what it served: %s", name,
                              desired.folder, err)
                self.applied[name] = desired.seq  # tried once: not again every poll

    def _follow(self) -> None:
        while not self._stop.wait(POLL_S):
            try:
                self.catch_up()
            except (OSError, ValueError) as err:  # the folder gone: stopping
                log.debug("reload follower: %s", err)
