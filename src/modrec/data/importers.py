"""Importers: one function per source format, each returning a canonical `Dataset`.

Formats:
  ``sequences``  text, one user per line: ``user item item ...`` (chronological)
  ``pairs``      text, one interaction per line: ``user item [timestamp]``
  ``recbole``    RecBole atomic files (``.inter`` with ``name:type`` headers, optional
                 ``.item``/``.user``; also pre-split ``X.train/valid/test.inter``)
  ``csv`` / ``parquet``  a table with a column mapping (user, item, [timestamp], [weight])
  ``csv-large`` / ``parquet-large``  the same tables read by DuckDB under a memory
                 limit (see `modrec.data.large`); chosen by itself for a detected
                 CSV/TSV or Parquet file of at least ``MODREC_LARGE_IMPORT_BYTES``
                 (1 GiB), and for a folder of Parquet files; ``--format csv`` or
                 ``--format parquet`` forces the in-memory reader
  ``movielens``  the original GroupLens archives, unpacked (ml-1m ``ratings.dat``,
                 ml-100k ``u.data``)

A gzip-compressed file is read as the file it holds (``x.csv.gz`` is a CSV). Every
importer fails with a `DataFormatError` naming the file, the line and what it
expected; none of them writes anything. `import_path` then drops (or keeps) the
consecutive repeats of the result (`settle_repeats`).
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import gzip
import io
import re
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO, cast

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from modrec.data.dataset import DataFormatError, Dataset, build_dataset, settle_repeats
from modrec.data.large import (
    check_parquet_types,
    large_threshold,
    read_parquet_large,
    read_table_large,
)

FORMATS = ("sequences", "pairs", "recbole", "csv", "csv-large", "parquet", "parquet-large",
           "movielens")

# Column names that the table importer recognises when no mapping is given.
_COLUMN_GUESSES = {
    "user": ("user", "user_id", "userid", "userId", "uid", "user_id:token"),
    "item": ("item", "item_id", "itemid", "itemId", "iid", "movieId", "item_id:token"),
    "timestamp": ("timestamp", "time", "ts", "timestamp:float"),
    "weight": ("weight", "rating", "rating:float"),
}


# Spellings that mean "no value" to pandas and to most tools that wrote the file; an id
# spelled so would be indistinguishable from a missing one once it is saved.
_MISSING = frozenset({"", "nan", "NaN", "NAN", "NA", "N/A", "n/a", "null", "NULL", "None",
                      "<NA>", "-nan", "-NaN"})
_INT = re.compile(r"[+-]?[0-9]+")
_INT_TEXT = re.compile(r"[+-]?[0-9]+(?:\.0*)?")  # 881250949 or 881250949.0
_INT64 = np.iinfo(np.int64)


# ---- text formats ---------------------------------------------------------------------
def _require_file(path: Path) -> None:
    if not path.exists():
        raise DataFormatError(f"{path}: file not found; expected a file here")
    if not path.is_file():
        raise DataFormatError(f"{path}: is a folder (or not a regular file); expected a file")


def _line_at(raw: bytes, offset: int) -> int:
    """1-based line of a byte offset, counting CRLF, LF and lone CR as one break each."""
    return _breaks(raw[:offset]) + 1


def _breaks(data: bytes, after_cr: bool = False) -> int:
    """Line breaks in ``data`` (CRLF, LF and lone CR one each); ``after_cr``: the bytes
    before ``data`` ended with a CR, which a leading LF completes rather than repeats."""
    count = data.count(b"\n") + data.count(b"\r") - data.count(b"\r\n")
    return count - 1 if after_cr and data.startswith(b"\n") else count


# Files compressed by a tool other than gzip, by their first bytes: (name, how to unpack).
_PACKED = ((b"PK\x03\x04", "a zip archive", "unzip it"),
           (b"BZh", "bzip2-compressed", "decompress it with bunzip2"),
           (b"\xfd7zXZ\x00", "xz-compressed", "decompress it with unxz"),
           (b"\x28\xb5\x2f\xfd", "zstd-compressed", "decompress it with unzstd"))
_CHUNK = 1 << 24  # bytes a streaming check reads at a time


def compression(path: Path) -> str | None:
    """``"gzip"`` for a gzip-compressed file (read as if it were decompressed, by every
    text reader and by DuckDB), None for a plain one. Another compression is refused:
    its bytes would otherwise be reported as a NUL byte or invalid text."""
    with path.open("rb") as f:
        magic = f.read(10)
    if magic.startswith(b"\x1f\x8b"):
        return "gzip"
    for prefix, what, how in _PACKED:
        if magic.startswith(prefix) and (prefix != b"BZh" or magic[4:10] == b"1AY&SY"):
            raise DataFormatError(
                f"{path}: the file is {what}; expected text (or gzip-compressed text, which "
                f"is read as it is): {how} and pass the file it holds")
    return None


def _gzip_error(path: Path, err: Exception) -> DataFormatError:
    return DataFormatError(
        f"{path}: damaged or truncated gzip file ({err}); expected a complete gzip stream "
        "(`gzip -t FILE` checks one)")


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, decompressed when it is gzip-compressed."""
    raw = path.read_bytes()
    if compression(path) == "gzip":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise _gzip_error(path, err) from None
    return raw


