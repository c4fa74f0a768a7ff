"""Two `modrec serve` replicas (separate processes, each on its own loopback port) sharing
one PostgreSQL state behind HAProxy: an event posted through one replica is in the
other's next recommendation, and ``kill -9`` of a replica under load loses no
acknowledged event while the balancer keeps answering."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from modrec.config import build_config
from modrec.serve.state import open_state
from modrec.train import train
from replicas import HAProxy, haproxy_binary
from support import free_port, start_serve

pytestmark = pytest.mark.skipif(haproxy_binary() is None, reason=(
    "no haproxy: install Debian's haproxy package (make test does, as root: it is in the "
    "Makefile's SYSTEM_TOOLS)"))


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train(build_config("ml-100k", "sasrec", overrides=[
        "train.epochs=1", "model.max_len=30", "model.num_blocks=1"]),
        tmp_path_factory.mktemp("replicated") / "run", progress=False)


def _post_events(url: str, user: str, stop: threading.Event,
                 acknowledged: list[str], failed: list[float]) -> None:
    """Post events of ``user`` one at a time until ``stop``; an event is acknowledged
    when its answer is 200, and a failure (a 502 of a killed replica, say) is recorded
    with its time."""
    with httpx.Client(base_url=url, timeout=10) as client:
        i = 0
        while not stop.is_set():
            item = f"{user}-{i}"
            try:
                status = client.post("/v1/events", json={
                    "user_id": user, "item_id": item, "timestamp": 900_000_000 + i}
                ).status_code
            except httpx.TransportError:
                status = 0
            if status == 200:
                acknowledged.append(item)
            else:
                failed.append(time.monotonic())
            i += 1


@pytest.mark.slow
def test_replicas_share_state_and_survive_a_killed_replica(
        run: Path, postgres: Any, tmp_path: Path) -> None:
    url = postgres.database("replicas")
    ports = [free_port(), free_port()]
    replicas = [start_serve(run, url, port, tmp_path / f"replica-{i}.log")
                for i, port in enumerate(ports)]
    balancer = HAProxy(free_port(), ports, tmp_path)
    try:
        first, second = (f"http://127.0.0.1:{p}" for p in ports)
        # Read-your-write across replicas: written through one, read by the other.
        assert httpx.post(f"{first}/v1/events", json={
            "user_id": "ryw", "item_id": "50", "timestamp": 900_000_000}).status_code == 200
        history = httpx.get(f"{second}/v1/users/ryw/history").json()["items"]
        assert [h["item_id"] for h in history] == ["50"]
        reply = httpx.post(f"{second}/v1/recommend", json={"user_id": "ryw", "k": 10}).json()
        assert reply["source"] == "user" and reply["history_length"] == 1
        assert "50" not in [item["item_id"] for item in reply["items"]]  # seen: excluded

        # kill -9 of a replica while four clients post events through the balancer.
        stop = threading.Event()
        acknowledged: dict[str, list[str]] = {f"load-{t}": [] for t in range(4)}
        failed: list[float] = []
        clients = [threading.Thread(target=_post_events, args=(
            balancer.url, user, stop, acked, failed)) for user, acked in acknowledged.items()]
        for client in clients:
            client.start()
        time.sleep(1.5)
        killed_at = time.monotonic()
        os.kill(replicas[0].pid, signal.SIGKILL)
        replicas[0].wait(timeout=10)
        time.sleep(2.5)
        stop.set()
        for client in clients:
            client.join(timeout=30)
        # Only the requests in flight at the kill may fail (one per client at most):
        # the balancer retries refused connections on the replica that is left.
        assert len(failed) <= len(clients), (failed, killed_at)
        assert all(abs(t - killed_at) < 1.0 for t in failed), (failed, killed_at)
        assert httpx.get(f"{balancer.url}/readyz").status_code == 200
        with open_state(url) as state:  # every acknowledged event, in its order
            for user, acked in acknowledged.items():
                assert len(acked) >= 10, f"{user}: only {len(acked)} acknowledged"
                stored = [str(i) for i in state.history(user)[0]]
                it = iter(stored)  # acked is a subsequence of stored (a 502'd one may be in)
                assert all(item in it for item in acked), (user, acked, stored)
                assert len(stored) <= len(acked) + 1
    finally:
        balancer.stop()
        for replica in replicas:
            replica.kill()
            replica.wait(timeout=10)
