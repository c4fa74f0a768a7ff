"""Replicas of `modrec serve` sharing a PostgreSQL user state, behind HAProxy on loopback.

What it measures (each number written with the command that produced it, to
docs/benchmarks.md, section "serve-replicas"):

1. durable events/s into the state itself: threads each appending one event per call
   (every call a committed, flushed transaction: synchronous_commit on), PostgreSQL
   against the SQLite state measured in the same run (target: >= 1,000 events/s);
2. requests/s through the balancer over two replicas: recommendations (wrk, 4
   connections) against one replica alone, and events (POST /v1/events, 16 connections)
   through the balancer, each one durable before its 200;
3. a new run rolled out to both replicas with ``deploy/rollout.sh`` (``runs/current``
   pointed at it, then ``POST /v1/admin/reload`` to each) while wrk asks for
   recommendations through the balancer: requests that failed (target: 0);
4. ``kill -9`` of a replica under load, ``--kills`` times (alternating replicas, each
   restarted after its kill): four clients post events through the balancer all along;
   afterwards every acknowledged event must be in the state, in its client's order
   (target: 0 lost over 5 kills), and the requests that failed are counted.

The PostgreSQL server is a throwaway cluster (`tests/replicas.py`: initdb in /tmp, a
unix socket, fsync on) on the same disk as everything else; HAProxy is Debian's.

    export MODREC_DATA_DIR=/work/shared/data
    .venv/bin/python benchmarks/serve_replicas.py            # trains a small ml-100k run
    .venv/bin/python benchmarks/serve_replicas.py --run RUN  # or serves RUN
"""

from __future__ import annotations

from modrec import threads as _threads  # noqa: F401  first: its OpenMP policy, before torch

# isort: split

import argparse
import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from kit import DOC, ROOT, machine, markdown_table, write_section
from serve_load import lua_script, process_cpu

sys.path.insert(0, str(ROOT / "tests"))
from replicas import (  # noqa: E402
    HAProxy,
    PostgresServer,
    free_port,
    haproxy_binary,
    start_serve_process,
)


def cpu_by_kind() -> dict[str, float]:
    """CPU seconds so far of the processes running on this machine, summed by kind: the
    modrec replicas, PostgreSQL's processes, HAProxy, and everything else (a process that
    has exited, wrk after its run, is not counted)."""
    seconds: dict[str, float] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            name = Path(f"/proc/{pid}/comm").read_text().strip()
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:  # gone meanwhile
            continue
        kind = ("replicas" if b"modrec serve" in command else
                "postgres" if name.startswith("postgres") else
                "haproxy" if name == "haproxy" else "other")
        seconds[kind] = seconds.get(kind, 0.0) + process_cpu(int(pid))
    return seconds


def start_replica(run: Path, state: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    """``modrec serve RUN --state URL --port PORT``, once its /readyz is 200."""
    return start_serve_process(run, state, port, log, timeout=180)


def load_average() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


# ---- 1. durable events/s into the state ------------------------------------------------
def events_per_second(where: str, threads: int, seconds: float) -> tuple[float, int, int]:
    """Threads appending one event per call for ``seconds``: (events/s, acknowledged,
    stored)."""
    from modrec.serve.state import open_state

    acknowledged = [0] * threads
    with open_state(where) as state:
        stop = threading.Event()

        def work(t: int) -> None:
            i = 0
            while not stop.is_set():
                state.append(f"bench-{threads}-{t}", [str(i)], [i])
                acknowledged[t] += 1
                i += 1

        pool = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
        started = time.perf_counter()
        for thread in pool:
            thread.start()
        time.sleep(seconds)
        stop.set()
        for thread in pool:
            thread.join()
        elapsed = time.perf_counter() - started
        stored = sum(len(state.history(f"bench-{threads}-{t}")[0]) for t in range(threads))
    return sum(acknowledged) / elapsed, sum(acknowledged), stored


# ---- 2. wrk through the balancer ---------------------------------------------------------
def run_wrk(url: str, lua: str, connections: int, seconds: int, workdir: Path
            ) -> tuple[dict[str, Any], str]:
    script = workdir / f"wrk-{abs(hash(lua)) % 10_000}.lua"
    script.write_text(lua)
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s",
               str(script), url]
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60)
    if done.returncode != 0 or "WRK_JSON" not in done.stdout:
        raise RuntimeError(f"{shlex.join(command)} failed: {done.stdout}{done.stderr}")
    stats = json.loads(done.stdout.split("WRK_JSON", 1)[1].strip().splitlines()[0])
    stats["rps"] = stats["requests"] / (stats["duration_us"] / 1e6)
    stats["errors"] = sum(stats[k] for k in ("connect", "read", "write", "timeout"))
    return stats, f"wrk -t1 -c{connections} -d{seconds}s -s SCRIPT URL"


