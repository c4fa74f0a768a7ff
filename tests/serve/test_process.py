"""`modrec serve` as a real process on a loopback port: it starts from one command,
and after ``kill -9`` every acknowledged event is still there and the answers are the
same."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import httpx

from modrec.config import build_config
from modrec.train import train
from support import free_port, start_serve


def test_killed_server_keeps_every_acknowledged_event(tmp_path: Path) -> None:
    run = train(build_config("ml-100k", "sasrec", overrides=[
        "train.epochs=1", "model.max_len=30", "model.num_blocks=1"]), tmp_path / "run",
        progress=False)
    state, log, port = tmp_path / "state.db", tmp_path / "serve.log", free_port()
    server = start_serve(run, state, port, log)
    url = f"http://127.0.0.1:{port}"
    try:
        # the thread policy (modrec.threads): one passive torch thread per worker, so a
        # job beside the server cannot make its forward passes wait whole time slices
        assert "1 torch thread, OpenMP wait policy passive" in log.read_text()
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
        server = start_serve(run, state, port, log)
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
