"""The model service over HTTP, on real trained runs (ml-100k): the answers are the
offline evaluator's, events change them, bad requests are refused without writes."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from modrec.config import build_config
from modrec.eval.evaluator import mask_seen, user_vectors
from modrec.runs import load_run
from modrec.serve import ModelService, ServeConfig
from modrec.serve.app import AppSettings, create_app
from modrec.serve.state import SQLiteUserState
from modrec.train import train
from support import assert_same_ranking


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("served")
    small = ["train.epochs=2", "model.max_len=30", "model.num_blocks=1"]
    return {
        "sasrec": train(build_config("ml-100k", "sasrec", overrides=small), root / "sasrec",
                        progress=False),
        # ml-100k has timestamps: this HSTU learns from elapsed time.
        "hstu": train(build_config("ml-100k", "hstu", overrides=small), root / "hstu",
                      progress=False),
    }


def _client(runs: dict[str, Path], tmp_path: Path, **settings: object) -> TestClient:
    service = ModelService.from_runs(runs, SQLiteUserState(tmp_path / "state.db"))
    return TestClient(create_app(service, AppSettings(**settings)))  # type: ignore[arg-type]


@pytest.fixture
def client(runs: dict[str, Path], tmp_path: Path) -> TestClient:
    with _client(runs, tmp_path) as client:
        yield client


def test_the_service_ranks_as_the_offline_evaluator(runs: dict[str, Path],
                                                    client: TestClient) -> None:
    """For held-out users, the service's top-10 from their test history is the top of
    the ranking the evaluator scores (history masked)."""
    run = load_run(runs["sasrec"])
    test = run.split.test
    ids = run.dataset.items["item_id"].astype(str).to_numpy()
    users = np.random.default_rng(0).choice(len(test), 40, replace=False)
    histories = [test.histories[int(u)] for u in users]
    with torch.no_grad():
        scores = user_vectors(run.scorer, [h[-30:] for h in histories]) @ \
            run.scorer.item_vectors().T  # (B, N + 1)
    mask_seen(scores, test.histories, users)
    offline = torch.topk(scores, 10, dim=1)
    for row, history in enumerate(histories):
        reply = client.post("/v1/recommend", json={
            "history": [ids[i - 1] for i in history], "k": 10}).json()
        assert reply["source"] == "history" and reply["history_length"] == len(history)
        expected = [{"item_id": ids[i - 1], "score": score} for i, score in zip(
            offline.indices[row].tolist(), offline.values[row].tolist(), strict=True)]
        assert_same_ranking(reply["items"], expected)  # the offline scores are batched


def test_an_event_changes_the_next_answer(client: TestClient) -> None:
    first = client.post("/v1/recommend", json={"user_id": "196", "k": 5}).json()
    assert first["source"] == "user" and first["history_length"] == 39
    top = first["items"][0]["item_id"]
    assert client.post("/v1/events", json={"user_id": "196", "item_id": top,
                                           "timestamp": 893000000}).json() == {
        "written": 1, "unknown_items": []}
    after = client.post("/v1/recommend", json={"user_id": "196", "k": 5}).json()
    assert after["history_length"] == 40
    assert top not in [item["item_id"] for item in after["items"]]  # now seen
    assert after["items"] != first["items"]
    history = client.get("/v1/users/196/history", params={"limit": 3}).json()["items"]
    assert history[-1]["item_id"] == top and history[-1]["timestamp"] == 893000000
    assert len(history) == 3 and history[-1]["title"]


def test_a_batch_of_events_is_written_whole_or_not_at_all(client: TestClient) -> None:
    events = [{"user_id": "new-user", "item_id": "50"}, {"user_id": "new-user",
                                                         "item_id": "181", "type": "click"}]
    assert client.post("/v1/events", json={"events": events}).json() == {
        "written": 2, "unknown_items": []}
    bad = [*events, {"user_id": "new-user", "item_id": "50", "timestamp": "yesterday"}]
    response = client.post("/v1/events", json={"events": bad})
    assert response.status_code == 422 and "timestamp" in response.text
    assert len(client.get("/v1/users/new-user/history").json()["items"]) == 2
    # An item no model knows (yet) is no reason to lose the event: kept, and named.
    later = [{"user_id": "new-user", "item_id": "no-such-movie"}]
    assert client.post("/v1/events", json={"events": later}).json() == {
        "written": 1, "unknown_items": ["no-such-movie"]}
    assert len(client.get("/v1/users/new-user/history").json()["items"]) == 3


def test_unknown_users_get_the_most_popular_items(client: TestClient, runs) -> None:
    reply = client.post("/v1/recommend", json={"user_id": "stranger", "k": 3}).json()
    assert reply["source"] == "popularity" and reply["history_length"] == 0
    dataset = load_run(runs["sasrec"]).dataset
    counts = dataset.interactions["item"].value_counts()
    expected = [dataset.items["item_id"].iloc[i - 1] for i in counts.index[:3]]
    assert [item["item_id"] for item in reply["items"]] == expected
    skipped = client.post("/v1/recommend", json={"user_id": "stranger", "k": 3,
                                                 "exclude": [expected[0]]}).json()
    assert [item["item_id"] for item in skipped["items"]] == expected[1:] + [
        dataset.items["item_id"].iloc[counts.index[3] - 1]]


def test_unknown_history_items_are_reported_and_left_out(client: TestClient) -> None:
    reply = client.post("/v1/recommend", json={"history": ["50", "nope", "181"], "k": 4,
                                               "exclude": ["172", "gone"]}).json()
    assert reply["unknown_items"] == ["nope", "gone"] and reply["history_length"] == 2
    assert not {"50", "181", "172"} & {item["item_id"] for item in reply["items"]}
    kept = client.post("/v1/recommend", json={"history": ["50", "181"], "k": 200,
                                              "exclude_seen": False}).json()
    assert {"50", "181"} & {item["item_id"] for item in kept["items"]}


def test_a_time_aware_model_needs_timestamps(client: TestClient) -> None:
    response = client.post("/v1/recommend", json={"history": ["50", "181"], "model": "hstu"})
    assert response.status_code == 422 and "timestamps" in response.json()["detail"]
    ok = client.post("/v1/recommend", json={"history": ["50", "181"], "model": "hstu",
                                            "timestamps": [880000000, 880000600]})
    assert ok.status_code == 200 and ok.json()["model"] == "hstu"
    stored = client.post("/v1/recommend", json={"user_id": "196", "model": "hstu"})
    assert stored.status_code == 200 and stored.json()["source"] == "user"


@pytest.mark.parametrize(("body", "status", "says"), [
    ({"user_id": "196", "k": 0}, 422, "k"),
    ({"user_id": "196", "k": 5000}, 422, "less than or equal to 1000"),
    ({"user_id": "196", "k": "ten"}, 422, "k"),
    ({"k": 3}, 422, "user_id or a history"),
    ({"user_id": "196", "model": "gpt"}, 404, "no model named 'gpt'"),
    ({"user_id": "196", "surprise": 1}, 422, "surprise"),
    ({"history": ["50"], "timestamps": [1, 2]}, 422, "one per item"),
    ({"user_id": ""}, 422, "user_id"),
])
def test_bad_requests_say_what_is_wrong(client: TestClient, body: dict, status: int,
                                        says: str) -> None:
    response = client.post("/v1/recommend", json=body)
    assert response.status_code == status
    assert says in json.dumps(response.json())


def test_malformed_and_oversized_bodies_are_refused(runs, tmp_path: Path) -> None:
    with _client(runs, tmp_path, max_body_bytes=2000) as client:
        broken = client.post("/v1/recommend", content=b'{"user_id": "1",',
                             headers={"content-type": "application/json"})
        assert broken.status_code == 422
        assert client.post("/v1/recommend", content=b'{"user_id": "1"}').status_code == 200
        huge = client.post("/v1/recommend", json={"history": ["1"] * 1000})
        assert huge.status_code == 413 and "2000 bytes" in huge.json()["detail"]
        deep = client.post("/v1/recommend", content=b"[" * 990 + b"]" * 990)
        assert deep.status_code in (400, 422)


def test_writes_need_the_api_key_when_one_is_set(runs, tmp_path: Path) -> None:
    with _client(runs, tmp_path, api_key="s3cret") as client:
        event = {"user_id": "196", "item_id": "50"}
        before = client.get("/v1/users/196/history", params={"limit": 10000}).json()
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            response = client.post("/v1/events", json=event, headers=headers)
            assert response.status_code == 401
        assert client.get("/v1/users/196/history",
                          params={"limit": 10000}).json() == before  # nothing written
        assert client.post("/v1/admin/reload", json={}).status_code == 401
        ok = client.post("/v1/events", json=event, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        # reads stay open
        assert client.post("/v1/recommend", json={"user_id": "196"}).status_code == 200


def test_reload_swaps_a_model_while_serving(runs, client: TestClient) -> None:
    before = client.get("/readyz").json()["models"]["sasrec"]
    swapped = client.post("/v1/admin/reload", json={"model": "sasrec",
                                                    "run_dir": str(runs["hstu"])})
    assert swapped.status_code == 200 and swapped.json()["run_dir"] == str(runs["hstu"])
    now = client.get("/readyz").json()["models"]["sasrec"]
    assert now["model"] == "hstu" and now["loaded_at"] > before["loaded_at"]
    missing = client.post("/v1/admin/reload", json={"model": "sasrec", "run_dir": "/nope"})
    assert missing.status_code == 422 and "/nope" in missing.json()["detail"]
    assert client.get("/readyz").json()["models"]["sasrec"]["model"] == "hstu"  # kept


def test_items_similar_probes_metrics_and_schema(client: TestClient) -> None:
    item = client.get("/v1/items/50").json()
    assert item == {"item_id": "50", "title": "Star Wars", "genres": item["genres"],
                    "origin": "trained", "retired_at": None,
                    "vector_sha256": item["vector_sha256"]}
    assert client.get("/v1/items/nope").status_code == 404
    similar = client.get("/v1/items/50/similar", params={"k": 5}).json()["items"]
    assert len(similar) == 5 and "50" not in [s["item_id"] for s in similar]
    assert client.get("/healthz").json() == {"status": "alive"}
    assert client.get("/readyz").json()["status"] == "ready"
    client.post("/v1/recommend", json={"user_id": "196"})
    metrics = client.get("/metrics").text
    assert 'modrec_requests_total{endpoint="/v1/recommend",method="POST",status="200"}' in metrics
    assert 'modrec_index_items{model="sasrec"} 1682.0' in metrics
    assert "modrec_batch_size_bucket" in metrics
    schema = client.get("/openapi.json").json()
    assert {"/v1/recommend", "/v1/events", "/v1/search", "/v1/admin/reload",
            "/v1/users/{user_id}/history", "/v1/items/{item_id}/similar"} <= set(schema["paths"])


@pytest.mark.parametrize(("window_ms", "max_batch"), [(20.0, 64), (0.0, 64), (0.0, 1)])
def test_concurrent_requests_share_model_calls_and_get_their_own_answers(
        runs, tmp_path: Path, window_ms: float, max_batch: int) -> None:
    """With a window, and without one (requests queued behind a busy model share the
    next call); ``max_batch=1`` is one call per request. Answers never mix."""
    service = ModelService.from_runs(runs, SQLiteUserState(tmp_path / "state.db"))
    users = [str(u) for u in range(1, 65)]
    alone = {u: service.recommend([_request(u)])[0].items for u in users}  # type: ignore

    async def together() -> dict[str, list]:
        app = create_app(service, AppSettings(batch_window_ms=window_ms, max_batch=max_batch))
        transport = httpx.ASGITransport(app=app)
        async with app.router.lifespan_context(app), httpx.AsyncClient(
                transport=transport, base_url="http://test") as client:
            replies = await asyncio.gather(*(client.post(
                "/v1/recommend", json={"user_id": u, "k": 10}) for u in users))
            metrics = (await client.get("/metrics")).text
        count = float(metrics.split("modrec_batch_size_count ")[1].split()[0])
        if max_batch == 1:
            assert count == len(users)
        else:
            assert count < len(users)  # fewer model calls than requests
        return {u: r.json()["items"] for u, r in zip(users, replies, strict=True)}

    batched = asyncio.run(together())
    for user in users:  # scores to float tolerance: a batch sums in another order
        assert_same_ranking(batched[user], alone[user])


def test_rankings_compare_equal_up_to_the_order_a_batch_sums_in() -> None:
    """On some CPUs a batched score differs from the lone one in the 8th digit, and two
    items that tie may trade places; any other difference is still a failure."""
    lone = [{"item_id": "50", "score": 0.2688426375}, {"item_id": "181", "score": 0.25},
            {"item_id": "7", "score": 0.2499999}, {"item_id": "1", "score": 0.1}]
    batched = [{"item_id": "50", "score": 0.2688426077}, {"item_id": "7", "score": 0.25},
               {"item_id": "181", "score": 0.2499999}, {"item_id": "1", "score": 0.1}]
    assert batched != lone  # what the exact comparison refused
    assert_same_ranking(batched, lone)
    for wrong in (
            [{**lone[0], "score": 0.2689}, *lone[1:]],  # a real score difference
            [lone[0], lone[3], lone[2], lone[1]],  # not neighbours
            [lone[1], lone[0], *lone[2:]],  # neighbours that do not tie
            lone[:3],  # an item missing
            [{**lone[0], "item_id": "51"}, *lone[1:]]):  # another item
        with pytest.raises(AssertionError):
            assert_same_ranking(wrong, lone)


def _request(user: str):  # noqa: ANN202
    from modrec.serve import Request

    return Request(user_id=user, k=10)


def test_search_without_text_embeddings_is_a_clear_404(client: TestClient) -> None:
    response = client.post("/v1/search", json={"query": "space opera"})
    assert response.status_code == 404 and "modrec embed" in response.json()["detail"]


def test_search_needs_a_text_matrix_not_the_word_in_the_manifest(
        client: TestClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A store whose only text matrix is keyed otherwise (``text-mpnet``, reading the
    text column): search has no ``text`` vectors and says so (404). It used to find
    '"text"' in the manifest's bytes, open the store and fail inside it (500)."""
    folder = tmp_path / "embeddings" / "ml-100k"
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({"encoders": {"text-mpnet": {
        "dim": 2, "dtype": "float32", "version": "v", "reads": "text", "ids": "gone"}}}))
    monkeypatch.setenv("MODREC_EMBEDDINGS_DIR", str(tmp_path / "embeddings"))
    response = client.post("/v1/search", json={"query": "space opera"})
    assert response.status_code == 404 and "modrec embed" in response.json()["detail"]