@contextlib.contextmanager
def _open_bytes(path: Path) -> Iterator[BinaryIO]:
    """The file's bytes as a stream, decompressed when it is gzip-compressed; a damaged
    gzip stream is a `DataFormatError` naming the file."""
    if compression(path) != "gzip":
        with path.open("rb") as f:
            yield f
        return
    try:
        with gzip.open(path, "rb") as f:
            yield cast(BinaryIO, f)
    except (OSError, EOFError, zlib.error) as err:
        raise _gzip_error(path, err) from None


@contextlib.contextmanager
def open_text(path: Path, encoding: str = "utf-8", errors: str = "strict",
              newline: str | None = None) -> Iterator[io.TextIOWrapper]:
    """The file as text, decompressed on the fly when it is gzip-compressed."""
    with _open_bytes(path) as f:
        yield io.TextIOWrapper(f, encoding=encoding, errors=errors, newline=newline)


def _nul_error(path: Path, line: int, offset: int) -> DataFormatError:
    return DataFormatError(
        f"{path}:{line}: NUL byte at byte {offset}; expected text (is the file truncated or "
        "binary?)")


def _decode_error(path: Path, line: int, encoding: str, err: UnicodeDecodeError, offset: int
                  ) -> DataFormatError:
    return DataFormatError(
        f"{path}:{line}: invalid {encoding.upper()} ({err.reason} at byte {offset}); expected "
        f"{encoding.upper()} text")


def _read_text(path: Path, encoding: str = "utf-8") -> str:
    """The file's text (decompressed if it is gzip-compressed), without a byte-order
    mark and with every line ending as "\\n".

    A NUL byte or bytes that are not valid in ``encoding`` are reported with their line:
    both mean a truncated, binary or mis-encoded file, whose fields must not be read as
    data (a zero-filled tail is what a crash mid-write often leaves)."""
    _require_file(path)
    raw = _read_bytes(path).removeprefix(codecs.BOM_UTF8)
    nul = raw.find(b"\x00")
    if nul >= 0:
        raise _nul_error(path, _line_at(raw, nul), nul)
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as err:
        raise _decode_error(path, _line_at(raw, err.start), encoding, err, err.start) from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def check_text(path: Path) -> None:
    """What `_read_text` refuses in a file, found without holding the file: a NUL byte
    (anywhere, first) or else invalid UTF-8, with the same message, line and byte
    (counted after a byte-order mark). For readers that hand the file to another parser
    (DuckDB), which would take a NUL for a character of an id."""
    _require_file(path)
    start = 0  # offset of ``data`` in the (decompressed) text
    line = 1  # the line ``data`` starts on
    after_cr = False
    carry = b""  # the start of a character that the previous block cut in two
    invalid: DataFormatError | None = None  # the first, reported if there is no NUL
    with _open_bytes(path) as f:
        block = f.read(_CHUNK).removeprefix(codecs.BOM_UTF8)
        while block or carry:
            data, carry = carry + block, b""
            nul = data.find(b"\x00")
            if nul >= 0:
                raise _nul_error(path, line + _breaks(data[:nul], after_cr), start + nul)
            if invalid is None:
                try:
                    data.decode()
                except UnicodeDecodeError as err:
                    if block and err.reason == "unexpected end of data":
                        data, carry = data[:err.start], data[err.start:]
                    else:
                        invalid = _decode_error(path, line + _breaks(data[:err.start], after_cr),
                                                "utf-8", err, start + err.start)
            line += _breaks(data, after_cr)
            after_cr = data.endswith(b"\r") if data else after_cr
            start += len(data)
            block = f.read(_CHUNK)
    if invalid is not None:
        raise invalid


def _read_lines(path: Path) -> list[str]:
    lines = _read_text(path).split("\n")
    if not any(line.strip() for line in lines):
        raise DataFormatError(f"{path}: file is empty; expected at least one interaction")
    return lines


def _int_tokens(path: Path, lineno: int, line: str, tokens: list[str], expected: str
                ) -> list[int]:
    """The tokens of one line as integers. Only ASCII digits: Python's int() also takes
    "1_000" and Arabic-Indic or full-width digits, which no id column means."""
    if line.isascii() and "_" not in line:
        try:
            return [int(t) for t in tokens]
        except ValueError:
            pass
    bad = next(t for t in tokens if not _INT.fullmatch(t))
    raise DataFormatError(f"{path}:{lineno}: expected integer ids ({expected}), got {bad!r}")


