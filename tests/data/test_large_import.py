"""The DuckDB (out-of-core) table importer gives the same Dataset as the pandas one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pandas.testing as pdt
import pytest

from modrec.data import DataFormatError
from modrec.data.importers import import_path, read_table
from modrec.data.large import read_table_large


def _same(path: Path, columns: dict[str, str] | None = None) -> None:
    a = read_table(path, columns)
    b = read_table_large(path, columns)
    assert a.fingerprint() == b.fingerprint()
    pdt.assert_frame_equal(a.interactions, b.interactions)
    pdt.assert_frame_equal(a.items, b.items)
    pdt.assert_frame_equal(a.users, b.users)
    assert (a.name, a.provenance) == (b.name, b.provenance)


def _log(rng: np.random.Generator, n: int, users: int, items: int) -> pd.DataFrame:
    """An ML-20M-shaped log: skewed item popularity, few distinct timestamps per user
    (so ties are common and the file order of ties matters), rows not sorted."""
    user = rng.integers(0, users, n)
    item = np.minimum(rng.zipf(1.3, n), items)
    ts = 978300000 + rng.integers(0, 20, n) * 60
    return pd.DataFrame({"user": user, "item": item, "timestamp": ts})


def test_ml20m_shaped_logs(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for n, users, items in ((1, 1, 1), (5_000, 50, 300), (200_000, 2_000, 20_000)):
        path = tmp_path / f"log-{n}.csv"
        _log(rng, n, users, items).to_csv(path, index=False)
        _same(path)


def test_string_ids_blanks_ties_and_weights(tmp_path: Path) -> None:
    # Ids with surrounding blanks (stripped), numeric ids spelled two ways ("7" and "07"
    # stay distinct, ordered by first appearance), text ids sorted lexicographically,
    # timestamps written as "5.0" and " +5", equal timestamps kept in file order.
    path = tmp_path / "mixed.tsv"
    path.write_text(
        "uid\tiid\tts\tr\n"
        " 7\ta\t5\t1\n"
        "07\tb \t5.0\t2.5\n"
        "7\t c\t +5\t3\n"
        "x\ta\t1\t4\n"
        "7\ta\t3\t5\n"
        "\u00a0x\u3000\tb\t1\t1e2\n"
    )
    _same(path, {"user": "uid", "item": "iid", "timestamp": "ts", "weight": "r"})
    # Without a timestamp: file order within a user.
    nots = tmp_path / "nots.csv"
    nots.write_text("user,item\n2,10\n1,9\n2,3\n1,9\n10,1\n")
    _same(nots)


def test_ml100k_as_csv(tmp_path: Path, data_dir: Path) -> None:
    raw = pd.read_csv(data_dir / "ml-100k" / "u.data", sep="\t", header=None,
                      names=["userId", "movieId", "rating", "timestamp"])
    path = tmp_path / "ml-100k.csv"
    raw.to_csv(path, index=False)
    _same(path)  # userId/movieId/rating/timestamp found without a mapping
    assert import_path(path, "csv-large").fingerprint() == read_table(path).fingerprint()


def test_chosen_by_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "t.csv"
    path.write_text("user,item,timestamp\n1,2,3\n")
    calls = []
    import modrec.data.importers as importers

    monkeypatch.setattr(importers, "read_table_large",
                        lambda p, c: calls.append(p) or read_table_large(p, c))
    import_path(path)
    assert calls == []
    monkeypatch.setenv("MODREC_LARGE_IMPORT_BYTES", "1")
    import_path(path)
    assert calls == [path]
    import_path(path, "csv")  # an explicit format is obeyed
    assert calls == [path]


@pytest.mark.parametrize(("text", "columns", "message"), [
    ("user,item,timestamp\n1,2,3\n4,5,soon\n", None,
     r"bad\.csv: row 2: column 'timestamp' must be numeric.*'soon'"),
    ("user,item,timestamp\n1,2,3\n4,5,99999999999999999999\n", None,
     r"bad\.csv: row 2: column 'timestamp' must be numeric"),
    ("user,item,time\n1,2,3\n", {"timestamp": "when"},
     r"bad\.csv: column 'when' \(for timestamp\) not found"),
    ("user,thing\n1,2\n", None, r"bad\.csv: no item column among \['user', 'thing'\]"),
    ("user,item\n1,2\n,3\n", None, r"bad\.csv: row 2: column 'user' has a missing id"),
    ("user,item\n1,2\nNaN,3\n", None, r"bad\.csv: row 2: column 'user' has a missing id"),
    ("user,item,rating\n1,2,x\n", None, r"bad\.csv: row 1: column 'rating' must be numeric"),
    ("user,item\n1,2\n3,4,5\n", None, r"bad\.csv: not a readable ','-separated table"),
    ("user,item\n", None, r"bad\.csv: table has a header but no rows"),
    ("", None, r"bad\.csv: file is empty"),
])
def test_errors_name_the_file(tmp_path: Path, text: str, columns: dict[str, str] | None,
                              message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(DataFormatError, match=message):
        read_table_large(path, columns)
    with pytest.raises(DataFormatError):
        read_table(path, columns)  # the pandas path refuses the same files
