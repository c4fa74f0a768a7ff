"""The learning loop's last step under load: ``/v1/admin/reload`` swaps a newly trained
run into a service answering 4 connections (wrk), and no request may fail or wait long.

What it does (every number printed with the command that produced it):

1. trains run A (``-d ml-1m -m sasrec``, a few epochs) unless ``--run`` names one;
2. serves A on a new user state (seeded with A's histories), logs events of new users
   through ``/v1/events``, and trains run B from the state the running service holds
   (``modrec train -d STATE --init-from A``): the loop, end to end;
3. ``--repeat`` rounds of: a steady window (wrk ``-c4``, ``--seconds``) and a
   reloading one of the same length, during which a client reloads the served model
   (B, A, B, ...) with ``--gap`` seconds between reloads; then the same two windows
   with 4 Python clients that time every request, so that the requests overlapping a
   reload can be told apart (wrk gives one p99 per window). Reported: the p99s, the
   ratio of the requests during reloads to the steady window (target <= 2x, medians),
   non-2xx answers, socket errors and failed reloads (target: none), and how long each
   reload took.

Pinning: the server on ``--server-cpus`` (one core by default, as the thread policy
sizes a service worker), wrk and this script's clients on ``--client-cpus``; what the
rest of the shared machine used is reported beside each window.

    export MODREC_DATA_DIR=/work/shared/data
    python benchmarks/serve_reload.py            # trains runs/serve-reload/a and b
"""

from __future__ import annotations

from modrec import threads as _threads  # noqa: F401  first: its OpenMP policy, before torch

# isort: split

import argparse
import http.client
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from kit import ROOT, machine, markdown_table, write_section
from serve_load import (
    Server,
    describe_usage,
    lua_script,
    request,
    run_wrk,
    taskset,
    wait_quiet,
)

SECTION = "serve-reload"
WORK = ROOT / "runs" / "serve-reload"
# modrec as this checkout has it (the benchmark of a branch measures the branch)
LAUNCHER = [sys.executable, "-m", "modrec"]
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src")}


def modrec(args: list[str], cpus: str | None) -> tuple[str, float]:
    """Run ``modrec ARGS`` (pinned to ``cpus``); returns the command and its seconds."""
    command = [*taskset(cpus), *LAUNCHER, *args]
    print(f"$ {shlex.join(command)}", flush=True)
    started = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL)
    return shlex.join(["modrec", *args]), time.perf_counter() - started


def log_events(port: int, items: list[str], users: int, per_user: int,
               rng: np.random.Generator) -> int:
    """What new users do in the service: ``per_user`` events each, through the API."""
    sent = 0
    for u in range(users):
        events = [{"user_id": f"new-{u}", "item_id": str(i), "timestamp": 2_000_000_000 + k}
                  for k, i in enumerate(rng.choice(items, per_user, replace=False))]
        status, body = request(port, "POST", "/v1/events", {"events": events})
        if status != 200:
            raise RuntimeError(f"/v1/events answered {status}: {body}")
        sent += len(events)
    return sent


class Reloader(threading.Thread):
    """Reloads the served model, alternating between ``runs``, waiting ``gap`` seconds
    after each, until stopped; keeps each reload's (start, end, status)."""

    def __init__(self, port: int, runs: list[Path], gap: float) -> None:
        super().__init__(name="reloader", daemon=True)
        self.port, self.runs, self.gap = port, runs, gap
        self.stop = threading.Event()
        self.spans: list[tuple[float, float, int]] = []
        self.failures: list[str] = []

    def run(self) -> None:
        k = 0
        while not self.stop.is_set():
            target = self.runs[k % len(self.runs)]
            started = time.perf_counter()
            status, body = request(self.port, "POST", "/v1/admin/reload",
                                   {"run_dir": str(target)}, timeout=300)
            self.spans.append((started, time.perf_counter(), status))
            if status != 200:
                self.failures.append(f"{status} {body}")
            k += 1
            self.stop.wait(self.gap)

    def seconds(self) -> list[float]:
        return [end - start for start, end, status in self.spans if status == 200]