def _int64_rows(path: Path, rows: list[list[int]], linenos: list[int], expected: str
                ) -> np.ndarray:
    """Integer rows as one int64 array; a value beyond int64 is an error naming its line,
    never a wrapped-around number."""
    try:
        return np.array(rows, dtype=np.int64)
    except OverflowError:
        _raise_overflow(path, rows, linenos, expected)
        raise


def _raise_overflow(path: Path, rows: list[list[int]], linenos: list[int], expected: str
                    ) -> None:
    for lineno, row in zip(linenos, rows, strict=True):
        for value in row:
            if not _INT64.min <= value <= _INT64.max:
                raise DataFormatError(
                    f"{path}:{lineno}: {value} does not fit in 64 bits; expected {expected} "
                    f"between {_INT64.min} and {_INT64.max}"
                ) from None


def read_sequences(path: str | Path, name: str | None = None) -> Dataset:
    """``user item item ...`` per line, items oldest first."""
    path = Path(path)
    rows: list[list[int]] = []
    linenos: list[int] = []
    for lineno, line in enumerate(_read_lines(path), start=1):
        tokens = line.split()
        if not tokens:
            continue
        ids = _int_tokens(path, lineno, line, tokens, "'user item item ...'")
        if len(ids) < 2:
            continue  # a user with no items carries no interaction
        rows.append(ids)
        linenos.append(lineno)
    if not rows:
        raise DataFormatError(
            f"{path}: no line has a user followed by items; expected 'user item item ...'"
        )
    try:
        items = np.array([i for ids in rows for i in ids[1:]], dtype=np.int64)
        users = np.array([ids[0] for ids in rows], dtype=np.int64)
    except OverflowError:
        _raise_overflow(path, rows, linenos, "integer ids")
        raise
    return build_dataset(
        name or dataset_name(path),
        np.repeat(users, [len(ids) - 1 for ids in rows]),
        items,
        provenance={"format": "sequences", "source": str(path)},
    )


def read_pairs(path: str | Path, name: str | None = None) -> Dataset:
    """``user item`` (optionally ``timestamp``) per line, in chronological order."""
    path = Path(path)
    lines = _read_lines(path)
    rows: list[list[int]] = []
    linenos: list[int] = []
    width = first = None
    for lineno, line in enumerate(lines, start=1):
        tokens = line.split()
        if not tokens:
            continue
        if width is None:
            width, first = len(tokens), lineno
            if width not in (2, 3):
                raise DataFormatError(
                    f"{path}:{lineno}: expected 2 columns 'user item' (or 3 with a "
                    f"timestamp), got {width}"
                )
        elif len(tokens) != width:
            raise DataFormatError(
                f"{path}:{lineno}: expected {width} columns like line {first}, got "
                f"{len(tokens)}"
            )
        rows.append(_int_tokens(path, lineno, line, tokens, "'user item [timestamp]'"))
        linenos.append(lineno)
    table = _int64_rows(path, rows, linenos, "ids and timestamps")
    return build_dataset(
        name or dataset_name(path),
        table[:, 0],
        table[:, 1],
        timestamps=table[:, 2] if width == 3 else None,
        provenance={"format": "pairs", "source": str(path)},
    )


# ---- tables ---------------------------------------------------------------------------
def read_table(
    path: str | Path, columns: dict[str, str] | None = None, name: str | None = None
) -> Dataset:
    """CSV/TSV or Parquet with a column mapping ``{"user": ..., "item": ..., ...}``;
    known names (userId, item_id, timestamp, rating, ...) are found without one."""
    path = Path(path)
    if path.is_dir():
        raise DataFormatError(f"{path}: is a folder; expected a CSV/TSV or Parquet file (a "
                              "folder of Parquet files is read with --format parquet-large)")
    lines: np.ndarray | None = None
    schema = None
    if path.suffix == ".parquet":
        frame, schema = _read_parquet(path)
    else:
        sep = "\t" if format_suffix(path) in (".tsv", ".inter") else ","
        frame, lines = _read_delimited(path, sep, "a header row")
    if frame.empty:
        raise DataFormatError(
            f"{path}: table has a header but no rows; expected at least one interaction"
        )
    mapping = _resolve_columns(path, list(frame.columns), columns or {})
    if schema is not None:
        check_parquet_types(path, schema, mapping)
    users = _id_column(path, frame, mapping["user"], lines)
    items = _id_column(path, frame, mapping["item"], lines)
    ts = exact = None
    if "timestamp" in mapping:
        ts = _timestamp_column(path, frame, mapping["timestamp"], lines)
        if pd.api.types.is_datetime64_any_dtype(frame[mapping["timestamp"]]):
            exact = frame[mapping["timestamp"]].array.asi8  # orders a second's events
    weights = None
    if "weight" in mapping:
        weights = _numeric_column(path, frame, mapping["weight"], lines)
    return build_dataset(
        name or dataset_name(path),
        users,
        items,
        timestamps=ts,
        weights=weights,
        provenance={"format": "table", "source": str(path), "columns": mapping},
        tiebreak=exact,
    )