def test_service_config_bounds_come_from_settings() -> None:
    assert ServeConfig().max_k == AppSettings().max_k == 1000


def test_the_schema_declares_every_limit_the_service_enforces(runs, tmp_path: Path) -> None:
    """k at most max_k (a server option, so per app), histories and exclusions at most
    max_history items, events at most max_events: in /openapi.json, and enforced by it.
    Before, k over max_k was refused by a check the schema did not show."""
    settings = {"max_k": 5, "max_history": 20, "max_events": 3}
    with _client(runs, tmp_path, **settings) as client:
        schema = client.get("/openapi.json").json()
        bodies = schema["components"]["schemas"]
        recommend = bodies["RecommendIn"]["properties"]
        assert (recommend["k"]["maximum"], recommend["k"]["default"]) == (5, 5)
        assert bodies["SearchIn"]["properties"]["k"]["maximum"] == 5
        [k] = [p for p in schema["paths"]["/v1/items/{item_id}/similar"]["get"]["parameters"]
               if p["name"] == "k"]
        assert k["schema"]["maximum"] == 5
        for name in ("history", "timestamps"):
            assert recommend[name]["anyOf"][0]["maxItems"] == 20
        assert recommend["exclude"]["maxItems"] == 20
        assert bodies["EventsIn"]["properties"]["events"]["maxItems"] == 3
        assert {"required": ["user_id"], "properties": {"user_id": {"type": "string"}}} in \
            bodies["RecommendIn"]["anyOf"]  # a user_id or a history
        assert "over 1000000 bytes" in \
            schema["paths"]["/v1/events"]["post"]["responses"]["413"]["description"]

        assert len(client.post("/v1/recommend", json={"user_id": "196"}).json()["items"]) == 5
        for path, body, field in [
                ("/v1/recommend", {"user_id": "196", "k": 6}, "k"),
                ("/v1/recommend", {"history": ["50"] * 21}, "history"),
                ("/v1/recommend", {"user_id": "196", "exclude": ["50"] * 21}, "exclude"),
                ("/v1/search", {"query": "space", "k": 6}, "k"),
                ("/v1/events", {"events": [{"user_id": "u", "item_id": "50"}] * 4}, "events")]:
            response = client.post(path, json=body)
            assert response.status_code == 422, (path, body)
            assert field in json.dumps(response.json()["detail"])
        similar = client.get("/v1/items/50/similar", params={"k": 6})
        assert similar.status_code == 422 and "less than or equal to 5" in similar.text
