from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from modrec.config import build_config
from modrec.data import Dataset, leave_one_out, load_dataset
from modrec.data.dataset import build_dataset
from modrec.data.formats import import_path


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("MODREC_CACHE_DIR", str(folder))
    return folder


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
    assert ml100k.user_index("196") >= 0
    with pytest.raises(KeyError, match="user id 'nobody' is not in dataset 'ml-100k'"):
        ml100k.user_index("nobody")


# ---- consecutive repeats (issue 40) ---------------------------------------------------
def _events(users: int = 40) -> list[tuple[int, int, int]]:
    """Each user's events, oldest first: (user, item, timestamp), no item back to back."""
    rng = np.random.default_rng(0)
    rows = []
    for user in range(users):
        items = rng.permutation(60)[: 6 + user % 5] + 1
        rows += [(user, int(item), 1_000 * user + k) for k, item in enumerate(items)]
    return rows


def _write_csv(path: Path, rows: list[tuple[int, int, int]]) -> Path:
    path.write_text("user_id,item_id,timestamp\n"
                    + "".join(f"{u},{i},{t}\n" for u, i, t in rows))
    return path


def test_consecutive_repeats_are_dropped_unless_kept(tmp_path: Path, cache: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    """A csv with every event written twice gave test HR@1 0.85 (0.025 without): the
    repeated item was its own next target. By default the repeats go, with a warning,
    and the dataset is the one without them; asked to, they stay. Every reader (pandas
    and DuckDB, all formats) gives the same dataset."""
    rows = _events()
    clean = _write_csv(tmp_path / "clean.csv", rows)
    twice = _write_csv(tmp_path / "twice.csv", [r for r in rows for _ in range(2)])
    reference = load_dataset(clean)
    with caplog.at_level(logging.WARNING, logger="modrec.data.dataset"):
        dropped = load_dataset(twice)
    assert dropped.fingerprint() == reference.fingerprint()
    assert (f"twice: {len(rows):,} consecutive repeated events (the same user and item back "
            "to back, in 40 users) dropped, keeping the first of each run; --set "
            "data.consecutive_repeats=keep keeps them") in caplog.messages
    assert dropped.provenance["consecutive_repeats"] == {"policy": "drop", "found": len(rows),
                                                        "users": 40}

    kept = load_dataset(twice, repeats="keep")  # not the cached copy made by "drop"
    assert len(kept.interactions) == 2 * len(rows)
    test = leave_one_out(kept).test
    last = [kept.sequences()[u][-2] for u in test.users]
    assert np.array_equal(test.targets, last)  # the item before the target, again
    assert np.array_equal(leave_one_out(dropped).test.targets,
                          leave_one_out(reference).test.targets)
    assert len(load_dataset(twice).interactions) == len(rows)  # and back: both cached
    assert len(list(cache.iterdir())) == 3

    # The same events through every reader.
    frame = pd.read_csv(twice)
    frame.to_parquet(tmp_path / "twice.parquet", index=False)
    pairs = tmp_path / "twice.txt"
    pairs.write_text("".join(f"{u} {i} {t}\n" for u, i, t in frame.itertuples(index=False)))
    for path, fmt in ((twice, "csv"), (twice, "csv-large"), (tmp_path / "twice.parquet",
                                                            "parquet"),
                      (tmp_path / "twice.parquet", "parquet-large"), (pairs, None)):
        assert import_path(path, fmt).fingerprint() == reference.fingerprint()
        assert len(import_path(path, fmt, repeats="keep").interactions) == 2 * len(rows)


def test_repeats_are_judged_in_time_order(tmp_path: Path) -> None:
    """A repeat is the same item back to back in the user's chronological order,
    whatever the rows' order in the file and their timestamps; the first of a run
    stays, with its timestamp and weight."""
    path = tmp_path / "t.csv"
    path.write_text("user,item,timestamp,rating\n1,10,5,1\n1,11,1,2\n1,10,9,3\n1,10,2,4\n"
                    "2,10,1,5\n1,12,7,1\n")
    ds = import_path(path)
    assert ds.interactions[["item", "timestamp", "weight"]].values.tolist() == [
        [2, 1, 2.0], [1, 2, 4.0], [3, 7, 1.0], [1, 9, 3.0], [1, 1, 5.0]]
    assert ds.provenance["consecutive_repeats"]["found"] == 1


def test_named_datasets_keep_their_repeats(tmp_path: Path, cache: Path,
                                           monkeypatch: pytest.MonkeyPatch,
                                           caplog: pytest.LogCaptureFixture) -> None:
    """A named benchmark keeps its repeats unless told otherwise (yelp has 3,873 and
    amazon-scientific 141: their published numbers were measured with them); its
    cached copy is the one it always had, and "drop" gets a cache entry of its own."""
    from modrec.data import public

    rows = [(0, 1, 0), (0, 1, 1), (0, 2, 2), (1, 3, 0), (1, 4, 1)]

    def reader(root: Path) -> Dataset:
        users, items, _ = zip(*rows, strict=True)
        return build_dataset("toy", np.array(users), np.array(items))

    source = tmp_path / "toy.txt"
    source.write_text("present")
    monkeypatch.setitem(public.NAMED, "toy", public.NamedDataset(
        "toy", "a named set with one repeat", ("toy.txt",), reader))
    monkeypatch.setenv("MODREC_DATA_DIR", str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="modrec.data.dataset"):
        assert len(load_dataset("toy").interactions) == 5
        assert len(load_dataset("toy").interactions) == 5  # from the cache, said again
    assert caplog.messages.count(
        "toy: 1 consecutive repeated event (the same user and item back to back, in 1 user) "
        "kept (the published toy benchmark has them); --set data.consecutive_repeats=drop "
        "drops them") == 2
    assert len(load_dataset("toy", repeats="drop").interactions) == 4
    assert sorted(p.name for p in cache.iterdir()) == ["toy", "toy-drop-repeats"]
    with pytest.raises(ValueError, match="consecutive repeats 'dorp'; expected one of drop"):
        load_dataset("toy", repeats="dorp")


def test_the_setting_reaches_training(tmp_path: Path, cache: Path) -> None:
    """``--set data.consecutive_repeats=keep`` on ``modrec train``."""
    from modrec.cli import main

    rows = _events(12)
    twice = _write_csv(tmp_path / "twice.csv", [r for r in rows for _ in range(2)])
    for extra, count in (([], len(rows)), (["--set", "data.consecutive_repeats=keep"],
                                           2 * len(rows))):
        run = tmp_path / f"run{count}"
        assert main(["train", "-d", str(twice), "-m", "popularity", "--out", str(run),
                     "--json", *extra]) == 0
        assert json.loads((run / "dataset" / "manifest.json").read_text())[
            "interactions"] == count
    with pytest.raises(ValueError, match="data.consecutive_repeats"):
        build_config(str(twice), "sasrec", overrides=["data.consecutive_repeats=sometimes"])


def test_microlens_50k_is_a_named_dataset_with_titles(data_dir: Path, cache: Path) -> None:
    """The counts the data README states, in order, every video with its title as text."""
    ds = load_dataset("microlens-50k")
    assert (ds.num_users, ds.num_items, len(ds.interactions)) == (50_000, 19_220, 359_708)
    assert ds.items["text"].notna().all()
    first = ds.sequences()[ds.user_index("1")]
    ids = ds.items.set_index("item")["item_id"]
    assert [ids[i] for i in first] == ["1958", "6346", "15223", "17700", "1707"]
    assert ds.items.loc[ds.items["item_id"] == "2", "title"].item().startswith(
        "beautiful dish with 5 pounds of duck intestines")