def _read_parquet(path: Path) -> tuple[pd.DataFrame, pa.Schema]:
    """The table and its Arrow schema (the types pandas' dtypes no longer tell apart)."""
    _require_file(path)
    try:
        return pd.read_parquet(path), pq.read_schema(path)
    except (OSError, ValueError, pa.ArrowException) as err:  # ValueError: bad metadata
        raise DataFormatError(
            f"{path}: not a readable Parquet file ({err}); expected a complete Parquet table"
        ) from None


def _read_delimited(path: Path, sep: str, header: str, quotes: bool = True
                    ) -> tuple[pd.DataFrame, np.ndarray]:
    """A delimited table as strings, and the line each row starts on.

    Python's csv module rather than pandas: pandas pads a short row with NaN, takes a
    first row with one field too many as an index (shifting every column) and skips
    blank lines, all without a word, so neither field counts nor line numbers could be
    checked. Every row here has the header's width or is an error naming its line, and
    so is a quoted field the file ends in (a truncated file) or one followed by more
    than a separator (``"a"b``), as DuckDB's reader has them.
    ``quotes=False`` for RecBole, whose fields are never quoted."""
    reader = csv.reader(io.StringIO(_read_text(path)), delimiter=sep, strict=True,
                        quoting=csv.QUOTE_MINIMAL if quotes else csv.QUOTE_NONE)
    names: list[str] | None = None
    header_line = 0
    rows: list[list[str]] = []
    lines: list[int] = []
    lineno = 1
    try:
        for record in reader:
            start, lineno = lineno, reader.line_num + 1
            if not record or (len(record) == 1 and not record[0].strip()):
                continue  # a blank line
            if names is None:
                names, header_line = record, start
                dup = next((n for n, k in Counter(names).items() if k > 1), None)
                if dup is not None:
                    raise DataFormatError(
                        f"{path}:{start}: column {dup!r} appears twice in the header; expected "
                        "distinct column names"
                    )
            elif len(record) != len(names):
                raise DataFormatError(
                    f"{path}:{start}: expected {len(names)} {sep!r}-separated fields like the "
                    f"header (line {header_line}), got {len(record)}"
                )
            else:
                rows.append(record)
                lines.append(start)
    except csv.Error as err:
        raise DataFormatError(
            f"{path}:{reader.line_num}: {err}; expected {sep!r}-separated fields"
        ) from None
    if names is None:
        raise DataFormatError(f"{path}: file is empty; expected {header}")
    return pd.DataFrame(rows, columns=names, dtype=object), np.array(lines, dtype=np.int64)


def _where(path: Path, lines: np.ndarray | None, row: int) -> str:
    """``file:line`` for a text table, ``file: row N`` for Parquet."""
    return f"{path}:{lines[row]}" if lines is not None else f"{path}: row {row + 1}"


def _id_column(path: Path, frame: pd.DataFrame, column: str, lines: np.ndarray | None
               ) -> np.ndarray:
    """External ids, refusing blank and NaN ones: ``build_dataset`` would turn every
    missing id into the one string "nan" and merge them into a single user or item.
    Text ids lose surrounding blanks, as pandas' number parsing dropped them before."""
    values = frame[column]
    text = values.astype(str).str.strip()
    bad = np.flatnonzero(values.isna().to_numpy() | text.isin(_MISSING).to_numpy())
    if len(bad):
        row = int(bad[0])
        raise DataFormatError(
            f"{_where(path, lines, row)}: column {column!r} has a missing id "
            f"({values.iloc[row]!r}); expected a user or item id"
        )
    return values.to_numpy() if values.dtype.kind in "iuf" else text.to_numpy(dtype=object)


def _timestamp_column(path: Path, frame: pd.DataFrame, column: str, lines: np.ndarray | None
                      ) -> np.ndarray:
    """Timestamps as int64, exactly as written. Text must be an ASCII integer (``.0``
    allowed); a number beyond int64 or with a fraction is an error, never rounded or
    wrapped around, and so is a float column holding such a number. A datetime column
    (Parquet) becomes whole seconds since 1970, UTC, rounded down, the unit every
    other source has."""
    values = frame[column]
    expected = "expected an integer timestamp within int64"
    if pd.api.types.is_datetime64_any_dtype(values):
        bad = np.flatnonzero(values.isna().to_numpy())
        if len(bad):
            raise DataFormatError(
                f"{_where(path, lines, int(bad[0]))}: column {column!r} must be numeric: "
                f"{expected}, got NaT"
            )
        per_second = 10 ** {"s": 0, "ms": 3, "us": 6, "ns": 9}[values.dt.unit]
        return values.array.asi8 // per_second
    kind = values.dtype.kind
    if kind in "iuf":
        numbers = values.to_numpy()
        if kind == "i":
            return numbers.astype(np.int64)
        if kind == "u":
            fits = numbers <= _INT64.max
        else:  # 2.0**63 is exact, and the first float beyond int64
            fits = (np.isfinite(numbers) & (numbers == np.floor(numbers))
                    & (numbers >= -(2.0**63)) & (numbers < 2.0**63))
        bad = np.flatnonzero(~fits)
    else:
        text = values.astype(str).str.strip()
        ok = (text.str.fullmatch(_INT_TEXT.pattern).fillna(False).to_numpy(bool)
              & ~values.isna().to_numpy())
        bad = np.flatnonzero(~ok)
        if not len(bad):
            numbers = np.array([int(t.partition(".")[0]) for t in text], dtype=object)
            fits = np.array([_INT64.min <= n <= _INT64.max for n in numbers], dtype=bool)
            bad = np.flatnonzero(~fits)
    if len(bad):
        row = int(bad[0])
        raise DataFormatError(
            f"{_where(path, lines, row)}: column {column!r} must be numeric: {expected}, got "
            f"{values.iloc[row]!r}"
        )
    return numbers.astype(np.int64)


