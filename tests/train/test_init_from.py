"""``train.init_from`` (``modrec train --init-from RUN``): a new run starts from a trained
run's weights, items matched by external id; before any step it scores as that run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from modrec.cli import main
from modrec.config import build_config
from modrec.data import Dataset
from modrec.errors import ConfigError
from modrec.eval.evaluator import user_vectors
from modrec.runs import RunError, load_run
from modrec.serve import ModelService
from modrec.serve.service import Event
from modrec.serve.state import open_state
from modrec.train import setup, train

SMALL = ["train.epochs=1", "model.max_len=30", "model.num_blocks=1"]


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train(build_config("ml-100k", "sasrec", overrides=SMALL),
                 tmp_path_factory.mktemp("source") / "run", progress=False)


def _scores(model: torch.nn.Module, dataset: Dataset, max_len: int) -> torch.Tensor:
    """Every user's full-ranking scores after their whole history ``(U, N + 1)``."""
    sequences = dataset.sequences()
    histories = [sequences[u][-max_len:] for u in range(len(sequences))]
    model.eval()
    with torch.no_grad():
        return user_vectors(model, histories) @ model.item_vectors().T  # type: ignore


def test_a_run_initialised_from_another_scores_every_user_as_it_does(
        source: Path, tmp_path: Path) -> None:
    config = build_config("ml-100k", "sasrec",
                          overrides=[*SMALL, f"train.init_from={source}", "train.seed=7"])
    session = setup(config, tmp_path / "warm", show_progress=False)
    run = load_run(source)
    assert torch.equal(_scores(session.model, session.dataset, 30),
                       _scores(run.model, run.dataset, 30))
    fresh = setup(build_config("ml-100k", "sasrec", overrides=SMALL), tmp_path / "fresh",
                  show_progress=False)
    assert not torch.equal(_scores(fresh.model, fresh.dataset, 30),
                           _scores(run.model, run.dataset, 30))
    written = json.loads((tmp_path / "warm" / "config.json").read_text())
    assert written["train"]["init_from"] == str(source)
    started = written["initialised_from"]
    assert started["run"] == str(source.resolve()) and started["model"] == "sasrec"
    assert started["dataset_fingerprint"] == run.dataset.fingerprint()
    assert started["items_copied"] == int(run.known[1:].sum())
    assert started["items_copied"] + started["items_fresh"] == run.dataset.num_items


def _state_with_a_new_item(source: Path, where: str) -> None:
    """The state a service over ``source`` keeps after a new user watched a new item:
    its id is not a number, so the dataset read from the state numbers every item anew
    (ids sorted as text: "1", "10", "100", ...)."""
    service = ModelService.from_runs({"m": source}, open_state(where))
    service.state.append("new-user", ["new-item", "50", "new-item", "100", "181"],
                         [900000000 + i for i in range(5)])
    service.record([Event("196", "50", 900000100)])
    service.state.close()


def test_items_are_matched_by_id_when_the_catalog_is_renumbered(
        source: Path, tmp_path: Path, state_where: str) -> None:
    """From the service's state, SQLite or PostgreSQL alike."""
    _state_with_a_new_item(source, state_where)
    overrides = [*SMALL, f"data.dataset={state_where}"]
    warm = setup(build_config(None, "sasrec", overrides=[*overrides,
                                                          f"train.init_from={source}"]),
                 tmp_path / "warm", show_progress=False)
    fresh = setup(build_config(None, "sasrec", overrides=overrides), tmp_path / "fresh",
                  show_progress=False)
    run = load_run(source)
    old = run.dataset.items.set_index("item_id")["item"]
    new = warm.dataset.items.set_index("item_id")["item"]
    assert (new.loc[old.index] != old).any()  # renumbered
    table = "encoder.item_tower.embedding.weight"
    mine, theirs = warm.model.state_dict()[table], run.model.state_dict()[table]
    trained = old[run.known[old.to_numpy()]]  # the items the source trained on
    assert torch.equal(mine[np.array(new.loc[trained.index])], theirs[np.array(trained)])
    # the new item starts as a fresh run starts it, under the same seed
    fresh_row = fresh.model.state_dict()[table][new["new-item"]]
    assert torch.equal(mine[new["new-item"]], fresh_row)
    # every other weight is the source's
    for key, value in run.model.state_dict().items():
        if "item_tower" not in key:
            assert torch.equal(warm.model.state_dict()[key], value), key
    # an old user's scores, item by item, are the source's
    history = run.dataset.sequences()[0][-30:]
    ids = run.dataset.items.sort_values("item")["item_id"].to_numpy()[history - 1]
    warm.model.eval()  # dropout off
    with torch.no_grad():
        a = user_vectors(run.model, [history])
        b = user_vectors(warm.model, [new.loc[ids].to_numpy()])
    assert torch.equal(a, b)
    started = json.loads((tmp_path / "warm" / "config.json").read_text())["initialised_from"]
    assert started["items_fresh"] >= 1 and started["source_items_left_out"] == 0


