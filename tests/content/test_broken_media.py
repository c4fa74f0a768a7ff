"""Broken media never stop an extraction: a truncated mp4, a text file named .jpg and a
zero-byte wav each get a failure flag and a log line naming the item and the file,
the good files beside them are encoded, and the job finishes (issue 30, promise 3)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile
from PIL import Image

from modrec.cli import main
from modrec.content import EmbeddingStore


def _catalog(folder: Path, silent_video: Path) -> Path:
    """A RecBole catalog of two items with relative media paths: i1's files are good,
    i2's are broken."""
    media = folder / "media"
    media.mkdir(parents=True)
    pixels = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(media / "good.jpg")
    (media / "broken.jpg").write_text("this is a text file, not a JPEG\n")
    seconds = np.arange(16_000) / 16_000
    soundfile.write(media / "good.wav", 0.3 * np.sin(2 * np.pi * 440 * seconds), 16_000)
    (media / "empty.wav").write_bytes(b"")
    data = silent_video.read_bytes()
    (media / "good.mp4").write_bytes(data)
    (media / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (folder / "shop.inter").write_text(
        "user_id:token\titem_id:token\n" + "".join(f"u{u}\ti{i}\n" for u in range(3)
                                                   for i in (1, 2)))
    (folder / "shop.item").write_text(
        "item_id:token\ttitle:token_seq\timage:token\tvideo:token\taudio:token\n"
        "i1\tgood\tmedia/good.jpg\tmedia/good.mp4\tmedia/good.wav\n"
        "i2\tbroken\tmedia/broken.jpg\tmedia/truncated.mp4\tmedia/empty.wav\n")
    return folder / "shop.inter"


def test_broken_files_are_flagged_logged_and_the_job_finishes(
        tmp_path: Path, silent_video: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]) -> None:
    catalog = _catalog(tmp_path / "catalog", silent_video)
    elsewhere = tmp_path / "elsewhere"  # relative media paths start from the catalog
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    store = tmp_path / "store"
    with caplog.at_level(logging.WARNING, logger="modrec.content.embed_job"):
        code = main(["embed", "-d", str(catalog), "--encoder", "image,audio,video",
                     "--store", str(store), "--no-progress", "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    outcome = {e["encoder"]: (e["encoded"], e["failures"], e["failed_items"])
               for e in report["encoders"]}
    assert outcome == {name: (1, 1, ["i2"]) for name in ("image", "audio", "video")}
    lines = [r.getMessage() for r in caplog.records]
    for broken in ("broken.jpg", "empty.wav", "truncated.mp4"):
        [line] = [m for m in lines if broken in m]
        assert "item i2" in line and "not encoded" in line, line
    opened = EmbeddingStore(store, ["i1", "i2"])
    summary = opened.validate()
    for name in ("image", "audio", "video"):
        assert summary[name] == {"rows": 2, "done": 2, "failed": 1, "pending": 0}
        assert opened.failed(name).tolist() == [False, False, True]
        assert not np.any(opened.matrix(name)[2]) and np.any(opened.matrix(name)[1])
    # Rerunning encodes nothing: failures are remembered, not retried forever.
    assert main(["embed", "-d", str(catalog), "--encoder", "audio", "--store", str(store),
                 "--no-progress", "--json"]) == 0
    [again] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["encoders"]
    assert (again["encoded"], again["already_stored"]) == (0, 2)