def clients(port: int, connections: int, seconds: float,
            rng: np.random.Generator) -> list[tuple[float, float, int]]:
    """``connections`` closed-loop keep-alive clients asking /v1/recommend (k=10) for
    random users for ``seconds``; every request's (start, end, status; -1: no answer).
    The same clock as `Reloader`'s spans, so a request can be matched to a reload."""
    done: list[tuple[float, float, int]] = []
    end = time.perf_counter() + seconds
    seeds = rng.integers(0, 2**31, connections)

    def loop(seed: int) -> None:
        users = np.random.default_rng(seed).integers(1, 6041, 1_000_000)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        headers = {"Content-Type": "application/json"}
        for user in users:
            started = time.perf_counter()
            if started > end:
                break
            try:
                conn.request("POST", "/v1/recommend",
                             f'{{"user_id": "{user}", "k": 10}}', headers)
                response = conn.getresponse()
                response.read()
                status = response.status
            except OSError:
                status = -1
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            done.append((started, time.perf_counter(), status))  # list.append: atomic
        conn.close()

    threads = [threading.Thread(target=loop, args=(int(s),)) for s in seeds]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return done


def during(requests: list[tuple[float, float, int]],
           spans: list[tuple[float, float, int]]) -> list[tuple[float, float, int]]:
    """The requests whose time overlaps a reload's."""
    starts = np.array([s for s, _, _ in spans])
    ends = np.array([e for _, e, _ in spans])
    return [r for r in requests if bool(np.any((starts < r[1]) & (ends > r[0])))]


def p99_ms(requests: list[tuple[float, float, int]]) -> float:
    return float(np.percentile([(e - s) * 1000 for s, e, _ in requests], 99)) \
        if requests else float("nan")


def prepare(args: argparse.Namespace, server_cpus: str | None) -> tuple[Path, list[str]]:
    """Run A (trained here unless ``--run``); returns it and how it was made."""
    if args.run:
        return Path(args.run).resolve(), [f"run A: {args.run} (given)"]
    a = WORK / "a"
    if (a / "model.pt").exists():
        return a, [f"run A: {a} (trained before by this script)"]
    shutil.rmtree(a, ignore_errors=True)
    command, seconds = modrec(["train", "-d", "ml-1m", "-m", "sasrec", "--epochs",
                               str(args.epochs), "--out", str(a), "--no-progress"],
                              server_cpus)
    return a, [f"`{command}` ({seconds:.0f} s)"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="run A to serve (default: train runs/serve-reload/a)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs of A, and of B")
    parser.add_argument("--seconds", type=int, default=15, help="each wrk window")
    parser.add_argument("--repeat", type=int, default=3, help="steady/reload pairs")
    parser.add_argument("--gap", type=float, default=1.0, help="seconds between the end "
                        "of a reload and the next (0: back to back, the worst case)")
    parser.add_argument("--new-users", type=int, default=200)
    parser.add_argument("--server-cpus", default="1", help="taskset list ('' for any)")
    parser.add_argument("--client-cpus", default="0", help="taskset list ('' for any)")
    parser.add_argument("--quiet-cores", type=float, default=0.3)
    parser.add_argument("--quiet-wait", type=float, default=120.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install -y wrk")
    server_cpus, client_cpus = args.server_cpus or None, args.client_cpus or None
    if client_cpus:
        os.sched_setaffinity(0, {int(c) for c in client_cpus.split(",")})
    WORK.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="serve-reload-"))
    rng = np.random.default_rng(args.seed)
    a, made = prepare(args, server_cpus)
    state, b = WORK / "state.db", WORK / "b"
    for path in (Path(f"{state}{s}") for s in ("", "-wal", "-shm")):
        path.unlink(missing_ok=True)
    shutil.rmtree(b, ignore_errors=True)
    server = Server(a, state, cpus=server_cpus, name="reload", launcher=LAUNCHER, env=ENV)
    ready = server.start()
    print(f"$ {shlex.join(server.command)}   # ready in {ready:.1f} s", flush=True)
    try:
        items = pd.read_parquet(a / "dataset" / "items.parquet")["item_id"].astype(
            str).tolist()
        sent = log_events(server.port, items, args.new_users, 20, rng)
        command, seconds = modrec(["train", "-d", str(state), "--init-from", str(a),
                                   "--epochs", str(args.epochs), "--out", str(b),
                                   "--no-progress"], server_cpus)
        made.append(f"{sent:,} events of {args.new_users} new users posted to /v1/events, "
                    f"then run B trained from the served state: `{command}` "
                    f"({seconds:.0f} s, beside the idle server)")
        out = measure(server, args, client_cpus, tmp, [b, a], rng)
    finally:
        server.stop()
    body = report(args, server, made, out)
    print(body)
    if not args.no_write:
        write_section(ROOT / "docs" / "benchmarks.md", SECTION, body)