@pytest.mark.parametrize(("model", "overrides", "error", "message"), [
    ("gru4rec", ["model.max_len=30"], ConfigError, r"that run is a sasrec model and this "
     r"one a gru4rec; weights start only the same model \(-m sasrec\)"),
    ("sasrec", [*SMALL, "model.dim=32"], RunError, r"its sasrec does not fit the model this run "
     r"builds \(other shapes: encoder.item_tower.embedding.weight \(1683, 50\) there, "
     r"\(1683, 32\) here; .*settings that differ: model.dim 50 there, 32 here"),
    ("sasrec", [*SMALL, "model.num_blocks=2"], RunError, r"parameters it lacks: encoder.blocks.1"),
])
def test_another_model_or_shape_is_refused(source: Path, tmp_path: Path, model: str,
                                           overrides: list[str], error: type[Exception],
                                           message: str) -> None:
    config = build_config("ml-100k", model, overrides=[*overrides,
                                                       f"train.init_from={source}"])
    with pytest.raises(error, match=message):
        setup(config, tmp_path / "out", show_progress=False)
    assert not (tmp_path / "out" / "config.json").exists()  # refused before any write


def test_a_fitted_model_or_a_folder_without_weights_is_refused(tmp_path: Path) -> None:
    popular = train(build_config("ml-100k", "popularity"), tmp_path / "pop", progress=False)
    config = build_config("ml-100k", "popularity", overrides=[f"train.init_from={popular}"])
    with pytest.raises(ConfigError, match="popularity is fitted by counting, not trained"):
        setup(config, tmp_path / "out", show_progress=False)
    config = build_config("ml-100k", "sasrec", overrides=[
        f"train.init_from={tmp_path / 'nothing'}"])
    with pytest.raises(RunError, match=r"--init-from .*nothing: not a run directory"):
        setup(config, tmp_path / "out2", show_progress=False)


def test_the_command_starts_from_a_run_and_a_resume_keeps_the_record(
        source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "next"
    args = ["train", "-d", "ml-100k", "-m", "sasrec", "--set", "model.max_len=30",
            "--set", "model.num_blocks=1", "--epochs", "1", "--init-from", str(source),
            "--out", str(out), "--no-progress", "--json"]
    assert main(args) == 0
    first = json.loads((out / "config.json").read_text())
    assert first["initialised_from"]["run"] == str(source.resolve())
    assert main([*args[:-6], "--epochs", "2", "--init-from", str(source), "--out", str(out),
                 "--no-progress", "--json", "--resume"]) == 0
    again = json.loads((out / "config.json").read_text())
    assert again["initialised_from"] == first["initialised_from"]
    # resumed without --init-from: the weights still came from there
    assert main([*args[:-8], "--epochs", "3", "--out", str(out), "--no-progress", "--json",
                 "--resume"]) == 0
    third = json.loads((out / "config.json").read_text())
    assert third["initialised_from"] == first["initialised_from"]
    capsys.readouterr()
    assert main(["train", "-d", "ml-100k", "-m", "gru4rec", "--init-from", str(source),
                 "--out", str(tmp_path / "other")]) == 2
    assert "weights start only the same model (-m sasrec)" in capsys.readouterr().err


def test_the_loss_starts_lower_than_from_scratch(source: Path, tmp_path: Path) -> None:
    """Not a proof of learning, but a warm start that forgot its weights would fail it."""
    warm = train(build_config("ml-100k", "sasrec", overrides=[
        *SMALL, f"train.init_from={source}"]), tmp_path / "warm", progress=False)
    first = json.loads((source / "metrics.jsonl").read_text().splitlines()[0])["loss"]
    then = json.loads((warm / "metrics.jsonl").read_text().splitlines()[0])["loss"]
    assert then < first - 0.5
    assert np.isfinite(then)


def test_the_command_takes_the_model_settings_from_the_run(source: Path, tmp_path: Path) -> None:
    """Without -m or --set model.*, the new run builds the source's architecture: a
    preset resolves per dataset (-m sasrec on ml-1m is the paper's block form, on a
    state file the defaults), so it would otherwise build a model the weights do not
    fit (found by benchmarks/serve_reload.py: ml-1m, then its state file)."""
    out = tmp_path / "next"
    assert main(["train", "-d", "ml-100k", "--init-from", str(source), "--epochs", "1",
                 "--set", "model.dropout=0.3", "--out", str(out), "--no-progress",
                 "--json"]) == 0
    written = json.loads((out / "config.json").read_text())["model"]
    before = json.loads((source / "config.json").read_text())["model"]
    assert written == {**before, "dropout": 0.3}  # what is set here still wins


@pytest.mark.slow
def test_a_content_tower_starts_from_the_run_and_the_store(
        ml100k: Dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ID rows and the projection come from the run, the content matrix from the store
    (as for any run: a new item's vector is whatever the encoders stored for it); with
    the same dataset that is the run's own matrix, so every score is the run's."""
    from modrec.content import EmbeddingStore, embed

    store = EmbeddingStore.for_dataset(ml100k, tmp_path / "embeddings" / "ml-100k")
    embed(ml100k, ["tags:genres"], store, progress=False)
    monkeypatch.setenv("MODREC_EMBEDDINGS_DIR", str(tmp_path / "embeddings"))
    overrides = [*SMALL, "model.item_tower=id+content", 'model.encoders=["tags:genres"]']
    source = train(build_config("ml-100k", "sasrec", overrides=overrides), tmp_path / "a",
                   progress=False)
    warm = setup(build_config("ml-100k", "sasrec", overrides=[
        *overrides, f"train.init_from={source}"]), tmp_path / "b", show_progress=False)
    run = load_run(source)
    assert run.model.item_tower.mode == "id+content"
    assert torch.equal(_scores(warm.model, warm.dataset, 30), _scores(run.model, run.dataset, 30))
