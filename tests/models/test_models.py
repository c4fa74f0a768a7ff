from __future__ import annotations

import pytest
import torch

from modrec.models import ModelConfig, build_model

CAUSAL = [ModelConfig(name="sasrec", dim=16, max_len=20),
          ModelConfig(name="sasrec", dim=16, max_len=20, block="original"),
          ModelConfig(name="gru4rec", dim=16, max_len=20),
          ModelConfig(name="gru4rec", dim=16, max_len=20, hidden_dim=24),
          ModelConfig(name="hstu", dim=16, max_len=20)]


@pytest.mark.parametrize("config", CAUSAL, ids=lambda c: f"{c.name}-{c.to_dict().get('block')}")
def test_causal_changing_a_later_item_never_changes_earlier_outputs(config: ModelConfig) -> None:
    torch.manual_seed(0)
    model = build_model(config, num_items=50).eval()
    inputs = torch.randint(1, 51, (3, 12))
    lengths = torch.full((3,), 12)
    changed = inputs.clone()
    changed[:, 7] = (changed[:, 7] % 50) + 1
    before, after = model.encode(inputs, lengths), model.encode(changed, lengths)
    torch.testing.assert_close(before[:, :7], after[:, :7])
    assert not torch.allclose(before[:, 7:], after[:, 7:])


@pytest.mark.parametrize("config", CAUSAL, ids=lambda c: f"{c.name}-{c.to_dict().get('block')}")
def test_right_padding_does_not_change_real_positions(config: ModelConfig) -> None:
    torch.manual_seed(0)
    model = build_model(config, num_items=50).eval()
    inputs = torch.randint(1, 51, (2, 6))
    padded = torch.cat([inputs, torch.zeros(2, 9, dtype=torch.long)], dim=1)
    short = model.encode(inputs, torch.full((2,), 6))
    long = model.encode(padded, torch.full((2,), 6))
    torch.testing.assert_close(short, long[:, :6])


def test_shapes_and_normalisation() -> None:
    model = build_model(ModelConfig(name="sasrec", dim=8, max_len=10), num_items=30)
    out = model.encode(torch.randint(1, 31, (4, 10)), torch.full((4,), 10))
    assert out.shape == (4, 10, 8)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(4, 10))
    assert model.item_vectors().shape == (31, 8)


def test_unknown_model_is_a_clear_error() -> None:
    from modrec.config import build_config

    with pytest.raises(ValueError, match="model.name"):
        build_config("ml-100k", "transformerxl")


def test_items_never_trained_have_no_id_vector() -> None:
    """An ID row that training never touched is random init: it must not compete."""
    from modrec.models.item_tower import ItemTower

    tower = ItemTower(5, 4)
    known = torch.tensor([False, True, True, False, True, True])
    tower.set_known(known)
    assert tower.all_items()[3].abs().sum() == 0 and tower.all_items()[1].abs().sum() > 0
    assert tower(torch.tensor([[3, 1]]))[0, 0].abs().sum() == 0
    content = torch.randn(6, 3)
    both = ItemTower(5, 4, "id+content", content)
    both.set_known(known)
    only_content = both.project(content[3])
    assert torch.allclose(both.all_items()[3], only_content)


@pytest.mark.parametrize("name", ["sasrec", "gru4rec", "hstu", "bert4rec"])
@pytest.mark.parametrize("tower", ["content", "id+content"])
def test_every_model_takes_every_item_tower(name: str, tower: str) -> None:
    """Content enters through the item tower only: the sequence models are unchanged,
    and a model with a content tower learns (its loss falls on a fixed batch)."""
    from modrec.config import LossConfig
    from modrec.train.losses import next_item_loss

    torch.manual_seed(0)
    content = torch.randn(31, 12)
    content[0] = 0
    model = build_model(ModelConfig(name=name, dim=16, max_len=10, item_tower=tower,
                                    content_mlp=tower == "content"), 30, content)
    inputs, targets = torch.randint(1, 31, (4, 10)), torch.randint(1, 31, (4, 10))
    lengths = torch.full((4,), 10)
    assert model.encode(inputs, lengths).shape == (4, 10, 16)
    assert model.item_vectors().shape == (31, 16)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(20):
        loss = next_item_loss(LossConfig(name="softmax"), model.encode(inputs, lengths),
                              targets, model.item_vectors())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_hstu_time_bias_is_causal_and_reads_elapsed_time() -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="hstu", dim=16, max_len=20), num_items=50,
                        timestamps=True).eval()
    inputs = torch.randint(1, 51, (3, 12))
    lengths = torch.full((3,), 12)
    times = torch.cumsum(torch.randint(1, 10**5, (3, 12)), dim=1)  # seconds
    paused = times.clone()
    paused[:, 7:] += 30 * 86400  # a month's pause before the eighth item
    before, after = model.encode(inputs, lengths, times), model.encode(inputs, lengths, paused)
    torch.testing.assert_close(before[:, :7], after[:, :7])
    assert not torch.allclose(before[:, 7:], after[:, 7:])
    with pytest.raises(ValueError, match="timestamps"):
        model.encode(inputs, lengths)
    # Without timestamps in the data there is no time bias to feed.
    plain = build_model(ModelConfig(name="hstu", dim=16, max_len=20), num_items=50)
    assert not any("time" in name for name, _ in plain.named_parameters())


@pytest.mark.parametrize("config", [*CAUSAL, ModelConfig(name="hstu", dim=16, max_len=20,
                                                         num_heads=2, head_dim=8)],
                         ids=lambda c: f"{c.name}-{getattr(c.options, 'block', '')}-"
                         f"{getattr(c.options, 'num_heads', '')}")
@pytest.mark.parametrize("timestamps", [False, True])
def test_encode_last_is_encode_at_the_newest_item(config: ModelConfig, timestamps: bool) -> None:
    # HSTU computes its last block for that row only; the others read it off encode.
    torch.manual_seed(0)
    model = build_model(config, num_items=50, timestamps=timestamps).eval()
    lengths = torch.tensor([12, 5, 1, 9])
    inputs = torch.randint(1, 51, (4, 12)) * (torch.arange(12) < lengths.unsqueeze(1))
    times = torch.cumsum(torch.randint(1, 10**5, (4, 12)), dim=1) if timestamps else None
    every = model.encode(inputs, lengths, times)[torch.arange(4), lengths - 1]
    torch.testing.assert_close(model.encode_last(inputs, lengths, times), every)