def _resolve_columns(path: Path, present: list[str], given: dict[str, str]) -> dict[str, str]:
    mapping: dict[str, str] = {}
    for role, guesses in _COLUMN_GUESSES.items():
        if role in given:
            if given[role] not in present:
                raise DataFormatError(
                    f"{path}: column {given[role]!r} (for {role}) not found; expected one of "
                    f"the columns {present}"
                )
            mapping[role] = given[role]
            continue
        found = next((c for c in present if c in guesses), None)
        if found is not None:
            mapping[role] = found
    for role in ("user", "item"):
        if role not in mapping:
            raise DataFormatError(
                f"{path}: no {role} column among {present}; expected one named like "
                f"{_COLUMN_GUESSES[role][1]!r}, or name it with --columns {role}=COLUMN"
            )
    return mapping


def _numeric_column(path: Path, frame: pd.DataFrame, column: str, lines: np.ndarray | None
                    ) -> np.ndarray:
    """Weights (ratings) as float32; NaN, infinity and numbers beyond float32 are errors,
    not a weight of inf."""
    values = pd.to_numeric(frame[column], errors="coerce").to_numpy(np.float64)
    with np.errstate(over="ignore"):
        bad = np.flatnonzero(~np.isfinite(values.astype(np.float32)))
    if len(bad):
        row = int(bad[0])
        raise DataFormatError(
            f"{_where(path, lines, row)}: column {column!r} must be numeric: expected a finite "
            f"number within float32, got {frame[column].iloc[row]!r}"
        )
    return values


# ---- RecBole atomic files -------------------------------------------------------------
def _read_atomic(path: Path) -> tuple[pd.DataFrame, np.ndarray]:
    """A RecBole atomic file: tab-separated, header ``name:type``; the type suffix is
    stripped from the column names. Also returns the line of each row."""
    frame, lines = _read_delimited(path, "\t", "a 'name:type' header", quotes=False)
    if not all(":" in c for c in frame.columns):
        raise DataFormatError(
            f"{path}:{_header_line(path)}: expected a RecBole header of 'name:type' fields, "
            f"got {list(frame.columns)}"
        )
    names = [c.split(":")[0] for c in frame.columns]
    dup = next((n for n, k in Counter(names).items() if k > 1), None)
    if dup is not None:
        raise DataFormatError(
            f"{path}:{_header_line(path)}: field {dup!r} appears twice in the header; "
            "expected distinct names"
        )
    frame.columns = names
    return frame, lines


def _header_line(path: Path) -> int:
    """The line of a table's header: the first line that is not blank."""
    for lineno, line in enumerate(_read_text(path).split("\n"), start=1):
        if line.strip():
            return lineno
    return 1


def _require_columns(path: Path, frame: pd.DataFrame, needed: dict[str, str]) -> None:
    for column, typed in needed.items():
        if column not in frame.columns:
            raise DataFormatError(
                f"{path}:{_header_line(path)}: missing column '{typed}'; expected it among "
                f"{list(frame.columns)}"
            )


