from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from modrec.data import Dataset, load_dataset


def test_save_and_read_round_trip(ml100k, tmp_path: Path) -> None:
    folder = ml100k.save(tmp_path / "ml100k")
    assert sorted(p.name for p in folder.iterdir()) == [
        "interactions.parquet", "items.parquet", "manifest.json", "users.parquet"]
    again = Dataset.read(folder)
    assert again.describe() == ml100k.describe()
    assert np.array_equal(again.sequences().items, ml100k.sequences().items)
    assert again.provenance["format"] == "recbole"


def test_item_zero_is_padding(ml100k) -> None:
    assert ml100k.items["item"].tolist() == list(range(1, ml100k.num_items + 1))
    assert ml100k.interactions["item"].min() >= 1


def test_ml1m_loads_fast_once_converted(data_dir: Path) -> None:
    load_dataset("ml-1m")  # converts and caches (first import)
    started = time.perf_counter()
    ds = load_dataset("ml-1m")
    seconds = time.perf_counter() - started
    assert (ds.num_users, ds.num_items) == (6040, 3706)
    assert seconds < 0.5, f"cached ML-1M load took {seconds:.2f}s"
    assert ds.items.loc[ds.items["item_id"] == "1", "title"].item() == "Toy Story (1995)"


def test_id_lookups_explain_mistakes(ml100k) -> None:
    import pytest

    assert ml100k.user_index("196") >= 0
    with pytest.raises(KeyError, match="user id 'nobody' is not in dataset 'ml-100k'"):
        ml100k.user_index("nobody")