def measure(server: Server, args: argparse.Namespace, client_cpus: str | None, tmp: Path,
            runs: list[Path], rng: np.random.Generator) -> dict[str, Any]:
    """``--repeat`` rounds of four windows: wrk steady, wrk reloading, the exact client
    steady, the exact client reloading. Returns the tables' rows and what the targets
    are judged on."""
    lua = lua_script(6040, [], 0.0, args.seed)
    run_wrk(server, lua, 4, 3, client_cpus, tmp)  # warm-up
    out: dict[str, Any] = {"wrk": [], "exact": [], "wrk_ratios": [], "ratios": [],
                           "reload_s": [], "bad": 0, "duty": []}
    for r in range(1, args.repeat + 1):
        p99s = []
        for reloading in (False, True):
            busy, _ = wait_quiet(args.quiet_cores, args.quiet_wait)
            reloader = Reloader(server.port, runs, args.gap) if reloading else None
            if reloader is not None:
                reloader.start()
            try:
                result = run_wrk(server, lua, 4, args.seconds, client_cpus, tmp)
            finally:
                if reloader is not None:
                    reloader.stop.set()
                    reloader.join()
            errors = sum(result.errors.values()) + (len(reloader.failures) if reloader else 0)
            out["bad"] += errors
            seconds = reloader.seconds() if reloader else []
            out["reload_s"] += seconds
            if reloader is not None:
                out["duty"].append(sum(seconds) / result.seconds)
                for failure in reloader.failures:
                    print(f"  reload failed: {failure[:300]}", flush=True)
            label = "reloading" if reloading else "steady"
            print(f"$ {result.command}\n  {label}: p99 {result.p99_ms:.2f} ms, "
                  f"{result.rps:.0f} req/s, errors {result.errors}; "
                  f"{describe_usage(result.usage)}", flush=True)
            p99s.append(result.p99_ms)
            out["wrk"].append([label, r, f"{result.p50_ms:.2f}", f"{result.p99_ms:.2f}",
                               f"{result.max_ms:.2f}", f"{result.rps:.0f}", errors,
                               len(seconds) if reloader else "-",
                               f"{statistics.median(seconds):.2f}" if seconds else "-",
                               f"{result.usage['server']:.2f}",
                               f"{result.usage['others']:.2f}", f"{busy:.2f}"])
        out["wrk_ratios"].append(p99s[1] / p99s[0])
        out["exact"].append(exact_round(server, args, runs, rng, r, out))
    return out


