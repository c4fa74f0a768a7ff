"""The DuckDB (out-of-core) table importers give the same Dataset as the pandas one."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pandas.testing as pdt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modrec.data import DataFormatError
from modrec.data.formats import import_path
from modrec.data.importers import read_table
from modrec.data.large import read_parquet_large, read_table_large

from .fuzz_cases import FAMILIES, cases, materialize


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
    import modrec.data.formats as formats

    monkeypatch.setattr(formats, "read_table_large",
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
    ("user,item\n1,2\n3,4,5\n", None, r"bad\.csv: row 2: expected 2 ','-separated fields "
     r"like the header, got 3"),
    ("user,item\n1,2\n3,4,5,6\n", None, r"bad\.csv: not a readable ','-separated table"),
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


# ---- Parquet (--format parquet-large) ----------------------------------------------------
def _same_parquet(path: Path, columns: dict[str, str] | None = None) -> None:
    a = read_table(path, columns)
    b = read_parquet_large(path, columns)
    assert a.fingerprint() == b.fingerprint()
    pdt.assert_frame_equal(a.interactions, b.interactions)
    pdt.assert_frame_equal(a.items, b.items)
    pdt.assert_frame_equal(a.users, b.users)
    assert (a.name, a.provenance) == (b.name, b.provenance)


def test_parquet_ml20m_shaped_logs(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    for n, users, items in ((1, 1, 1), (5_000, 50, 300), (200_000, 2_000, 20_000)):
        path = tmp_path / f"log-{n}.parquet"
        log = _log(rng, n, users, items)
        log.to_parquet(path, index=False, row_group_size=max(1, n // 7))  # several groups
        _same_parquet(path)
        log.drop(columns="timestamp").to_parquet(path, index=False)  # file order instead
        _same_parquet(path)


def test_parquet_column_types(tmp_path: Path) -> None:
    """Ids of every type become the strings read_table makes of them; timestamps typed
    as TIMESTAMP (each unit, with a time zone) are whole seconds since 1970; weights."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    base = np.array([5, 5, 3, 9, 1, 5], dtype=np.int64) * 1_000
    cases: dict[str, dict[str, pa.Array]] = {
        "strings": {"user": pa.array([" 7", "07", "7", "x", "7", "\u00a0x\u3000"]),
                    "item": pa.array(["a", "b ", " c", "a", "a", "b"]),
                    "timestamp": pa.array(["5", "5.0", " +5", "1", "3", "1"]),
                    "rating": pa.array([1, 2.5, 3, 4, 5, 100], pa.float32())},
        "dictionary": {"user": pa.array(["u2", "u1", "u2", "u10", "u1", "u2"]
                                        ).dictionary_encode(),
                       "item": pa.array([3, 1, 2, 3, 1, 2], pa.uint32()),
                       "timestamp": pa.array(base, pa.int64()).cast(pa.timestamp("ms")),
                       "rating": pa.array([1, 2, 3, 4, 5, 6], pa.int8())},
        "floats": {"user": pa.array([1.0, 2.5, 1.0, 1e20, 2.5, 1.0]),
                   "item": pa.array([3, 4, 5, 3, 4, 5], pa.uint64()),
                   "timestamp": pa.array(base.astype(np.float64))},
        "ns-tz": {"user": pa.array([1, 2, 1, 2, 1, 2], pa.int32()),
                  "item": pa.array([10, 20, 30, 10, 20, 30], pa.int16()),
                  "timestamp": pa.array(base + 1, pa.int64()).cast(
                      pa.timestamp("ns", tz="Europe/Berlin"))},
        "us-bool": {"user": pa.array(["u1", "u2", "u1", "u1", "u2", "u1"]),  # (bool ids: refused)
                    "item": pa.array(["i1", "i2", "i3", "i1", "i2", "i3"]),
                    "timestamp": pa.array(base, pa.int64()).cast(pa.timestamp("us")),
                    "rating": pa.array([True, False, True, True, False, True])},
    }
    for label, table in cases.items():
        path = tmp_path / f"{label}.parquet"
        pq.write_table(pa.table(table), path, row_group_size=4)
        _same_parquet(path)
    # pandas' own files (with an index column pandas reads back as the index)
    frame = pd.DataFrame({"uid": ["b", "a", "b"], "iid": [2, 1, 2],
                          "ts": pd.to_datetime([3, 1, 2], unit="s")}, index=[7, 8, 9])
    frame.to_parquet(tmp_path / "pandas.parquet")
    _same_parquet(tmp_path / "pandas.parquet", {"user": "uid", "item": "iid", "timestamp": "ts"})


