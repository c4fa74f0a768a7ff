"""Items entering the running service (``POST /v1/items``, issue 39): how soon a new
item is recommendable, and that a killed server keeps every item it acknowledged.

What it measures (each number written beside the command that produced it):

1. text items: 200 new items posted one at a time to ``modrec serve`` (a 1-epoch
   ml-100k SASRec with a content tower: MiniLM titles + genre tags) while wrk asks for
   recommendations at 4 connections; per item, the seconds from sending the POST until
   the item is recommendable: the reply (it comes once the item is stored and indexed)
   and a ``GET /v1/items/ID/similar`` that answers from its vector (target: p99 <= 1 s).
   The first item of a server started without ``--load-encoders`` pays for loading
   MiniLM; with the flag the start-up pays instead: both are reported;
2. a 30-second video (frames + soundtrack, the ``video`` encoder) posted to a server
   whose run was trained on ``video`` vectors (a small synthetic catalog of clips),
   first and second item (target: <= 15 s);
3. ``kill -9`` of the server while a client posts items: after a restart on the same
   state file every acknowledged item must be there with the same vector (the
   ``vector_sha256`` of its reply), and nothing may be encoded again.

The runs are trained here (a minute or two) unless they exist in ``--workdir``.

    export MODREC_DATA_DIR=/work/shared/data
    python benchmarks/live_items.py [--workdir runs/live-bench] [--items 200]
"""

from __future__ import annotations

from modrec import threads as _threads  # noqa: F401  first: its OpenMP policy, before torch

# isort: split

import argparse
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import serve_load
from kit import ROOT, machine, markdown_table, write_section

COMMAND = "python benchmarks/live_items.py"
KEY = "live-bench-key"
SMALL = ["train.epochs=1", "model.max_len=30", "model.num_blocks=1"]


# ---- runs ------------------------------------------------------------------------------
def text_run(workdir: Path) -> Path:
    """ml-100k, SASRec with a content tower over MiniLM titles and genre tags."""
    from modrec.config import build_config
    from modrec.content import EmbeddingStore, embed
    from modrec.data import load_dataset
    from modrec.train import train

    out = workdir / "text-run"
    if (out / "model.pt").exists():
        return out
    dataset = load_dataset("ml-100k")
    embed(dataset, ["text", "tags:genres"], EmbeddingStore.for_dataset(dataset), progress=False)
    config = build_config("ml-100k", "sasrec", overrides=[
        *SMALL, "model.item_tower=content", 'model.encoders=["text","tags:genres"]'])
    return train(config, out, progress=False)


def make_video(path: Path, seconds: float, hue: int) -> Path:
    """A test-pattern video with a tone as its soundtrack (H.264 + AAC, 320x240)."""
    subprocess.run(
        ["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
         f"testsrc2=duration={seconds}:size=320x240:rate=25,hue=h={hue}", "-f", "lavfi",
         "-i", f"sine=frequency={220 + hue}:duration={seconds}", "-shortest", "-c:v",
         "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", "-movflags", "faststart",
         str(path)], check=True)
    return path


def video_run(workdir: Path) -> Path:
    """A synthetic catalog of 12 two-second clips, a content tower on ``video``."""
    from modrec.config import build_config
    from modrec.content import EmbeddingStore, embed
    from modrec.data import load_dataset
    from modrec.data.dataset import build_dataset
    from modrec.train import train

    out = workdir / "video-run"
    if (out / "model.pt").exists():
        return out
    folder = workdir / "clips"
    (folder / "videos").mkdir(parents=True, exist_ok=True)
    items = pd.DataFrame({"item_id": [f"c{i}" for i in range(12)],
                          "title": [f"clip {i}" for i in range(12)],
                          "video": [f"videos/c{i}.mp4" for i in range(12)]})
    for i in range(12):
        make_video(folder / "videos" / f"c{i}.mp4", 2, 30 * i)
    rng = np.random.default_rng(0)
    users = np.repeat([f"u{u}" for u in range(60)], 6)
    picks = np.concatenate([rng.choice(12, 6, replace=False) for _ in range(60)])
    # The source folder is where its media paths are read (`catalog_folder`).
    dataset = build_dataset("live-clips", users, items["item_id"].to_numpy()[picks],
                            timestamps=np.tile(np.arange(6), 60), item_table=items,
                            provenance={"source": str(folder)})
    dataset.save(folder / "dataset")
    dataset = load_dataset(str(folder / "dataset"))
    embed(dataset, ["video"], EmbeddingStore.for_dataset(dataset), progress=False)
    config = build_config(str(folder / "dataset"), "sasrec", overrides=[
        *SMALL, "model.item_tower=content", 'model.encoders=["video"]'])
    return train(config, out, progress=False)


