from __future__ import annotations

import bz2
import gzip
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from modrec.data import DataFormatError, load_dataset
from modrec.data.formats import detect_format, import_path
from modrec.data.importers import (
    read_movielens,
    read_pairs,
    read_recbole,
    read_sequences,
    read_table,
)
from modrec.data.large import read_table_large


def test_recbole_atomic_ml100k(data_dir: Path) -> None:
    ds = read_recbole(data_dir / "ml-100k" / "ml-100k.inter")
    assert (ds.num_users, ds.num_items, len(ds.interactions)) == (943, 1682, 100_000)
    assert ds.has_timestamps
    assert ds.interactions["item"].min() == 1  # 0 is padding
    assert ds.items.loc[ds.items["item_id"] == "1", "title"].item() == "Toy Story"
    # chronological within each user
    ts = ds.interactions.groupby("user")["timestamp"].apply(lambda s: s.is_monotonic_increasing)
    assert ts.all()


def test_movielens_original_matches_recbole(data_dir: Path) -> None:
    original = read_movielens(data_dir / "ml-100k")
    atomic = read_recbole(data_dir / "ml-100k" / "ml-100k.inter")
    assert len(original.interactions) == len(atomic.interactions)
    assert original.num_items == atomic.num_items
    assert "Toy Story (1995)" in set(original.items["title"])


def test_sequences_ml1m(data_dir: Path) -> None:
    ds = read_sequences(data_dir / "ml-1m" / "ml1m_user_sequences_origids.txt")
    assert (ds.num_users, ds.num_items, len(ds.interactions)) == (6040, 3706, 1_000_209)
    first = ds.sequences()[ds.user_index("1")]
    assert ds.items["item_id"].to_numpy()[first[:3] - 1].tolist() == ["3186", "1721", "1022"]


def test_pairs_ml1m_sasrec(data_dir: Path) -> None:
    ds = read_pairs(data_dir / "ml-1m" / "ml-1m.txt")
    assert (ds.num_users, ds.num_items, len(ds.interactions)) == (6040, 3416, 999_611)


def test_presplit_recbole_rebuilds_leave_one_out(data_dir: Path) -> None:
    from modrec.data import leave_one_out

    folder = data_dir / "amazon-scientific"
    ds = read_recbole(folder / "Scientific.test.inter")
    assert ds.num_users == 8442 and ds.num_items == 4385
    split = leave_one_out(ds)
    test = pd.read_csv(folder / "Scientific.test.inter", sep="\t")
    # user 0's test target in the file is external item 13
    u = ds.user_index("0")
    row = int(np.flatnonzero(split.test.users == u)[0])
    assert ds.items["item_id"].to_numpy()[split.test.targets[row] - 1] == str(
        test.iloc[0]["item_id:token"]
    )
    assert ds.items["text"].notna().mean() > 0.99


def test_table_with_column_mapping(data_dir: Path, tmp_path: Path) -> None:
    raw = pd.read_csv(data_dir / "ml-100k" / "u.data", sep="\t", header=None,
                      names=["uid", "movie", "stars", "when"])
    csv = tmp_path / "ratings.csv"
    raw.to_csv(csv, index=False)
    ds = read_table(csv, {"user": "uid", "item": "movie", "timestamp": "when"})
    assert (ds.num_users, ds.num_items, len(ds.interactions)) == (943, 1682, 100_000)
    parquet = tmp_path / "ratings.parquet"
    raw.rename(columns={"uid": "userId", "movie": "movieId"}).to_parquet(parquet)
    assert read_table(parquet).num_items == 1682  # columns guessed from their names


def test_detect_format(data_dir: Path) -> None:
    assert detect_format(data_dir / "ml-1m" / "ml-1m.txt") == "pairs"
    assert detect_format(data_dir / "amazon" / "Beauty.txt") == "sequences"
    assert detect_format(data_dir / "ml-100k" / "ml-100k.inter") == "recbole"
    assert detect_format(data_dir / "ml-100k") == "movielens"


def test_load_by_path_and_cache(data_dir: Path) -> None:
    ds = load_dataset(str(data_dir / "amazon" / "Toys_and_Games.txt"))
    again = load_dataset(str(data_dir / "amazon" / "Toys_and_Games.txt"))
    assert len(ds.interactions) == len(again.interactions) == 167_597


# ---- broken files ---------------------------------------------------------------------
def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_wrong_column_count(tmp_path: Path) -> None:
    path = _write(tmp_path, "pairs.txt", "1 2\n1 3\n2 4 5 6\n")
    with pytest.raises(DataFormatError, match=r"pairs.txt:3: expected 2 columns"):
        read_pairs(path)


def test_non_integer_ids(tmp_path: Path) -> None:
    path = _write(tmp_path, "seq.txt", "1 2 3\n2 4 x5\n")
    with pytest.raises(DataFormatError, match=r"seq.txt:2: expected integer ids .* 'x5'"):
        read_sequences(path)


def test_ratings_dat_bad_line(tmp_path: Path) -> None:
    _write(tmp_path, "ratings.dat", "1::2::5::978300760\n1::3::5\n")
    with pytest.raises(DataFormatError, match=r"ratings.dat:2: expected 4 fields"):
        read_movielens(tmp_path)


def test_empty_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "empty.txt", "\n\n")
    with pytest.raises(DataFormatError, match="empty.txt: file is empty"):
        read_sequences(path)
    with pytest.raises(DataFormatError, match="empty.csv: file is empty"):
        read_table(_write(tmp_path, "empty.csv", ""))