def read_recbole(path: str | Path, name: str | None = None) -> Dataset:
    """``X.inter`` (with optional ``X.item``/``X.user`` beside it), or a pre-split
    ``X.train.inter``/``X.valid.inter``/``X.test.inter`` set. Pass the ``.inter`` file
    or the folder that holds it."""
    path = Path(path)
    folder, stem = _recbole_stem(path)
    split_files = [folder / f"{stem}.{part}.inter" for part in ("train", "valid", "test")]
    if all(f.exists() for f in split_files):
        return _read_recbole_presplit(folder, stem, split_files, name)
    inter_path = folder / f"{stem}.inter"
    frame, lines = _read_atomic(inter_path)
    _require_columns(inter_path, frame, {"user_id": "user_id:token", "item_id": "item_id:token"})
    if frame.empty:
        raise DataFormatError(
            f"{inter_path}: the file has a header but no rows; expected at least one interaction"
        )
    users = _id_column(inter_path, frame, "user_id", lines)
    items = _id_column(inter_path, frame, "item_id", lines)
    ts = (_timestamp_column(inter_path, frame, "timestamp", lines) if "timestamp" in frame
          else None)
    weights = _numeric_column(inter_path, frame, "rating", lines) if "rating" in frame else None
    item_table = None
    item_path = folder / f"{stem}.item"
    if item_path.exists():
        item_table, item_lines = _read_atomic(item_path)
        _require_columns(item_path, item_table, {"item_id": "item_id:token"})
        _id_column(item_path, item_table, "item_id", item_lines)
        if "movie_title" in item_table.columns:
            item_table = item_table.rename(columns={"movie_title": "title"})
    return build_dataset(
        name or stem,
        users,
        items,
        timestamps=ts,
        weights=weights,
        item_table=item_table,
        provenance={"format": "recbole", "source": str(inter_path)},
    )


def _recbole_stem(path: Path) -> tuple[Path, str]:
    if path.is_dir():
        inters = sorted(path.glob("*.inter"))
        if not inters:
            raise DataFormatError(
                f"{path}: no .inter file in this folder; expected a RecBole '.inter' file or "
                "a folder that holds one"
            )
        path = inters[0]
    if path.suffix != ".inter":
        raise DataFormatError(f"{path}: expected a RecBole '.inter' file")
    stem = path.name[: -len(".inter")]
    for part in (".train", ".valid", ".test"):
        stem = stem.removesuffix(part)
    return path.parent, stem


def _read_recbole_presplit(
    folder: Path, stem: str, files: list[Path], name: str | None
) -> Dataset:
    """Rebuild each user's full sequence from prefix-style split files.

    Each row is ``user  item_id_list  item_id`` (a history, possibly truncated, and the
    next item). Train rows of a user are written newest first; the earliest one holds
    the first item(s). The sequence is that first history followed by every target in
    time order; the test row's history is checked against it, so a file that breaks
    these assumptions fails loudly instead of yielding a wrong split.
    """
    tables = [_read_atomic(f) for f in files]
    for f, (frame, lines) in zip(files, tables, strict=True):
        if not {"user_id", "item_id_list", "item_id"} <= set(frame.columns):
            raise DataFormatError(
                f"{f}:{_header_line(f)}: expected columns user_id, item_id_list, item_id; "
                f"got {list(frame.columns)}"
            )
        _id_column(f, frame, "user_id", lines)
        _id_column(f, frame, "item_id", lines)
    (train, _), (valid, valid_lines), (test, test_lines) = tables
    _check_same_users(files, valid["user_id"].tolist(), valid_lines, test["user_id"].tolist(),
                      test_lines)
    sequences: dict[str, list[str]] = {}
    for user, rows in train.iloc[::-1].groupby("user_id", sort=False):
        first = rows.iloc[0]
        sequences[user] = first["item_id_list"].split() + rows["item_id"].tolist()
    users, items = [], []
    for k, ((_, v), (_, t)) in enumerate(zip(valid.iterrows(), test.iterrows(), strict=True)):
        user = t["user_id"]
        seq = sequences.get(user, v["item_id_list"].split()) + [v["item_id"], t["item_id"]]
        history = t["item_id_list"].split()
        if seq[-1 - len(history) : -1] != history:
            raise DataFormatError(
                f"{files[2]}:{test_lines[k]}: the test history of user {user} does not match "
                "the train and valid files; expected it to end with the train and valid "
                "items, cannot rebuild the sequence"
            )
        users.extend([user] * len(seq))
        items.extend(seq)
    item_table = None
    text_path = folder / f"{stem}.text"
    index_path = folder / f"{stem}.item2index"
    if text_path.exists() and index_path.exists():
        # UniSRec layout: the .text file is keyed by ASIN, .item2index maps ASIN -> id.
        index = pd.read_csv(index_path, sep="\t", header=None, names=["asin", "item_id"], dtype=str)
        text = _read_atomic(text_path)[0].rename(columns={"item_id": "asin"})
        item_table = index.merge(text, on="asin", how="left")
    return build_dataset(
        name or stem,
        np.array(users),
        np.array(items),
        item_table=item_table,
        provenance={
            "format": "recbole-presplit",
            "source": [str(f) for f in files],
            "split": "leave-one-out, rebuilt from the split files",
        },
    )