# ---- 3. kill -9 under load ---------------------------------------------------------------
class Clients:
    """Threads posting events of one user each through ``url`` until stopped; what was
    acknowledged (200), in order, and how many requests failed."""

    def __init__(self, url: str, count: int) -> None:
        self.url = url
        self.stop = threading.Event()
        self.acknowledged: dict[str, list[str]] = {f"kill-{t}": [] for t in range(count)}
        self.failed = 0
        self._lock = threading.Lock()
        self.threads = [threading.Thread(target=self._post, args=(user,))
                        for user in self.acknowledged]
        for thread in self.threads:
            thread.start()

    def _post(self, user: str) -> None:
        import httpx

        with httpx.Client(base_url=self.url, timeout=10) as client:
            i = 0
            while not self.stop.is_set():
                item = f"{user}-{i}"
                try:
                    ok = client.post("/v1/events", json={
                        "user_id": user, "item_id": item, "timestamp": i}).status_code == 200
                except httpx.TransportError:
                    ok = False
                if ok:
                    self.acknowledged[user].append(item)
                else:
                    with self._lock:
                        self.failed += 1
                i += 1

    def join(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=60)


def check_kept(url: str, acknowledged: dict[str, list[str]]) -> dict[str, int]:
    """Acknowledged events against the stored ones: lost (acknowledged, not stored),
    out of order (users whose acknowledged events are not a subsequence of the stored),
    and stored without an acknowledgement (a 502 whose commit had landed)."""
    from modrec.serve.state import open_state

    lost = disordered = extra = stored_total = 0
    with open_state(url) as state:
        for user, acked in acknowledged.items():
            stored = [str(i) for i in state.history(user)[0]]
            stored_total += len(stored)
            lost += len(set(acked) - set(stored))
            it = iter(stored)
            disordered += not all(item in it for item in acked)
            extra += len(set(stored) - set(acked))
    return {"acknowledged": sum(len(a) for a in acknowledged.values()),
            "stored": stored_total, "lost": lost, "users out of order": disordered,
            "stored, not acknowledged": extra}


