"""Fine-tuning I3D's last block (modrec.content.video.finetune): on a stored Mixed_5b map
it computes what I3D computes, a training step moves only what is meant to train, and
the two-stage training learns a separable task and refuses maps it cannot read."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import numpy as np
import pytest
import torch

from modrec.content.video.finetune import (
    FinetuneSettings,
    finetune,
    last_block,
    make_optimizer,
    select_finetuned,
    training_step,
)
from modrec.content.video.i3d import I3D, load_i3d
from modrec.errors import UsageError


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """These tests run many small operations (a linear probe on 12 clips): with a team of
    two threads on a busy 2-core machine each waits at every barrier (issue 40), which
    measured 14 s for the two-stage test against under 1 s on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def i3d() -> I3D:
    """The installed package's Kinetics-400 weights."""
    return load_i3d()


def test_the_block_on_a_stored_map_gives_i3d_s_own_embedding(i3d: I3D) -> None:
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, 16, 224, 224, generator=generator) * 2 - 1  # 16 frames: T' = 2
    with torch.no_grad():
        stored = i3d.endpoints(x, last="Mixed_5b")["Mixed_5b"]
        expected = i3d.embed(x)
        model = last_block(i3d, classes=2)
        frozen = model.eval().pooled(stored)
        training = model.train().pooled(stored)  # batch norm keeps Kinetics' statistics
    assert stored.shape == (1, 832, 2, 7, 7)
    torch.testing.assert_close(frozen, expected, rtol=0, atol=1e-4)
    torch.testing.assert_close(training, expected, rtol=0, atol=1e-4)


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("block", [True, False])
def test_a_training_step_moves_only_what_trains(i3d: I3D, block: bool) -> None:
    model = last_block(i3d, classes=2)
    before = _snapshot(model)
    loaded = _snapshot(i3d.blocks["Mixed_5c"])
    maps = torch.rand(4, 832, 2, 7, 7, generator=torch.Generator().manual_seed(1)) * 2
    optimizer = make_optimizer(model, lr=1e-3, weight_decay=1e-2, block=block)
    training_step(model, optimizer, maps, torch.tensor([0, 1, 0, 1]))
    after = model.state_dict()
    trainable = {f"block.{name}" for name, _ in model.block.named_parameters()}
    assert len(trainable) == 12  # six convolutions, six batch-norm offsets
    for name, value in after.items():
        moved = not torch.equal(value, before[name])
        if name.startswith("classifier."):
            assert moved, name
        elif name in trainable:
            assert moved == block, name
        else:  # batch-norm running statistics and counters
            assert not moved, name
    for name, value in i3d.blocks["Mixed_5c"].state_dict().items():
        assert torch.equal(value, loaded[name]), f"the loaded I3D changed: {name}"


def separable(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """float16 maps (count, 832, 2, 7, 7), non-negative like Mixed_5b's ReLU outputs;
    class 1 has its first 64 channels raised."""
    rng = np.random.default_rng(seed)
    y = np.arange(count) % 2
    maps = rng.uniform(0, 1, (count, 832, 2, 7, 7))
    maps[y == 1, :64] += 1.0
    return maps.astype(np.float16), y


def test_the_two_stages_learn_a_separable_task(i3d: I3D) -> None:
    maps, y = separable(20, seed=2)
    train, valid, test = np.arange(12), np.arange(12, 16), np.arange(16, 20)
    flipped = maps[..., ::-1].copy()
    candidates = [FinetuneSettings(lr=lr, epochs=1, batch_size=12, probe_epochs=15,
                                   augment="flip-input") for lr in (1e-4, 3e-5)]
    best = select_finetuned(maps, y, train, valid, i3d, candidates, flipped)
    assert best.valid_accuracy == 1.0 and best.probe_accuracy == 1.0
    assert best.epoch in (0, 1) and len(best.history) == 2  # the probe, then one epoch
    np.testing.assert_array_equal(best.probabilities(maps[test]).argmax(1), y[test])
    settings = replace(best.settings, keep_probe=False)
    forced = finetune(maps, y, train, valid, i3d, settings, flipped)
    assert forced.epoch == 1  # never the probe, even where it scores as well
    again = finetune(maps, y, train, valid, i3d, settings, flipped)
    np.testing.assert_array_equal(again.probabilities(maps), forced.probabilities(maps))


def test_maps_it_cannot_read_are_refused_with_the_expected_shape(i3d: I3D) -> None:
    maps, y = separable(8, seed=3)
    rows = np.arange(4), np.arange(4, 8)
    with pytest.raises(UsageError, match=r"\(clips, 832, steps >= 2, 7, 7\).*got "
                                         r"\(8, 1024, 2, 7, 7\)"):
        finetune(np.zeros((8, 1024, 2, 7, 7), np.float16), y, *rows, i3d)
    with pytest.raises(UsageError, match="flip-input.*pass them as flipped"):
        finetune(maps, y, *rows, i3d, FinetuneSettings(augment="flip-input"))
    with pytest.raises(UsageError, match="8 maps but 7 labels"):
        finetune(maps, y[:7], *rows, i3d)
    with pytest.raises(UsageError, match="unknown augmentation 'mirror'"):
        FinetuneSettings(augment="mirror")  # type: ignore[arg-type]
