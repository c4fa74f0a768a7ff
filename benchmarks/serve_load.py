"""The model service under load, on loopback: `modrec serve` measured with wrk.

What it measures (every number printed with the command that produced it):

1. ``/v1/recommend`` (k=10, random ML-1M users 1..6040) at 4 concurrent connections:
   p50/p95/p99 latency and requests/s (targets: p99 <= 15 ms, >= 400 req/s); also at 1
   connection, which is the HTTP cost without queueing;
2. the same request answered in-process by ``ModelService.recommend`` (one at a time,
   many repetitions, in a process pinned like the server), and p50(HTTP)/p50(in-process)
   (target <= 2x);
3. micro-batching on (the default: requests queued behind a busy model share its next
   call) vs off (``--max-batch 1``) at 16 connections
   (target: on >= 2x the requests/s of off);
4. 80% recommend / 20% events at 4 connections, and events alone (durable writes);
5. ``kill -9`` of the server while clients stream events (at least ``--kill-events``
   acknowledged per round, ``--kills`` rounds): after a restart on the same state file
   every acknowledged event must be there, in order, and untouched users must get the
   same recommendations as before the kill;
6. start-up time from launching ``modrec serve`` to ``/readyz`` = 200: the ML-1M run on
   a new state (seeding it) and on the seeded one, and a large synthetic catalog
   (``benchmarks/serve_synthetic.py``; an HNSW index is built above 100,000 items).

wrk runs with one thread (``-t1``) and its CPU time is read from its rusage; the server
and wrk are pinned to different cores with taskset (``--server-cpus``/``--client-cpus``),
and the CPU the rest of the machine used during each measurement is reported beside it
(from /proc/stat), since the development machine is shared.

    export MODREC_DATA_DIR=/work/shared/data
    .venv/bin/python benchmarks/serve_load.py --run runs/serve-bench/ml-1m-hstu \
        --synthetic-run runs/serve-bench/synthetic-1m

Ten million items served within 8 GiB (issue 37), IVF-PQ, its own section:

    .venv/bin/python benchmarks/serve_load.py --parts synthetic \
        --synthetic-run runs/serve-bench/synthetic-10m --synthetic-index "--index ivfpq" \
        --synthetic-section serve-startup-10m
"""

from __future__ import annotations

from modrec import threads as _threads  # noqa: F401  first: its OpenMP policy, before torch

# isort: split

import argparse
import collections
import http.client
import json
import os
import re
import shlex
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from kit import ROOT, machine, markdown_table, write_section

BIN = ROOT / ".venv" / "bin"
SECTION = "serve-load"
SYNTHETIC_SECTION = "serve-startup-large-catalog"
TRAIN_HINT = ("make one with: modrec train -d ml-1m -m hstu --epochs 20 "
              "--out runs/serve-bench/ml-1m-hstu")
LOG = "runs/serve-bench/logs"