def test_parquet_ml100k_and_a_folder_of_parts(tmp_path: Path, data_dir: Path) -> None:
    raw = pd.read_csv(data_dir / "ml-100k" / "u.data", sep="\t", header=None,
                      names=["userId", "movieId", "rating", "timestamp"])
    path = tmp_path / "ml-100k.parquet"
    raw.to_parquet(path, index=False)
    _same_parquet(path)
    assert import_path(path, "parquet-large").fingerprint() == read_table(path).fingerprint()
    # The same rows in three parts (one of them in a subfolder): the files in path order.
    parts = tmp_path / "parts"
    (parts / "b").mkdir(parents=True)
    cuts = [0, 30_000, 70_000, len(raw)]
    for k, name in enumerate(["a-0.parquet", "a-1.parquet", "b/part-0.parquet"]):
        raw.iloc[cuts[k]:cuts[k + 1]].to_parquet(parts / name, index=False)
    (parts / "_SUCCESS").write_text("")  # what Spark leaves beside its parts
    whole = read_table(path)
    assert read_parquet_large(parts).fingerprint() == whole.fingerprint()
    assert import_path(parts).fingerprint() == whole.fingerprint()  # detected as parquet-large


def test_parquet_chosen_by_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "t.parquet"
    pd.DataFrame({"user": [1], "item": [2], "timestamp": [3]}).to_parquet(path)
    calls = []
    import modrec.data.formats as formats

    monkeypatch.setattr(formats, "read_parquet_large",
                        lambda p, c: calls.append(p) or read_parquet_large(p, c))
    import_path(path)
    assert calls == []
    monkeypatch.setenv("MODREC_LARGE_IMPORT_BYTES", "1")
    import_path(path)
    assert calls == [path]
    import_path(path, "parquet")  # an explicit format is obeyed
    assert calls == [path]


@pytest.mark.parametrize(("frame", "columns", "message"), [
    (pd.DataFrame({"user": [1, 2], "thing": [2, 3]}), None,
     r"bad\.parquet: no item column among \['user', 'thing'\]"),
    (pd.DataFrame({"user": [1], "item": [2]}), {"timestamp": "when"},
     r"bad\.parquet: column 'when' \(for timestamp\) not found"),
    (pd.DataFrame({"user": ["a", None, "c"], "item": [1, 2, 3]}), None,
     r"bad\.parquet: row 2: column 'user' has a missing id"),
    (pd.DataFrame({"user": [1, 2, 3], "item": [1.0, 2.0, np.nan]}), None,
     r"bad\.parquet: row 3: column 'item' has a missing id"),
    (pd.DataFrame({"user": ["a", "NA"], "item": [1, 2]}), None,
     r"bad\.parquet: row 2: column 'user' has a missing id"),
    (pd.DataFrame({"user": [1, 2], "item": [1, 2], "timestamp": [1.0, 1.5]}), None,
     r"bad\.parquet: row 2: column 'timestamp' must be numeric"),
    (pd.DataFrame({"user": [1, 2], "item": [1, 2],
                   "timestamp": pd.to_datetime([1, None], unit="s")}), None,
     r"bad\.parquet: row 2: column 'timestamp' must be numeric.*NaT"),
    (pd.DataFrame({"user": [1, 2], "item": [1, 2], "timestamp": ["3", "soon"]}), None,
     r"bad\.parquet: row 2: column 'timestamp' must be numeric.*'soon'"),
    (pd.DataFrame({"user": [1, 2], "item": [1, 2], "rating": [1.0, np.inf]}), None,
     r"bad\.parquet: row 2: column 'rating' must be numeric"),
    (pd.DataFrame({"user": pd.Series([], dtype=int), "item": pd.Series([], dtype=int)}), None,
     r"bad\.parquet: table has a header but no rows"),
])
def test_parquet_errors_name_the_file(tmp_path: Path, frame: pd.DataFrame,
                                      columns: dict[str, str] | None, message: str) -> None:
    path = tmp_path / "bad.parquet"
    frame.to_parquet(path, index=False)
    with pytest.raises(DataFormatError, match=message):
        read_parquet_large(path, columns)
    with pytest.raises(DataFormatError):
        read_table(path, columns)  # the pandas path refuses the same files


