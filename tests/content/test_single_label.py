"""Single-label classification from stored vectors (`modrec classify --single-label`,
``--apply``): grouped cross-validation, the saved head, its predictions as an item
column that the content encoders read, end to end on generated clips through I3D."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from modrec.cli import main
from modrec.content.columns import ItemColumns, with_item_columns
from modrec.content.encoders.registry import build_encoder
from modrec.content.single_label import apply_saved_head, evaluate_and_train
from modrec.content.store import EmbeddingStore
from modrec.content.video.saved_head import SavedHead
from modrec.data import Dataset, load_dataset
from modrec.data.dataset import build_dataset
from modrec.errors import ModrecError, UsageError

CLASSES = ("calm", "fight", "run")
DIM, STEPS = 8, 3


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def clips(tmp: Path, name: str, count: int, seed: int, version: str = "seq-v1",
          broken: str | None = None) -> tuple[Dataset, EmbeddingStore, np.ndarray]:
    """``count`` clips of three classes from ``count // 5`` source videos (a group is
    one class), their step sequences stored as a sequence encoder's (``seq``): each
    class a direction in the steps' mean, under noise. ``broken``: that clip failed
    to encode (the importer's ``problem`` names why)."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(7).normal(0, 1, (len(CLASSES), DIM))
    group = np.arange(count) // 5
    y = group % len(CLASSES)
    ids = [f"{name}{k:03d}" for k in range(count)]
    table = pd.DataFrame({"item_id": ids, "video": [f"{i}.mp4" for i in ids],
                          "label": [CLASSES[k] for k in y],
                          "group": [f"source{g}" for g in group], "problem": None})
    if broken is not None:
        table.loc[table["item_id"] == broken, "problem"] = "FFmpeg cannot read it: damaged"
    none = np.array([], dtype=object)
    dataset = build_dataset(name, none, none, item_table=table,
                            provenance={"source": str(tmp)})
    store = EmbeddingStore(tmp / f"{name}-store", ids)
    store.prepare("seq", DIM, version, "video", steps=STEPS)
    steps = (centres[y][:, None, :] + rng.normal(0, 0.8, (count, STEPS, DIM)))
    rows = dataset.items.set_index("item_id").loc[ids, "item"].to_numpy()
    store.write_rows("seq", rows, steps.mean(1))
    store.write_steps("seq", rows, steps, np.full(count, STEPS))
    failed = np.array([i == broken for i in ids])
    store.mark("seq", rows, failed)
    return dataset, store, y


def test_cross_validation_save_and_apply_agree(tmp_path: Path) -> None:
    dataset, store, _ = clips(tmp_path, "train", 60, seed=0, broken="train007")
    png, saved = tmp_path / "confusion.png", tmp_path / "head.safetensors"
    result = evaluate_and_train(dataset, "label", ["seq"], store, "mean", groups="group",
                                folds=3, save=saved, confusion=png)
    assert result["features"] == "steps" and result["items"] == 59
    assert result["missing"] == {"train007": "FFmpeg cannot read it: damaged"}
    assert result["groups"] == 12 and result["classes"] == {"calm": 20, "fight": 19,
                                                            "run": 20}
    assert result["accuracy"] >= 0.9 and len(result["fold_accuracy"]) == 3
    assert set(result["per_class_f1"]) == set(CLASSES)
    assert np.asarray(result["confusion"]).sum() == 59
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    head = SavedHead.load(saved)
    assert head.classes == list(CLASSES) and head.meta["encoders"] == [
        {"name": "seq", "version": "seq-v1"}]
    new, new_store, new_y = clips(tmp_path, "new", 30, seed=1)
    applied = apply_saved_head(new, new_store, head, labels="label")
    assert applied["items"] == 30 and applied["accuracy"] >= 0.9
    # The same clips' vectors give the same probabilities in another catalog's order.
    again = apply_saved_head(new, new_store, SavedHead.load(saved))
    np.testing.assert_array_equal(again["scores"], applied["scores"])

    other, other_store, _ = clips(tmp_path, "other", 10, seed=2, version="seq-v2")
    with pytest.raises(UsageError, match="trained on seq version 'seq-v1'.*holds 'seq-v2'"):
        apply_saved_head(other, other_store, head)


def test_saved_heads_are_checked_before_use(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    with pytest.raises(ModrecError, match="no saved head at"):
        SavedHead.load(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}junk")
    with pytest.raises(UsageError, match="is not a readable head"):
        SavedHead.load(tmp_path / "junk.safetensors")
    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(UsageError, match="not a modrec class head"):
        SavedHead.load(tmp_path / "other.safetensors")


def test_labels_that_cannot_train_a_single_label_head_are_named(tmp_path: Path) -> None:
    dataset, store, _ = clips(tmp_path, "c", 20, seed=0)
    multi = dataset.items.copy()
    multi.loc[0, "label"] = "fight|run"
    with pytest.raises(UsageError, match="has several labels in 'label'.*without --single"):
        evaluate_and_train(Dataset("c", dataset.interactions, multi, dataset.users,
                                   dataset.provenance), "label", ["seq"], store)
    with pytest.raises(UsageError, match="4 groups cannot make 5 folds; pass --folds 4"):
        evaluate_and_train(dataset, "label", ["seq"], store, groups="group", folds=5)
    with pytest.raises(UsageError, match="no item column 'genre'"):
        evaluate_and_train(dataset, "genre", ["seq"], store)


@pytest.mark.parametrize(("args", "message"), [
    (["--labels", "genres", "--groups", "g"], "--groups go with --single-label or --apply"),
    (["--labels", "genres", "--head", "tcn"], "--head tcn is a single-label head"),
    (["--single-label", "--labels", "l", "--encoder", "e", "--column", "c"],
     "--column keeps a saved head's predictions: train with --save PATH"),
    (["--apply", "head.safetensors", "--encoder", "e"], "--apply uses a saved head"),
    (["--single-label", "--mode", "knn"], "leave out --mode"),
])
def test_option_misuse_is_one_message_before_any_work(
        args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["classify", "-d", "no-such-catalog", *args]) == 2
    assert message in capsys.readouterr().err


# ---- the user workflow through the CLI, on generated clips through real I3D ----
SPEC = "video:i3d:frames=9:stride=1:clips=1"  # the fewest frames I3D takes: fast


@pytest.mark.slow
def test_folder_to_column_through_the_cli(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """import (video-folder) -> embed (I3D) -> classify (CV, save) -> apply -> an item
    column that `modrec embed --encoder tags:COLUMN` turns into content vectors."""
    root, store = tmp_path / "clips", tmp_path / "store"
    for k in range(4):  # bright clips and dark ones, a source video each per pair
        for label, colour in (("bright", 255), ("dark", 0)):
            _clip(root / label / f"clip {k}.mp4", colour, k)
    (root / "dark" / "broken.mp4").write_bytes(b"not a video")
    (root / "groups.csv").write_text("")  # a stray non-video file is ignored

    def run(*args: str) -> dict:
        assert main([*args, "--json"]) == 0
        return json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    [embedded] = run("embed", "-d", str(root), "--encoder", SPEC, "--store", str(store),
                     "--no-progress")["encoders"]
    assert (embedded["encoded"], embedded["failed_items"]) == (8, ["dark/broken.mp4"])
    head, png = tmp_path / "head.safetensors", tmp_path / "confusion.png"
    name = "video-i3d-frames-9-stride-1-clips-1"
    result = run("classify", "-d", str(root), "--labels", "label", "--single-label",
                 "--encoder", name, "--folds", "2", "--store", str(store), "--save",
                 str(head), "--confusion", str(png))
    assert result["items"] == 8 and result["features"] == "steps"
    assert result["missing"]["dark/broken.mp4"].startswith("FFmpeg cannot read it")
    assert head.exists() and png.exists()

    applied = run("classify", "-d", str(root), "--apply", str(head), "--column", "shade",
                  "--labels", "label", "--store", str(store))
    assert applied["items"] == 8 and applied["accuracy_items"] == 8
    assert applied["item_column"]["missing"] == 1

    dataset = load_dataset(root)
    with_columns = with_item_columns(dataset, ItemColumns.for_dataset(dataset, store))
    shades = with_columns.items.set_index("item_id")["shade"]
    assert shades.drop("dark/broken.mp4").isin(["bright", "dark"]).all()
    assert shades["dark/broken.mp4"] is None
    assert build_encoder("tags:shade", with_columns).dim == len(set(shades.dropna()))
    [tags] = run("embed", "-d", str(root), "--encoder", "tags:shade", "--store", str(store),
                 "--no-progress")["encoders"]
    assert tags["encoded"] == 8 and tags["failures"] == 1  # the broken clip has no class


def _clip(path: Path, colour: int, seed: int) -> None:
    """Ten frames of ``colour`` with a moving square of noise."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(10):
            pixels = np.full((48, 64, 3), colour, np.uint8)
            pixels[10:26, 4 * i:4 * i + 16] = rng.integers(0, 255, (16, 16, 3))
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