def _check_same_users(files: list[Path], valid: list[str], valid_lines: np.ndarray,
                      test: list[str], test_lines: np.ndarray) -> None:
    """The valid and test files hold one row per user, the same users in the same
    order: rows are paired by position, so a missing or extra row would pair one user's
    history with another's target. Names the first line where the two part."""
    if not valid and not test:
        raise DataFormatError(f"{files[1]}: no rows; expected one row per user")
    for k in range(max(len(valid), len(test))):
        v = valid[k] if k < len(valid) else None
        t = test[k] if k < len(test) else None
        if v == t:
            continue
        if t is None:
            where, what = f"{files[1]}:{valid_lines[k]}", f"user {v!r} has no row in {files[2]}"
        elif v is None:
            where, what = f"{files[2]}:{test_lines[k]}", f"user {t!r} has no row in {files[1]}"
        else:
            where = f"{files[2]}:{test_lines[k]}"
            what = f"user {t!r}, but line {valid_lines[k]} of {files[1]} is user {v!r}"
        raise DataFormatError(f"{where}: {what}; expected the same users in the same order")


# ---- MovieLens originals --------------------------------------------------------------
def read_movielens(folder: str | Path, name: str | None = None) -> Dataset:
    """An unpacked GroupLens archive: ml-1m (``ratings.dat``, ``movies.dat``) or
    ml-100k (``u.data``, ``u.item``). Ratings become interactions ordered by time."""
    folder = Path(folder)
    if folder.is_file() and folder.name in ("ratings.dat", "u.data"):
        raise DataFormatError(
            f"{folder}: is the ratings file of a MovieLens archive; expected the folder that "
            f"holds it: pass {folder.parent} instead")
    if (folder / "ratings.dat").exists():
        ratings = _read_separated(folder / "ratings.dat", "::", ["user", "item", "rating", "ts"])
        movies = folder / "movies.dat"
        items = read_movielens_movies(movies) if movies.exists() else None
        default_name = "ml-1m"
    elif (folder / "u.data").exists():
        ratings = _read_separated(folder / "u.data", "\t", ["user", "item", "rating", "ts"])
        items = None
        if (folder / "u.item").exists():
            items = _read_catalog(folder / "u.item", "|", ["item_id", "title"])
        default_name = "ml-100k"
    else:
        raise DataFormatError(
            f"{folder}: not an unpacked MovieLens archive (expected ratings.dat or u.data)"
        )
    return build_dataset(
        name or default_name,
        ratings[:, 0],
        ratings[:, 1],
        timestamps=ratings[:, 3],
        weights=ratings[:, 2],
        item_table=items,
        provenance={"format": "movielens", "source": str(folder)},
    )


def read_movielens_movies(path: Path) -> pd.DataFrame:
    """GroupLens ``movies.dat``: item_id, title, genres (pipe-separated)."""
    return _read_catalog(path, "::", ["item_id", "title", "genres"])


def _read_catalog(path: Path, sep: str, names: list[str]) -> pd.DataFrame:
    """A GroupLens catalog (``movies.dat``, ``u.item``): Latin-1, an integer id first,
    then at least ``len(names) - 1`` more fields, of which the first few are kept."""
    rows = []
    for lineno, line in enumerate(_read_text(path, "latin-1").split("\n"), start=1):
        if not line.strip():
            continue
        fields = line.split(sep)
        if len(fields) < len(names):
            raise DataFormatError(
                f"{path}:{lineno}: expected {len(names)} fields {names} separated by {sep!r}, "
                f"got {len(fields)}"
            )
        item = fields[0].strip()
        if not _INT.fullmatch(item):
            raise DataFormatError(f"{path}:{lineno}: expected an integer item id, got {item!r}")
        rows.append([str(int(item)), *fields[1 : len(names)]])
    return pd.DataFrame(rows, columns=names)


def _read_separated(path: Path, sep: str, names: list[str]) -> np.ndarray:
    lines = _read_lines(path)
    rows: list[list[int]] = []
    linenos: list[int] = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        tokens = line.strip().split(sep)
        if len(tokens) != len(names):
            raise DataFormatError(
                f"{path}:{lineno}: expected {len(names)} fields {names} separated by "
                f"{sep!r}, got {len(tokens)}"
            )
        rows.append(_int_tokens(path, lineno, line, tokens, f"{sep!r}-separated integers"))
        linenos.append(lineno)
    return _int64_rows(path, rows, linenos, "integers")


# ---- dispatch -------------------------------------------------------------------------
def detect_format(path: str | Path) -> str:
    """Guess a file's format from its name and first lines; `--format` overrides."""
    path = Path(path)
    if path.is_dir():
        if (path / "manifest.json").exists():
            return "modrec"
        if (path / "ratings.dat").exists() or (path / "u.data").exists():
            return "movielens"
        if any(path.glob("*.inter")):
            return "recbole"
        if any(path.rglob("*.parquet")):  # a table written in parts (Spark, DuckDB, ...)
            return "parquet-large"
        raise DataFormatError(
            f"{path}: cannot tell the format of this folder; expected a modrec dataset, "
            "an unpacked MovieLens archive, RecBole .inter files or Parquet files"
        )
    if not path.exists():
        raise DataFormatError(f"{path}: file not found")
    if path.name in ("ratings.dat", "u.data"):
        return "movielens"  # whose reader says to pass the folder
    suffix = format_suffix(path).lower()
    if suffix == ".inter":
        return "recbole"
    if suffix == ".parquet":
        return "parquet"
    if suffix in (".csv", ".tsv"):
        return "csv"
    if suffix in (".txt", ".dat", ""):
        if not path.is_file():
            raise DataFormatError(f"{path}: not a regular file; expected a file or a folder")
        return _detect_text(path)
    if path.is_file():
        compression(path)  # an archive (.zip, .bz2, ...): says how to unpack it
    raise DataFormatError(
        f"{path}: unknown format {path.suffix!r}; pass --format with one of {', '.join(FORMATS)}"
    )


