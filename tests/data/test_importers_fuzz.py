"""Malformed input files, generated: every importer either reads a valid dataset or fails
with a `DataFormatError` that names the file, the line and what it expected; and a
failed or crashed import never leaves a half-written dataset in the cache.

The generators and the oracle live in `fuzz_cases` (shared with the long run,
``benchmarks/fuzz_importers.py``). Here every format meets every mutation family a few
times, derandomized (a fixed seed per test, no example database), in about 15 s.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modrec.data import DataFormatError, Dataset, load_dataset, public
from modrec.data.formats import import_path

from .fuzz_cases import FAMILIES, FORMATS, TALLY, cases, check_cache, run_case

EXAMPLES = 8  # per format and family: 7 x 17 x 8 = 952 generated inputs; conftest reports


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("fmt", FORMATS)
@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_malformed_input_is_read_or_refused_clearly(fmt: str, family: str,
                                                    data: st.DataObject) -> None:
    case = data.draw(cases(fmt, family), label="case")
    with tempfile.TemporaryDirectory() as tmp:
        outcome = run_case(case, Path(tmp))
    TALLY[outcome.kind] += 1
    assert outcome.kind in ("valid", "clean"), f"{case.describe()}\n{outcome.detail}"


# ---- the defects the fuzzing found, one input each -----------------------------------
_HEAD = "user_id:token\titem_id:token\ttimestamp:float\n"
_SPLIT = "user_id:token\titem_id_list:token_seq\titem_id:token\n"
DEFECTS = {
    # name: (files, entry, format, what the error must say; None: a valid dataset)
    "pairs line of another width, format guessed": (
        {"p.txt": b"1 10 100\n1 11 200\n1 12\n2 10 300\n"}, "p.txt", None,
        r"p.txt:3: expected 3 columns like line 1, got 2 \(read as pairs"),
    "underscore in an id": ({"s.txt": b"1 2 1_000\n"}, "s.txt", "sequences",
                            r"s.txt:1: expected integer ids .* got '1_000'"),
    "Arabic-Indic digits": ({"s.txt": "1 2\n\u0661 3\n".encode()}, "s.txt", "sequences",
                            r"s.txt:2: expected integer ids"),
    "superscript digit": ({"s.txt": "1 2 \u00b2\n".encode()}, "s.txt", "sequences",
                          r"s.txt:1: expected integer ids .* got '\u00b2'"),
    "id beyond int64": ({"p.txt": b"1 2\n1 9223372036854775808\n"}, "p.txt", "pairs",
                        r"p.txt:2: 9223372036854775808 does not fit in 64 bits"),
    "timestamp beyond int64": ({"ratings.dat": b"1::2::5::99999999999999999999\n"}, "",
                               "movielens", r"ratings.dat:1: .* does not fit in 64 bits"),
    "invalid UTF-8": ({"s.txt": b"1 2\n3 \xff4\n"}, "s.txt", "sequences",
                      r"s.txt:2: invalid UTF-8 .* expected UTF-8 text"),
    "NUL bytes": ({"p.txt": b"1 2\n1 3\n\x00\x00\x00"}, "p.txt", None,
                  r"p.txt:3: NUL byte .* expected text"),
    "a BOM": ({"s.txt": b"\xef\xbb\xbf1 2 3\n"}, "s.txt", None, None),
    "CR line endings": ({"t.csv": b"user_id,item_id\r1,2\r3,4\r"}, "t.csv", "csv", None),
    "a folder": ({"p.txt": None}, "p.txt", "pairs", r"p.txt: is a folder .* expected a file"),
    "first CSV row one field too long": (
        {"t.csv": b"user_id,item_id\n1,2,3\n"}, "t.csv", "csv",
        r"t.csv:2: expected 2 ',' *-separated fields like the header \(line 1\), got 3"),
    "short CSV row": ({"t.csv": b"user_id,item_id,timestamp\n1,2,5\n\n1,3\n"}, "t.csv",
                      "csv", r"t.csv:4: expected 3 .* got 2"),
    "blank CSV id": ({"t.csv": b"user_id,item_id\n1,2\n,3\n"}, "t.csv", "csv",
                     r"t.csv:3: column 'user_id' has a missing id"),
    "NaN id": ({"t.tsv": b"user_id\titem_id\n1\tNaN\n"}, "t.tsv", "csv",
               r"t.tsv:2: column 'item_id' has a missing id"),
    "timestamp 1e30": ({"t.csv": b"user_id,item_id,timestamp\n1,2,1e30\n"}, "t.csv", "csv",
                       r"t.csv:2: column 'timestamp' must be numeric: expected an integer"),
    "fractional timestamp": ({"x.inter": (_HEAD + "1\t2\t1.5\n").encode()}, "x.inter",
                             "recbole", r"x.inter:2: .* expected an integer timestamp"),
    "rating beyond float32": ({"t.csv": b"user_id,item_id,rating\n1,2,1e39\n"}, "t.csv",
                              "csv", r"t.csv:2: column 'rating' must be numeric"),
    "RecBole header only": ({"x.inter": _HEAD.encode()}, "x.inter", "recbole",
                            r"x.inter: .* no rows; expected at least one interaction"),
    "short RecBole row": ({"x.inter": (_HEAD + "1\t2\t5\n1\t3\n").encode()}, "x.inter",
                          "recbole", r"x.inter:3: expected 3 '\\t'-separated fields"),
    "pre-split valid file with an extra row": (
        {"x.train.inter": _SPLIT.encode(), "x.test.inter": (_SPLIT + "1\t1 2\t3\n").encode(),
         "x.valid.inter": (_SPLIT + "1\t1\t2\n2\t1\t2\n").encode()}, "x.test.inter", "recbole",
        r"x.valid.inter:3: user '2' has no row in .*x.test.inter"),
    "movies.dat row without a title": (
        {"ratings.dat": b"1::2::5::100\n", "movies.dat": b"2::Heat (1995)::Drama\n3\n"}, "",
        "movielens", r"movies.dat:2: expected 3 fields"),
    "truncated Parquet": ({"t.parquet": b"PAR1\x15\x04"}, "t.parquet", "parquet",
                          r"t.parquet: not a readable Parquet file"),
}


@pytest.mark.parametrize("name", DEFECTS)
def test_found_defect(name: str, tmp_path: Path, cache: Path) -> None:
    files, entry, fmt, message = DEFECTS[name]
    source = tmp_path / "source"
    source.mkdir()
    for file, blob in files.items():
        if blob is None:
            (source / file).mkdir()
        else:
            (source / file).write_bytes(blob)
    for read in (lambda: import_path(source / entry, fmt),
                 lambda: load_dataset(source / entry, fmt)):
        if message is None:
            ds = read()
            assert ds.num_items > 0 and set(ds.users["user_id"]) <= {"1", "3"}
        else:
            with pytest.raises(DataFormatError, match=message):
                read()
    assert not check_cache(cache)


def test_parquet_unsigned_timestamp_beyond_int64_names_the_row(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    pd.DataFrame({"user_id": [1, 1], "item_id": [2, 3],
                  "timestamp": np.array([5, 2**64 - 1], dtype=np.uint64)}).to_parquet(path)
    with pytest.raises(DataFormatError, match=r"t.parquet: row 2: column 'timestamp'"):
        import_path(path)


# ---- the cache: the complete previous version, or nothing -----------------------------
def _pairs_file(path: Path, rows: list[str]) -> Path:
    path.write_text("".join(f"{r}\n" for r in rows))
    return path


def _only_entry(cache: Path) -> Path:
    entries = list(cache.iterdir())
    assert len(entries) == 1, f"stray entries in the cache: {entries}"
    return entries[0]


def _same(a: Dataset, b: Dataset) -> bool:
    return a.fingerprint() == b.fingerprint()


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("MODREC_CACHE_DIR", str(folder))
    return folder


def _touch_later(path: Path) -> None:
    """Move the mtime on, so the cache sees a changed source even on coarse clocks."""
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))


def test_a_failing_reimport_keeps_the_previous_cached_version(cache: Path,
                                                              tmp_path: Path) -> None:
    source = _pairs_file(tmp_path / "pairs.txt", ["1 10 100", "1 11 200", "2 10 300"])
    first = load_dataset(source)
    entry = _only_entry(cache)
    stamp = (entry / "source.json").read_text()

    source.write_text("1 10 100\n1 11 2x00\n")  # the changed source is broken
    _touch_later(source)
    with pytest.raises(DataFormatError, match=r"pairs.txt:2: expected integer"):
        load_dataset(source)
    # The previous version is still whole, and still marked as the previous source's:
    # it is never served for the broken file.
    assert _only_entry(cache) == entry
    assert _same(Dataset.read(entry), first)
    assert (entry / "source.json").read_text() == stamp
    with pytest.raises(DataFormatError):
        load_dataset(source)

    source.write_text("1 10 100\n1 12 200\n")
    _touch_later(source)
    again = load_dataset(source)
    assert len(again.interactions) == 2 and not _same(again, first)
    assert _same(Dataset.read(_only_entry(cache)), again)


@pytest.mark.parametrize("error", [OSError("disk full"), RuntimeError("killed")])
def test_a_crash_mid_save_leaves_the_previous_version(cache: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      error: Exception) -> None:
    """to_parquet fails after the first of the three files: the cache entry is the
    complete previous version, with no temporary folder left beside it."""
    source = _pairs_file(tmp_path / "pairs.txt", ["1 10 100", "1 11 200", "2 10 300"])
    first = load_dataset(source)
    entry = _only_entry(cache)
    source.write_text("1 10 100\n1 12 200\n3 10 300\n")
    _touch_later(source)

    real = pd.DataFrame.to_parquet
    calls = []

    def crashing(self: pd.DataFrame, *args: object, **kwargs: object) -> object:
        calls.append(args)
        if len(calls) > 1:
            raise error
        return real(self, *args, **kwargs)

    monkeypatch.setattr(pd.DataFrame, "to_parquet", crashing)
    if isinstance(error, OSError):  # a cache that cannot be written only costs speed
        assert len(load_dataset(source).interactions) == 3
    else:
        with pytest.raises(RuntimeError, match="killed"):
            load_dataset(source)
    assert len(calls) == 2
    monkeypatch.setattr(pd.DataFrame, "to_parquet", real)
    assert _only_entry(cache) == entry and not check_cache(cache)
    assert _same(Dataset.read(entry), first)
    # and the next load converts the new source rather than serving the old one
    assert len(load_dataset(source).interactions) == 3


def test_a_crash_between_the_renames_restores_the_previous_version(
        cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = _pairs_file(tmp_path / "pairs.txt", ["1 10 100", "1 11 200"])
    first = load_dataset(source)
    entry = _only_entry(cache)
    source.write_text("1 10 100\n1 12 200\n")
    _touch_later(source)

    real = Path.rename

    def failing(self: Path, target: Path) -> Path:
        if self.name.startswith(f".{entry.name}.") and "old-" not in self.name:
            raise KeyboardInterrupt  # the new folder never gets into place
        return real(self, target)

    monkeypatch.setattr(Path, "rename", failing)
    with pytest.raises(KeyboardInterrupt):
        load_dataset(source)
    monkeypatch.setattr(Path, "rename", real)
    assert _only_entry(cache) == entry and not check_cache(cache)
    assert _same(Dataset.read(entry), first)


def test_a_damaged_cache_entry_is_converted_again(cache: Path, tmp_path: Path) -> None:
    source = _pairs_file(tmp_path / "pairs.txt", ["1 10 100", "1 11 200"])
    first = load_dataset(source)
    entry = _only_entry(cache)
    (entry / "interactions.parquet").write_bytes(b"PAR1 not really")
    assert _same(load_dataset(source), first)
    assert _same(Dataset.read(entry), first)
    json.loads((entry / "source.json").read_text())
    with pytest.raises(DataFormatError, match="expected"):
        (entry / "items.parquet").write_bytes(b"")
        Dataset.read(entry)


def test_cache_keys_stay_inside_the_cache(cache: Path, tmp_path: Path) -> None:
    """Sanity for the tests above: the entry is named by `_cache_key`."""
    source = _pairs_file(tmp_path / "pairs.txt", ["1 10", "1 11"])
    load_dataset(source)
    assert _only_entry(cache).name == public._cache_key(source)
