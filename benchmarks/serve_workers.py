"""``modrec serve --workers N`` under load: 1 against 2 workers, in one run.

What it measures, each pair interleaved round by round (the shared machine drifts):

1. ``/v1/recommend`` (k=10, random ML-1M users) at 4 connections with ``--workers 1``
   and ``--workers 2``: requests/s and p50/p99 latency (targets: 2 workers >= 1.7x the
   requests/s of 1, p99 <= 15 ms);
2. micro-batching on (``--max-batch 64``) against off (``--max-batch 1``) at 16
   connections, with 1 and with 2 workers (target: on >= 2x off);
3. ``profile``: where a worker's CPU goes at 4 connections (py-spy, collapsed stacks),
   to see whether HTTP and JSON or the model dominate;
4. ``json``: in-process, the CPU a request's JSON costs as the service does it (the body
   parsed and validated; the answer built as ``RecommendOut`` and written by pydantic,
   FastAPI's path for a route with a response model) against orjson (parsing, and
   writing the answer's plain dict), beside one model call, so the share orjson could
   save is measured rather than guessed.

Nothing is pinned (two workers need both cores); wrk runs with one thread and its CPU
is measured, as is what the rest of the machine used meanwhile (/proc/stat).

    export MODREC_DATA_DIR=/work/shared/data
    .venv/bin/python benchmarks/serve_workers.py --run runs/serve-bench/ml-1m-hstu
"""

from __future__ import annotations

from modrec import threads as _threads  # noqa: F401  first: its OpenMP policy, before torch

# isort: split

import argparse
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
from kit import ROOT, machine, markdown_table, write_section
from serve_load import (
    BIN,
    TRAIN_HINT,
    Server,
    WrkResult,
    _rss_mib,
    copy_state,
    describe_usage,
    lua_script,
    request,
    run_wrk,
    summarise_profile,
    wait_quiet,
)

SECTION = "serve-workers"
USERS = 6040


def serving(server: Server, workers: int, timeout: float = 600) -> dict[str, int]:
    """Once ``workers`` workers serve: the pids to measure (supervisor and workers)."""
    if workers == 1:
        return {"server": server.pid}
    deadline = time.monotonic() + timeout
    while True:
        status, body = request(server.port, "GET", "/readyz")
        if status == 200 and len(body["workers"]["serving"]) == workers:
            pids = {"supervisor": server.pid}
            pids.update({f"worker{i}": pid for i, pid in enumerate(body["workers"]["serving"])})
            return pids
        if time.monotonic() > deadline:
            raise TimeoutError(f"{workers} workers did not serve within {timeout:.0f} s")
        time.sleep(0.1)


