"""Two `modrec serve` replicas (separate processes, each on its own loopback port) sharing
one PostgreSQL state behind HAProxy: an event posted through one replica is in the
other's next recommendation, a new run rolled out with ``deploy/rollout.sh`` reaches
both with every request answered, and ``kill -9`` of a replica under load loses no
acknowledged event while the balancer keeps answering."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
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

ROLLOUT = Path(__file__).resolve().parents[2] / "deploy" / "rollout.sh"

pytestmark = pytest.mark.skipif(haproxy_binary() is None, reason=(
    "no haproxy: install Debian's haproxy package (make test does, as root: it is in the "
    "Makefile's SYSTEM_TOOLS)"))


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train(build_config("ml-100k", "sasrec", overrides=[
        "train.epochs=1", "model.max_len=30", "model.num_blocks=1"]),
        tmp_path_factory.mktemp("replicated") / "run", progress=False)


def _post_events(url: str, user: str, stop: threading.Event,
                 acknowledged: list[tuple[str, float]],
                 failed: list[tuple[float, int]]) -> None:
    """Post events of ``user`` one at a time until ``stop``; an event is acknowledged
    when its answer is 200 (kept with its time), and a failure (a 502 of a killed
    replica, say) is recorded with its time and status (0: no answer)."""
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
                acknowledged.append((item, time.monotonic()))
            else:
                failed.append((time.monotonic(), status))
            i += 1


@pytest.mark.slow
def test_replicas_share_state_and_survive_a_killed_replica(
        run: Path, postgres: Any, tmp_path: Path) -> None:
    url = postgres.database("replicas")
    runs = tmp_path / "runs"  # as deploy/ lays them out: run folders, and `current`
    for name in ("first", "second"):
        shutil.copytree(run, runs / name)
    (runs / "current").symlink_to("first")
    ports = [free_port(), free_port()]
    replicas = [start_serve(runs / "current", url, port, tmp_path / f"replica-{i}.log")
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

        # A new run rolled out to both replicas while clients keep asking: no request
        # fails, and each replica has loaded the run anew.
        before = [httpx.get(f"{u}/readyz").json()["models"]["current"]["loaded_at"]
                  for u in (first, second)]
        stop = threading.Event()
        answers: list[int] = []

        def ask() -> None:
            with httpx.Client(base_url=balancer.url, timeout=10) as client:
                while not stop.is_set():
                    answers.append(client.post("/v1/recommend", json={
                        "user_id": "196", "k": 10}).status_code)

        asking = [threading.Thread(target=ask) for _ in range(2)]
        for thread in asking:
            thread.start()
        done = subprocess.run(["sh", str(ROLLOUT), str(runs), "second", first, second],
                              capture_output=True, text=True, timeout=120)
        stop.set()
        for thread in asking:
            thread.join(timeout=30)
        assert done.returncode == 0, done.stderr
        assert (runs / "current").readlink() == Path("second")
        after = [httpx.get(f"{u}/readyz").json()["models"]["current"]["loaded_at"]
                 for u in (first, second)]
        assert all(a != b for a, b in zip(after, before, strict=True))
        assert answers and set(answers) == {200}

        # kill -9 of a replica while four clients post events through the balancer.
        stop = threading.Event()
        acknowledged: dict[str, list[tuple[str, float]]] = {f"load-{t}": [] for t in range(4)}
        failed: list[tuple[float, int]] = []
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
        # Only requests around the kill may fail (those in flight on the killed replica,
        # and those HAProxy sent on its connections before it saw them close); after
        # that the balancer answers every one from the replica that is left.
        assert all(t - killed_at < 1.0 for t, _ in failed), (failed, killed_at)
        assert httpx.get(f"{balancer.url}/readyz").status_code == 200
        with open_state(url) as state:  # every acknowledged event, in its order
            for user, acked_at in acknowledged.items():
                assert sum(t > killed_at + 1.0 for _, t in acked_at) >= 5, acked_at
                acked = [item for item, _ in acked_at]
                stored = [str(i) for i in state.history(user)[0]]
                it = iter(stored)  # acked is a subsequence of stored (a 502'd one may be in)
                assert all(item in it for item in acked), (user, acked, stored)
                assert len(stored) <= len(acked) + 1
    finally:
        balancer.stop()
        for replica in replicas:
            replica.kill()
            replica.wait(timeout=10)