def train_small(folder: Path) -> Path:
    from modrec.config import build_config
    from modrec.train import train

    return Path(train(build_config("ml-100k", "sasrec", overrides=[
        "train.epochs=2", "model.max_len=50"]), folder / "run", progress=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, help="the run to serve (default: train a "
                        "2-epoch SASRec on ml-100k)")
    parser.add_argument("--seconds", type=int, default=10, help="each measurement")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the "
                        "recommendation measurements")
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--between-kills", type=float, default=4.0,
                        help="seconds of load before each kill")
    parser.add_argument("--no-write", action="store_true", help="print, do not write docs")
    args = parser.parse_args()
    if haproxy_binary() is None or shutil.which("wrk") is None:
        sys.exit("needs haproxy and wrk: apt-get install -y haproxy wrk")
    command = shlex.join(["python", "benchmarks/serve_replicas.py", *sys.argv[1:]])
    started_load = load_average()
    tmp = Path(tempfile.mkdtemp(prefix="modrec-replicas-"))
    server = PostgresServer()
    procs: list[subprocess.Popen[bytes]] = []
    balancer: HAProxy | None = None
    try:
        run = args.run or train_small(tmp)

        # 1. durable events/s into the state
        direct = []
        for threads in (1, 4, 16):
            pg = events_per_second(server.database("direct"), threads, args.seconds)
            lite = events_per_second(str(tmp / f"direct-{threads}.db"), threads, args.seconds)
            direct.append([threads, f"{pg[0]:,.0f}", f"{pg[1]:,} / {pg[2]:,}",
                           f"{lite[0]:,.0f}", f"{lite[1]:,} / {lite[2]:,}",
                           f"{pg[0] / lite[0]:.2f}"])
            print("direct", direct[-1], flush=True)

        # 2. two replicas behind HAProxy, serving runs/current as deploy/ lays it out
        runs = tmp / "runs"
        for name in ("first", "second"):
            shutil.copytree(run, runs / name)
        (runs / "current").symlink_to("first")
        url = server.database("replicas")
        ports = [free_port(), free_port()]
        for i, port in enumerate(ports):
            procs.append(start_replica(runs / "current", url, port, tmp / f"replica-{i}.log"))
        balancer = HAProxy(free_port(), ports, tmp)
        users = 943  # ml-100k's
        recommend = lua_script(users, [], 0.0, 1)
        events = lua_script(users, [str(i) for i in range(1, 1683)], 1.0, 1)
        # The balancer's own cost: HAProxy in front of one replica only.
        (tmp / "one").mkdir()
        single = HAProxy(free_port(), ports[:1], tmp / "one")
        # Recommendations in interleaved rounds (the machine is shared: a job beside it
        # moves one measurement, not one configuration), each configuration's median.
        targets = {"recommend, one replica directly": f"http://127.0.0.1:{ports[0]}",
                   "recommend, balancer over one replica": single.url,
                   "recommend, balancer over two replicas": balancer.url}
        measured: dict[str, list[dict[str, Any]]] = {label: [] for label in targets}
        for _ in range(args.rounds):
            for label, target in targets.items():
                measured[label].append(run_wrk(target, recommend, 4, args.seconds, tmp)[0])
        http_rows = []
        for label, runs_of in measured.items():
            http_rows.append([label, 4, " / ".join(f"{r['rps']:,.0f}" for r in runs_of),
                              f"{statistics.median(r['rps'] for r in runs_of):,.0f}",
                              f"{statistics.median(r['p50'] for r in runs_of) / 1000:.1f}",
                              f"{statistics.median(r['p99'] for r in runs_of) / 1000:.1f}",
                              sum(r["errors"] + r["status"] for r in runs_of)])
            print("http", http_rows[-1], flush=True)
        before, started = cpu_by_kind(), time.monotonic()
        stats, _ = run_wrk(balancer.url, events, 16, args.seconds, tmp)
        after, elapsed = cpu_by_kind(), time.monotonic() - started
        events_cpu = {kind: (after.get(kind, 0.0) - before.get(kind, 0.0)) / elapsed
                      for kind in after}
        http_rows.append(["events (durable), balancer over two replicas", 16,
                          f"{stats['rps']:,.0f}", f"{stats['rps']:,.0f}",
                          f"{stats['p50'] / 1000:.1f}", f"{stats['p99'] / 1000:.1f}",
                          stats["errors"] + stats["status"]])
        print("http", http_rows[-1], flush=True)
        single.stop()

        # 3. a rollout under load
        replica_urls = [f"http://127.0.0.1:{p}" for p in ports]
        during: dict[str, Any] = {}

        def load() -> None:
            during["stats"] = run_wrk(balancer.url, recommend, 4, args.seconds, tmp)[0]

        wrk = threading.Thread(target=load)
        wrk.start()
        time.sleep(args.seconds / 3)
        rolled = time.perf_counter()
        subprocess.run(["sh", str(ROOT / "deploy" / "rollout.sh"), str(runs), "second",
                        *replica_urls], check=True, capture_output=True, timeout=300)
        rollout_s = time.perf_counter() - rolled
        wrk.join()
        rollout = during["stats"]
        print(f"rollout in {rollout_s:.1f} s under {rollout['rps']:.0f} req/s: "
              f"{rollout['errors']} errors, {rollout['status']} non-2xx", flush=True)

        # 4. kill -9 of a replica under load, restarted after each
        clients = Clients(balancer.url, 4)
        kills = []
        for k in range(args.kills):
            time.sleep(args.between_kills)
            victim = k % 2
            failed_before = clients.failed
            os.kill(procs[victim].pid, signal.SIGKILL)
            procs[victim].wait(timeout=10)
            restart = time.perf_counter()
            procs[victim] = start_replica(runs / "current", url, ports[victim],
                                          tmp / f"replica-{victim}.log")
            kills.append((victim, time.perf_counter() - restart))
            time.sleep(1.0)  # HAProxy's checks (300 ms, rise 2) see it again
            print(f"kill {k + 1}: replica {victim}, restarted in {kills[-1][1]:.1f} s, "
                  f"{clients.failed - failed_before} requests failed meanwhile", flush=True)
        time.sleep(args.between_kills)
        clients.join()
        kept = check_kept(url, clients.acknowledged)
        print("kill", kept, "failed", clients.failed, flush=True)
    finally:
        if balancer is not None:
            balancer.stop()
        for proc in procs:
            proc.kill()
            proc.wait(timeout=10)
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    body = "\n".join([
        "## Replicas sharing a PostgreSQL state, behind HAProxy",
        "",
        f"`{command}` (ml-100k SASRec, 2 epochs, unless `--run`), on {machine()}; "
        f"PostgreSQL 15 (a throwaway cluster, fsync on, unix socket) and HAProxy on the "
        f"same 2 cores, shared with other jobs (load average {started_load} at the start, "
        f"{load_average()} at the end).",
        "",
        "Durable events/s into the state: threads appending one event per call, each "
        "call one committed transaction (PostgreSQL: synchronous_commit on; SQLite: WAL, "
        f"synchronous=FULL), {args.seconds} s each; acknowledged / stored counted "
        "afterwards.",
        "",
        markdown_table(["threads", "PostgreSQL events/s", "acknowledged / stored",
                        "SQLite events/s", "acknowledged / stored", "PostgreSQL / SQLite"],
                       direct),
        "",
        f"Through HTTP (wrk, one thread, {args.seconds} s a measurement; recommendations "
        f"for random known users, k=10, in {args.rounds} interleaved rounds, medians; "
        "events for random users and items, each durable before its 200):",
        "",
        markdown_table(["requests", "connections", "requests/s each round",
                        "requests/s (median)", "p50 ms", "p99 ms", "errors"], http_rows),
        "",
        "Cores used while the events were posted (from /proc; wrk, gone when counted, "
        "not included): "
        + ", ".join(f"{kind} {cores:.2f}" for kind, cores in sorted(
            events_cpu.items(), key=lambda kv: -kv[1]))
        + f"; the replicas spent {1000 * events_cpu.get('replicas', 0.0) / stats['rps']:.2f} "
        "ms of CPU per event.",
        "",
        f"A new run rolled out with `deploy/rollout.sh RUNS second URL1 URL2` ({rollout_s:.1f} "
        f"s for both replicas) during {args.seconds} s of recommendations through the "
        f"balancer (wrk, 4 connections): {rollout['requests']:,} requests, "
        f"{rollout['rps']:,.0f}/s, p99 {rollout['p99'] / 1000:.1f} ms, "
        f"**{rollout['errors'] + rollout['status']} failed** (socket errors and non-2xx).",
        "",
        f"`kill -9` of a replica under load, {args.kills} times (alternating replicas, "
        f"each restarted at once; {args.between_kills:.0f} s of load before each kill): "
        "4 clients posted events through the balancer all along.",
        "",
        markdown_table(["acknowledged", "stored", "lost", "users out of order",
                        "stored, not acknowledged", "requests failed",
                        "restart to ready (s)"],
                       [[f"{kept['acknowledged']:,}", f"{kept['stored']:,}", kept["lost"],
                         kept["users out of order"], kept["stored, not acknowledged"],
                         clients.failed, ", ".join(f"{s:.1f}" for _, s in kills)]]),
        "",
        "Requests fail only around a kill: those in flight on the killed replica (HAProxy "
        "tries a refused connection again on the other replica, never a request a "
        "replica took). None was acknowledged, and a client may send it again; the "
        "'stored, not acknowledged' ones were committed before their replica died "
        "with the answer unsent.",
    ])
    print(body)
    if not args.no_write:
        write_section(DOC, "serve-replicas", body)


if __name__ == "__main__":
    main()