def test_parquet_unreadable_files_are_named(tmp_path: Path) -> None:
    text = tmp_path / "text.parquet"
    text.write_text("user,item\n1,2\n")
    good = tmp_path / "good.parquet"
    pd.DataFrame({"user": range(1000), "item": range(1000)}).to_parquet(good)
    cut = tmp_path / "cut.parquet"
    cut.write_bytes(good.read_bytes()[:-100])  # a kill mid-write: no footer
    for path in (text, cut):
        with pytest.raises(DataFormatError, match=rf"{path.name}: not a readable Parquet"):
            read_parquet_large(path)
        with pytest.raises(DataFormatError, match=rf"{path.name}: not a readable Parquet"):
            read_table(path)
    with pytest.raises(DataFormatError, match=r"missing\.parquet: file not found"):
        read_parquet_large(tmp_path / "missing.parquet")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataFormatError, match=r"empty: no \.parquet files in this folder"):
        read_parquet_large(empty)
    # A folder whose parts disagree: the part without the column is named.
    parts = tmp_path / "parts"
    parts.mkdir()
    pd.DataFrame({"user": [1], "item": [2]}).to_parquet(parts / "0.parquet")
    pd.DataFrame({"user": [1], "thing": [2]}).to_parquet(parts / "1.parquet")
    with pytest.raises(DataFormatError, match=r"1\.parquet: column 'item' not found"):
        read_parquet_large(parts)
    with pytest.raises(DataFormatError, match=r"parts: is a folder.*parquet-large"):
        read_table(parts)


