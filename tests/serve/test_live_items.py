"""Items added to the running service (issue 39): encoded with the served run's own
content encoders and item tower, recommended at once, retired, kept across restarts
byte for byte, read in histories; hostile input refused with nothing stored."""

from __future__ import annotations

import json
import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

import modrec.serve.live as live_module
from modrec.config import build_config
from modrec.content import EmbeddingStore, embed
from modrec.data import load_dataset
from modrec.serve import ModelService, Request, ServeConfig
from modrec.serve.app import AppSettings, create_app
from modrec.serve.state import SQLiteUserState
from modrec.train import train
from support import write_video

SMALL = ["train.epochs=1", "model.max_len=30", "model.num_blocks=1"]
KEY = "k3y"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def runs(ml100k_store, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three small ml-100k runs: a content tower (titles through MiniLM, genres), an ID
    tower, and a BERT4Rec with an ID+content tower (its mask token sits where the first
    new item would)."""
    root = tmp_path_factory.mktemp("live")
    content = 'model.encoders=["text","tags:genres"]'
    with pytest.MonkeyPatch.context() as patch:  # training finds the store by name
        patch.setenv("MODREC_EMBEDDINGS_DIR", str(ml100k_store.folder.parent))
        return {
            "content": train(build_config("ml-100k", "sasrec", overrides=[
                *SMALL, "model.item_tower=content", content]), root / "content", progress=False),
            "ids": train(build_config("ml-100k", "sasrec", overrides=SMALL), root / "ids",
                         progress=False),
            "bert": train(build_config("ml-100k", "bert4rec", overrides=[
                *SMALL, "model.item_tower=id+content", content]), root / "bert", progress=False),
        }


@pytest.fixture
def media(tmp_path: Path) -> Path:
    folder = tmp_path / "media"
    folder.mkdir()
    write_video(folder / "clip.mp4", 3)
    return folder


def _service(runs: dict[str, Path], state: Path, media: Path | None, *names: str
             ) -> ModelService:
    # The runs record their encoders' versions (config.json): no store is needed to
    # serve them, so none is reachable here.
    return ModelService.from_runs({n: runs[n] for n in names}, SQLiteUserState(state),
                                  ServeConfig(media_dir=None if media is None else str(media)))


@pytest.fixture
def client(runs: dict[str, Path], tmp_path: Path, media: Path) -> Iterator[TestClient]:
    service = _service(runs, tmp_path / "state.db", media, "content", "ids")
    with TestClient(create_app(service, AppSettings(api_key=KEY, max_items=20))) as client:
        yield client
    service.state.close()


def _add(client: TestClient, *items: dict[str, Any], status: int = 200) -> Any:
    response = client.post("/v1/items", json={"items": list(items)}, headers=AUTH)
    assert response.status_code == status, response.text
    return response.json()


def _ids(answer: dict[str, Any]) -> list[str]:
    return [item["item_id"] for item in answer["items"]]


def _live_count(client: TestClient) -> int:
    service: ModelService = client.app.state.serving.current  # type: ignore[attr-defined]
    assert service.live is not None
    return service.live.state.count()


def _item(client: TestClient, item_id: str) -> dict[str, Any]:
    service: ModelService = client.app.state.serving.current  # type: ignore[attr-defined]
    model = service.models["content"]
    row = model.run.dataset.items.set_index("item_id").loc[item_id]
    return {"title": str(row["title"]), "genres": str(row["genres"])}


# ---- recommended, retired ------------------------------------------------------------------
def test_a_new_item_is_recommended_from_its_content(client: TestClient) -> None:
    """An item whose title and genres are a trained item's has that item's content
    row, hence (content tower) its vector: it is recommended where that item is, with
    its score, and a history naming it is read as one naming that item."""
    history = ["181", "172", "174"]
    before = client.post("/v1/recommend", json={"history": history, "k": 5}).json()
    twin_of = before["items"][2]["item_id"]
    reply = _add(client, {"item_id": "live-twin", **_item(client, twin_of)})
    [row] = reply["items"]
    assert row["status"] == "added" and row["models"]["content"]["index"] == 1683
    assert "ID item tower" in reply["skipped_models"]["ids"]
    assert 'modrec_index_items{model="content"} 1683.0' in client.get("/metrics").text
    assert "model.item_tower=id+content" in reply["skipped_models"]["ids"]
    after = client.post("/v1/recommend", json={"history": history, "k": 6}).json()
    scores = {item["item_id"]: item["score"] for item in after["items"]}
    assert "live-twin" in scores
    assert scores["live-twin"] == pytest.approx(scores[twin_of], abs=1e-5)
    # A user whose history points at the new item's content gets what the twin gets.
    by_twin = client.post("/v1/recommend", json={"history": [twin_of], "k": 10}).json()
    by_live = client.post("/v1/recommend", json={"history": ["live-twin"], "k": 10}).json()
    assert by_live["history_length"] == 1 and by_live["unknown_items"] == []
    swap = {"live-twin": twin_of, twin_of: "live-twin"}
    assert [swap.get(i, i) for i in _ids(by_live)] == _ids(by_twin)
    similar = client.get("/v1/items/live-twin/similar", params={"k": 3}).json()
    assert similar["items"][0]["item_id"] == twin_of
    described = client.get("/v1/items/live-twin").json()
    assert described["origin"] == "live" and described["title"] == _item(client, twin_of)["title"]
    assert described["vector_sha256"] == row["models"]["content"]["vector_sha256"]
    assert client.get("/v1/items/50").json()["origin"] == "trained"
    # The ID model does not have it, and says why.
    missing = client.get("/v1/items/live-twin", params={"model": "ids"})
    assert missing.status_code == 404 and "ID item tower" in missing.json()["detail"]


def test_a_retired_item_is_never_recommended(client: TestClient) -> None:
    history = ["181", "172", "174"]
    top = _ids(client.post("/v1/recommend", json={"history": history, "k": 5}).json())
    _add(client, {"item_id": "live-twin", **_item(client, top[0])})
    assert "live-twin" in _ids(client.post("/v1/recommend", json={"history": history,
                                                                  "k": 5}).json())
    for item_id, origin in (("live-twin", "live"), (top[0], "trained")):
        retired = client.delete(f"/v1/items/{item_id}", headers=AUTH)
        assert retired.status_code == 200 and retired.json()["origin"] == origin
        again = client.delete(f"/v1/items/{item_id}", headers=AUTH).json()
        assert again["retired_at"] == retired.json()["retired_at"]  # the first time kept
    after = client.post("/v1/recommend", json={"history": history, "k": 1000}).json()
    assert not {"live-twin", top[0]} & set(_ids(after))
    for user in ("stranger", "196"):  # popularity, and a stored history
        answer = client.post("/v1/recommend", json={"user_id": user, "k": 1000}).json()
        assert not {"live-twin", top[0]} & set(_ids(answer))
    assert client.get("/v1/items/live-twin/similar").status_code == 410
    assert client.get("/v1/items/live-twin").json()["retired_at"] is not None
    # Kept in histories: a history naming it is still read whole.
    kept = client.post("/v1/recommend", json={"history": ["live-twin", top[0]]}).json()
    assert kept["history_length"] == 2 and kept["unknown_items"] == []
    assert client.delete("/v1/items/no-such-item", headers=AUTH).status_code == 404
    assert client.delete("/v1/items/50").status_code == 401  # a write needs the key


def test_an_update_is_encoded_again_and_the_old_version_hidden(client: TestClient) -> None:
    first = _add(client, {"item_id": "v", "title": "Star Wars", "genres": "Sci-Fi"})
    same = _add(client, {"item_id": "v", "title": "Star Wars", "genres": "Sci-Fi"})
    [row], [again] = first["items"], same["items"]
    assert again["status"] == "unchanged" and again["models"] == row["models"]
    changed = _add(client, {"item_id": "v", "title": "Toy Story", "genres": ["Animation"]})
    [new] = changed["items"]
    assert new["status"] == "updated"
    assert new["models"]["content"]["index"] == row["models"]["content"]["index"] + 1
    assert new["models"]["content"]["vector_sha256"] != row["models"]["content"]["vector_sha256"]
    answer = client.post("/v1/recommend", json={"history": ["1"], "k": 1000}).json()
    assert _ids(answer).count("v") == 1  # the old row is hidden, not returned beside it
    assert client.get("/v1/items/v").json()["genres"] == "Animation"


def test_an_event_for_an_unknown_item_is_kept(client: TestClient) -> None:
    """Events may arrive before their item: kept, reported, and read once it arrives."""
    reply = client.post("/v1/events", headers=AUTH, json={"events": [
        {"user_id": "early", "item_id": "50"}, {"user_id": "early", "item_id": "not-yet"}]})
    assert reply.json() == {"written": 2, "unknown_items": ["not-yet"]}
    history = client.get("/v1/users/early/history").json()["items"]
    assert [h["item_id"] for h in history] == ["50", "not-yet"]
    before = client.post("/v1/recommend", json={"user_id": "early"}).json()
    assert before["history_length"] == 1 and before["unknown_items"] == ["not-yet"]
    _add(client, {"item_id": "not-yet", "title": "Return of the Jedi"})
    after = client.post("/v1/recommend", json={"user_id": "early"}).json()
    assert after["history_length"] == 2 and after["unknown_items"] == []
    assert "not-yet" not in _ids(after)  # seen: masked like any history item


# ---- kept across restarts and reloads ------------------------------------------------------
def test_a_restart_keeps_live_items_and_their_vectors_byte_for_byte(
        runs: dict[str, Path], tmp_path: Path, media: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    state = tmp_path / "state.db"
    first = _service(runs, state, media, "content", "bert")
    items = [{"item_id": f"new-{i}", "title": title, "genres": "Comedy"}
             for i, title in enumerate(["A comedy of errors", "Space cowboys", "Toy story 5"])]
    first.add_items([*items, {"item_id": "clip", "title": "A clip", "video": "clip.mp4"}])
    first.retire("new-1")
    before = {name: _snapshot(model) for name, model in first.models.items()}
    first.state.close()

    def no_encoding(*args: Any) -> Any:
        raise AssertionError("a restart encoded an item again")

    monkeypatch.setattr(live_module, "encode_each", no_encoding)
    second = _service(runs, state, media, "content", "bert")
    after = {name: _snapshot(model) for name, model in second.models.items()}
    assert after == before
    bert = second.models["bert"]  # its mask token's index is left free: new items follow it
    assert bert.catalog.index_of["new-0"] == bert.catalog.trained + 2
    assert second.item("new-1")["retired_at"] is not None
    # A reload attaches them too, from the stored vectors.
    second.reload("content")
    assert _snapshot(second.models["content"]) == before["content"]
    second.state.close()


def test_a_run_trained_on_a_live_item_serves_its_trained_row(
        ml100k, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The learning loop: a run trained on the state after an item arrived live has
    learned the item's ID row from its events. Loading that run keeps the trained row
    (before, the stored live row was attached over it, hiding the learned vector behind
    the content-only one every retrain); posting the item again with other fields makes
    the new version the one served."""
    monkeypatch.setenv("MODREC_EMBEDDINGS_DIR", str(tmp_path / "embeddings"))
    embed(ml100k, ["tags:genres"], EmbeddingStore.for_dataset(ml100k), progress=False)
    tower = ["model.item_tower=id+content", 'model.encoders=["tags:genres"]']
    first = train(build_config("ml-100k", "sasrec", overrides=[*SMALL, *tower]),
                  tmp_path / "first", progress=False)
    state = tmp_path / "state.db"
    serving = ModelService.from_runs({"m": first}, SQLiteUserState(state))
    serving.add_items([{"item_id": "fresh", "title": "Fresh", "genres": "Comedy|Drama"}])
    for user in ("196", "186", "22", "244", "166"):  # then two more: it is trained on
        serving.state.append(user, ["fresh", "50", "181"], [900000000, 900000001, 900000002])
    serving.state.close()
    snapshot = load_dataset(str(state))
    embed(snapshot, ["tags:genres"], EmbeddingStore.for_dataset(snapshot), progress=False)
    second = train(build_config(None, "sasrec", overrides=[
        *SMALL, *tower, f"data.dataset={state}", f"train.init_from={first}"]),
        tmp_path / "second",
        progress=False)

    served = ModelService.from_runs({"m": second}, SQLiteUserState(state))
    model = served.models["m"]
    index = model.catalog.index_of["fresh"]
    assert index <= model.catalog.trained and not model.catalog.hidden
    assert model.catalog.live == 0 and served.item("fresh")["origin"] == "live"
    content_only = model.new_item_vectors(model.tower.content[[index]].numpy())[0]
    assert not np.allclose(model.index.vector(index), content_only)  # the ID row counts
    served.add_items([{"item_id": "fresh", "title": "Fresh", "genres": "Horror"}])
    assert model.catalog.index_of["fresh"] == model.catalog.trained + 1
    assert index in model.catalog.hidden
    served.state.close()


def _snapshot(model: Any) -> dict[str, tuple[int, bytes, bytes]]:
    """Each live item's index, index vector and tower content row, as bytes."""
    assert model.tower is not None
    return {item_id: (index, model.index.vector(index).tobytes(),
                      model.tower.content[index].numpy().tobytes(),
                      index in model.catalog.hidden)
            for item_id, index in model.catalog.index_of.items()
            if index > model.catalog.trained}


def test_a_model_with_another_encoder_version_encodes_again_or_refuses(
        runs: dict[str, Path], tmp_path: Path, media: Path) -> None:
    """A run whose recorded encoder version is not what the encoder here makes takes no
    new items and says why; stored vectors of another version are never used for it."""
    changed = tmp_path / "changed"
    shutil.copytree(runs["content"], changed)
    config = json.loads((changed / "config.json").read_text())
    config["content_encoders"][0]["version"] = "sentence-transformers:another-model"
    (changed / "config.json").write_text(json.dumps(config))
    service = ModelService.from_runs({"content": runs["content"], "changed": changed},
                                     SQLiteUserState(tmp_path / "state.db"))
    added, refusals = service.add_items([{"item_id": "n", "title": "Heat"}])
    assert "content" in added[0]["models"] and "changed" not in added[0]["models"]
    assert "was trained on text vectors of version 'sentence-transformers:another-model'" \
        in refusals["changed"]
    assert "n" not in service.models["changed"].catalog.index_of
    alone = ModelService.from_runs({"changed": changed}, SQLiteUserState(tmp_path / "2.db"))
    with TestClient(create_app(alone)) as client:
        refused = client.post("/v1/items", json={"items": [{"item_id": "m", "title": "Heat"}]})
    assert refused.status_code == 422 and "another-model" in refused.json()["detail"]


def test_an_id_tower_says_how_to_train_a_content_tower(runs: dict[str, Path],
                                                       tmp_path: Path) -> None:
    service = _service(runs, tmp_path / "state.db", None, "ids")
    with TestClient(create_app(service)) as client:
        reply = client.post("/v1/items", json={"items": [{"item_id": "n", "title": "Heat"}]})
    assert reply.status_code == 422
    detail = reply.json()["detail"]
    assert "no served model can take new items: model 'ids'" in detail
    assert "modrec embed -d ml-100k --encoder text" in detail
    assert "--set model.item_tower=id+content" in detail
    assert service.live is not None and service.live.state.count() == 0


# ---- hostile input -------------------------------------------------------------------------
def _truncated(media: Path) -> str:
    data = (media / "clip.mp4").read_bytes()
    (media / "cut.mp4").write_bytes(data[:len(data) // 2])
    return "cut.mp4"


HOSTILE: list[tuple[str, Any, int, str]] = [
    ("outside", [{"item_id": "x", "title": "t", "video": "../secret.mp4"}], 422,
     "outside the media folder (--media-dir)"),
    ("absolute", [{"item_id": "x", "title": "t", "image": "/etc/passwd"}], 422,
     "outside the media folder"),
    ("missing", [{"item_id": "x", "title": "t", "audio": "nope.wav"}], 422,
     "is not a file inside the media folder"),
    ("truncated", [{"item_id": "x", "title": "t", "video": "CUT"}], 422,
     "is truncated: its video data ends at"),
    ("not a video", [{"item_id": "x", "title": "t", "video": "notes.mp4"}], 422,
     "unreadable media"),
    ("duplicate", [{"item_id": "x", "title": "a"}, {"item_id": "x", "title": "b"}], 422,
     "each item id once per request"),
    ("10,000", [{"item_id": f"x{i}", "title": "t"} for i in range(10_000)], 422,
     "at most 20"),
    ("unknown field", [{"item_id": "x", "title": "t", "director": "Lynch"}], 422,
     "has the field 'director', which no served catalog has"),
    ("empty id", [{"item_id": "", "title": "t"}], 422, "item_id"),
    ("long id", [{"item_id": "x" * 257, "title": "t"}], 422, "item_id"),
    ("number title", [{"item_id": "x", "title": 5}], 422, "title"),
    ("trained id", [{"item_id": "50", "title": "t"}], 409,
     "item '50' is a trained item of model 'content'"),
    ("nothing to read", [{"item_id": "x", "release_year": "1999"}], 422,
     "have none of the fields the served models read"),
    ("one bad of two", [{"item_id": "ok", "title": "fine"},
                        {"item_id": "x", "title": "t", "video": "CUT"}], 422, "truncated"),
]


@pytest.mark.parametrize(("case", "items", "status", "says"), HOSTILE,
                         ids=[case for case, *_ in HOSTILE])
def test_hostile_items_are_refused_and_nothing_is_stored(
        client: TestClient, media: Path, case: str, items: list[dict[str, Any]], status: int,
        says: str) -> None:
    cut = _truncated(media)
    (media / "notes.mp4").write_text("not a video")
    (media.parent / "secret.mp4").write_bytes((media / "clip.mp4").read_bytes())
    items = [{k: cut if v == "CUT" else v for k, v in item.items()} for item in items]
    response = client.post("/v1/items", json={"items": items}, headers=AUTH)
    assert response.status_code == status, response.text
    assert says in json.dumps(response.json()), response.text
    assert _live_count(client) == 0
    assert "ok" not in client.app.state.serving.current.models["content"].catalog.index_of


def test_a_retired_id_is_not_used_again(client: TestClient) -> None:
    _add(client, {"item_id": "gone", "title": "t"})
    client.delete("/v1/items/gone", headers=AUTH)
    reply = _add(client, {"item_id": "gone", "title": "u"}, status=409)
    assert "was retired at" in reply["detail"] and "under a new id" in reply["detail"]


def test_media_without_a_media_dir_is_refused(runs: dict[str, Path], tmp_path: Path) -> None:
    service = _service(runs, tmp_path / "state.db", None, "content")
    with TestClient(create_app(service)) as client:
        item = client.post("/v1/items", json={"items": [
            {"item_id": "x", "title": "t", "video": "clip.mp4"}]})
        upload = client.post("/v1/media", params={"filename": "a.mp4"}, content=b"123")
    assert item.status_code == 422 and "start modrec serve with --media-dir" in item.text
    assert upload.status_code == 422 and "--media-dir" in upload.text


def test_uploads_are_bounded_and_named_by_their_bytes(runs: dict[str, Path], tmp_path: Path,
                                                      media: Path) -> None:
    service = _service(runs, tmp_path / "state.db", media, "content")
    data = (media / "clip.mp4").read_bytes()
    settings = AppSettings(api_key=KEY, max_upload_bytes=len(data) + 10)
    with TestClient(create_app(service, settings)) as client:
        stored = client.post("/v1/media", params={"filename": "My Clip.MP4"}, content=data,
                             headers=AUTH)
        assert stored.status_code == 200, stored.text
        path = stored.json()["path"]
        assert path.startswith("uploads/") and path.endswith(".mp4")
        assert (media / path).read_bytes() == data
        added = _add(client, {"item_id": "up", "title": "Uploaded", "video": path})
        assert added["items"][0]["status"] == "added"
        for body, params, status, says in (
                (data + b"x" * 11, {"filename": "big.mp4"}, 413, "over"),
                (b"", {"filename": "empty.mp4"}, 422, "body is empty"),
                (data, {"filename": "script.sh"}, 422, "not one of"),
                (data, {"filename": "noext"}, 422, "(none)")):
            refused = client.post("/v1/media", params=params, content=body, headers=AUTH)
            assert refused.status_code == status and says in refused.text, refused.text
        assert client.post("/v1/media", params={"filename": "a.mp4"},
                           content=data).status_code == 401
    assert sorted(os.listdir(media / "uploads")) == [Path(path).name]  # no leftovers


# ---- several processes on one state file (modrec serve --workers N) ------------------------
@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_what_one_service_adds_or_retires_reaches_another_on_the_same_state(
        runs: dict[str, Path], tmp_path: Path, media: Path, engine: str,
        monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    """Two services over one state, as two workers of ``modrec serve --workers 2`` (or two
    replicas sharing a PostgreSQL state): items the first adds, updates or retires are in
    the second's very next answers, with the vectors the first stored (the second encodes
    nothing)."""
    from modrec.serve.state import open_state

    where = str(tmp_path / "state.db") if engine == "sqlite" else \
        request.getfixturevalue("postgres").database()
    config = ServeConfig(media_dir=str(media))
    first = ModelService.from_runs({"content": runs["content"]}, open_state(where), config)
    second = ModelService.from_runs({"content": runs["content"]}, open_state(where), config)
    history = ["181", "172", "174"]
    [before] = second.recommend([Request(history=history, k=5)])
    twin_of = before.items[2]["item_id"]
    catalog = first.models["content"].run.dataset.items.set_index("item_id")
    twin = {"title": str(catalog.loc[twin_of, "title"]),
            "genres": str(catalog.loc[twin_of, "genres"])}
    first.add_items([{"item_id": "live-twin", **twin},
                     {"item_id": "v", "title": "Star Wars", "genres": "Sci-Fi"}])
    first.add_items([{"item_id": "v", "title": "Toy Story", "genres": "Animation"}])

    def no_encoding(*args: Any) -> Any:
        raise AssertionError("the second service encoded an item")

    monkeypatch.setattr(live_module, "encode_each", no_encoding)
    [after] = second.recommend([Request(history=history, k=6)])
    assert "live-twin" in [item["item_id"] for item in after.items]
    for item_id in ("live-twin", "v"):
        assert second.item(item_id)["vector_sha256"] == first.item(item_id)["vector_sha256"]
    assert second.item("v")["title"] == "Toy Story"
    [everything] = second.recommend([Request(history=["1"], k=1000)])
    assert [item["item_id"] for item in everything.items].count("v") == 1
    first.retire("live-twin")
    [retired] = second.recommend([Request(history=history, k=1000)])
    assert "live-twin" not in [item["item_id"] for item in retired.items]
    assert second.item("live-twin")["retired_at"] is not None
    first.state.close()
    second.state.close()


# ---- kill -9 during ingestion --------------------------------------------------------------
@pytest.mark.slow
def test_a_killed_server_keeps_every_acknowledged_item_with_its_vector(
        runs: dict[str, Path], tmp_path: Path) -> None:
    """``kill -9`` while items are being posted: after a restart every item whose POST
    was answered is there with the vector its reply named, and none is encoded again."""
    import threading

    import httpx

    from support import free_port, start_serve

    key = tmp_path / "key"
    key.write_text(KEY)
    state, log, port = tmp_path / "state.db", tmp_path / "serve.log", free_port()
    args = ("--api-key-file", str(key), "--no-seed", "--load-encoders")
    server = start_serve(runs["content"], state, port, log, *args)
    url = f"http://127.0.0.1:{port}"
    acknowledged: dict[str, str] = {}
    done = threading.Event()

    def post() -> None:
        for n in range(10_000):
            batch = [{"item_id": f"k{n}-{j}", "title": f"Killed in flight {n} {j}"}
                     for j in range(3)]
            try:
                reply = httpx.post(f"{url}/v1/items", json={"items": batch}, headers=AUTH,
                                   timeout=60)
            except httpx.TransportError:
                return  # the server died under this request: not acknowledged
            assert reply.status_code == 200, reply.text
            for row in reply.json()["items"]:
                acknowledged[row["item_id"]] = row["models"]["content"]["vector_sha256"]
            if len(acknowledged) >= 15:
                done.set()

    client = threading.Thread(target=post)
    try:
        client.start()
        assert done.wait(120), log.read_text()
        os.kill(server.pid, signal.SIGKILL)  # most likely mid-request
        server.wait(timeout=10)
        client.join(60)
        server = start_serve(runs["content"], state, port, log, *args)
        for item_id, digest in acknowledged.items():
            got = httpx.get(f"{url}/v1/items/{item_id}", params={"model": "content"})
            assert got.status_code == 200 and got.json()["vector_sha256"] == digest, got.text
        assert "encoding them again" not in log.read_text()
    finally:
        server.kill()
        server.wait(timeout=10)


@pytest.mark.slow
def test_an_item_added_through_one_worker_is_recommended_by_the_other(
        runs: dict[str, Path], tmp_path: Path) -> None:
    """``modrec serve --workers 2``: an item posted to one worker is in the other's
    answer to the next request, with the same vector, and /metrics counts it."""
    import time

    import httpx

    from support import free_port, start_serve

    key = tmp_path / "key"
    key.write_text(KEY)
    log, port = tmp_path / "serve.log", free_port()
    server = start_serve(runs["content"], tmp_path / "state.db", port, log, "--api-key-file",
                         str(key), "--no-seed", "--workers", "2")
    url = f"http://127.0.0.1:{port}"
    clients: dict[int, httpx.Client] = {}
    try:
        deadline = time.monotonic() + 120
        while len(clients) < 2:  # keep-alive clients, one on each worker
            assert time.monotonic() < deadline, log.read_text()
            client = httpx.Client(base_url=url, timeout=60)
            ready = client.get("/readyz").json()
            if ready["worker"] in clients or len(ready["workers"]["serving"]) < 2:
                client.close()
                time.sleep(0.2)
            else:
                clients[ready["worker"]] = client
        adder, other = clients.values()
        history = ["181", "172", "174"]
        top = other.post("/v1/recommend", json={"history": history, "k": 5}).json()
        twin_of = top["items"][0]["item_id"]
        twin = adder.get(f"/v1/items/{twin_of}").json()
        reply = adder.post("/v1/items", headers=AUTH, json={"items": [
            {"item_id": "live-twin", "title": twin["title"], "genres": twin["genres"]}]})
        assert reply.status_code == 200, reply.text
        digest = reply.json()["items"][0]["models"]["content"]["vector_sha256"]
        after = other.post("/v1/recommend", json={"history": history, "k": 5}).json()
        assert "live-twin" in _ids(after)
        assert other.get("/v1/items/live-twin").json()["vector_sha256"] == digest
        assert 'modrec_index_items{model="content"} 1683.0' in other.get("/metrics").text
        assert other.delete("/v1/items/live-twin", headers=AUTH).status_code == 200
        again = adder.post("/v1/recommend", json={"history": history, "k": 5}).json()
        assert "live-twin" not in _ids(again)
    finally:
        for client in clients.values():
            client.close()
        server.terminate()
        server.wait(timeout=60)
    assert "encoding them again" not in log.read_text()


@pytest.mark.slow
def test_an_item_added_through_one_replica_is_recommended_by_the_other_behind_haproxy(
        runs: dict[str, Path], tmp_path: Path, postgres: Any) -> None:
    """Two replica processes on one PostgreSQL state behind HAProxy, as deploy/ runs
    them: an item posted to one replica is in the other's next answer (it reads the
    vector the first stored), and through the balancer; retired through the balancer,
    it leaves both."""
    import httpx

    from replicas import HAProxy, haproxy_binary
    from support import free_port, start_serve

    assert haproxy_binary() is not None, "no haproxy: make test installs it (SYSTEM_TOOLS)"
    key = tmp_path / "key"
    key.write_text(KEY)
    url = postgres.database("live_replicas")
    ports = [free_port(), free_port()]
    replicas = [start_serve(runs["content"], url, port, tmp_path / f"replica-{i}.log",
                            "--api-key-file", str(key), "--no-seed")
                for i, port in enumerate(ports)]
    balancer = HAProxy(free_port(), ports, tmp_path)
    first, second = (f"http://127.0.0.1:{p}" for p in ports)
    try:
        history = ["181", "172", "174"]
        top = httpx.post(f"{second}/v1/recommend", json={"history": history, "k": 5}).json()
        twin = httpx.get(f"{first}/v1/items/{top['items'][0]['item_id']}").json()
        reply = httpx.post(f"{first}/v1/items", headers=AUTH, timeout=60, json={"items": [
            {"item_id": "live-twin", "title": twin["title"], "genres": twin["genres"]}]})
        assert reply.status_code == 200, reply.text
        digest = reply.json()["items"][0]["models"]["content"]["vector_sha256"]
        for where in (second, balancer.url, balancer.url):  # the balancer: both replicas
            after = httpx.post(f"{where}/v1/recommend", json={"history": history, "k": 5})
            assert "live-twin" in _ids(after.json()), where
            assert httpx.get(f"{where}/v1/items/live-twin").json()["vector_sha256"] == digest
        gone = httpx.delete(f"{balancer.url}/v1/items/live-twin", headers=AUTH)
        assert gone.status_code == 200, gone.text
        for where in (first, second):
            again = httpx.post(f"{where}/v1/recommend", json={"history": history, "k": 5})
            assert "live-twin" not in _ids(again.json()), where
    finally:
        balancer.stop()
        for replica in replicas:
            replica.terminate()
            replica.wait(timeout=60)
    for i in range(2):  # the second replica read the stored vector, never encoded one
        assert "encoding them again" not in (tmp_path / f"replica-{i}.log").read_text()