def exact_round(server: Server, args: argparse.Namespace, runs: list[Path],
                rng: np.random.Generator, r: int, out: dict[str, Any]) -> list[object]:
    """A steady window and a reloading one of the exact clients: the p99 of the
    requests that overlap a reload against the p99 of the steady window."""
    wait_quiet(args.quiet_cores, args.quiet_wait)
    steady = clients(server.port, 4, args.seconds, rng)
    wait_quiet(args.quiet_cores, args.quiet_wait)
    reloader = Reloader(server.port, runs, args.gap)
    reloader.start()
    try:
        reloading = clients(server.port, 4, args.seconds, rng)
    finally:
        reloader.stop.set()
        reloader.join()
    overlapping = during(reloading, reloader.spans)
    met = set(overlapping)
    failed = sum(1 for *_, status in steady + reloading if not 200 <= status < 300)
    out["bad"] += failed + len(reloader.failures)
    ratio = p99_ms(overlapping) / p99_ms(steady)
    out["ratios"].append(ratio)
    print(f"  exact clients: steady p99 {p99_ms(steady):.2f} ms ({len(steady)} requests), "
          f"during reloads {p99_ms(overlapping):.2f} ms ({len(overlapping)} of "
          f"{len(reloading)}), {ratio:.2f}x, {failed} failed", flush=True)
    return [r, len(steady), f"{p99_ms(steady):.2f}", len(reloader.spans),
            f"{len(overlapping)} of {len(reloading)}", f"{p99_ms(overlapping):.2f}",
            f"{p99_ms([q for q in reloading if q not in met]):.2f}",
            f"{ratio:.2f}x", failed]


def report(args: argparse.Namespace, server: Server, made: list[str],
           out: dict[str, Any]) -> str:
    wrk = markdown_table(["window", "run", "p50 ms", "p99 ms", "max ms", "req/s",
                          "socket errors + non-2xx + failed reloads", "reloads",
                          "median reload s", "server cores", "others' cores",
                          "others before"], out["wrk"])
    exact = markdown_table(["run", "steady requests", "steady p99 ms", "reloads",
                            "requests overlapping a reload", "their p99 ms",
                            "p99 ms of the others", "ratio", "non-2xx"], out["exact"])
    ratio = statistics.median(out["ratios"])
    verdict = "met" if ratio <= 2.0 and out["bad"] == 0 else "MISSED"
    made_lines = "\n".join(f"- {line}" for line in made)
    command = " ".join(["python benchmarks/serve_reload.py", *sys.argv[1:]])
    reload_s = statistics.median(out["reload_s"]) if out["reload_s"] else float("nan")
    return f"""## Reload under load (`benchmarks/serve_reload.py`)

{machine()}; server pinned to CPU {args.server_cpus or 'any'}, the clients to CPU \
{args.client_cpus or 'any'}; `{command}`. The machine is shared: "others' cores" is what
the rest of it used meanwhile.

{made_lines}
- server: `{shlex.join(server.command)}`
- a reloading window reloads the model (`POST /v1/admin/reload` with `{{"run_dir": B}}`,
  then A, then B, ...), waiting {args.gap:g} s after each; reloads took {reload_s:.2f} s
  (median of {len(out['reload_s'])}), {statistics.median(out['duty']) * 100:.0f}% of the
  window's time (median)

### wrk, 4 connections, {args.seconds} s windows

`wrk -t1 -c4 -d{args.seconds}s --latency` (random users 1..6040, k=10), a steady window
and a reloading one alternately; wrk reports one p99 per window, reload or not.

{wrk}

p99(reloading window) / p99(steady window): \
{', '.join(f'{x:.2f}x' for x in out['wrk_ratios'])}.

### Requests that overlap a reload

wrk cannot say which of its requests met a reload, so 4 closed-loop keep-alive Python
clients (the same request, on the same CPU as wrk) time every request on the clock the
reloads are timed on, in a steady window and a reloading one of {args.seconds} s each.

{exact}

Target (no non-2xx; the p99 of the requests during a reload within 2x the steady p99,
medians): {verdict} ({median_text(out['ratios'])}; {out['bad']} failed requests or
reloads).
"""


def median_text(ratios: list[float]) -> str:
    return (f"{', '.join(f'{x:.2f}x' for x in ratios)}; median "
            f"{statistics.median(ratios):.2f}x")


if __name__ == "__main__":
    main()
