"""`modrec serve` as a real process on a loopback port: it starts from one command,
and after ``kill -9`` every acknowledged event is still there and the answers are the
same."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from modrec.config import build_config
from modrec.train import train


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(run: Path, state: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [sys.executable, "-m", "modrec", "serve", str(run), "--state", str(state),
         "--port", str(port)], stdout=log.open("ab"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"modrec serve exited with {process.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.kill()
    pytest.fail(f"modrec serve did not become ready:\n{log.read_text()}")


def test_killed_server_keeps_every_acknowledged_event(tmp_path: Path) -> None:
    run = train(build_config("ml-100k", "sasrec", overrides=[
        "train.epochs=1", "model.max_len=30", "model.num_blocks=1"]), tmp_path / "run",
        progress=False)
    state, log, port = tmp_path / "state.db", tmp_path / "serve.log", _free_port()
    server = _start(run, state, port, log)
    url = f"http://127.0.0.1:{port}"
    try:
        acknowledged = []
        for i, item in enumerate(["50", "181", "100", "258", "1", "7", "56", "98"] * 5):
            reply = httpx.post(f"{url}/v1/events", json={
                "user_id": "kill-test", "item_id": item, "timestamp": 900000000 + i})
            assert reply.status_code == 200
            acknowledged.append(item)
        before = httpx.post(f"{url}/v1/recommend", json={"user_id": "kill-test",
                                                         "k": 10}).json()
        os.kill(server.pid, signal.SIGKILL)
        server.wait(timeout=10)
        server = _start(run, state, port, log)
        history = httpx.get(f"{url}/v1/users/kill-test/history",
                            params={"limit": 1000}).json()["items"]
        assert [h["item_id"] for h in history] == acknowledged
        after = httpx.post(f"{url}/v1/recommend", json={"user_id": "kill-test",
                                                        "k": 10}).json()
        assert after == before
        # Seeded once: the restart did not copy the dataset in again.
        assert len(httpx.get(f"{url}/v1/users/196/history",
                             params={"limit": 1000}).json()["items"]) == 39
    finally:
        server.kill()
        server.wait(timeout=10)