# ---- the server ------------------------------------------------------------------------
def request(port: int, method: str, path: str, body: Any = None,
            timeout: float = 120.0) -> tuple[int, Any]:
    """`serve_load.request` with this benchmark's API key."""
    return serve_load.request(port, method, path, body, timeout, key=KEY)


def serve(run: Path, workdir: Path, state: Path, *extra: str) -> serve_load.Server:
    """``python -m modrec serve RUN`` with this checkout's src, an API key, a media folder
    and a state file, logging to ``workdir/server.log``; `start` it."""
    key = workdir / "api-key"
    key.write_text(KEY)
    return serve_load.Server(
        run, state, launcher=[sys.executable, "-m", "modrec"],
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")}, log_file=workdir / "server.log",
        extra=["--api-key-file", str(key), "--media-dir", str(workdir / "media"), *extra])


def post(port: int, items: list[dict[str, Any]]) -> tuple[float, dict[str, Any]]:
    started = time.perf_counter()
    status, body = request(port, "POST", "/v1/items", {"items": items})
    if status != 200:
        raise RuntimeError(f"POST /v1/items answered {status}: {body}")
    return time.perf_counter() - started, body


def recommendable(port: int, item: dict[str, Any]) -> float:
    """POST one item, then ask for its neighbours: seconds until both answered."""
    started = time.perf_counter()
    post(port, [item])
    status, body = request(port, "GET", f"/v1/items/{item['item_id']}/similar?k=5")
    if status != 200 or not body["items"]:
        raise RuntimeError(f"the new item {item['item_id']} is not recommendable: {body}")
    return time.perf_counter() - started


# ---- 1. text items under load ----------------------------------------------------------
WRK_LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  return wrk.format(nil, "/v1/recommend", nil,
    '{"user_id": "' .. math.random(1, 943) .. '", "k": 10}')
end
done = function(summary, latency, requests)
  io.write(string.format("WRK_JSON {\\"requests\\": %d, \\"seconds\\": %.2f, "
    .. "\\"p50_ms\\": %.2f, \\"p99_ms\\": %.2f, \\"errors\\": %d}\\n", summary.requests,
    summary.duration / 1e6, latency:percentile(50) / 1e3, latency:percentile(99) / 1e3,
    summary.errors.status + summary.errors.timeout + summary.errors.read))