# ---- the machine ---------------------------------------------------------------------
def _cpu_jiffies() -> tuple[int, int, int]:
    """(busy, stolen, total) jiffies of the whole machine since boot (/proc/stat): busy
    excludes idle, iowait and steal (time the hypervisor gave to other guests)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    steal = fields[7]
    total = sum(fields[:8])  # guest time is already inside user
    return total - idle - steal, steal, total


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) a live process has used, all its threads."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mib(pid: int, field: str = "VmRSS") -> float:
    """Resident memory now (VmRSS) or at its peak so far (VmHWM), MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Usage:
    """CPU used between ``start()`` and ``stop()``, as cores: the whole machine, and the
    processes we watch (the rest is everybody else's)."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids

    def start(self) -> Usage:
        self.load = os.getloadavg()
        self.t0 = time.perf_counter()
        self.machine0 = _cpu_jiffies()
        self.procs0 = {name: process_cpu(pid) for name, pid in self.pids.items()}
        return self

    def stop(self, extra: dict[str, float] | None = None) -> dict[str, float]:
        """Cores used per watched process, by the machine and by the others; ``extra``:
        CPU seconds of processes already reaped (wrk's rusage)."""
        wall = time.perf_counter() - self.t0
        busy1, steal1, total1 = _cpu_jiffies()
        ticks = max(1, total1 - self.machine0[2])
        cores = os.cpu_count() or 1
        used = {name: (process_cpu(pid) - self.procs0[name]) / wall
                for name, pid in self.pids.items()}
        used.update({name: seconds / wall for name, seconds in (extra or {}).items()})
        result = {"wall_s": wall, "machine": (busy1 - self.machine0[0]) / ticks * cores,
                  "steal": (steal1 - self.machine0[1]) / ticks * cores,
                  "load1": self.load[0], **used}
        result["others"] = max(0.0, result["machine"] - sum(used.values()))
        return result


def others_busy(seconds: float = 2.0) -> float:
    """Cores busy on the machine over the next ``seconds`` (call it while ours idle)."""
    busy0, _, total0 = _cpu_jiffies()
    time.sleep(seconds)
    busy1, _, total1 = _cpu_jiffies()
    return (busy1 - busy0) / max(1, total1 - total0) * (os.cpu_count() or 1)


def wait_quiet(limit: float, patience: float) -> tuple[float, tuple[float, ...]]:
    """Wait (up to ``patience`` seconds) until the rest of the machine uses under
    ``limit`` cores; returns (cores busy when we went on, load average then)."""
    deadline = time.monotonic() + patience
    while True:
        busy = others_busy()
        if busy < limit or time.monotonic() > deadline:
            return busy, os.getloadavg()
        print(f"  (machine busy: {busy:.2f} cores in use by others; waiting)", flush=True)
        time.sleep(5)


def taskset(cpus: str | None) -> list[str]:
    return ["taskset", "-c", cpus] if cpus else []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---- the server ----------------------------------------------------------------------
def request(port: int, method: str, path: str, body: Any = None,
            timeout: float = 30.0, key: str | None = None) -> tuple[int, Any]:
    """One HTTP request to the server on ``port`` (with the API key ``key`` where
    given): its status and its JSON body (the text where it is not JSON)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    try:
        data = None if body is None else json.dumps(body)
        conn.request(method, path, data, headers)
        response = conn.getresponse()
        raw = response.read()
        try:
            return response.status, json.loads(raw)
        except ValueError:
            return response.status, raw.decode()
    finally:
        conn.close()


@dataclass
class Server:
    run: Path
    state: Path
    window_ms: float = 0.0
    max_batch: int = 64
    cpus: str | None = None
    name: str = "server"
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    command: list[str] = field(default_factory=list)
    log: Path | None = None
    # how to start modrec (another revision: python -m modrec with its src on PYTHONPATH)
    launcher: list[str] = field(default_factory=lambda: [str(BIN / "modrec")])
    env: dict[str, str] | None = None
    extra: list[str] = field(default_factory=list)  # more `modrec serve` options
    log_file: Path | None = None  # default: <LOG>/<name>.log under the checkout

    def start(self, timeout: float = 3600.0) -> float:
        """Launch ``modrec serve``; seconds until /readyz answered 200."""
        self.port = free_port()
        self.command = [*taskset(self.cpus), *self.launcher, "serve", str(self.run),
                        "--state", str(self.state), "--port", str(self.port),
                        "--batch-window-ms", f"{self.window_ms:g}",
                        "--max-batch", str(self.max_batch), "--log-level", "warning",
                        *self.extra]
        self.log = self.log_file or ROOT / LOG / f"{self.name}.log"
        self.log.parent.mkdir(parents=True, exist_ok=True)
        out = self.log.open("ab")
        out.write(f"\n$ {shlex.join(self.command)}\n".encode())
        out.flush()
        started = time.perf_counter()
        self.proc = subprocess.Popen(self.command, stdout=out, stderr=subprocess.STDOUT,
                                     cwd=ROOT, start_new_session=True, env=self.env)
        out.close()
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{shlex.join(self.command)} exited with "
                                   f"{self.proc.returncode}; see {self.log}:\n"
                                   + self.log.read_text()[-3000:])
            try:
                status, _ = request(self.port, "GET", "/readyz", timeout=2.0)
                if status == 200:
                    return time.perf_counter() - started
            except OSError:
                pass
            if time.perf_counter() - started > timeout:
                self.stop()
                raise TimeoutError(f"{self.name} not ready after {timeout:.0f} s")
            time.sleep(0.02)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def metrics(self) -> dict[str, float]:
        """The server's Prometheus counters, flattened: 'name{label=value,...}' -> value."""
        status, text = request(self.port, "GET", "/metrics")
        values: dict[str, float] = {}
        for line in str(text).splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                values[key] = float(value)
        return values

    def log_lines(self, pattern: str) -> list[re.Match[str]]:
        assert self.log is not None
        return list(re.finditer(pattern, self.log.read_text()))


def metric_delta(before: dict[str, float], after: dict[str, float], name: str,
                 **labels: str) -> float:
    """The change of every series ``name`` whose labels include ``labels``."""
    total = 0.0
    for key, value in after.items():
        series, _, rest = key.partition("{")
        if series != name or not all(f'{k}="{v}"' in rest for k, v in labels.items()):
            continue
        total += value - before.get(key, 0.0)
    return total


def copy_state(source: Path, target: Path) -> None:
    """A consistent copy of a (stopped server's) SQLite state, WAL included."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{target}{suffix}").unlink(missing_ok=True)
    with sqlite3.connect(source) as src, sqlite3.connect(target) as dst:
        src.backup(dst)
    # (sqlite3's context manager commits; it does not close)
    src.close()
    dst.close()


def stored_events(path: Path) -> int:
    from modrec.serve.state import SQLiteUserState

    state = SQLiteUserState(path)
    try:
        return state.events()
    finally:
        state.close()


# ---- wrk -----------------------------------------------------------------------------
LUA_DONE = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRK_JSON {\"requests\": %d, \"duration_us\": %d, \"p50\": %d, \"p90\": %d, " ..
    "\"p95\": %d, \"p99\": %d, \"max\": %d, \"mean\": %.1f, \"connect\": %d, " ..
    "\"read\": %d, \"write\": %d, \"status\": %d, \"timeout\": %d}\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(95), latency:percentile(99), latency.max, latency.mean,
    e.connect, e.read, e.write, e.status, e.timeout))
end
"""


def lua_script(users: int, items: list[str], events_share: float, seed: int) -> str:
    """Each request: with probability ``events_share`` an event (a random user 1..users
    and a random catalog item), else a recommendation for a random user, k=10."""
    item_table = ",".join(json.dumps(i) for i in items) if events_share > 0 else ""
    return f"""
local items = {{{item_table}}}
local share = {events_share}
local counter = 0
setup = function(thread)
  counter = counter + 1
  thread:set("id", counter)
end
init = function(args)
  math.randomseed({seed} + (id or 0) * 7919)
end
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  local user = math.random(1, {users})
  if share > 0 and math.random() < share then
    local item = items[math.random(1, #items)]
    return wrk.format(nil, "/v1/events", nil,
      '{{"user_id": "' .. user .. '", "item_id": "' .. item .. '"}}')
  end
  return wrk.format(nil, "/v1/recommend", nil, '{{"user_id": "' .. user .. '", "k": 10}}')
end
""" + LUA_DONE


@dataclass
class WrkResult:
    command: str
    requests: int
    seconds: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    errors: dict[str, int]
    usage: dict[str, float]
    server_side: dict[str, float]
    text: str

    @property
    def rps(self) -> float:
        return self.requests / self.seconds


def run_wrk(server: Server, lua: str, connections: int, seconds: int,
            cpus: str | None, workdir: Path, pids: dict[str, int] | None = None) -> WrkResult:
    """wrk against ``server``; ``pids``: the server's processes whose CPU to measure
    (default its own; with --workers, the supervisor and each worker)."""
    script = workdir / f"load-{connections}-{abs(hash(lua)) % 10_000}.lua"
    script.write_text(lua)
    command = [*taskset(cpus), "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency",
               "--timeout", "10s", "-s", str(script), f"http://127.0.0.1:{server.port}"]
    before = server.metrics()
    output = workdir / "wrk.out"
    usage = Usage(pids or {"server": server.pid}).start()
    with output.open("w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        _, status, rusage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    used = usage.stop({"wrk": rusage.ru_utime + rusage.ru_stime})
    after = server.metrics()
    text = output.read_text()
    if proc.returncode != 0 or "WRK_JSON" not in text:
        raise RuntimeError(f"{shlex.join(command)} failed ({proc.returncode}):\n{text}")
    stats = json.loads(text.split("WRK_JSON", 1)[1].strip().splitlines()[0])
    side = {}
    for endpoint in ("/v1/recommend", "/v1/events"):
        n = metric_delta(before, after, "modrec_request_seconds_count", endpoint=endpoint)
        total = metric_delta(before, after, "modrec_request_seconds_sum", endpoint=endpoint)
        ok = metric_delta(before, after, "modrec_requests_total", endpoint=endpoint,
                          status="200")
        side[endpoint] = n
        side[f"{endpoint} ok"] = ok
        side[f"{endpoint} mean_ms"] = total / n * 1000 if n else float("nan")
    batches = metric_delta(before, after, "modrec_batch_size_count")
    side["batches"] = batches
    side["mean_batch"] = (metric_delta(before, after, "modrec_batch_size_sum") / batches
                          if batches else float("nan"))
    errors = {k: stats[k] for k in ("connect", "read", "write", "status", "timeout")}
    return WrkResult(shlex.join(command), stats["requests"], stats["duration_us"] / 1e6,
                     stats["p50"] / 1000, stats["p95"] / 1000, stats["p99"] / 1000,
                     stats["max"] / 1000, errors, used, side, text)


def describe_usage(u: dict[str, float]) -> str:
    parts = [f"load average {u['load1']:.2f} at start",
             f"machine {u['machine']:.2f} cores busy"]
    for name in ("server", "wrk", "clients", "worker"):
        if name in u:
            parts.append(f"{name} {u[name]:.2f}")
    parts.append(f"others {u['others']:.2f}, stolen by the hypervisor {u['steal']:.2f}")
    return ", ".join(parts)


# ---- profiling -----------------------------------------------------------------------
def profile_during(server: Server, seconds: int, out: Path) -> subprocess.Popen[bytes] | None:
    """py-spy record on the server (collapsed stacks) for ``seconds``, in the background."""
    spy = BIN / "py-spy"
    if not spy.exists():
        print("  (py-spy not installed: .venv/bin/pip install py-spy)")
        return None
    command = [str(spy), "record", "--pid", str(server.pid), "--duration", str(seconds),
               "--rate", "200", "--format", "raw", "--threads", "--nonblocking",
               "--output", str(out)]
    print(f"  $ {shlex.join(command)}")
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def summarise_profile(path: Path, top: int = 14) -> list[list[object]]:
    """Share of CPU samples per function (inclusive: anywhere on the stack; self: the
    innermost Python frame), from py-spy's collapsed stacks."""
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        frames = [re.sub(r" \(([^)]*/)?([^/)]+):\d+\)$", r" (\2)", f)
                  for f in stack.split(";")[1:]]  # [0] is the thread
        total += n
        for frame in set(frames):
            inclusive[frame] += n
        if frames:
            own[frames[-1]] += n
    rows: list[list[object]] = []
    for frame, n in inclusive.most_common(top):
        rows.append([frame, f"{n / total:.0%}", f"{own.get(frame, 0) / total:.0%}"])
    rows.append(["(self, top leaves)", "", ", ".join(
        f"{f} {n / total:.0%}" for f, n in own.most_common(5))])
    return rows


# ---- in-process ----------------------------------------------------------------------
def inprocess_worker(run: str, state: str, reps: int, users: int, seed: int) -> None:
    """Run in a child pinned like the server: median latency of ModelService.recommend,
    one request at a time, printed as JSON."""
    from modrec.serve import ModelService, Request
    from modrec.serve.state import SQLiteUserState

    service = ModelService.from_runs({"model": run}, SQLiteUserState(state), seed=False)
    rng = np.random.default_rng(seed)
    for user in rng.integers(1, users + 1, 200):  # warm-up
        service.recommend([Request(user_id=str(user), k=10)])
    times = []
    cpu0 = time.process_time()
    start = time.perf_counter()
    for user in rng.integers(1, users + 1, reps):
        t = time.perf_counter()
        [reply] = service.recommend([Request(user_id=str(user), k=10)])
        times.append(time.perf_counter() - t)
        assert not isinstance(reply, Exception), reply
    wall = time.perf_counter() - start
    ms = np.array(times) * 1000
    print("INPROC_JSON " + json.dumps({
        "reps": reps, "p50": float(np.median(ms)), "p95": float(np.percentile(ms, 95)),
        "p99": float(np.percentile(ms, 99)), "mean": float(ms.mean()),
        "cpu_per_wall": (time.process_time() - cpu0) / wall}), flush=True)


# ---- the kill test -------------------------------------------------------------------
def recommend_ids(port: int, user: str) -> tuple[list[str], list[float]]:
    status, body = request(port, "POST", "/v1/recommend", {"user_id": user, "k": 10})
    if status != 200:
        raise RuntimeError(f"recommend {user}: {status} {body}")
    return [i["item_id"] for i in body["items"]], [i["score"] for i in body["items"]]


def stream_events(port: int, user: str, items: list[str], seed: int,
                  acked: list[str], failures: list[str]) -> None:
    """POST events one after another on one connection until the server goes away;
    ``acked`` gets each item whose 200 came back, in order."""
    rng = np.random.default_rng(seed)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Content-Type": "application/json"}
    n = 0
    while True:
        item = items[int(rng.integers(len(items)))]
        body = json.dumps({"user_id": user, "item_id": item, "timestamp": 1_000_000_000 + n})
        try:
            conn.request("POST", "/v1/events", body, headers)
            response = conn.getresponse()
            response.read()
        except (OSError, http.client.HTTPException):
            break  # killed
        if response.status == 200:
            acked.append(item)
            n += 1
        else:
            failures.append(f"{user}: {response.status}")
    conn.close()


def kill_round(number: int, run: Path, state: Path, cpus: str | None, clients: int,
               least: int, items: list[str], sample: list[str],
               rng: np.random.Generator) -> dict[str, Any]:
    base = stored_events(state)
    server = Server(run, state, cpus=cpus, name="kill")
    server.start()
    before = {u: recommend_ids(server.port, u) for u in sample}
    acked: list[list[str]] = [[] for _ in range(clients)]
    failures: list[str] = []
    users = [f"kill-{os.getpid()}-{number}-{c}" for c in range(clients)]
    threads = [threading.Thread(target=stream_events, args=(
        server.port, users[c], items, int(rng.integers(1 << 31)), acked[c], failures))
        for c in range(clients)]
    target = least + int(rng.integers(0, 2000))  # kill at a random moment past `least`
    usage = Usage({"server": server.pid, "clients": os.getpid()}).start()
    started = time.perf_counter()
    for t in threads:
        t.start()
    while sum(len(a) for a in acked) < target and any(t.is_alive() for t in threads):
        time.sleep(0.002)
    streamed = time.perf_counter() - started
    cpu = usage.stop()
    server.kill9()
    for t in threads:
        t.join()
    total_acked = sum(len(a) for a in acked)
    restart = Server(run, state, cpus=cpus, name="kill")
    restart_s = restart.start()
    lost = extra = 0
    in_order = True
    for user, sent in zip(users, acked, strict=True):
        status, body = request(restart.port, "GET", f"/v1/users/{user}/history?limit=10000")
        stored = [row["item_id"] for row in body["items"]] if status == 200 else []
        if stored[:len(sent)] != sent:
            in_order = False
            head = stored[:len(sent)]
            lost += sum(1 for a, b in zip(sent, head, strict=False) if a != b)
            lost += len(sent) - len(head)
        extra += max(0, len(stored) - len(sent))  # written, answer lost to the kill
    after = {u: recommend_ids(restart.port, u) for u in sample}
    restart.stop()
    in_file = stored_events(state) - base
    same = sum(before[u][0] == after[u][0] for u in sample)
    worst = max(max(abs(a - b) for a, b in zip(before[u][1], after[u][1], strict=True))
                for u in sample)
    return {"round": number, "acked": total_acked, "stored_new": in_file,
            "missing": lost + max(0, total_acked - in_file), "in_order": in_order,
            "unacked_written": extra, "events_per_s": total_acked / streamed,
            "restart_s": restart_s, "same": same, "sample": len(sample),
            "max_score_diff": worst, "failures": len(failures), "usage": cpu}


# ---- the report ----------------------------------------------------------------------
def ms(v: float) -> str:
    return f"{v:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/serve-bench/ml-1m-hstu",
                        help="the ML-1M run to serve")
    parser.add_argument("--synthetic-run", default="runs/serve-bench/synthetic-1m",
                        help="a large-catalog run (benchmarks/serve_synthetic.py); skipped "
                        "when missing")
    parser.add_argument("--synthetic-index", default="",
                        help="more `modrec serve` options for the large catalog, e.g. "
                        "'--index ivfpq' at 10M items (default: the service's choice)")
    parser.add_argument("--synthetic-section", default=SYNTHETIC_SECTION,
                        help="the docs/benchmarks.md section the large catalog writes")
    parser.add_argument("--parts", default="startup,load,inprocess,batching,mix,kill",
                        help="comma-separated among startup, load, inprocess, batching, mix, "
                        "kill, synthetic (add synthetic for the large catalog: it takes "
                        "long: an index build at the first start)")
    parser.add_argument("--seconds", type=int, default=25, help="each wrk measurement")
    parser.add_argument("--server-cpus", default="1", help="taskset list for the server "
                        "('' for no pinning)")
    parser.add_argument("--client-cpus", default="0", help="taskset list for wrk and the "
                        "Python clients ('' for no pinning)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each load "
                        "measurement (medians reported; the machine drifts between runs)")
    parser.add_argument("--retries", type=int, default=1, help="extra tries of a run during "
                        "which the rest of the machine used more than --quiet-cores")
    parser.add_argument("--reps", type=int, default=3000, help="in-process repetitions")
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--kill-events", type=int, default=10_000,
                        help="acknowledged events before each kill (at least)")
    parser.add_argument("--kill-clients", type=int, default=4)
    parser.add_argument("--kill-sample", type=int, default=50,
                        help="users whose recommendations are compared across a kill")
    parser.add_argument("--quiet-cores", type=float, default=0.3,
                        help="wait before a measurement until others use fewer cores")
    parser.add_argument("--quiet-wait", type=float, default=180.0,
                        help="longest wait for a quiet machine, seconds")
    parser.add_argument("--profile", action="store_true",
                        help="also py-spy the server during the 4- and 16-connection loads "
                        "(separate runs; the profiler's overhead stays out of the numbers)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--inprocess-worker", nargs=2, metavar=("RUN", "STATE"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()

    users = 6040
    if args.inprocess_worker:
        inprocess_worker(*args.inprocess_worker, args.reps, users, args.seed)
        return
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    run = Path(args.run).resolve()
    if parts - {"synthetic"} and not (run / "config.json").exists():
        sys.exit(f"{run} is not a run folder (no config.json); {TRAIN_HINT}")
    if shutil.which("wrk") is None and parts & {"load", "batching", "mix"}:
        sys.exit("wrk is not installed: apt-get install -y wrk")
    if not os.environ.get("MODREC_DATA_DIR"):
        print("note: MODREC_DATA_DIR is not set")
    server_cpus = args.server_cpus or None
    client_cpus = args.client_cpus or None
    if client_cpus:  # this process and its children (the Python clients) run there
        os.sched_setaffinity(0, {int(c) for c in client_cpus.split(",")})
    rng = np.random.default_rng(args.seed)
    work = ROOT / "runs" / "serve-bench" / "work"
    work.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="serve-load-"))
    host = machine()
    pinning = (f"server pinned to CPU {server_cpus or 'any'}, wrk and the Python clients to "
               f"CPU {client_cpus or 'any'} (taskset)")
    print(f"# serve load: {run} on {host}\n{pinning}\n", flush=True)
    items = pd.read_parquet(run / "dataset" / "items.parquet")["item_id"].astype(
        str).tolist() if (run / "dataset" / "items.parquet").exists() else []
    sections: list[str] = []
    results: dict[str, Any] = {}
    servers: list[Server] = []

    def quiet(label: str) -> str:
        busy, load = wait_quiet(args.quiet_cores, args.quiet_wait)
        note = f"before {label}: others {busy:.2f} cores busy, load average {load[0]:.2f}"
        print(f"  ({note})", flush=True)
        return note

    def serve(state: Path, max_batch: int = 64, name: str = "load") -> Server:
        server = Server(run, state, max_batch=max_batch, cpus=server_cpus, name=name)
        servers.append(server)
        ready = server.start()
        print(f"$ {shlex.join(server.command)}   # ready in {ready:.1f} s", flush=True)
        return server

    master = work / "ml-1m-seeded.db"
    try:
        # ---- 6a: start-up, ML-1M ---------------------------------------------------------
        if "startup" in parts or not master.exists():
            first = work / "startup-first.db"
            for suffix in ("", "-wal", "-shm"):
                Path(f"{first}{suffix}").unlink(missing_ok=True)
            note = quiet("start-up")
            rows = []
            for label in ("first start (new state: seeds it)", "restart (seeded state)"):
                server = Server(run, first, cpus=server_cpus, name="startup")
                usage = Usage({}).start()
                seconds = server.start()
                u = usage.stop()
                rss = _rss_mib(server.pid)
                seeded = server.log_lines(r"seeded the user state with (\d+) events .* in "
                                          r"([\d.]+)s")
                loaded = server.log_lines(r"loaded .* over (\d+) items \((\w+) index\) in "
                                          r"([\d.]+)s")
                server.stop()
                rows.append([label, f"{seconds:.1f}", f"{float(loaded[-1][3]):.1f}"
                             if loaded else "?", loaded[-1][2] if loaded else "?",
                             f"{float(seeded[-1][2]):.1f} ({int(seeded[-1][1]):,} events)"
                             if seeded and label.startswith("first") else "-",
                             f"{rss:.0f}", f"{u['machine']:.2f}"])
                print(f"$ {shlex.join(server.command)}\n  ready after {seconds:.1f} s",
                      flush=True)
            copy_state(first, master)
            results["startup"] = rows
            table = markdown_table(["ML-1M HSTU", "launch to /readyz 200 (s)",
                                    "run load + index (s)", "index", "seeding (s)",
                                    "RSS (MiB)", "machine cores busy"], rows)
            cmd = f"modrec serve {args.run} --state STATE --port P (server on CPU " \
                  f"{server_cpus or 'any'}; {note})"
            sections.append(f"### 6. Start-up, ML-1M\n\n`{cmd}`\n\n{table}")
            print(table, "\n", flush=True)

        usage_header = ["server cores", "wrk cores", "others' cores", "stolen cores",
                        "load avg"]

        def usage_cells(r: WrkResult) -> list[object]:
            u = r.usage
            return [f"{u['server']:.2f}", f"{u['wrk']:.2f}", f"{u['others']:.2f}",
                    f"{u['steal']:.2f}", f"{u['load1']:.2f}"]

        def measure(server: Server, lua: str, conns: int, label: str) -> WrkResult:
            """Quiet machine, 3 s of warm-up, the measurement; again (--retries) when the
            rest of the machine used more than --quiet-cores meanwhile: the cleanest."""
            best: WrkResult | None = None
            for _ in range(1 + args.retries):
                quiet(label)
                run_wrk(server, lua, conns, 3, client_cpus, tmp)
                r = run_wrk(server, lua, conns, args.seconds, client_cpus, tmp)
                side = r.server_side
                print(f"$ {r.command}\n{r.text}  {describe_usage(r.usage)}\n  server side "
                      f"(/metrics): mean batch {side['mean_batch']:.2f}, recommend mean "
                      f"{side['/v1/recommend mean_ms']:.2f} ms, events mean "
                      f"{side['/v1/events mean_ms']:.2f} ms", flush=True)
                if best is None or r.usage["others"] < best.usage["others"]:
                    best = r
                if r.usage["others"] <= args.quiet_cores:
                    break
                print("  (the rest of the machine was busy meanwhile: measuring again)")
            assert best is not None
            return best

        def median(values: list[float]) -> float:
            return float(statistics.median(values))

        repeats = range(1, args.repeat + 1)
        load_lua = lua_script(users, items, 0.0, args.seed)

        # ---- 1 and 2: recommend at 4 and 1 connections; in-process -----------------------
        if parts & {"load", "inprocess"}:
            state = work / "load.db"
            copy_state(master, state)
            server = serve(state)
            runs: dict[int, list[WrkResult]] = {4: [], 1: []}
            inproc: list[dict[str, float]] = []
            inproc_command = ""
            for rep in repeats:
                for conns in (4, 1):
                    runs[conns].append(measure(server, load_lua, conns,
                                               f"{conns} connection(s), run {rep}"))
                if "inprocess" in parts:  # the server idles meanwhile
                    note = quiet(f"in-process, run {rep}")
                    copy_state(master, work / "inprocess.db")
                    command = [*taskset(server_cpus), str(BIN / "python"),
                               str(Path(__file__).resolve()), "--inprocess-worker", str(run),
                               str(work / "inprocess.db"), "--reps", str(args.reps),
                               "--seed", str(args.seed + rep)]
                    inproc_command = shlex.join(command)
                    usage = Usage({}).start()
                    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
                    u = usage.stop()
                    if done.returncode != 0:
                        raise RuntimeError(f"{inproc_command}:\n{done.stderr[-3000:]}")
                    stats = json.loads(done.stdout.split("INPROC_JSON", 1)[1].strip()
                                       .splitlines()[0])
                    stats.update(machine=u["machine"], steal=u["steal"], note=note)
                    inproc.append(stats)
                    print(f"$ {inproc_command}\n  {stats}", flush=True)
            if args.profile:
                quiet("profile")
                spy = profile_during(server, args.seconds, tmp / "c4.txt")
                r = run_wrk(server, load_lua, 4, args.seconds, client_cpus, tmp)
                if spy is not None:
                    spy.wait()
                    prof = summarise_profile(tmp / "c4.txt")
                    shutil.copy(tmp / "c4.txt", work / "profile-c4.txt")
                    results["profile_c4"] = prof
                    print(markdown_table(["function (4 connections, py-spy)", "inclusive",
                                          "self"], prof), "\n", flush=True)
                    print(f"  (under the profiler: {r.rps:.0f} req/s, p99 {r.p99_ms:.2f} ms)")
            server.stop()
            results["load"] = runs
            rows = []
            for conns in (4, 1):
                for rep, r in zip(repeats, runs[conns], strict=True):
                    rows.append([conns, rep, ms(r.p50_ms), ms(r.p95_ms), ms(r.p99_ms),
                                 ms(r.max_ms), f"{r.rps:.0f}", sum(r.errors.values()),
                                 f"{r.server_side['mean_batch']:.2f}", *usage_cells(r)])
                rs = runs[conns]
                rows.append([f"**{conns}**", "**median**",
                             *(f"**{ms(median([getattr(r, a) for r in rs]))}**"
                               for a in ("p50_ms", "p95_ms", "p99_ms", "max_ms")),
                             f"**{median([r.rps for r in rs]):.0f}**", "", "", "", "", "",
                             "", ""])
            table = markdown_table(["connections", "run", "p50 ms", "p95 ms", "p99 ms",
                                    "max ms", "req/s", "errors", "mean batch", *usage_header],
                                   rows)
            c4 = runs[4]
            p99, rps = median([r.p99_ms for r in c4]), median([r.rps for r in c4])
            verdict = (f"Targets at 4 connections (medians of {len(c4)} runs): p99 <= 15 ms "
                       f"{'met' if p99 <= 15 else 'MISSED'} ({p99:.2f} ms; "
                       f"{sum(r.p99_ms <= 15 for r in c4)} of {len(c4)} runs within); "
                       f">= 400 req/s {'met' if rps >= 400 else 'MISSED'} ({rps:.0f}; "
                       f"{sum(r.rps >= 400 for r in c4)} of {len(c4)} runs).")
            sections.append(f"### 1. /v1/recommend, k=10, random users 1..{users}\n\n"
                            f"`{c4[0].command}` (and `-c1`), {args.seconds} s each after 3 s "
                            f"of warm-up, {len(c4)} runs; server "
                            f"`{shlex.join(server.command)}`\n\n{table}\n\n{verdict}")
            print(table, "\n", verdict, "\n", flush=True)

            if inproc:
                rows = []
                for i, stats in enumerate(inproc):
                    rows.append([i + 1, ms(stats["p50"]), ms(stats["p95"]), ms(stats["p99"]),
                                 ms(runs[1][i].p50_ms), ms(runs[4][i].p50_ms),
                                 f"{runs[1][i].p50_ms / stats['p50']:.2f}x",
                                 f"{runs[4][i].p50_ms / stats['p50']:.2f}x",
                                 f"{stats['machine']:.2f}", f"{stats['steal']:.2f}"])
                ratio4 = median([runs[4][i].p50_ms / s["p50"] for i, s in enumerate(inproc)])
                ratio1 = median([runs[1][i].p50_ms / s["p50"] for i, s in enumerate(inproc)])
                rows.append(["**median**", f"**{ms(median([s['p50'] for s in inproc]))}**",
                             "", "", "", "", f"**{ratio1:.2f}x**", f"**{ratio4:.2f}x**", "",
                             ""])
                table = markdown_table(["run", "in-process p50 ms", "p95 ms", "p99 ms",
                                        "HTTP 1 conn p50 ms", "HTTP 4 conn p50 ms",
                                        "ratio, 1 conn", "ratio, 4 conn",
                                        "machine cores busy", "stolen cores"], rows)
                verdict = (f"Target p50(HTTP, 4 connections) / p50(in-process) <= 2x: "
                           f"{'met' if ratio4 <= 2 else 'MISSED'} ({ratio4:.2f}x; at 1 "
                           f"connection {ratio1:.2f}x).")
                results["inprocess"] = inproc
                sections.append(f"### 2. In-process vs HTTP\n\n`{inproc_command}` (seed "
                                f"varies per run): {args.reps} calls of `service.recommend("
                                "[Request(user_id=random, k=10)])` one at a time after 200 of "
                                "warm-up, pinned like the server, while the server idled; "
                                "each run beside the HTTP runs of the same round."
                                f"\n\n{table}\n\n{verdict}")
                print(table, "\n", verdict, "\n", flush=True)

        # ---- 3: micro-batching on vs off at 16 connections -------------------------------
        if "batching" in parts:
            rows = []
            pairs: dict[int, list[WrkResult]] = {64: [], 1: []}
            command = ""
            for rep in repeats:
                for window in (64, 1):  # --max-batch; interleaved: the machine drifts
                    state = work / "batching.db"
                    copy_state(master, state)
                    server = serve(state, window, name=f"batch-{window:g}")
                    r = measure(server, load_lua, 16, f"max batch {window}, run {rep}")
                    command = r.command
                    if args.profile and rep == 1:
                        quiet("profile")
                        spy = profile_during(server, args.seconds, tmp / "c16.txt")
                        pr = run_wrk(server, load_lua, 16, args.seconds, client_cpus, tmp)
                        if spy is not None:
                            spy.wait()
                            prof = summarise_profile(tmp / "c16.txt")
                            shutil.copy(tmp / "c16.txt", work / f"profile-c16-w{window:g}.txt")
                            results[f"profile_c16_w{window:g}"] = prof
                            print(markdown_table([f"function (16 connections, max batch "
                                                  f"{window}, py-spy)", "inclusive",
                                                  "self"], prof),
                                  f"\n  (under the profiler: {pr.rps:.0f} req/s)\n",
                                  flush=True)
                    server.stop()
                    pairs[window].append(r)
                    rows.append([f"{window} ({'on' if window > 1 else 'off'})", rep,
                                 f"{r.rps:.0f}", ms(r.p50_ms), ms(r.p99_ms), ms(r.max_ms),
                                 f"{r.server_side['mean_batch']:.2f}", sum(r.errors.values()),
                                 *usage_cells(r)])
            ratios = [on.rps / off.rps for on, off in zip(pairs[64], pairs[1], strict=True)]
            for window in (64, 1):
                rows.append([f"**{window}**", "**median**",
                             f"**{median([r.rps for r in pairs[window]]):.0f}**",
                             f"**{ms(median([r.p50_ms for r in pairs[window]]))}**",
                             f"**{ms(median([r.p99_ms for r in pairs[window]]))}**",
                             "", "", "", "", "", "", "", ""])
            ratio = median(ratios)
            table = markdown_table(["--max-batch", "run", "req/s", "p50 ms", "p99 ms",
                                    "max ms", "mean batch", "errors", *usage_header], rows)
            verdict = (f"on / off, run by run: {', '.join(f'{x:.2f}x' for x in ratios)}; "
                       f"median {ratio:.2f}x; target >= 2x: {'met' if ratio >= 2 else 'MISSED'}")
            results["batching"] = ratios
            sections.append(f"### 3. Micro-batching at 16 connections\n\n`{command}` against "
                            "`modrec serve ...` (batching on) and `... --max-batch 1` (off), "
                            "alternately, "
                            f"a new server (and state copy) each run\n\n{table}\n\n{verdict}")
            print(table, "\n", verdict, "\n", flush=True)

        # ---- 4: 80/20 mix and events alone ---------------------------------------------------
        if "mix" in parts:
            rows = []
            commands: dict[str, str] = {}
            kinds: dict[str, list[WrkResult]] = {}
            for rep in repeats:
                for label, share in (("80% recommend / 20% events", 0.2),
                                     ("events only", 1.0)):
                    state = work / "mix.db"
                    copy_state(master, state)
                    server = serve(state, name="mix")
                    lua = lua_script(users, items, share, args.seed + rep)
                    r = measure(server, lua, 4, f"{label}, run {rep}")
                    server.stop()
                    commands[label] = r.command
                    kinds.setdefault(label, []).append(r)
                    side = r.server_side
                    rows.append([label, rep, f"{r.rps:.0f}",
                                 f"{side['/v1/recommend ok'] / r.seconds:.0f}",
                                 f"{side['/v1/events ok'] / r.seconds:.0f}",
                                 ms(r.p50_ms), ms(r.p95_ms), ms(r.p99_ms),
                                 ms(side["/v1/recommend mean_ms"]) if side["/v1/recommend"]
                                 else "-", ms(side["/v1/events mean_ms"]),
                                 sum(r.errors.values()), *usage_cells(r)])
            for label, rs in kinds.items():
                per_s = {kind: median([r.server_side[f"/v1/{kind} ok"] / r.seconds
                                       for r in rs]) for kind in ("recommend", "events")}
                rows.append([f"**{label}**", "**median**",
                             f"**{median([r.rps for r in rs]):.0f}**",
                             f"**{per_s['recommend']:.0f}**", f"**{per_s['events']:.0f}**",
                             *(f"**{ms(median([getattr(r, a) for r in rs]))}**"
                               for a in ("p50_ms", "p95_ms", "p99_ms")),
                             "", "", "", "", "", "", "", ""])
            table = markdown_table(["load (4 connections)", "run", "req/s", "recommend/s",
                                    "events/s", "p50 ms", "p95 ms", "p99 ms",
                                    "recommend mean ms (app)", "event mean ms (app)", "errors",
                                    *usage_header], rows)
            results["mix"] = rows
            sections.append("### 4. Reads and durable writes\n\nEvents: random user 1..6040, "
                            "random catalog item, no timestamp; each acknowledged only after "
                            "its SQLite commit (WAL, synchronous=FULL). Latency percentiles "
                            "are over both kinds (wrk's); the per-endpoint means are the "
                            "server's own (/metrics). A new server and state copy each run."
                            "\n\n" + "\n".join(f"`{c}`  " for c in commands.values())
                            + f"\n\n{table}")
            print(table, "\n", flush=True)

        # ---- 5: kill -9 while streaming events ---------------------------------------------
        if "kill" in parts:
            state = work / "kill.db"
            copy_state(master, state)
            sample = [str(u) for u in rng.choice(np.arange(1, users + 1), args.kill_sample,
                                                 replace=False)]
            note = quiet("kill test")
            rows = []
            for number in range(1, args.kills + 1):
                k = kill_round(number, run, state, server_cpus, args.kill_clients,
                               args.kill_events, items, sample, rng)
                print(f"  round {number}: {k}", flush=True)
                rows.append([k["round"], f"{k['acked']:,}", f"{k['stored_new']:,}",
                             k["missing"], "yes" if k["in_order"] else "NO",
                             k["unacked_written"], f"{k['events_per_s']:.0f}",
                             f"{k['restart_s']:.1f}", f"{k['same']}/{k['sample']}",
                             f"{k['max_score_diff']:.1e}", k["failures"],
                             f"{k['usage']['server']:.2f}", f"{k['usage']['clients']:.2f}",
                             f"{k['usage']['others']:.2f}", f"{k['usage']['load1']:.2f}"])
            results["kill"] = rows
            table = markdown_table(["kill", "acknowledged", "new rows in the file",
                                    "acknowledged but missing", "histories in order",
                                    "written, answer lost", "events/s while streaming",
                                    "restart to ready (s)", "same top-10 after restart",
                                    "max score change", "non-200 answers",
                                    "server cores", "client cores", "others' cores",
                                    "load avg"], rows)
            lost = sum(int(r[3]) for r in rows)
            verdict = (f"{sum(int(str(r[1]).replace(',', '')) for r in rows):,} acknowledged "
                       f"events over {len(rows)} kills, {lost} missing after restart")
            sections.append(
                f"### 5. kill -9 while streaming events\n\n{args.kill_clients} Python clients "
                f"(one keep-alive connection each, CPU {client_cpus or 'any'}) POST events for "
                "users of their own, one after another; at a random moment after "
                f"{args.kill_events:,} acknowledged events the server gets SIGKILL, is "
                "restarted on the same state file, and each client's acknowledged events "
                "are read back through GET /v1/users/ID/history (the same items, in order, "
                "at the head of the stored history) and counted in the file "
                f"(`SQLiteUserState(path).events()` less the count before the round). "
                f"{len(sample)} ML-1M users the streams did not touch are asked for their "
                f"top 10 before the kill and after the restart. ({note})\n\n{table}\n\n"
                f"{verdict}")
            print(table, "\n", verdict, "\n", flush=True)

        # ---- 6b: start-up of a large catalog ----------------------------------------------
        synthetic = Path(args.synthetic_run).resolve()
        if "synthetic" in parts and not (synthetic / "config.json").exists():
            print(f"{synthetic} is missing: make it with .venv/bin/python "
                  "benchmarks/serve_synthetic.py --out runs/serve-bench/synthetic-1m")
        elif "synthetic" in parts:
            note = quiet("large-catalog start-up")
            state = work / "synthetic.db"
            for suffix in ("", "-wal", "-shm"):
                Path(f"{state}{suffix}").unlink(missing_ok=True)
            info = json.loads((synthetic / "config.json").read_text())["dataset_info"]
            rows = []
            for label in ("first start (new state: seeds it)", "restart (seeded state)"):
                server = Server(synthetic, state, cpus=None, name="synthetic",
                                extra=shlex.split(args.synthetic_index))
                log_file = ROOT / LOG / "synthetic.log"
                built_before = len(re.findall(r"built \w+ item index", log_file.read_text())
                                   ) if log_file.exists() else 0
                usage = Usage({}).start()
                seconds = server.start(timeout=7200)
                u = usage.stop()
                rss, peak = _rss_mib(server.pid), _rss_mib(server.pid, "VmHWM")
                built = server.log_lines(r"built (\w+) item index over (\d+) items \(dim "
                                         r"(\d+)\) in ([\d.]+) s")
                loaded = server.log_lines(r"loaded .* in ([\d.]+)s")
                seeded = server.log_lines(r"seeded the user state with (\d+) events .* in "
                                          r"([\d.]+)s")
                # a few single requests, to see the index answer
                lat = []
                for user in rng.integers(0, info["users"], 200):
                    t = time.perf_counter()
                    status, _ = request(server.port, "POST", "/v1/recommend",
                                        {"user_id": str(user), "k": 10})
                    lat.append((time.perf_counter() - t) * 1000)
                    assert status == 200
                server.stop()
                print(f"$ {shlex.join(server.command)}\n  ready after {seconds:.1f} s",
                      flush=True)
                rows.append([label, f"{seconds:.0f}",
                             f"{float(built[-1][4]):.0f} ({built[-1][1]})"
                             if len(built) > built_before else "- (graph loaded)",
                             f"{float(loaded[-1][1]):.0f}" if loaded else "?",
                             f"{float(seeded[-1][2]):.1f}" if seeded and label.startswith(
                                 "first") else "-", f"{rss:.0f}", f"{peak:.0f}",
                             f"{statistics.median(lat):.2f}", f"{u['machine']:.2f}"])
            results["synthetic"] = rows
            table = markdown_table(["synthetic run", "launch to /readyz 200 (s)",
                                    "index build (s)", "run load incl. index (s)",
                                    "seeding (s)", "RSS (MiB)", "peak RSS (MiB)",
                                    "single /v1/recommend p50 ms (200 requests)",
                                    "machine cores busy"], rows)
            text = (f"### 6b. Start-up with a large catalog\n\n{info['items']:,} items, "
                    f"{info['users']:,} users, {info['interactions']:,} interactions "
                    "(`benchmarks/serve_synthetic.py`: every item once plus power-law "
                    "extras; SASRec, 1 epoch, max_len 20, 1 block, dim 50). Server not "
                    f"pinned (an index build uses every core). {note}.\n\n"
                    f"`modrec serve {args.synthetic_run} --state STATE --port P"
                    f"{' ' + args.synthetic_index if args.synthetic_index else ''}`\n\n"
                    f"{table}")
            print(table, "\n", flush=True)
            if not args.no_write:
                write_section(ROOT / "docs" / "benchmarks.md", args.synthetic_section,
                              f"## Model service start-up, large catalog\n\n{host}\n\n{text}")
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    ml1m = {"startup", "load", "inprocess", "batching", "mix", "kill"}
    if sections and not args.no_write and ml1m <= parts:
        body = (f"## Model service under load (`benchmarks/serve_load.py`)\n\n{host}; "
                f"{pinning}; wrk 4.1 `-t1` over loopback; the ML-1M HSTU run "
                f"(`{args.run}`, 3,706 items: exact index). 'Others' cores' is what "
                "the rest of this shared machine used during the measurement (/proc/stat "
                "less the server and wrk).\n\n" + "\n\n".join(sections))
        write_section(ROOT / "docs" / "benchmarks.md", SECTION, body)
        print(f"wrote section {SECTION!r} of docs/benchmarks.md")
    elif sections and not args.no_write:
        print("(not every ML-1M part ran: docs/benchmarks.md left as it was)")


if __name__ == "__main__":
    main()
