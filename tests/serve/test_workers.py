"""``modrec serve --workers 2``: two processes share one port and each answers; the
metrics count both; a worker killed with ``kill -9`` is replaced and no acknowledged
event is lost; SIGHUP and ``POST /v1/admin/reload`` reach every worker; SIGTERM stops
them all."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from modrec.config import build_config
from modrec.train import train
from support import free_port, start_serve


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train(build_config("ml-100k", "sasrec", overrides=[
        "train.epochs=1", "model.max_len=30", "model.num_blocks=1"]),
        tmp_path_factory.mktemp("served") / "run", progress=False)


def serving(url: str, workers: int = 2, log: Path | None = None) -> list[int]:
    """The pids of the workers once ``workers`` of them serve."""
    deadline = time.monotonic() + 120
    while True:
        try:
            ready = httpx.get(f"{url}/readyz", timeout=10).json()["workers"]
        except httpx.TransportError:  # handed to a worker as it died: ask again
            ready = {"serving": []}
        if len(ready["serving"]) == workers:
            return list(ready["serving"])
        assert time.monotonic() < deadline, log.read_text() if log else ready
        time.sleep(0.2)


def each_worker(url: str, pids: list[int], ask: Callable[[httpx.Client], Any]
                ) -> dict[int, Any]:
    """``ask`` answered by every worker: new connections until each pid was met (the
    supervisor hands connections round robin), keyed by the pid that answered."""
    answers: dict[int, Any] = {}
    for _ in range(20 * len(pids)):
        with httpx.Client(base_url=url, timeout=30) as client:  # one connection
            pid = client.get("/readyz").json()["worker"]
            if pid not in answers:
                answers[pid] = ask(client)
        if set(answers) == set(pids):
            return answers
    raise AssertionError(f"met only workers {sorted(answers)} of {pids}")


def loaded(url: str, pids: list[int]) -> dict[int, tuple[str, float]]:
    """Each worker's (run folder, load time) of its one model."""
    def model(client: httpx.Client) -> tuple[str, float]:
        [described] = client.get("/readyz").json()["models"].values()
        return described["run_dir"], described["loaded_at"]

    return each_worker(url, pids, model)


def wait_for(check: Callable[[], bool], log: Path, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.2)


@pytest.mark.slow
def test_two_workers_share_the_port_restart_reload_and_stop_together(
        run: Path, tmp_path: Path) -> None:
    state, log, port = tmp_path / "state.db", tmp_path / "serve.log", free_port()
    server = start_serve(run, state, port, log, "--workers", "2")
    url = f"http://127.0.0.1:{port}"
    try:
        pids = serving(url, log=log)
        assert len(set(pids)) == 2 and server.pid not in pids
        # Each answers, from the same state: an event written through one is read by both.
        assert httpx.post(f"{url}/v1/events", json={"user_id": "w", "item_id": "50"}
                          ).status_code == 200
        answers = each_worker(url, pids, lambda c: c.post(
            "/v1/recommend", json={"user_id": "w", "k": 5}).json())
        assert all(a["history_length"] == 1 for a in answers.values())
        recommended = 2
        assert answers[pids[0]]["items"] == answers[pids[1]]["items"]
        # /metrics counts both workers' answers, whichever worker shows them.
        for _ in range(6):  # a new connection each: 3 to each worker
            assert httpx.post(f"{url}/v1/recommend", json={"user_id": "1"}).status_code == 200
        for text in each_worker(url, pids, lambda c: c.get("/metrics").text).values():
            assert 'modrec_requests_total{endpoint="/v1/recommend",method="POST",' \
                   f'status="200"}} {recommended + 6:.1f}' in text

        # kill -9 of a worker: the other answers meanwhile, and it is replaced.
        acknowledged = []
        os.kill(pids[1], signal.SIGKILL)
        for item in ["1", "7", "56", "98"]:
            try:  # handed to the dying worker: cut, not acknowledged
                reply = httpx.post(f"{url}/v1/events", json={"user_id": "k", "item_id": item})
            except httpx.TransportError:
                continue
            assert reply.status_code == 200
            acknowledged.append(item)
        wait_for(lambda: pids[0] in (now := serving(url)) and pids[1] not in now, log)
        pids = serving(url)
        assert "worker 1 (pid" in log.read_text() and "killed by SIGKILL" in log.read_text()
        histories = each_worker(url, pids, lambda c: c.get("/v1/users/k/history").json())
        for history in histories.values():
            assert [h["item_id"] for h in history["items"]] == acknowledged

        # SIGHUP to the supervisor: every worker reloads.
        before = loaded(url, pids)
        server.send_signal(signal.SIGHUP)
        wait_for(lambda: all(now[1] > before[pid][1]
                             for pid, now in loaded(url, pids).items()), log)
        # POST /v1/admin/reload reaches one worker; the other loads the same run.
        copy = tmp_path / "copy"
        shutil.copytree(run, copy)
        reply = httpx.post(f"{url}/v1/admin/reload", json={"run_dir": str(copy)}, timeout=60)
        assert reply.status_code == 200, reply.text
        wait_for(lambda: {folder for folder, _ in loaded(url, pids).values()} == {str(copy)},
                 log)
        # A worker started after the reload serves the reloaded run too.
        os.kill(pids[0], signal.SIGKILL)
        wait_for(lambda: pids[0] not in serving(url), log)
        pids = serving(url)
        assert {folder for folder, _ in loaded(url, pids).values()} == {str(copy)}
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            code = server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            raise
    assert code == 0, log.read_text()
    assert "stopped 2 workers" in log.read_text()
    assert "Traceback" not in log.read_text()