def test_unknown_format(tmp_path: Path) -> None:
    path = _write(tmp_path, "data.xlsx", "whatever")
    with pytest.raises(DataFormatError, match=r"data.xlsx: unknown format '.xlsx'; pass --format"):
        import_path(path)


def test_recbole_without_typed_header(tmp_path: Path) -> None:
    path = _write(tmp_path, "x.inter", "user\titem\n1\t2\n")
    with pytest.raises(DataFormatError, match=r"x.inter:1: expected a RecBole header"):
        read_recbole(path)


def test_table_missing_column(tmp_path: Path) -> None:
    path = _write(tmp_path, "t.csv", "a,b\n1,2\n")
    with pytest.raises(DataFormatError, match=r"t.csv: no user column .* --columns user="):
        read_table(path)
    with pytest.raises(DataFormatError, match=r"t.csv:3: column 'b' must be numeric"):
        read_table(_write(tmp_path, "t.csv", "u,i,b\n1,2,3\n1,3,oops\n"),
                   {"user": "u", "item": "i", "timestamp": "b"})


# ---- issue 40: hostile inputs ---------------------------------------------------------
def test_interleaved_pairs_are_read_as_pairs(tmp_path: Path) -> None:
    """A pairs file written in time order interleaves its users: 1,200 users, 4 rows
    each, round robin, so no user appears twice in the first 1,000 lines. Guessed as
    sequences, its timestamps became items."""
    rows = [f"{user} {100 + (user * 7 + k) % 50} {1_000_000 + k * 10_000 + user}"
            for k in range(4) for user in range(1, 1201)]
    path = _write(tmp_path, "log.txt", "\n".join(rows) + "\n")
    assert detect_format(path) == "pairs"
    ds = import_path(path)
    assert (ds.num_users, len(ds.interactions), ds.has_timestamps) == (1200, 4800, True)
    assert ds.num_items == 50  # items, not timestamps
    first = ds.sequences()[ds.user_index("1")]
    assert ds.items["item_id"].to_numpy()[first - 1].tolist() == ["107", "108", "109", "110"]
    assert len(load_dataset(path).interactions) == 4800


def test_three_fields_and_no_repeated_user_is_ambiguous(tmp_path: Path) -> None:
    """'user item timestamp' with one row per user, or 'user item item': refused, with
    the --format that decides."""
    path = _write(tmp_path, "odd.txt", "1 10 978300760\n2 11 978300761\n3 10 978300762\n")
    with pytest.raises(DataFormatError, match=r"odd\.txt: cannot tell pairs from sequences: "
                       r"all 3 lines have 3 fields .* --format pairs or --format sequences"):
        import_path(path)
    assert len(import_path(path, "pairs").interactions) == 3
    assert len(import_path(path, "sequences").interactions) == 6
    # Lines of varying length are sequences; pairs repeat a user: both still guessed.
    assert detect_format(_write(tmp_path, "s.txt", "1 10 11\n2 11 12 13\n")) == "sequences"
    assert detect_format(_write(tmp_path, "p.txt", "1 10 5\n2 11 6\n1 12 7\n")) == "pairs"


def test_gzip_files_are_read_as_what_they_hold(tmp_path: Path) -> None:
    """Both table readers read a gzip-compressed CSV (by its bytes, whatever its name),
    and so do the text formats; a damaged stream and other compressions are named."""
    text = "user_id,item_id,timestamp\n1,10,5\n1,11,6\n2,10,7\n"
    plain = read_table(_write(tmp_path, "t.csv", text))
    for name in ("t.csv.gz", "misnamed.csv"):
        path = tmp_path / name
        path.write_bytes(gzip.compress(text.encode()))
        for read in (lambda p: import_path(p), read_table, read_table_large):
            ds = read(path)
            assert ds.fingerprint() == plain.fingerprint()
            assert ds.name == ("t" if name == "t.csv.gz" else "misnamed")
    tsv = tmp_path / "t.tsv.gz"
    tsv.write_bytes(gzip.compress(text.replace(",", "\t").encode()))
    assert import_path(tsv, "csv-large").fingerprint() == plain.fingerprint()
    pairs = tmp_path / "pairs.txt.gz"
    pairs.write_bytes(gzip.compress(b"1 10\n1 11\n2 10\n"))
    assert detect_format(pairs) == "pairs" and len(import_path(pairs).interactions) == 3

    cut = tmp_path / "cut.csv.gz"
    cut.write_bytes((tmp_path / "t.csv.gz").read_bytes()[:-12])
    for fmt in ("csv", "csv-large"):
        with pytest.raises(DataFormatError, match=r"cut\.csv\.gz: damaged or truncated gzip"):
            import_path(cut, fmt)
    packed = tmp_path / "t.csv.bz2"
    packed.write_bytes(bz2.compress(text.encode()))
    for fmt in (None, "csv", "csv-large"):
        with pytest.raises(DataFormatError, match=r"t\.csv\.bz2: the file is bzip2-compressed; "
                           r"expected text .* bunzip2"):
            import_path(packed, fmt)


def test_movielens_ratings_file_names_its_folder(tmp_path: Path) -> None:
    folder = tmp_path / "ml-1m"
    folder.mkdir()
    ratings = _write(folder, "ratings.dat", "1::2::5::978300760\n1::3::4::978300761\n")
    for fmt in ("movielens", None):
        with pytest.raises(DataFormatError, match=rf"ratings\.dat: is the ratings file of a "
                           rf"MovieLens archive; expected the folder that holds it: pass "
                           rf"{re.escape(str(folder))} instead"):
            import_path(ratings, fmt)
    assert len(import_path(folder, "movielens").interactions) == 2
