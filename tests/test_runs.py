"""The run directory stands alone: it loads, recommends and evaluates with no data
directory, and folders written by earlier versions keep loading."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from modrec.cli import main
from modrec.config import build_config, config_changes, load_config
from modrec.runs import RunDir, load_run
from modrec.train import train

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def hstu_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """HSTU on ml-100k: timestamps, a time bias, titles; two epochs."""
    config = build_config("ml-100k", "hstu", overrides=[
        "train.epochs=2", "model.max_len=30", "model.num_blocks=1"])
    return train(config, tmp_path_factory.mktemp("runs") / "hstu", progress=False)


def test_a_copied_run_needs_no_data_directory(hstu_run: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    moved = tmp_path / "elsewhere" / "run"
    shutil.copytree(hstu_run, moved)
    monkeypatch.setenv("MODREC_DATA_DIR", str(tmp_path / "no-data"))
    monkeypatch.setenv("MODREC_CACHE_DIR", str(tmp_path / "no-cache"))
    run = load_run(moved)
    assert run.dataset.num_items == 1682 and run.dataset.has_timestamps
    assert run.known.shape == (1683,) and run.known[1:].mean() > 0.9
    results = json.loads((hstu_run / "results.json").read_text())
    assert run.evaluate(run.split.test)["ndcg@10"] == pytest.approx(results["ndcg@10"])
    assert main(["recommend", str(moved), "--user", "196", "-k", "5", "--json"]) == 0
    recs = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(recs["items"]) == 5 and all(r["title"] for r in recs["items"])
    assert not (tmp_path / "no-data").exists() and not (tmp_path / "no-cache").exists()


def test_run_folder_layout(hstu_run: Path) -> None:
    run = RunDir(hstu_run)
    extras = run.config_extras()
    assert extras["run_format"] == 2 and len(extras["dataset_info"]["fingerprint"]) == 16
    saved = json.loads(run.config_file.read_text())["model"]
    assert saved["name"] == "hstu" and saved["num_blocks"] == 1 and "options" not in saved
    assert (run.dataset_folder / "items.parquet").exists() and run.known_file.exists()
    assert [r["epoch"] for r in run.metrics()] == [1, 2]


def _as_format_1(folder: Path) -> None:
    """Rewrite a run folder as modrec wrote it before 2026-12-03: every model's options
    in one flat model section, no snapshot."""
    raw = json.loads((folder / "config.json").read_text())
    raw.pop("run_format")
    model = raw["model"]
    model.update({"num_layers": 1, "hidden_dim": None, "mask_rate": 0.2,
                  "sasrec_block": "pre-ln", "bert4rec_block": "pre-ln"})
    if model["name"] == "sasrec":
        model["sasrec_block"] = model.pop("block")
    (folder / "config.json").write_text(json.dumps(raw))
    shutil.rmtree(folder / "dataset")
    (folder / "known.npy").unlink()


def test_a_folder_from_before_snapshots_loads_and_gains_one(hstu_run: Path,
                                                           tmp_path: Path) -> None:
    old = tmp_path / "old"
    shutil.copytree(hstu_run, old)
    _as_format_1(old)
    run = load_run(old)
    assert run.config.model.options.num_blocks == 1
    assert not config_changes(run.config, load_config(hstu_run / "config.json"))
    results = json.loads((hstu_run / "results.json").read_text())
    assert run.evaluate(run.split.test)["ndcg@10"] == pytest.approx(results["ndcg@10"])
    assert (old / "dataset" / "manifest.json").exists()  # migrated on load
    assert np.array_equal(np.load(old / "known.npy"), run.known)


@pytest.mark.parametrize("record", sorted((REPO / "benchmarks" / "records").glob("*")),
                         ids=lambda p: p.name)
def test_benchmark_records_still_match_their_presets(record: Path) -> None:
    """The six ML-1M records (format 1) read as the presets that made them, so the
    bench table keeps reporting them instead of retraining."""
    preset = record.name.removeprefix("ml-1m-")
    saved = load_config(record / "config.json")
    assert not config_changes(saved, build_config("ml-1m", preset))


def test_train_never_changes_the_config_it_is_given(tmp_path: Path, ml100k) -> None:
    """Even where training fills in a derived setting (a content tower's input width)."""
    from modrec.content import EmbeddingStore, embed

    embed(ml100k, ["tags:genres"], EmbeddingStore.for_dataset(ml100k), progress=False)
    config = build_config("ml-100k", "sasrec", overrides=[
        "train.epochs=1", "model.max_len=20", "model.item_tower=id+content",
        'model.encoders=["tags:genres"]'])
    before = json.dumps(config.to_dict())
    run = train(config, tmp_path / "run", progress=False)
    assert json.dumps(config.to_dict()) == before and config.model.content_dim is None
    assert load_config(run / "config.json").model.content_dim == 19  # the genres
