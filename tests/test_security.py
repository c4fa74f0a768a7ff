"""Defects a hostile or careless user could trigger: code in a weights file, a dataset
path that names the cache itself, lists padded with seen items, an empty store."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from modrec.cli import main
from modrec.config import build_config
from modrec.content import EmbeddingStore
from modrec.content.search import TextSearch
from modrec.data import load_dataset
from modrec.runs import RunError, load_run
from modrec.train import train


class _RunsCode:
    """Unpickling this runs ``touch MARKER``: what a crafted .pt file can do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


def _craft(path: Path, marker: Path) -> None:
    with path.open("wb") as f:
        pickle.dump({"model": _RunsCode(marker)}, f)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = build_config("ml-100k", "sasrec", overrides=[
        "train.epochs=1", "model.max_len=20", "model.num_blocks=1"])
    return train(config, tmp_path_factory.mktemp("run") / "run", progress=False)


def test_a_crafted_checkpoint_is_refused_not_run(small_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(small_run, run)
    marker = tmp_path / "pwned"
    _craft(run / "checkpoint.pt", marker)
    config = build_config("ml-100k", "sasrec", overrides=[
        "train.epochs=2", "model.max_len=20", "model.num_blocks=1"])
    with pytest.raises(RunError, match="checkpoint.pt is not a weights file"):
        train(config, run, resume=True, progress=False)
    assert not marker.exists()


def test_a_crafted_model_file_is_refused_with_a_clear_error(
        small_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    shutil.copytree(small_run, run)
    marker = tmp_path / "pwned"
    _craft(run / "model.pt", marker)
    with pytest.raises(RunError, match="model.pt is not a weights file"):
        load_run(run)
    assert main(["recommend", str(run), "--user", "196"]) == 2
    assert "model.pt is not a weights file" in capsys.readouterr().err
    assert not marker.exists()


def test_dataset_path_dot_never_touches_the_cache_folder(
        tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``-d .`` once named the cache directory itself, which saving replaced."""
    cache = tmp_path / "cache"
    keep = cache / "other-dataset" / "keep.txt"
    keep.parent.mkdir(parents=True)
    keep.write_text("still here")
    (cache.parent / "sibling.txt").write_text("and this")
    monkeypatch.setenv("MODREC_CACHE_DIR", str(cache))
    folder = tmp_path / "recbole"
    folder.mkdir()
    for name in ("ml-100k.inter", "ml-100k.item"):
        shutil.copy(data_dir / "ml-100k" / name, folder / name)
    monkeypatch.chdir(folder)
    for path in (".", "./", str(folder)):
        assert load_dataset(path).num_items == 1682
    monkeypatch.chdir(cache)
    with pytest.raises(ValueError):
        load_dataset("..")  # a folder with no data in it: an error, not a deletion
    assert keep.read_text() == "still here"
    assert (cache.parent / "sibling.txt").read_text() == "and this"
    assert len([p for p in cache.iterdir() if p.name.startswith("recbole-")]) == 1


def test_recommend_with_k_above_the_unseen_items_returns_only_unseen(
        small_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = load_run(small_run)
    user = run.dataset.user_index("196")
    seen = {run.dataset.items["item_id"].iloc[i - 1] for i in run.dataset.sequences()[user]}
    assert main(["recommend", str(small_run), "--user", "196", "-k", "100000", "--json"]) == 0
    out = capsys.readouterr().out.strip().splitlines()[-1]
    recs = json.loads(out, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    ids = [r["item_id"] for r in recs["items"]]
    assert len(ids) == len(set(ids)) == run.dataset.num_items - len(seen)
    assert not seen & set(ids)
    assert all(np.isfinite(r["score"]) for r in recs["items"])
    assert main(["recommend", str(small_run), "--user", "196", "-k", "0"]) == 2
    assert "k must be at least 1" in capsys.readouterr().err


def test_search_over_a_store_with_no_vectors_is_an_error(ml100k, tmp_path: Path) -> None:
    store = EmbeddingStore.for_dataset(ml100k, tmp_path / "store")
    store.prepare("text", 384, "sentence-transformers:x", "text")  # as a failed job leaves it
    rows = np.arange(1, ml100k.num_items + 1)
    store.write("text", rows, np.zeros((len(rows), 384), np.float32),
                failed=np.ones(len(rows), bool))
    with pytest.raises(ValueError, match="no item has a usable 'text' vector"):
        TextSearch(ml100k, store)