@pytest.mark.parametrize("family", FAMILIES)
@settings(max_examples=4, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_parquet_fuzz_cases_read_alike(family: str, data: st.DataObject) -> None:
    """The importer fuzzer's Parquet inputs (tests/data/fuzz_cases.py): DuckDB reads what
    pandas reads, to the same fingerprint, and refuses what it refuses, naming the row."""
    case = data.draw(cases("parquet", family), label="case")
    with tempfile.TemporaryDirectory() as tmp:
        path = materialize(case, Path(tmp) / "data")
        try:
            expected: str | Exception = read_table(path, case.columns).fingerprint()
        except DataFormatError as err:
            expected = err
        if isinstance(expected, str):
            assert read_parquet_large(path, case.columns).fingerprint() == expected
        else:
            with pytest.raises(DataFormatError) as caught:
                read_parquet_large(path, case.columns)
            row = re.search(r": row (\d+)", str(expected))
            if row is not None:  # the same row, if pandas named one
                assert f"t.parquet: row {row.group(1)}:" in str(caught.value), (
                    f"{expected}\n{caught.value}")


# ---- issue 40: what one reader took and the other refused ------------------------------
@pytest.mark.parametrize(("blob", "line"), [
    (b"user_id,item_id\n1,10\n1,\x00\x0030\n2,20\n", 3),  # inside an id
    (b"user_id,item_id,note\n1,10,a\x00b\n", 2),  # in a column no role reads
    (b"user_\x00id,item_id\n1,10\n", 1),  # in the header
    (b"user_id,item_id\r\n1,10\r\n2,20\r\n" + b"\x00" * 40, 4),  # a zero-filled tail
    (b"user_id,item_id\r1,10\r\xff2,20\r", 3),  # invalid UTF-8, lone CR endings
])
def test_nul_and_invalid_bytes_are_refused_alike(tmp_path: Path, blob: bytes,
                                                 line: int) -> None:
    """The DuckDB reader took a NUL for a character of an id (item '\\x00\\x0030')
    where read_table refused the file; both now say the same, naming file and line."""
    path = tmp_path / "t.csv"
    path.write_bytes(blob)
    with pytest.raises(DataFormatError) as pandas:
        read_table(path)
    with pytest.raises(DataFormatError) as duck:
        read_table_large(path)
    assert str(duck.value) == str(pandas.value)
    assert re.match(rf"{re.escape(str(path))}:{line}: (NUL byte|invalid UTF-8)", str(duck.value))


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(blob=st.lists(st.sampled_from([b"a", b"1", b",", b"\n", b"\r", b"\r\n", b"\x00",
                                      b"\xc3\xa9", b"\xe2\x82\xac", b"\xf0\x9f\x98\x80",
                                      b"\xc3", b"\xff", b"\x80", b"\xef\xbb\xbf"]),
                     max_size=12).map(b"".join),
       chunk=st.integers(1, 8))
def test_the_streaming_check_matches_the_whole_file_one(blob: bytes, chunk: int) -> None:
    """check_text reads in blocks (here 1 to 8 bytes, so that line breaks, CRLF pairs
    and characters fall across them) and says what read_text says of the whole."""
    from modrec.data import files

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "t.csv"
        path.write_bytes(blob)
        try:
            files.read_text(path)
            expected = None
        except DataFormatError as err:
            expected = str(err)
        saved, files._CHUNK = files._CHUNK, chunk
        try:
            files.check_text(path)
            got = None
        except DataFormatError as err:
            got = str(err)
        finally:
            files._CHUNK = saved
    assert got == expected


@pytest.mark.parametrize("family", FAMILIES)
@settings(max_examples=8, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_csv_fuzz_cases_read_alike(family: str, data: st.DataObject) -> None:
    """The importer fuzzer's CSV/TSV inputs: DuckDB reads what read_table reads, to the
    same fingerprint, and refuses what it refuses (NUL bytes and invalid UTF-8 with the
    same message; a row of another width naming its row)."""
    case = data.draw(cases("csv", family), label="case")
    with tempfile.TemporaryDirectory() as tmp:
        path = materialize(case, Path(tmp) / "data")
        try:
            expected: str | Exception = read_table(path, case.columns).fingerprint()
        except DataFormatError as err:
            expected = err
        if isinstance(expected, str):
            assert read_table_large(path, case.columns).fingerprint() == expected
        else:
            with pytest.raises(DataFormatError) as caught:
                read_table_large(path, case.columns)
            if "NUL byte" in str(expected) or "invalid UTF-8" in str(expected):
                assert str(caught.value) == str(expected)


def test_a_row_of_another_width_names_its_row(tmp_path: Path) -> None:
    """DuckDB dropped empty fields after the last column ('1,2,'), which read_table
    refuses; a row too short or too long is named by both."""
    for text, row, got in (("user,item\n1,2\n3,4,\n", 2, 3), ("user,item\n1,2,,\n", 1, None),
                           ("user,item,ts\n1,2,3\n4,5\n", 2, 2), ("user,item\n1,2\n3,4,5\n", 2, 3)):
        path = tmp_path / "t.csv"
        path.write_text(text)
        with pytest.raises(DataFormatError, match=r"t\.csv:\d+: expected \d+ ','-separated"):
            read_table(path)
        message = (rf"t\.csv: row {row}: expected \d+ ','-separated fields like the header, "
                   rf"got {got}" if got is not None else r"t\.csv: not a readable")
        with pytest.raises(DataFormatError, match=message):
            read_table_large(path)
    path = tmp_path / "t.csv"
    path.write_text('user,item\n1,"a\nb"\n2,""\n')  # a line break inside quotes, an empty id
    with pytest.raises(DataFormatError, match=r"t\.csv:4: column 'item' has a missing id"):
        read_table(path)
    with pytest.raises(DataFormatError, match=r"t\.csv: row 2: column 'item' has a missing id"):
        read_table_large(path)
    for text in ('user,item\n1,"a\nb"\n', "user,item\n1,2\n \t \n3,4\n  \n"):  # blanks alone
        path.write_text(text)
        assert read_table_large(path).fingerprint() == read_table(path).fingerprint()


def test_parquet_datetimes_are_seconds_and_odd_types_refused(tmp_path: Path) -> None:
    """A datetime64 column read as microseconds, bool items read as the items 'True'
    and 'False', a list-typed user column read as ids like '[10]': now seconds since
    1970 (rounded down; the exact time orders a second's events), and refusals naming
    the column and file, alike in both Parquet readers."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "t.parquet"
    exact = np.array([978300760_900, 978300760_100, 978300761_000, -1_500], dtype=np.int64)
    pq.write_table(pa.table({"user_id": [1, 1, 1, 2], "item_id": [10, 11, 12, 10],
                             "timestamp": pa.array(exact).cast(pa.timestamp("ms"))}), path)
    for read in (read_table, read_parquet_large):
        ds = read(path)
        assert ds.interactions["timestamp"].tolist() == [978300760, 978300760, 978300761, -2]
        assert ds.interactions["item"].tolist() == [2, 1, 3, 1]  # item 11 came first
    _same_parquet(path)
    for types, message in (
            ({"user_id": pa.array([1, 1, 2]), "item_id": pa.array([True, False, True])},
             r"t\.parquet: column 'item_id' \(item\) holds booleans; expected an item id"),
            ({"user_id": pa.array([[10], [10], [11]]), "item_id": pa.array([1, 2, 3])},
             r"t\.parquet: column 'user_id' \(user\) holds nested values \(list<"),
            ({"user_id": pa.array([1, 2]), "item_id": pa.array([1, 2]),
              "timestamp": pa.array([{"s": 1}, {"s": 2}])},
             r"t\.parquet: column 'timestamp' \(timestamp\) holds nested values \(struct<"),
            ({"user_id": pa.array([True, False]).dictionary_encode(), "item_id": [1, 2]},
             r"t\.parquet: column 'user_id' \(user\) holds booleans")):
        pq.write_table(pa.table(types), path)
        for read in (read_table, read_parquet_large):
            with pytest.raises(DataFormatError, match=message):
                read(path)
