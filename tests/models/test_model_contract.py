"""The contract every registered model keeps, checked for each one automatically: a
model added to the registry is tested here without a line of new test code.

* ``encode_last`` is ``encode``'s row at the newest item;
* right padding never changes a real position;
* a model trained by next-item prediction (no objective of its own) is causal;
* its weights survive a save and a load (the state dict alone rebuilds it).

A model defined in this file registers itself, trains through `modrec train`'s code
path and passes the same checks: adding a model is one file.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from pydantic import ConfigDict
from pydantic.dataclasses import dataclass
from torch import nn

from modrec.config import build_config
from modrec.models import ItemTower, ModelConfig, RetrievalModel, build_model, model_names
from modrec.models.registry import item_tower, register
from modrec.runs import load_run
from modrec.train import train


@dataclass(config=ConfigDict(extra="forbid"))
class MeanPoolConfig:
    decay: float = 0.5  # weight of older items: newest 1, then decay, decay**2, ...


class MeanPool(nn.Module):
    """A user vector is the decayed mean of the item vectors so far (causal)."""

    def __init__(self, tower: ItemTower, decay: float) -> None:
        super().__init__()
        self.item_tower, self.decay = tower, decay
        self.project = nn.Linear(tower.dim, tower.dim)

    def forward(self, inputs: torch.Tensor, lengths: torch.Tensor,
                times: torch.Tensor | None = None) -> torch.Tensor:
        x = self.item_tower(inputs)  # (B, L, D)
        L = inputs.shape[1]
        age = torch.arange(L).unsqueeze(0) - torch.arange(L).unsqueeze(1)  # (L, L): i - j
        weights = torch.where(age >= 0, self.decay ** age.clamp(min=0).float(), 0.0)
        return self.project(weights.T.unsqueeze(0) @ x)  # (B, L, D)


@register("test-meanpool", MeanPoolConfig)
def build_meanpool(config: ModelConfig, num_items: int, content: torch.Tensor | None,
                   timestamps: bool) -> RetrievalModel:
    tower = item_tower(config, num_items, content)
    return RetrievalModel(MeanPool(tower, config.options.decay), tower, config.normalize)


def _model(name: str, timestamps: bool = False) -> nn.Module:
    torch.manual_seed(0)
    config = ModelConfig(name=name, dim=16, max_len=12)
    return build_model(config, num_items=40, timestamps=timestamps).eval()


def _batch(timestamps: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    lengths = torch.tensor([12, 5, 1, 9])
    inputs = torch.randint(1, 41, (4, 12)) * (torch.arange(12) < lengths.unsqueeze(1))
    times = torch.cumsum(torch.randint(1, 10**5, (4, 12)), dim=1) if timestamps else None
    return inputs, lengths, times


SEQUENCE_MODELS = [name for name in model_names() if name != "popularity"]
CASES = [(name, ts) for name in SEQUENCE_MODELS for ts in (False, True)]


def test_every_model_is_covered() -> None:
    assert {"popularity", "gru4rec", "sasrec", "bert4rec", "hstu", "test-meanpool"} <= set(
        model_names())


@pytest.mark.parametrize(("name", "timestamps"), CASES)
def test_encode_last_is_encode_at_the_newest_item(name: str, timestamps: bool) -> None:
    model = _model(name, timestamps)
    inputs, lengths, times = _batch(timestamps)
    every = model.encode(inputs, lengths, times)[torch.arange(4), lengths - 1]
    torch.testing.assert_close(model.encode_last(inputs, lengths, times), every)


@pytest.mark.parametrize(("name", "timestamps"), CASES)
def test_right_padding_changes_no_real_position(name: str, timestamps: bool) -> None:
    model = _model(name, timestamps)
    inputs, lengths, times = _batch(timestamps)
    inputs, lengths = inputs[:, :8], lengths.clamp(max=8)  # then padded to max_len (12)
    times = None if times is None else times[:, :8]
    padded = torch.cat([inputs, torch.zeros(4, 4, dtype=torch.long)], dim=1)
    padded_times = None if times is None else torch.cat([times, times[:, -1:].expand(4, 4)], 1)
    torch.testing.assert_close(model.encode_last(inputs, lengths, times),
                               model.encode_last(padded, lengths, padded_times))


@pytest.mark.parametrize(("name", "timestamps"), CASES)
def test_next_item_models_are_causal_and_cloze_models_bidirectional(
        name: str, timestamps: bool) -> None:
    """A next-item model's position t reads only items up to t; a model that brings its
    own (cloze) objective reads the whole sequence, later items included."""
    model = _model(name, timestamps)
    inputs, _, times = _batch(timestamps)
    lengths = torch.full((4,), 12)
    inputs = torch.randint(1, 41, (4, 12))
    changed = inputs.clone()
    changed[:, 7] = changed[:, 7] % 40 + 1
    before, after = model.encode(inputs, lengths, times), model.encode(changed, lengths, times)
    assert not torch.allclose(before[:, 7:], after[:, 7:])
    if hasattr(model.encoder, "training_batches"):  # BERT4Rec: bidirectional
        assert not torch.allclose(before[:, :7], after[:, :7])
    else:
        torch.testing.assert_close(before[:, :7], after[:, :7])


@pytest.mark.parametrize("name", model_names())
def test_weights_survive_save_and_load(name: str) -> None:
    model = _model(name)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    torch.manual_seed(1)  # another initialisation, overwritten by the load
    again = build_model(ModelConfig(name=name, dim=16, max_len=12), num_items=40).eval()
    again.load_state_dict(torch.load(buffer, weights_only=True))
    inputs, lengths, _ = _batch(False)
    torch.testing.assert_close(model.encode_last(inputs, lengths),
                               again.encode_last(inputs, lengths))
    torch.testing.assert_close(model.item_vectors(), again.item_vectors())


def test_a_model_added_in_one_file_trains_and_serves(tmp_path: Path) -> None:
    config = build_config("ml-100k", "test-meanpool", overrides=[
        "model.decay=0.8", "train.epochs=2", "model.max_len=20", "loss.name=softmax"])
    assert config.model.options.decay == 0.8
    with pytest.raises(ValueError, match="test-meanpool.*num_blocks"):
        build_config("ml-100k", "test-meanpool", overrides=["model.num_blocks=2"])
    run = load_run(train(config, tmp_path / "run", progress=False))
    assert isinstance(run.model.encoder, MeanPool) and run.model.encoder.decay == 0.8
    assert run.evaluate(run.split.valid)["ndcg@10"] > 0.02  # it learned something
