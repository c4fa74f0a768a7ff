"""The in-memory readers: one function per source format, each returning a canonical
`Dataset` read through pandas and Python's own parsers (`modrec.data.formats` says
which formats there are and picks a reader; `modrec.data.large` reads the big tables
through DuckDB).

  `read_sequences`  text, one user per line: ``user item item ...`` (chronological)
  `read_pairs`      text, one interaction per line: ``user item [timestamp]``
  `read_recbole`    RecBole atomic files (``.inter`` with ``name:type`` headers, optional
                    ``.item``/``.user``; also pre-split ``X.train/valid/test.inter``)
  `read_table`      CSV/TSV or Parquet with a column mapping (user, item, [timestamp],
                    [weight])
  `read_movielens`  the original GroupLens archives, unpacked (ml-1m ``ratings.dat``,
                    ml-100k ``u.data``)

Every reader fails with a `DataFormatError` naming the file, the line and what it
expected; none of them writes anything.
"""

from __future__ import annotations

import csv
import io
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from modrec.data.dataset import DataFormatError, Dataset, build_dataset
from modrec.data.files import dataset_name, format_suffix, read_text, require_file
from modrec.data.table_columns import MISSING_IDS, check_parquet_types, location, resolve_columns

_INT = re.compile(r"[+-]?[0-9]+")
_INT_TEXT = re.compile(r"[+-]?[0-9]+(?:\.0*)?")  # 881250949 or 881250949.0
_INT64 = np.iinfo(np.int64)


# ---- text formats ---------------------------------------------------------------------
def _read_lines(path: Path) -> list[str]:
    lines = read_text(path).split("\n")
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
    mapping = resolve_columns(path, list(frame.columns), columns or {})
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
    require_file(path)
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
    reader = csv.reader(io.StringIO(read_text(path)), delimiter=sep, strict=True,
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


def _id_column(path: Path, frame: pd.DataFrame, column: str, lines: np.ndarray | None
               ) -> np.ndarray:
    """External ids, refusing blank and NaN ones: ``build_dataset`` would turn every
    missing id into the one string "nan" and merge them into a single user or item.
    Text ids lose surrounding blanks, as pandas' number parsing dropped them before."""
    values = frame[column]
    text = values.astype(str).str.strip()
    bad = np.flatnonzero(values.isna().to_numpy() | text.isin(MISSING_IDS).to_numpy())
    if len(bad):
        row = int(bad[0])
        raise DataFormatError(
            f"{location(path, lines, row)}: column {column!r} has a missing id "
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
                f"{location(path, lines, int(bad[0]))}: column {column!r} must be numeric: "
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
            f"{location(path, lines, row)}: column {column!r} must be numeric: {expected}, got "
            f"{values.iloc[row]!r}"
        )
    return numbers.astype(np.int64)


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
            f"{location(path, lines, row)}: column {column!r} must be numeric: expected a finite "
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
    for lineno, line in enumerate(read_text(path).split("\n"), start=1):
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
    for lineno, line in enumerate(read_text(path, "latin-1").split("\n"), start=1):
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