end
"""


def titles(count: int, offset: int = 0) -> list[dict[str, Any]]:
    words = ["Night", "River", "Garden", "Storm", "Silver", "Echo", "Harbor", "Winter"]
    return [{"item_id": f"live-{offset + i}", "title": f"The {words[i % 8]} of "
             f"{words[(i // 8) % 8]} {offset + i}", "genres": "Drama|Comedy"}
            for i in range(count)]


def text_items(run: Path, workdir: Path, count: int) -> dict[str, Any]:
    lazy = serve(run, workdir, workdir / "text-state.db", "--no-seed")
    ready_lazy = lazy.start()
    try:
        first = recommendable(lazy.port, titles(1, 10_000)[0])
        second = recommendable(lazy.port, titles(1, 10_001)[0])
        script = workdir / "recommend.lua"
        script.write_text(WRK_LUA)
        wrk = subprocess.Popen(["wrk", "-t1", "-c4", "-d600s", "--latency", "-s", str(script),
                                f"http://127.0.0.1:{lazy.port}"], stdout=subprocess.PIPE,
                               text=True, start_new_session=True)
        time.sleep(2)  # wrk's connections are busy before the first item
        seconds = [recommendable(lazy.port, item) for item in titles(count)]
        wrk.send_signal(signal.SIGINT)  # wrk prints its summary on SIGINT
        out, _ = wrk.communicate(timeout=30)
        found = re.search(r"WRK_JSON (\{.*\})", out)
        load = json.loads(found.group(1)) if found else {"raw": out[-500:]}
    finally:
        lazy.stop()
    eager = serve(run, workdir, workdir / "text-state-eager.db", "--no-seed",
                   "--load-encoders")
    ready_eager = eager.start()
    try:
        first_eager = recommendable(eager.port, titles(1, 20_000)[0])
    finally:
        eager.stop()
    return {"seconds": seconds, "load": load, "ready_lazy": ready_lazy, "first": first,
            "second": second, "ready_eager": ready_eager, "first_eager": first_eager}


# ---- 2. a 30-second video --------------------------------------------------------------
def video_items(run: Path, workdir: Path) -> dict[str, Any]:
    for i in (1, 2):
        make_video(workdir / "media" / f"long{i}.mp4", 30, 90 * i)
    server = serve(run, workdir, workdir / "video-state.db", "--no-seed")
    server.start()
    try:
        times = [recommendable(server.port, {"item_id": f"long{i}", "title": f"long {i}",
                                             "video": f"long{i}.mp4"}) for i in (1, 2)]
    finally:
        server.stop()
    return {"first": times[0], "second": times[1]}


# ---- 3. kill -9 during ingestion -------------------------------------------------------
def client(port: int, first: int, stop: threading.Event, sent: list[str],
           acknowledged: dict[str, str]) -> None:
    """Post batches of 4 text items until ``stop`` or the server dies; each reply's
    items go into ``acknowledged`` (item id -> vector digest)."""
    i = 0
    while not stop.is_set():
        batch = titles(4, first + 4 * i)
        i += 1
        sent.extend(item["item_id"] for item in batch)
        try:
            _, body = post(port, batch)
        except (OSError, RuntimeError, http.client.HTTPException):
            return  # the server died under the request: not acknowledged
        for row in body["items"]:
            [where] = row["models"].values()  # the one model served
            acknowledged[row["item_id"]] = where["vector_sha256"]


def kill_rounds(run: Path, workdir: Path, rounds: int) -> list[dict[str, Any]]:
    state = workdir / "kill-state.db"
    acknowledged: dict[str, str] = {}  # item id -> vector digest of its reply
    results = []
    rng = np.random.default_rng(1)
    for number in range(rounds):
        server = serve(run, workdir, state, "--no-seed", "--load-encoders")
        server.start()
        stop = threading.Event()
        sent: list[str] = []

        before = len(acknowledged)
        thread = threading.Thread(target=client, args=(
            server.port, 100_000 * (number + 1), stop, sent, acknowledged))
        thread.start()
        time.sleep(float(rng.uniform(2, 5)))
        server.kill9()
        stop.set()
        thread.join()
        again = serve(run, workdir, state, "--no-seed")
        again.start()
        try:
            lost = changed = 0
            for item_id, digest in acknowledged.items():
                status, body = request(again.port, "GET", f"/v1/items/{item_id}")
                lost += status != 200
                changed += status == 200 and body["vector_sha256"] != digest
            assert again.log is not None  # set by start()
            log = again.log.read_text()
            encoded = len(re.findall(r"encoding them again", log))
        finally:
            again.stop()
        results.append({"round": number + 1, "sent": len(sent),
                        "acknowledged": len(acknowledged) - before,
                        "checked": len(acknowledged), "lost": lost, "changed": changed,
                        "encoded_again": encoded})
    return results


# ---- the report ------------------------------------------------------------------------
def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def report(text: dict[str, Any], video: dict[str, Any], kills: list[dict[str, Any]],
           args: argparse.Namespace) -> str:
    seconds = text["seconds"]
    load = text["load"]
    rows = [
        ["text item: POST to recommendable, p50", f"{percentile(seconds, 50):.3f} s",
         f"{len(seconds)} items, wrk at 4 connections"],
        ["text item: p99", f"{percentile(seconds, 99):.3f} s", "target <= 1 s"],
        ["text item: max", f"{max(seconds):.3f} s", ""],
        ["recommend under that load: p50 / p99",
         f"{load.get('p50_ms', float('nan')):.1f} / {load.get('p99_ms', float('nan')):.1f} ms",
         f"{load.get('requests', 0)} requests in {load.get('seconds', 0):.0f} s, "
         f"{load.get('errors', '?')} errors"],
        ["first text item, encoders loaded lazily", f"{text['first']:.2f} s",
         f"second item {text['second']:.3f} s; start-up to /readyz {text['ready_lazy']:.1f} s"],
        ["first text item, --load-encoders", f"{text['first_eager']:.3f} s",
         f"start-up to /readyz {text['ready_eager']:.1f} s"],
        ["30-s video item (frames + soundtrack), first", f"{video['first']:.2f} s",
         "includes loading the image encoder; target <= 15 s"],
        ["30-s video item, second", f"{video['second']:.2f} s", "target <= 15 s"],
    ]
    kill_rows = [[r["round"], r["sent"], r["acknowledged"], r["sent"] - r["acknowledged"],
                  r["checked"], r["lost"], r["changed"], r["encoded_again"]] for r in kills]
    return "\n\n".join([
        "## Items added to the running service (`benchmarks/live_items.py`)",
        f"`{COMMAND} --items {args.items} --kills {args.kills}` on {machine()}; "
        f"load average when it ended: {load_average()} (the machine is shared with other "
        "developers' jobs, and wrk, the server and the client share its 2 cores). "
        "Runs: 1-epoch SASRec, content tower (ml-100k: MiniLM titles + genre tags; the "
        "video run: 12 synthetic clips, `video` = frames + log-mel soundtrack). "
        "Recommendable = the POST's reply (the item is stored and indexed) plus a "
        "`GET /v1/items/ID/similar` answered from its vector.",
        markdown_table(["measure", "value", "notes"], rows),
        "`kill -9` while a client posts batches of 4 text items (after 2-5 s), then a "
        "restart on the same state: every item acknowledged so far, in any round, must be "
        "there with the vector digest its reply gave, and none encoded again; items sent "
        "but not acknowledged were in the request the kill cut short.",
        markdown_table(["round", "items sent", "acknowledged", "in flight at the kill",
                        "checked after restart", "lost", "vector changed",
                        "encoded again at restart"], kill_rows),
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default=str(ROOT / "runs" / "live-bench"))
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--doc", default=str(ROOT / "docs" / "benchmarks.md"))
    args = parser.parse_args()
    workdir = Path(args.workdir).resolve()
    (workdir / "media").mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MODREC_EMBEDDINGS_DIR", str(workdir / "embeddings"))
    for stale in workdir.glob("*state*.db*"):  # each measurement starts from a new state
        stale.unlink()
    text = text_items(text_run(workdir), workdir, args.items)
    print(json.dumps({k: v for k, v in text.items() if k != "seconds"}), flush=True)
    video = video_items(video_run(workdir), workdir)
    print(json.dumps(video), flush=True)
    kills = kill_rounds(text_run(workdir), workdir, args.kills)
    print(json.dumps(kills), flush=True)
    body = report(text, video, kills, args)
    print(body)
    write_section(Path(args.doc), "live-items", body)


if __name__ == "__main__":
    main()
