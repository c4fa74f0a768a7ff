"""Defects a hostile or careless user could trigger: code in a weights file, a dataset
path that names the cache itself, lists padded with seen items, an empty store."""

from __future__ import annotations

import json
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
from support import craft_weights


@pytest.fixture(scope="module")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = build_config("ml-100k", "sasrec", overrides=[
        "train.epochs=1", "model.max_len=20", "model.num_blocks=1"])
    return train(config, tmp_path_factory.mktemp("run") / "run", progress=False)


def test_a_crafted_checkpoint_is_refused_not_run(small_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(small_run, run)
    marker = tmp_path / "pwned"
    craft_weights(run / "checkpoint.pt", marker)
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
    craft_weights(run / "model.pt", marker)
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


PACKAGE = Path(__file__).resolve().parents[1] / "src" / "modrec"


# The one unpickler in the package: numpy_pickle.NumpyUnpickler resolves only numpy's
# array constructors (I3D's published weights are a numpy pickle); the tests of
# tests/content/test_i3d.py show that a crafted pickle naming anything else is refused.
RESTRICTED_UNPICKLER = "numpy_pickle.py"


def test_nothing_in_the_package_loads_code_from_a_file() -> None:
    """Every ``torch.load`` passes ``weights_only=True``; no pickle, marshal or shelve
    loader (but the one restricted to numpy arrays), no ``allow_pickle=True``, YAML only
    through ``safe_load``."""
    import re

    calls, offenders, restricted = 0, [], []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text()
        where = path.relative_to(PACKAGE)
        if path.name == RESTRICTED_UNPICKLER:
            restricted.append(where)
            assert "def find_class" in text  # what makes it restricted
            text = re.sub(r"\bUnpickler\b", "", text)
        for match in re.finditer(r"torch\.load\(", text):
            calls += 1
            call = text[match.start():text.find(")", match.end()) + 1]
            if "weights_only=True" not in call:
                offenders.append(f"{where}: {call}")
        for pattern in (r"pickle\.loads?\(", r"\bUnpickler\b", r"marshal\.loads?\(",
                        r"\bshelve\b", r"allow_pickle\s*=\s*True", r"yaml\.load\(",
                        r"yaml\.(unsafe|full)_load", r"Loader\s*=", r"read_pickle\(",
                        r"(?<![.\w])eval\(", r"(?<![.\w])exec\("):  # not model.eval()
            offenders += [f"{where}: {m.group(0)}" for m in re.finditer(pattern, text)]
    assert calls >= 1  # the grep sees the one loader (runs.load_tensors)
    assert len(restricted) == 1, restricted
    assert not offenders, offenders


def _sound(path: Path) -> None:
    import soundfile

    seconds = np.arange(8_000) / 16_000
    soundfile.write(path, 0.3 * np.sin(2 * np.pi * 220 * seconds), 16_000)


def test_media_paths_stay_inside_the_catalog_folder_unless_allowed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    """A catalog names its media relative to its own folder; ``../``, an absolute path
    elsewhere and a symbolic link out are refused (flagged, never opened) unless
    ``--allow-outside-paths`` is given."""
    import logging

    catalog, secret = tmp_path / "catalog", tmp_path / "private"
    (catalog / "sounds").mkdir(parents=True)
    secret.mkdir()
    _sound(catalog / "sounds" / "inside.wav")
    _sound(secret / "outside.wav")
    (catalog / "sounds" / "link.wav").symlink_to(secret / "outside.wav")
    (catalog / "tracks.inter").write_text(
        "user_id:token\titem_id:token\n" + "".join(f"u1\t{i}\n" for i in "abcd"))
    (catalog / "tracks.item").write_text(
        "item_id:token\taudio:token\n"
        "a\tsounds/inside.wav\n"
        "b\t../private/outside.wav\n"
        f"c\t{secret / 'outside.wav'}\n"
        "d\tsounds/link.wav\n")
    monkeypatch.chdir(tmp_path)  # relative paths start from the catalog, not from here
    args = ["embed", "-d", "catalog/tracks.inter", "--encoder", "audio", "--no-progress",
            "--json"]
    with caplog.at_level(logging.WARNING, logger="modrec.content.embed_job"):
        assert main([*args, "--store", str(tmp_path / "confined")]) == 0
    [report] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["encoders"]
    assert (report["encoded"], report["failures"]) == (1, 3)
    assert sorted(report["failed_items"]) == ["b", "c", "d"]
    refusals = [r.getMessage() for r in caplog.records if "outside the catalog" in r.getMessage()]
    assert len(refusals) == 3 and all("--allow-outside-paths" in m for m in refusals)
    assert main([*args, "--store", str(tmp_path / "open"), "--allow-outside-paths"]) == 0
    [report] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["encoders"]
    assert (report["encoded"], report["failures"]) == (4, 0)