def format_suffix(path: Path) -> str:
    """The suffix that tells a file's format: ``.csv`` for ``x.csv`` and ``x.csv.gz``
    (a gzip-compressed file is read as the file it holds)."""
    return Path(path.stem).suffix if path.suffix.lower() == ".gz" else path.suffix


def dataset_name(path: Path) -> str:
    """The name of a dataset read from a file: ``x`` for ``x.csv`` and ``x.csv.gz``."""
    return Path(path.stem).stem if path.suffix.lower() == ".gz" else path.stem


_HEAD = 1000  # lines whose widths decide whether a text file has the shape of pairs


def _detect_text(path: Path) -> str:
    """``pairs`` or ``sequences`` for a whitespace-separated text file.

    A pairs file has one width (2 or 3 fields) and names a user on several lines;
    a sequences file names each user once, on a line of any length. Most of the first
    `_HEAD` lines must share a width of 2 or 3 (a stray line of another width keeps a
    pairs file one, so that `read_pairs` names that line, where reading it as
    sequences would turn its timestamps into items), and some user must appear twice:
    anywhere in the file, since a pairs file written in time order interleaves its
    users. A file whose every line has 3 fields and names a user of its own reads
    either way (one 'user item timestamp' each, or two items each) and is refused."""
    widths: Counter[int] = Counter()
    seen: set[str] = set()
    repeated = False
    all_three = True
    lines = 0
    shaped = None  # whether the first lines have the shape of pairs, once they are read
    with open_text(path, "utf-8-sig", errors="replace") as f:
        for line in f:
            tokens = line.split()
            if not tokens:
                continue
            lines += 1
            if lines <= _HEAD:
                widths[len(tokens)] += 1
            else:
                shaped = _pairs_shaped(widths) if shaped is None else shaped
                if not shaped:
                    return "sequences"  # the lengths vary
                if repeated:
                    return "pairs"
            all_three = all_three and len(tokens) == 3
            repeated = repeated or tokens[0] in seen
            seen.add(tokens[0])
    if not lines:
        raise DataFormatError(f"{path}: file is empty; expected at least one interaction")
    if repeated and _pairs_shaped(widths):
        return "pairs"
    if all_three and lines > 1:
        raise DataFormatError(
            f"{path}: cannot tell pairs from sequences: all {lines} lines have 3 fields and "
            "no user appears on two of them, so the file reads as 'user item timestamp' "
            "pairs (one interaction per user) or as 'user item item' sequences (two per "
            "user); expected --format pairs or --format sequences to say which")
    return "sequences"


def _pairs_shaped(widths: Counter[int]) -> bool:
    """Most lines share one width, of 2 or 3 fields."""
    width, count = widths.most_common(1)[0]
    return width in (2, 3) and 2 * count > sum(widths.values())


def import_path(
    path: str | Path, format: str | None = None, columns: dict[str, str] | None = None,
    repeats: str = "drop",
) -> Dataset:
    """Read any supported file or folder into a Dataset; its consecutive repeated
    events (the same user and item back to back) are dropped or kept as ``repeats``
    says (`settle_repeats`), whichever reader read it."""
    path = Path(path)
    fmt = format or detect_format(path)
    if format is None and fmt in ("csv", "parquet") and path.stat().st_size >= large_threshold():
        fmt = f"{fmt}-large"
    readers: dict[str, Callable[[], Dataset]] = {
        "modrec": lambda: Dataset.read(path),
        "sequences": lambda: read_sequences(path),
        "pairs": lambda: read_pairs(path),
        "recbole": lambda: read_recbole(path),
        "csv": lambda: read_table(path, columns),
        "csv-large": lambda: read_table_large(path, columns),
        "parquet": lambda: read_table(path, columns),
        "parquet-large": lambda: read_parquet_large(path, columns),
        "movielens": lambda: read_movielens(path),
    }
    if fmt not in readers:
        raise DataFormatError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    try:
        dataset = readers[fmt]()
    except DataFormatError as err:
        if format is None and fmt in ("pairs", "sequences"):
            raise DataFormatError(
                f"{err} (read as {fmt}, guessed from its lines; --format chooses)"
            ) from None
        raise
    return settle_repeats(dataset, repeats)
