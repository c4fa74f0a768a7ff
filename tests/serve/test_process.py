"""`modrec serve` as a real process on a loopback port: it starts from one command,
after ``kill -9`` every acknowledged event is still there and the answers are the same,
and SIGHUP reloads every model that still loads."""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import httpx
import pytest

from modrec.config import build_config
from modrec.train import train
from support import craft_weights, free_port, start_serve


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train(build_config("ml-100k", "sasrec", overrides=[
        "train.epochs=1", "model.max_len=30", "model.num_blocks=1"]),
        tmp_path_factory.mktemp("served") / "run", progress=False)


@pytest.mark.slow
def test_killed_server_keeps_every_acknowledged_event(run: Path, tmp_path: Path) -> None:
    state, log, port = tmp_path / "state.db", tmp_path / "serve.log", free_port()
    server = start_serve(run, state, port, log)
    url = f"http://127.0.0.1:{port}"
    try:
        # the thread policy (modrec.threads): one torch thread per worker, so a job
        # beside the server cannot make its forward passes wait whole time slices
        assert "1 torch thread, GOMP_SPINCOUNT=1000" in log.read_text()
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


def test_sighup_keeps_a_model_whose_weights_are_refused_and_reloads_the_others(
        run: Path, tmp_path: Path) -> None:
    """Weights swapped for a crafted file, then SIGHUP: one log line names the model and
    why, it keeps answering from its old weights, and the next model is reloaded. (The
    reload thread used to die on the first failure with a raw traceback.)"""
    first, second = tmp_path / "first", tmp_path / "second"
    shutil.copytree(run, first)
    shutil.copytree(run, second)
    log, port = tmp_path / "serve.log", free_port()
    server = start_serve(first, tmp_path / "state.db", port, log, "--model",
                         f"second={second}")
    url = f"http://127.0.0.1:{port}"
    try:
        before = httpx.get(f"{url}/readyz").json()["models"]
        answer = httpx.post(f"{url}/v1/recommend", json={"user_id": "196"}).json()
        craft_weights(first / "model.pt", tmp_path / "pwned")
        server.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 60
        while httpx.get(f"{url}/readyz").json()["models"]["second"]["loaded_at"] == \
                before["second"]["loaded_at"]:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        now = httpx.get(f"{url}/readyz").json()["models"]
        assert now["first"]["loaded_at"] == before["first"]["loaded_at"]  # kept
        assert httpx.post(f"{url}/v1/recommend", json={"user_id": "196"}).json() == answer
    finally:
        server.terminate()
        server.wait(timeout=30)
    text = log.read_text()
    [line] = [t for t in text.splitlines() if "reloading model 'first'" in t]
    assert f"{first}" in line and "model.pt is not a weights file" in line
    assert "keeps serving the weights loaded before" in line
    assert "Traceback" not in text and not (tmp_path / "pwned").exists()
