"""The learning loop closed in a running service: events logged by the service train a
run started from the served one (`-d STATE --init-from RUN`), and `/v1/admin/reload`
swaps it in while requests keep being answered, each by one model."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pandas as pd
import pytest

from modrec.cli import main
from modrec.config import build_config
from modrec.serve import ModelService
from modrec.serve.app import AppSettings, create_app
from modrec.serve.service import Request
from modrec.serve.state import SQLiteUserState
from modrec.train import train
from support import serve_in_thread

SMALL = ["train.epochs=1", "model.max_len=30", "model.num_blocks=1"]
NEW_USER = ["new-item", "50", "new-item", "100", "181", "258"]
pytestmark = pytest.mark.slow  # two runs trained, a real server (8-30 s on 2 cores)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Run "a" (ml-100k), and run "b" started from it on the state a service over "a"
    kept, in which a new user watched an item "a" never had: its id is not a number,
    so "b" numbers every item otherwise."""
    root = tmp_path_factory.mktemp("loop")
    a = train(build_config("ml-100k", "sasrec", overrides=SMALL), root / "a", progress=False)
    state = root / "state.db"
    with SQLiteUserState(state) as store:
        ModelService.from_runs({"m": a}, store)  # seeds it
        # What the live-items service will accept; the events route of this one refuses
        # an item no served model has, so it is written as the state's own writer would.
        store.append("new-user", NEW_USER, list(range(900000000, 900000006)))
    b = train(build_config(None, "sasrec", overrides=[
        *SMALL, f"data.dataset={state}", f"train.init_from={a}"]), root / "b", progress=False)
    return {"a": a, "b": b}


def test_a_reload_between_reading_a_request_and_answering_it_changes_nothing(
        runs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A request resolved against one model's catalog is answered by that model, even if
    a reload swaps in a run whose items are numbered otherwise meanwhile. (Before, the
    batch looked the model up again by name and read the old indices with the new one:
    other items, or an index past its catalog.)"""
    service = ModelService.from_runs({"m": runs["a"]}, SQLiteUserState(tmp_path / "s.db"))
    requests = [Request(user_id="196", k=10), Request(history=["50", "181", "1"], k=10)]
    before = service.recommend(requests)
    query = service._query

    def query_then_reload(recommender, request):  # type: ignore[no-untyped-def]
        resolved = query(recommender, request)
        if service.model("m").folder != runs["b"]:
            service.reload("m", runs["b"])  # swapped in while the batch is answered
        return resolved

    monkeypatch.setattr(service, "_query", query_then_reload)
    during = service.recommend(requests)
    monkeypatch.undo()
    assert service.model("m").folder == runs["b"]
    assert [r.items for r in during] == [r.items for r in before]  # type: ignore[union-attr]
    after = service.recommend(requests)
    assert [r.items for r in after] != [r.items for r in before]  # type: ignore[union-attr]


@pytest.fixture
def server(runs: dict[str, Path], tmp_path: Path) -> Iterator[tuple[str, Path]]:
    state = tmp_path / "state.db"
    service = ModelService.from_runs({"m": runs["a"]}, SQLiteUserState(state))
    service.state.append("new-user", NEW_USER, list(range(900000000, 900000006)))
    yield from ((address, state) for address in serve_in_thread(create_app(
        service, AppSettings())))
    service.state.close()


def test_events_train_the_next_run_which_is_swapped_in_under_load(
        runs: dict[str, Path], server: tuple[str, Path], tmp_path: Path) -> None:
    address, state = server
    url = f"http://{address}"
    for item in ("50", "181", "258", "100"):
        assert httpx.post(f"{url}/v1/events", json={"user_id": "fresh", "item_id": item},
                          timeout=30).status_code == 200
    assert httpx.get(f"{url}/v1/items/new-item", timeout=30).status_code == 404
    # the service's state, read while the service holds it open, trains the next run
    out = tmp_path / "next"
    assert main(["train", "-d", str(state), "-m", "sasrec", "--set", "model.max_len=30",
                 "--set", "model.num_blocks=1", "--epochs", "1", "--init-from",
                 str(runs["a"]), "--out", str(out), "--no-progress", "--json"]) == 0
    manifest = json.loads((out / "dataset" / "manifest.json").read_text())
    assert manifest["provenance"]["format"] == "modrec-state"
    assert "fresh" in set(pd.read_parquet(out / "dataset" / "users.parquet")["user_id"])
    # requests from several clients while the new run is swapped in, and back, and again
    failures: list[str] = []
    answered = [0]
    stop = threading.Event()

    def ask(user: int) -> None:
        with httpx.Client(base_url=url, timeout=30) as client:
            while not stop.is_set():
                response = client.post("/v1/recommend", json={"user_id": str(user), "k": 5})
                if response.status_code != 200:
                    failures.append(f"{response.status_code} {response.text}")
                answered[0] += 1

    clients = [threading.Thread(target=ask, args=(u,)) for u in (1, 196, 500)]
    for client in clients:
        client.start()
    try:
        for run in (out, runs["a"], out):
            reply = httpx.post(f"{url}/v1/admin/reload", json={"run_dir": str(run)},
                               timeout=120)
            assert reply.status_code == 200 and reply.json()["run_dir"] == str(run)
    finally:
        stop.set()
        for client in clients:
            client.join()
    assert failures == [] and answered[0] > 0
    assert httpx.get(f"{url}/readyz", timeout=30).json()["models"]["m"]["run_dir"] == str(out)
    assert httpx.get(f"{url}/v1/items/new-item", timeout=30).status_code == 200
    fresh = httpx.post(f"{url}/v1/recommend", json={"user_id": "fresh", "k": 5},
                       timeout=30).json()
    assert fresh["source"] == "user" and fresh["history_length"] == 4
