"""`ItemTower.extend`: items that arrive after training (a live service's new items) get
content rows after the trained ones and are read as cold items."""

from __future__ import annotations

import pytest
import torch

from modrec.models.item_tower import ItemTower


def _tower(mode: str, combine: str = "sum", items: int = 5, width: int = 6) -> ItemTower:
    torch.manual_seed(0)
    content = torch.randn(items + 1, width)
    content[0] = 0
    return ItemTower(items, 4, mode, content, combine=combine).eval()  # type: ignore[arg-type]


@pytest.mark.parametrize(("mode", "combine"), [("content", "sum"), ("id+content", "sum"),
                                                ("id+content", "gate")])
def test_new_items_are_read_from_their_content_alone(mode: str, combine: str) -> None:
    tower = _tower(mode, combine)
    before = tower(torch.arange(6)).detach().clone()
    rows = torch.randn(3, 6)
    expected = tower.unknown_vectors(rows)
    added = tower.extend(rows)
    assert list(added) == [6, 7, 8] and tower.num_items == 8
    assert not tower.known[6:].any() and tower.known[1:6].all()
    with torch.no_grad():
        assert torch.allclose(tower(torch.tensor([6, 7, 8])), expected)
        assert torch.equal(tower(torch.arange(6)), before)  # trained items unchanged
        # In a sequence, beside trained items and padding, as a history reads them.
        mixed = tower(torch.tensor([[0, 2, 7]]))
    assert torch.equal(mixed[0, 0], torch.zeros(4))
    assert torch.allclose(mixed[0, 2], expected[1])
    assert torch.allclose(mixed[0, 1], before[2])


def test_many_single_items_grow_the_buffers_by_doubling() -> None:
    tower = _tower("content")
    rows = torch.randn(100, 6)
    for row in rows:
        tower.extend(row[None])
    assert torch.equal(tower.content[6:], rows) and len(tower.known) == 106
    assert len(tower._spare["content"]) < 2 * 106 + 1  # room, not a copy per item
    with torch.no_grad():
        assert torch.allclose(tower(torch.arange(6, 106)), tower.unknown_vectors(rows))


def test_an_id_tower_or_a_wrong_width_is_refused() -> None:
    ids = ItemTower(5, 4, "id")
    with pytest.raises(ValueError, match="only content towers can take new items"):
        ids.extend(torch.zeros(1, 6))
    with pytest.raises(ValueError, match="content rows of width 6"):
        _tower("content").extend(torch.zeros(2, 5))
