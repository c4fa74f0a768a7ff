"""How a run's configuration is assembled, and what it refuses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modrec.cli import main
from modrec.config import build_config, load_config


def test_layers_in_order_of_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """defaults < configs/<model>.yaml < configs/<dataset>/<model>.yaml < --config <
    --set; each layer changes only what it names."""
    configs = tmp_path / "configs"
    (configs / "toy").mkdir(parents=True)
    (configs / "sasrec.yaml").write_text(
        "model: {dim: 32, num_blocks: 3}\ntrain: {lr: 0.01, seed: 1}\n")
    (configs / "toy" / "sasrec.yaml").write_text(
        "paper: not a setting\nmodel: {dim: 48}\ntrain: {lr: 0.02}\n")
    own = tmp_path / "mine.yaml"
    own.write_text("train: {lr: 0.03, epochs: 7}\n")
    monkeypatch.setenv("MODREC_CONFIG_DIR", str(configs))

    config = build_config("toy", "sasrec", own, ["train.epochs=9", "model.block=original"])
    assert config.model.dim == 48  # the dataset's preset over the model's defaults
    assert config.model.options.num_blocks == 3  # the model's defaults where it is silent
    assert config.train.lr == 0.03  # the --config file over both presets
    assert config.train.epochs == 9  # --set over everything
    assert config.train.seed == 1 and config.train.batch_size == 128  # untouched layers
    assert config.model.options.block == "original"
    assert config.source == [str(configs / "sasrec.yaml"), str(configs / "toy" / "sasrec.yaml"),
                             str(own)]
    # A preset naming another architecture decides it: -m names the file.
    (configs / "toy" / "big.yaml").write_text("model: {name: hstu, num_blocks: 8}\n")
    big = build_config("toy", "big")
    assert big.model.name == "hstu" and big.model.options.num_blocks == 8


@pytest.mark.parametrize(("override", "message"), [
    ("model.mask_rate=0.3", "model 'sasrec': mask_rate"),  # another model's option
    ("model.dimm=3", "dimm"),
    ("train.epochs=many", "train.epochs"),
    ("model.name=transformerxl", "model.name 'transformerxl'"),
    ("train.lr", "not of the form"),
])
def test_wrong_settings_are_named(override: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_config("ml-100k", "sasrec", overrides=[override])


def test_a_run_config_round_trips(tmp_path: Path) -> None:
    config = build_config("ml-1m", "hstu-large")
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**config.to_dict(), "run_format": 2, "protocol": "x"}))
    assert load_config(path) == config
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not a readable run configuration"):
        load_config(path)


def test_columns_map_a_tables_names(tmp_path: Path, data_dir: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    """``--columns role=COLUMN``: what the importer's error message tells users to pass."""
    import pandas as pd

    ratings = pd.read_csv(data_dir / "ml-100k" / "u.data", sep="\t",
                          names=["who", "what", "stars", "when"])
    table = tmp_path / "logs.csv"
    ratings.to_csv(table, index=False)
    out = tmp_path / "run"
    assert main(["train", "-d", str(table), "-m", "popularity", "--out", str(out)]) == 2
    assert "--columns" in capsys.readouterr().err
    assert main(["train", "-d", str(table), "-m", "popularity", "--out", str(out), "--columns",
                 "user=who,item=what,timestamp=when", "--json"]) == 0
    assert load_config(out / "config.json").data.columns == {
        "user": "who", "item": "what", "timestamp": "when"}
    info = json.loads((out / "config.json").read_text())["dataset_info"]
    assert (info["users"], info["items"], info["interactions"]) == (943, 1682, 100000)
    assert info["timestamps"]
    assert main(["train", "-d", str(table), "-m", "popularity", "--columns", "user",
                 "--out", str(tmp_path / "x")]) == 2
    assert "role=column pairs" in capsys.readouterr().err
