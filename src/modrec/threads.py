"""How many CPU threads a modrec process computes with, and how its idle threads wait.

Why this exists: torch's intra-op pool is OpenMP (libgomp), whose idle threads spin
for a while before sleeping, and every parallel region ends at a barrier where the
fastest thread waits for the slowest. On an otherwise idle machine that is fastest. On
a shared one it is a cliff: when another process holds a core, a descheduled pool
thread holds up the region for a whole scheduler slice while its spinning siblings
burn the CPU the other process needed. Measured here on 2 cores beside one CPU-bound
job (issue 40; `benchmarks/shared_cpu.py` has the before/after): the model service fell
from about 600 to 10-21 requests/s, and a SASRec training epoch took 5-7x as long.

The policy, applied when modrec is imported (before torch) and by the ``modrec`` command:

- idle OpenMP threads spin only briefly before they sleep (``GOMP_SPINCOUNT=1000``,
  libgomp's default being 300,000), unless the user has set ``OMP_WAIT_POLICY`` or
  ``GOMP_SPINCOUNT`` themselves. Measured on this 2-core machine, ML-1M SASRec training
  steps (ms/step; alone / beside a one-thread busy loop / two such trainings at once):
  libgomp's default 170 / 600 / 718, ``OMP_WAIT_POLICY=PASSIVE`` 254 / 263 / 238, one
  thread 227 / 267 / 240, a spin count of 1,000 about 190 / 340 / 320. Passive waiting
  pays a wake-up at every parallel region, which costs half the speed of a training job
  alone; a short spin keeps most of the idle speed and avoids the cliff;
- a service worker computes with one thread: its requests are small, it answers several
  at once by batching, and more workers (not more threads per worker) use more cores;
  with one thread there is no team to wait for, so a busy neighbour costs it only the
  CPU it takes;
- anything else uses the cores this process may run on (its CPU affinity, capped by a
  container's CPU quota), divided among the processes torchrun started on this machine;
- ``--threads N`` (or ``MODREC_THREADS``) chooses another number.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from pathlib import Path

from modrec.errors import ConfigError

log = logging.getLogger(__name__)

ENV = "MODREC_THREADS"
# OpenMP reads its settings once, when the runtime is loaded (with torch or faiss).
# libgomp (torch's and faiss's OpenMP on Linux) spins this many times before sleeping.
SPIN_COUNT = "1000"
USER_WAIT_SETTINGS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def usable_cores() -> int:
    """The CPUs this process may run on: its affinity mask, capped by a cgroup CPU quota
    (what ``docker --cpus`` and Kubernetes limits set) rounded up to whole cores."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    if quota is not None:
        cores = min(cores, math.ceil(quota))
    return max(1, cores)


def cgroup_cpu_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs' worth of time the cgroup may use per period, or None when unlimited or
    unknown. cgroup v2 writes ``"<quota> <period>"`` (or ``"max <period>"``) in
    ``cpu.max``; v1 writes the two numbers in ``cpu/cpu.cfs_quota_us`` (-1: none) and
    ``cpu/cpu.cfs_period_us``."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if quota_us <= 0 or period_us <= 0 else quota_us / period_us


# Set by `prepare_openmp` when torch was imported first and the user chose no wait
# policy: torch's OpenMP threads then spin as long as libgomp's default says.
_default_wait = False


def prepare_openmp() -> bool:
    """Make OpenMP runtimes loaded after this call spin briefly before they sleep, unless
    the user chose how they wait. Returns whether the policy can still take effect: False
    when torch was imported before (its runtime has already read the environment)."""
    global _default_wait
    user_chose = any(name in os.environ for name in USER_WAIT_SETTINGS)
    if not user_chose:
        os.environ["GOMP_SPINCOUNT"] = SPIN_COUNT
    if "torch" in sys.modules:
        log.debug("torch was imported before the thread policy; OpenMP waits as the "
                  "environment said then")
        _default_wait = not user_chose
        return False
    return True


def warn_if_default_wait() -> None:
    """Say once, when torch computes with several threads that wait as libgomp's default
    says (torch imported before modrec, as a notebook usually does): beside another busy
    process such training slows down 10-20x (a MicroLens-50k SASRec epoch at 2 threads:
    15 s alone, 233-300 s beside a one-thread PyTorch job; under the policy, beside the
    same job, 52-57 s for the same model with an ID+text tower)."""
    global _default_wait
    import torch

    if _default_wait and torch.get_num_threads() > 1:
        log.warning(
            "torch was imported before modrec, so its %d OpenMP threads spin long before "
            "they sleep (libgomp's default); beside another busy process this can make "
            "each step 10x slower. Import modrec before torch, or start Python with "
            "GOMP_SPINCOUNT=%s (or OMP_WAIT_POLICY set), or use torch.set_num_threads(1)",
            torch.get_num_threads(), SPIN_COUNT)
        _default_wait = False  # once


def default_threads(serving: bool) -> int:
    """1 for a service worker; otherwise this process's share of the usable cores when
    torchrun started ``LOCAL_WORLD_SIZE`` processes on this machine."""
    if serving:
        return 1
    local_processes = _positive_int(os.environ.get("LOCAL_WORLD_SIZE"), "LOCAL_WORLD_SIZE") or 1
    return max(1, usable_cores() // local_processes)


def choose_threads(requested: int | None, serving: bool) -> int:
    """``requested`` (``--threads``), else ``MODREC_THREADS``, else the default."""
    if requested is not None:
        return requested
    return _positive_int(os.environ.get(ENV), ENV) or default_threads(serving)


_applied = False  # apply_threads ran: the command chose the threads


def apply_threads(requested: int | None = None, serving: bool = False) -> int:
    """Set torch's intra-op thread count by the policy above and return it."""
    global _applied
    import torch

    _applied = True
    threads = choose_threads(requested, serving)
    if threads > usable_cores():
        log.warning("%d threads on %d usable cores: the threads will take turns; "
                    "fewer is usually faster", threads, usable_cores())
    torch.set_num_threads(threads)
    return threads


def apply_env_threads() -> None:
    """``MODREC_THREADS``, when set, for work started from Python (`modrec.train`) rather
    than by the command, which applies it (after ``--threads``) in `apply_threads`:
    without this, the variable would be silently ignored there. Otherwise torch keeps
    the threads the user's program gave it."""
    import torch

    threads = _positive_int(os.environ.get(ENV), ENV)
    if threads is not None and not _applied:
        torch.set_num_threads(threads)


def thread_summary() -> str:
    """What torch computes with now, as a log line says it."""
    import torch

    threads = torch.get_num_threads()
    wait = ", ".join(f"{name}={os.environ[name]}" for name in USER_WAIT_SETTINGS
                     if name in os.environ) or "OpenMP's default wait"
    return f"{threads} torch thread{'s' if threads > 1 else ''}, {wait}"


def _positive_int(text: str | None, name: str) -> int | None:
    if text is None or text.strip() == "":
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ConfigError(f"{name}={text!r}: expected a whole number of threads, at least 1")
    return value
