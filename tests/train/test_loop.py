"""The training loop's public pieces, one at a time (`train` is only their sequence)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from modrec.config import build_config
from modrec.train import (
    finish,
    save_checkpoint,
    setup,
    train_epoch,
    validate_and_select,
)

SMALL = ["model.max_len=20", "model.num_blocks=1", "train.batch_size=256"]


def _weights(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_setup_builds_everything_and_writes_the_config(tmp_path: Path) -> None:
    config = build_config("ml-100k", "sasrec", overrides=SMALL)
    session = setup(config, tmp_path / "run", show_progress=False)
    assert session.progress.epoch == 0 and not session.stopped
    assert session.dataset.num_items == 1682 and session.split.valid is not None
    assert len(session.examples) == 943 and session.optimizer is not None
    assert session.kept is session.model  # no weight averaging asked for
    assert json.loads((tmp_path / "run" / "config.json").read_text())["model"]["name"] == "sasrec"
    assert not (tmp_path / "run" / "model.pt").exists()


def test_one_epoch_changes_the_weights_and_counts(tmp_path: Path) -> None:
    session = setup(build_config("ml-100k", "sasrec", overrides=SMALL), tmp_path / "run",
                    show_progress=False)
    before = _weights(session.model)
    record = train_epoch(session)
    assert record["epoch"] == session.progress.epoch == 1
    assert np.isfinite(record["loss"]) and record["sequences_per_second"] > 0
    assert not torch.equal(before, _weights(session.model))


def test_validation_keeps_the_best_and_counts_patience(tmp_path: Path) -> None:
    config = build_config("ml-100k", "sasrec", overrides=[*SMALL, "train.eval_every=2",
                                                          "train.patience=1"])
    session = setup(config, tmp_path / "run", show_progress=False)
    run = session.run
    validate_and_select(session, train_epoch(session))  # epoch 1: not due
    assert not run.weights_file.exists() and run.metrics() == []
    validate_and_select(session, train_epoch(session))  # epoch 2: validated, best so far
    assert run.weights_file.exists() and session.progress.best_epoch == 2
    assert run.metrics()[-1]["valid"]["ndcg@10"] == session.progress.best
    saved = run.weights_file.read_bytes()
    session.progress.best = 1.0  # nothing can beat that: the next pass counts as bad
    train_epoch(session)
    validate_and_select(session, train_epoch(session))
    assert session.progress.bad_evals == 1 and session.stopped  # patience 1
    assert run.weights_file.read_bytes() == saved
    results = json.loads(finish(session).joinpath("results.json").read_text())
    assert results["best_epoch"] == 2 and results["epochs"] == 4


def test_a_checkpoint_restores_everything_a_resume_needs(tmp_path: Path) -> None:
    config = build_config("ml-100k", "sasrec", overrides=SMALL)
    first = setup(config, tmp_path / "run", show_progress=False)
    validate_and_select(first, train_epoch(first))
    save_checkpoint(first)
    again = setup(config, tmp_path / "run", resume=True, show_progress=False)
    assert again.progress == first.progress
    assert torch.equal(_weights(again.model), _weights(first.model))
    assert again.rng.bit_generator.state == first.rng.bit_generator.state
    assert torch.equal(again.generator.get_state(), first.generator.get_state())
    first_moments = first.optimizer.state_dict()["state"]  # type: ignore[union-attr]
    again_moments = again.optimizer.state_dict()["state"]  # type: ignore[union-attr]
    assert all(torch.equal(first_moments[k]["exp_avg"], again_moments[k]["exp_avg"])
               for k in first_moments)
    # The next epoch of each is the same epoch.
    torch.set_rng_state(again_state := torch.get_rng_state())
    a = train_epoch(first)
    torch.set_rng_state(again_state)
    b = train_epoch(again)
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)


def test_popularity_is_fitted_in_setup_not_trained(tmp_path: Path) -> None:
    session = setup(build_config("ml-100k", "popularity"), tmp_path / "pop",
                    show_progress=False)
    assert session.optimizer is None and session.stopped
    assert session.model.counts.sum() == len(session.split.train.items)
    with pytest.raises(ValueError, match="fitted, not trained"):
        train_epoch(session)