def server_cores(r: WrkResult) -> float:
    return sum(v for k, v in r.usage.items() if k == "server" or k.startswith(
        ("worker", "supervisor")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/serve-bench/ml-1m-hstu")
    parser.add_argument("--seconds", type=int, default=15, help="each wrk measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--parts", default="workers,batching",
                        help="comma-separated among workers, batching, profile")
    parser.add_argument("--quiet-cores", type=float, default=0.3,
                        help="wait before a measurement until others use fewer cores")
    parser.add_argument("--quiet-wait", type=float, default=60.0,
                        help="longest wait for a quiet machine, seconds")
    parser.add_argument("--extra", default="", help="more `modrec serve` options for "
                        "every server (e.g. another revision's flags)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    run = Path(args.run).resolve()
    if not (run / "config.json").exists():
        sys.exit(f"{run} is not a run folder; {TRAIN_HINT}")
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install -y wrk")
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    work = ROOT / "runs" / "serve-bench" / "work"
    work.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="serve-workers-"))
    master = work / "workers-seeded.db"
    if not master.exists():
        subprocess.run([str(BIN / "modrec"), "serve", str(run), "--state", str(master),
                        "--seed-state"], check=True, cwd=ROOT)
    items = pd.read_parquet(run / "dataset" / "items.parquet")["item_id"].astype(str).tolist()
    lua = lua_script(USERS, items, 0.0, args.seed)
    extra = shlex.split(args.extra)
    host = machine()
    results: dict[str, list[tuple[int, int, WrkResult]]] = {}

    def measure(workers: int, max_batch: int, conns: int, label: str) -> WrkResult:
        state = work / "workers.db"
        copy_state(master, state)
        server = Server(run, state, max_batch=max_batch, name=f"workers-{workers}",
                        extra=["--workers", str(workers), *extra])
        server.start()
        try:
            pids = serving(server, workers)
            busy, load = wait_quiet(args.quiet_cores, args.quiet_wait)
            print(f"  ({label}: others {busy:.2f} cores busy, load average {load[0]:.2f})",
                  flush=True)
            run_wrk(server, lua, conns, 3, None, tmp, pids)  # warm-up
            r = run_wrk(server, lua, conns, args.seconds, None, tmp, pids)
            r.usage["rss_mib"] = sum(_rss_mib(pid) for pid in pids.values())
        finally:
            server.stop()
        print(f"$ {shlex.join(server.command)}\n$ {r.command}\n  {label}: {r.rps:.0f} req/s, "
              f"p50 {r.p50_ms:.2f} ms, p99 {r.p99_ms:.2f} ms, mean batch "
              f"{r.server_side['mean_batch']:.2f}; {describe_usage(r.usage)}", flush=True)
        return r

    sections: dict[str, str] = {}  # by part: each its own section of the page
    try:
        if "workers" in parts:
            rows, ratios = [], []
            pairs: dict[int, list[WrkResult]] = {1: [], 2: []}
            for rnd in range(1, args.rounds + 1):
                for workers in (1, 2):
                    r = measure(workers, 64, 4, f"{workers} worker(s), round {rnd}")
                    pairs[workers].append(r)
                    rows.append(_row(f"{workers}", rnd, r))
                ratios.append(pairs[2][-1].rps / pairs[1][-1].rps)
            for workers in (1, 2):
                rs = pairs[workers]
                rows.append([f"**{workers}**", "**median**",
                             f"**{_median([r.rps for r in rs]):.0f}**",
                             f"**{_median([r.p50_ms for r in rs]):.2f}**",
                             f"**{_median([r.p99_ms for r in rs]):.2f}**",
                             *[""] * 9])
            ratio, p99 = _median(ratios), _median([r.p99_ms for r in pairs[2]])
            # What the server did per CPU second it got: the machine's other jobs decide
            # how many cores it gets, not the number of workers.
            per_cpu = {w: _median([r.rps / max(server_cores(r), 1e-9) for r in pairs[w]])
                       for w in (1, 2)}
            verdict = (f"2 workers / 1 worker, round by round: "
                       f"{', '.join(f'{x:.2f}x' for x in ratios)}; median {ratio:.2f}x "
                       f"(target >= 1.7x: {'met' if ratio >= 1.7 else 'MISSED'}); p99 with "
                       f"2 workers {p99:.2f} ms (target <= 15 ms: "
                       f"{'met' if p99 <= 15 else 'MISSED'}). Requests per CPU second the "
                       f"server got (median): {per_cpu[1]:.0f} with 1 worker, {per_cpu[2]:.0f} "
                       f"with 2 ({per_cpu[2] / per_cpu[1]:.2f}x): with two cores to itself, 2 "
                       f"workers could answer at most {2 * per_cpu[2] / per_cpu[1]:.2f}x what "
                       "1 worker answers with one.")
            results["workers"] = [(w, i, r) for w, rs in pairs.items() for i, r in enumerate(rs)]
            part = "workers"
            sections[part] = (
                "### 1 against 2 workers, 4 connections\n\n"
                f"`{pairs[2][0].command}` against `modrec serve {args.run} --workers N`, "
                f"{args.seconds} s after 3 s of warm-up, a new server and state copy each "
                f"run\n\n{markdown_table(HEADER, rows)}\n\n{verdict}")
            print(sections[part], flush=True)

        if "batching" in parts:
            rows, verdicts = [], []
            for workers in (1, 2):
                on_off: dict[int, list[WrkResult]] = {64: [], 1: []}
                for rnd in range(1, args.rounds + 1):
                    for max_batch in (64, 1):
                        r = measure(workers, max_batch, 16, f"{workers} worker(s), max batch "
                                    f"{max_batch}, round {rnd}")
                        on_off[max_batch].append(r)
                        rows.append(_row(f"{workers}, --max-batch {max_batch}", rnd, r))
                ratios = [on.rps / off.rps for on, off in zip(on_off[64], on_off[1],
                                                                strict=True)]
                verdicts.append(f"{workers} worker(s), on / off round by round: "
                                f"{', '.join(f'{x:.2f}x' for x in ratios)}; median "
                                f"{_median(ratios):.2f}x (target >= 2x: "
                                f"{'met' if _median(ratios) >= 2 else 'MISSED'})")
            part = "batching"
            sections[part] = (
                "### Micro-batching with workers, 16 connections\n\n`wrk -t1 -c16 ...` "
                "against `modrec serve ... --workers N --max-batch 64` (on) and "
                "`--max-batch 1` (off), alternately\n\n"
                f"{markdown_table(HEADER, rows)}\n\n" + "; ".join(verdicts) + ".")
            print(sections[part], flush=True)

        if "json" in parts:
            part = "json"
            sections[part] = json_costs(run, master, work, args.seed)
            print(sections[part], flush=True)

        if "profile" in parts:
            part = "profile"
            sections[part] = profile(run, master, work, tmp, lua, args.seconds, extra)
            print(sections[part], flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    for part, text in sections.items():
        if args.no_write:
            break
        title = ("## Model service with several workers (`benchmarks/serve_workers.py`)\n\n"
                 if part == "workers" else "")
        body = (f"{title}Measured {time.strftime('%Y-%m-%d %H:%M')} UTC on {host}, 2 cores "
                "shared with other engineers' jobs, nothing pinned; wrk 4.1 `-t1` over "
                f"loopback; the ML-1M HSTU run (`{args.run}`, 3,706 items: exact index): "
                f"`python benchmarks/serve_workers.py --parts {part} --seconds {args.seconds} "
                f"--rounds {args.rounds}`. 'Server cores' sums the supervisor and the workers; "
                "'others' cores' is what the rest of the machine used meanwhile.\n\n" + text)
        write_section(ROOT / "docs" / "benchmarks.md", f"{SECTION}-{part}", body)
        print(f"wrote section {SECTION}-{part} of docs/benchmarks.md")


HEADER = ["workers", "round", "req/s", "p50 ms", "p99 ms", "max ms", "errors", "mean batch",
          "server cores", "req per server CPU-s", "server RSS MiB", "wrk cores",
          "others' cores", "load avg"]


def _row(label: str, rnd: int, r: WrkResult) -> list[object]:
    u = r.usage
    return [label, rnd, f"{r.rps:.0f}", f"{r.p50_ms:.2f}", f"{r.p99_ms:.2f}",
            f"{r.max_ms:.2f}", sum(r.errors.values()), f"{r.server_side['mean_batch']:.2f}",
            f"{server_cores(r):.2f}", f"{r.rps / max(server_cores(r), 1e-9):.0f}",
            f"{u.get('rss_mib', float('nan')):.0f}", f"{u['wrk']:.2f}", f"{u['others']:.2f}",
            f"{u['load1']:.2f}"]


def _median(values: list[float]) -> float:
    return float(statistics.median(values))


def profile(run: Path, master: Path, work: Path, tmp: Path, lua: str, seconds: int,
            extra: list[str]) -> str:
    """py-spy on one of 2 workers at 4 connections: the share of its CPU samples by
    function, to see what dominates."""
    spy = shutil.which("py-spy") or str(BIN / "py-spy")
    if not Path(spy).exists():
        return "(py-spy not found: pip install py-spy, or put it on PATH)"
    state = work / "workers.db"
    copy_state(master, state)
    server = Server(run, state, name="workers-profile", extra=["--workers", "2", *extra])
    server.start()
    try:
        pids = serving(server, 2)
        out = tmp / "worker.txt"
        command = [spy, "record", "--pid", str(pids["worker0"]), "--duration", str(seconds),
                   "--rate", "200", "--format", "raw", "--nonblocking", "--output", str(out)]
        recorder = subprocess.Popen(command, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
        r = run_wrk(server, lua, 4, seconds, None, tmp, pids)
        recorder.wait()
        shutil.copy(out, work / "profile-worker.txt")
        rows = summarise_profile(out, top=24)
    finally:
        server.stop()
    return ("### Where a worker's CPU goes (2 workers, 4 connections)\n\n"
            f"`{shlex.join(command)}` during `{r.command}` ({r.rps:.0f} req/s under the "
            "profiler); share of samples with the function anywhere on the stack "
            f"(inclusive) and innermost (self)\n\n"
            f"{markdown_table(['function', 'inclusive', 'self'], rows)}")


def json_costs(run: Path, master: Path, work: Path, seed: int, reps: int = 3000) -> str:
    """Microseconds per request of each JSON step, as the service does it and with
    orjson, beside one model call (batch of 1) and one full HTTP answer."""
    import json
    import timeit

    import numpy as np
    from pydantic import TypeAdapter

    from modrec.serve import ModelService, Request
    from modrec.serve.app import AppSettings
    from modrec.serve.schema import ItemOut, RecommendOut, Schema
    from modrec.serve.state import SQLiteUserState
    from modrec.threads import apply_threads

    apply_threads(None, serving=True)  # as a worker computes: one torch thread
    try:
        import orjson
    except ImportError:
        return "(orjson is not installed: pip install orjson to compare it)"
    state = work / "json.db"
    copy_state(master, state)
    service = ModelService.from_runs({"model": run}, SQLiteUserState(state), seed=False)
    users = [str(u) for u in np.random.default_rng(seed).integers(1, USERS + 1, reps)]
    body = json.dumps({"user_id": "42", "k": 10}).encode()
    [reply] = service.recommend([Request(user_id="42", k=10)])
    assert not isinstance(reply, Exception)
    fields = {"model": reply.model, "source": reply.source, "items": reply.items,
              "history_length": reply.history_length, "unknown_items": reply.unknown_items}
    recommend_in = Schema.of(AppSettings()).RecommendIn
    writer = TypeAdapter(RecommendOut)

    def model_call() -> None:
        service.recommend([Request(user_id=users[model_call.i % reps], k=10)])  # type: ignore[attr-defined]
        model_call.i += 1  # type: ignore[attr-defined]

    model_call.i = 0  # type: ignore[attr-defined]
    steps = {
        "parse + validate the body (json, pydantic: FastAPI's path)":
            lambda: recommend_in.model_validate(json.loads(body)),
        "parse + validate the body (orjson, pydantic)":
            lambda: recommend_in.model_validate(orjson.loads(body)),
        "build RecommendOut + write it (pydantic: FastAPI's path)":
            lambda: writer.dump_json(RecommendOut(
                model=fields["model"], source=fields["source"],
                items=[ItemOut(**item) for item in fields["items"]],
                history_length=fields["history_length"],
                unknown_items=fields["unknown_items"])),
        "write the answer's dict with orjson (no response model)":
            lambda: orjson.dumps(fields),
        "one model call (ModelService.recommend, batch of 1)": model_call,
    }
    best = {name: float("inf") for name in steps}
    for _ in range(5):  # the steps in turn, five times: the shared machine drifts
        for name, step in steps.items():
            step()
            best[name] = min(best[name], timeit.timeit(step, number=reps // 5) / (reps // 5))
    rows = [[name, f"{seconds * 1e6:.1f}"] for name, seconds in best.items()]
    service.state.close()
    ours = float(rows[0][1]) + float(rows[2][1])
    theirs = float(rows[1][1]) + float(rows[3][1])
    size = len(orjson.dumps(fields))
    return ("### JSON with orjson, measured in-process\n\n"
            f"Best of 5 x {reps // 5} calls each, the steps in turn, one process with one "
            f"torch thread, ML-1M HSTU, a 10-item answer "
            f"(about {size} bytes)\n\n"
            f"{markdown_table(['step', 'microseconds per request'], rows)}\n\n"
            f"JSON as served: {ours:.1f} us per request; with orjson on both sides "
            f"{theirs:.1f} us: orjson would save {ours - theirs:.1f} us of each request.")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
