"""Out-of-core import of large interaction tables (CSV/TSV and Parquet) through DuckDB.

`read_table` parses the whole file into Python strings (about 630 bytes an event);
`read_table_large` (CSV/TSV) and `read_parquet_large` (a Parquet file, or a folder of
them) let DuckDB read it under a memory limit, spilling to a temporary folder, and give
back the same `Dataset` as `read_table` on the same file (equal `fingerprint()`): ids
are the strings `read_table` makes of them (text stripped of surrounding blanks as by
Python's ``str.strip``; numbers as pandas prints them), numbered by the same
`_sorted_vocab`, and rows ordered by (user, timestamp, row of the file).

Only the distinct user and item ids pass through Python; the interactions stay in
DuckDB until the final, sorted, fixed-width columns are fetched. Errors name the file
and the data row (1-based, header not counted), not the line; except a NUL byte or
invalid UTF-8, which a scan before DuckDB reports as `read_table` does, by line.
"""

from __future__ import annotations

import codecs
import csv
import os
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from modrec.data.dataset import DataFormatError, Dataset, _sorted_vocab
from modrec.data.files import (
    check_text,
    compression,
    dataset_name,
    format_suffix,
    open_text,
    require_file,
)
from modrec.data.table_columns import (
    MISSING_IDS,
    check_parquet_types,
    location,
    resolve_columns,
)
from modrec.errors import ConfigError

# Files (or folders of Parquet files) at least this big (bytes) go through DuckDB when
# no format is given; MODREC_LARGE_IMPORT_BYTES changes it.
LARGE_IMPORT_BYTES = 1 << 30
# DuckDB's memory limit for the import; MODREC_IMPORT_MEMORY changes it.
IMPORT_MEMORY = "2GB"

# Python's str.strip() whitespace, as an RE2 class, so that timestamps and weights lose
# the same blanks the pandas path strips.
_WS = (r"[\t\n\x0b\x0c\r\x1c-\x1f \x{85}\x{a0}\x{1680}\x{2000}-\x{200a}\x{2028}\x{2029}"
       r"\x{202f}\x{205f}\x{3000}]")
_FLOAT32_OVERFLOW = 3.4028235677973366e38  # 2**128 - 2**103: rounds to inf as float32
_INTEGER = {"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT",
            "UINTEGER", "UBIGINT", "UHUGEINT"}
_FLOAT = {"FLOAT", "DOUBLE"}


def large_threshold() -> int:
    return int(os.environ.get("MODREC_LARGE_IMPORT_BYTES", LARGE_IMPORT_BYTES))


def _duckdb() -> Any:
    try:
        import duckdb
    except ImportError:
        raise ImportError("the out-of-core importer needs DuckDB: pip install 'modrec[large]'"
                          ) from None
    return duckdb


def _memory_limit(memory_limit: str | None) -> str:
    limit = memory_limit or os.environ.get("MODREC_IMPORT_MEMORY", IMPORT_MEMORY)
    if not limit.replace(".", "").isalnum():
        raise ConfigError(f"memory limit {limit!r}; expected something like '2GB'")
    return limit


def _header(path: Path, sep: str) -> list[str]:
    """The header's column names, read as the csv module reads them."""
    try:
        with open_text(path, newline="") as f:
            head = ""
            for line in f:
                if line.strip():
                    head = line.removeprefix(codecs.BOM_UTF8.decode())
                    break
    except UnicodeDecodeError as err:
        raise DataFormatError(f"{path}: invalid UTF-8 ({err.reason}); expected UTF-8 text"
                              ) from None
    if not head:
        raise DataFormatError(f"{path}: file is empty; expected a header row")
    names = next(csv.reader([head], delimiter=sep))
    dup = next((n for n, k in Counter(names).items() if k > 1), None)
    if dup is not None:
        raise DataFormatError(
            f"{path}: column {dup!r} appears twice in the header; expected distinct column names"
        )
    return names


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _trimmed(column: str) -> str:
    return f"regexp_replace({column}, '^{_WS}+|{_WS}+$', '', 'g')"


def _text_timestamp(t: str) -> list[str]:
    """``ts`` and ``ts_bad`` of a text column: an ASCII integer (``.0`` allowed) after
    stripping, within int64, as `importers._timestamp_column` reads text."""
    ts = (f"TRY_CAST(CASE WHEN regexp_full_match({_trimmed(t)}, '[+-]?[0-9]+(\\.0*)?') "
          f"THEN split_part({_trimmed(t)}, '.', 1) END AS BIGINT)")
    return [f"{ts} AS ts", f"CASE WHEN {ts} IS NULL THEN coalesce({t}, '') END AS ts_bad"]


def _text_weight(w: str) -> list[str]:
    return [f"TRY_CAST({_trimmed(w)} AS DOUBLE) AS w", f"{w} AS w_raw"]


def read_table_large(
    path: str | Path,
    columns: dict[str, str] | None = None,
    name: str | None = None,
    memory_limit: str | None = None,
) -> Dataset:
    """A CSV/TSV table read by DuckDB under ``memory_limit``; the same Dataset as
    `read_table` on the same file."""
    duckdb = _duckdb()
    path = Path(path)
    if path.suffix.lower() == ".parquet":
        raise DataFormatError(
            f"{path}: the CSV importer reads CSV/TSV only; expected a .csv or .tsv file "
            "(read Parquet with --format parquet-large)"
        )
    # What read_table refuses before parsing (DuckDB would take a NUL for a character
    # of an id), with the same message; a pass over the file, in blocks.
    check_text(path)
    packed = compression(path) or "none"
    sep = "\t" if format_suffix(path) in (".tsv", ".inter") else ","
    names = _header(path, sep)
    mapping = resolve_columns(path, names, columns or {})
    limit = _memory_limit(memory_limit)

    select = [f"{_quote(mapping['user'])} AS u", f"{_quote(mapping['item'])} AS i"]
    if "timestamp" in mapping:
        select += _text_timestamp(_quote(mapping["timestamp"]))
    if "weight" in mapping:
        select += _text_weight(_quote(mapping["weight"]))
    # Every row must have the header's width, as read_table checks. DuckDB drops empty
    # fields after the last column without a word, so one spare column more is read,
    # rows that end early are padded with NULL, and no field reads as NULL (nullstr is
    # a NUL, which check_text has ruled out; an empty field is ''): a NULL in the last
    # column is a field too few, a value in the spare one a field too many; a line of
    # blanks alone is skipped, as read_table skips it. Padding rows whose quoted fields
    # hold line breaks needs the single-threaded reader.
    spare = "modrec_spare"
    while spare in names:
        spare += "_"
    declared = [*names, spare]
    types = ", ".join(f"{_quote(n)}: 'VARCHAR'" for n in declared)
    width = " + ".join(f"CAST({_quote(n)} IS NOT NULL AS INTEGER)" for n in declared)
    blank = (f"({_quote(declared[1])} IS NULL AND {_trimmed(_quote(names[0]))} = '')"
             if len(names) > 1 else "false")
    select += [f"{blank} AS blank",
               f"CASE WHEN NOT {blank} AND ({_quote(names[-1])} IS NULL OR {_quote(spare)} "
               f"IS NOT NULL) THEN {width} END AS bad_width"]

    def load(con: Any) -> None:
        try:
            con.execute(
                f"CREATE TABLE raw AS SELECT {', '.join(select)} FROM read_csv(?, "
                f"delim = ?, header = true, quote = '\"', escape = '\"', "
                f"auto_detect = false, columns = {{{types}}}, strict_mode = true, "
                "null_padding = true, nullstr = ?, parallel = false, compression = ?)",
                [str(path), sep, "\x00", packed],
            )
        except duckdb.Error as err:
            first = _first_line(err)
            raise DataFormatError(
                f"{path}: not a readable {sep!r}-separated table ({first}); expected a "
                "header row and the same number of fields on every line"
            ) from None
        bad = con.execute("SELECT rowid, bad_width FROM raw WHERE bad_width IS NOT NULL "
                          "ORDER BY rowid LIMIT 1").fetchone()
        if bad is not None:
            raise DataFormatError(
                f"{location(path, None, int(bad[0]))}: expected {len(names)} {sep!r}-separated "
                f"fields like the header, got {bad[1]}")
        con.execute("DELETE FROM raw WHERE blank")

    return _import(path, mapping, load, lambda row: location(path, None, row),
                   name or dataset_name(path), limit)


# ---- Parquet ---------------------------------------------------------------------------
def parquet_files(path: Path) -> list[Path]:
    """``path`` itself, or the ``.parquet`` files in a folder (and its subfolders), in
    the order of their paths: the rows of the table, file after file."""
    if not path.is_dir():
        require_file(path)
        return [path]
    files = sorted(p for p in path.rglob("*.parquet") if p.is_file()
                   and not any(part.startswith((".", "_")) for part in p.relative_to(path).parts))
    if not files:
        raise DataFormatError(f"{path}: no .parquet files in this folder; expected a Parquet "
                              "file or a folder of them")
    return files


def _parquet_schema(path: Path) -> tuple[list[str], dict[str, Any], int, pa.Schema]:
    """The columns `pd.read_parquet` makes of a file (a pandas index is not one), the
    pandas dtype of each, the number of rows and the Arrow schema."""
    try:
        file = pq.ParquetFile(path)
        schema = file.schema_arrow
        dtypes = schema.empty_table().to_pandas().dtypes
        rows = file.metadata.num_rows
    except (OSError, ValueError, pa.ArrowException) as err:
        raise DataFormatError(
            f"{path}: not a readable Parquet file ({err}); expected a complete Parquet table"
        ) from None
    return list(dtypes.index), {str(k): v for k, v in dtypes.items()}, int(rows), schema


def _epoch(column: str, dtype: Any) -> str:
    """A TIMESTAMP weight column as `read_table` has it (pandas' to_numeric): the
    integer count of its unit (the unit pandas reads the file with) since 1970, UTC."""
    unit = getattr(dtype, "unit", None) or np.datetime_data(dtype)[0]
    if unit == "s":
        return f"(epoch_us({column}) // 1000000)"
    if unit not in ("ms", "us", "ns"):
        raise DataFormatError(f"timestamps in unit {unit!r}; expected s, ms, us or ns")
    return f"epoch_{unit}({column})"


def read_parquet_large(
    path: str | Path,
    columns: dict[str, str] | None = None,
    name: str | None = None,
    memory_limit: str | None = None,
) -> Dataset:
    """A Parquet file, or a folder of Parquet files (their rows one after the other,
    files in path order), read by DuckDB under ``memory_limit``; for a file, the same
    Dataset as `read_table`.

    Timestamps are taken as `read_table` takes them: integers as written, a float only
    when it is an integer, a TIMESTAMP column as whole seconds since 1970 (UTC), the
    events of one second in the order of their exact time (INT96 timestamps, which
    DuckDB reads to the microsecond, lose their nanoseconds), text as an ASCII integer.
    Lists, structs and maps, and booleans as ids, are refused (`check_parquet_types`)."""
    duckdb = _duckdb()
    path = Path(path)
    files = parquet_files(path)
    schemas = [_parquet_schema(f) for f in files]
    names, dtypes, _, _ = schemas[0]
    mapping = resolve_columns(files[0] if len(files) == 1 else path, names, columns or {})
    for file, (present, _, _, schema) in zip(files, schemas, strict=True):
        missing = [c for c in mapping.values() if c not in present]
        if missing:
            raise DataFormatError(
                f"{file}: column {missing[0]!r} not found; expected every file of {path} to "
                f"hold the columns {sorted(set(mapping.values()))} (it has {present})")
        check_parquet_types(file, schema, mapping)
    limit = _memory_limit(memory_limit)
    starts = np.cumsum([0] + [rows for _, _, rows, _ in schemas])

    def where(row: int) -> str:
        k = int(np.searchsorted(starts, row, side="right")) - 1
        return f"{files[k]}: row {row - int(starts[k]) + 1}"

    source = (f"read_parquet([{', '.join(_literal(str(f)) for f in files)}], "
              "hive_partitioning = false, union_by_name = true)")
    kinds = _column_kinds(duckdb, path, source)
    select = [f"{_quote(mapping['user'])} AS u", f"{_quote(mapping['item'])} AS i"]
    if "timestamp" in mapping:
        select += _parquet_timestamp(_quote(mapping["timestamp"]), kinds[mapping["timestamp"]])
    if "weight" in mapping:
        select += _parquet_weight(_quote(mapping["weight"]), kinds[mapping["weight"]],
                                  dtypes[mapping["weight"]])

    def load(con: Any) -> None:
        try:
            con.execute(f"CREATE TABLE raw AS SELECT {', '.join(select)} FROM {source}")
        except duckdb.Error as err:
            first = _first_line(err)
            raise DataFormatError(
                f"{path}: not a readable Parquet table ({first}); expected complete "
                "Parquet files") from None

    return _import(path, mapping, load, where, name or path.stem, limit)


def _column_kinds(duckdb: Any, path: Path, source: str) -> dict[str, str]:
    """Each column's DuckDB type name in the table ``source`` reads."""
    with tempfile.TemporaryDirectory(prefix="modrec-duckdb-") as tmp:
        con = duckdb.connect(str(Path(tmp) / "types.duckdb"))
        try:
            return {str(n): str(t) for n, t, *_ in
                    con.execute(f"DESCRIBE SELECT * FROM {source}").fetchall()}
        except duckdb.Error as err:
            first = _first_line(err)
            raise DataFormatError(f"{path}: not a readable Parquet table ({first}); expected "
                                  "complete Parquet files with the same columns") from None
        finally:
            con.close()


def _parquet_timestamp(t: str, kind: str) -> list[str]:
    """``ts`` and ``ts_bad`` (and ``ts_exact`` for a TIMESTAMP) of the column ``t`` of
    DuckDB type ``kind``, as `read_table` takes timestamps (`read_parquet_large`)."""
    if kind in _INTEGER:
        return [f"TRY_CAST({t} AS BIGINT) AS ts",
                f"CASE WHEN TRY_CAST({t} AS BIGINT) IS NULL THEN "
                f"coalesce(CAST({t} AS VARCHAR), 'null') END AS ts_bad"]
    if kind in _FLOAT:
        d = f"CAST({t} AS DOUBLE)"
        ok = (f"({d} IS NOT NULL AND isfinite({d}) AND {d} = floor({d}) AND "
              f"{d} >= -9223372036854775808.0 AND {d} < 9223372036854775808.0)")
        return [f"CASE WHEN {ok} THEN CAST({d} AS BIGINT) END AS ts",
                f"CASE WHEN NOT {ok} THEN coalesce(CAST({t} AS VARCHAR), 'nan') "
                "END AS ts_bad"]
    if kind.startswith("TIMESTAMP"):
        # Seconds since 1970 (UTC), rounded down, as read_table has them; the exact
        # count orders the events of one second.
        exact, per = ((f"epoch_ns({t})", 10**9) if kind.endswith("_NS")
                      else (f"epoch_us({t})", 10**6))
        return [f"({exact} // {per} - CASE WHEN {exact} % {per} < 0 THEN 1 ELSE 0 "
                "END) AS ts", f"{exact} AS ts_exact",
                f"CASE WHEN {t} IS NULL THEN 'NaT' END AS ts_bad"]
    # text, or what pandas reads as objects and prints (dates, decimals)
    return _text_timestamp(f"CAST({t} AS VARCHAR)")


def _parquet_weight(w: str, kind: str, dtype: Any) -> list[str]:
    """``w`` and ``w_raw`` of the column ``w`` of DuckDB type ``kind`` (pandas dtype
    ``dtype``), as `read_table` takes weights."""
    if kind == "VARCHAR":
        return _text_weight(w)
    number = _epoch(w, dtype) if kind.startswith("TIMESTAMP") else w
    return [f"TRY_CAST({number} AS DOUBLE) AS w",
            f"coalesce(CAST({w} AS VARCHAR), 'null') AS w_raw"]


# ---- the shared part: ids, checks, sorted columns ----------------------------------------
def _first_line(err: Exception) -> str:
    """DuckDB's message without the context lines it appends."""
    return str(err).strip().split("\n")[0]


def _id_strings(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Distinct raw ids as `read_table` turns them into strings (numbers printed by
    pandas, text stripped), and which of them are missing (null, NaN, "", "NA", ...)."""
    text = values.astype(str).str.strip()
    missing = values.isna().to_numpy() | text.isin(MISSING_IDS).to_numpy()
    ids = values.astype(str) if values.dtype.kind in "iuf" else text
    return ids.to_numpy(dtype=object), missing


def _import(path: Path, mapping: dict[str, str], load: Callable[[Any], None],
            where: Callable[[int], str], name: str, limit: str) -> Dataset:
    """Run ``load`` (which creates the table ``raw``: ``u``, ``i`` and, as mapped,
    ``ts``/``ts_bad``, ``w``/``w_raw``, in file order) in a fresh DuckDB, check it, and
    build the Dataset."""
    duckdb = _duckdb()
    with tempfile.TemporaryDirectory(prefix="modrec-duckdb-") as tmp:
        con = duckdb.connect(str(Path(tmp) / "import.duckdb"))
        try:
            con.execute(f"SET memory_limit = '{limit}'")
            con.execute(f"SET temp_directory = '{Path(tmp) / 'spill'}'")
            con.execute("SET preserve_insertion_order = true")
            con.execute("SET enable_progress_bar = false")
            load(con)
            (count,) = con.execute("SELECT count(*) FROM raw").fetchone() or (0,)
            if count == 0:
                raise DataFormatError(
                    f"{path}: table has a header but no rows; expected at least one interaction"
                )
            maps = {role: _number_ids(con, col, role, mapping[role], where)
                    for col, role in (("u", "user"), ("i", "item"))}
            _check_values(con, mapping, where)
            result = _sorted_rows(con, mapping)
        finally:
            con.close()

    frame = pd.DataFrame({
        "user": np.asarray(result["user"], dtype=np.int32),
        "item": np.asarray(result["item"], dtype=np.int32),
    })
    if "timestamp" in mapping:
        frame["timestamp"] = np.asarray(result["timestamp"], dtype=np.int64)
    if "weight" in mapping:
        frame["weight"] = np.asarray(result["weight"], dtype=np.float64).astype(np.float32)
    del result
    items, users = maps["item"], maps["user"]
    return Dataset(
        name,
        frame,
        pd.DataFrame({"item": np.arange(1, len(items) + 1, dtype=np.int32), "item_id": items}),
        pd.DataFrame({"user": np.arange(len(users), dtype=np.int32), "user_id": users}),
        {"format": "table", "source": str(path), "columns": mapping},
    )


def _number_ids(con: Any, col: str, role: str, column: str, where: Callable[[int], str]
                ) -> np.ndarray:
    """The sorted vocabulary of ``raw.{col}`` (the user or item ids of ``column``), and
    the table ``{col}_map`` from each raw value to its index (items from 1, users from
    0); a missing id is an error naming its first row."""
    # Each distinct raw value once, with the row it first appears in (which
    # also keys it below: the first rows of distinct values differ).
    con.execute(f"CREATE TEMP TABLE {col}_first AS SELECT {col} AS v, "
                f"min(rowid) AS first FROM raw GROUP BY {col}")
    distinct = con.sql(f"SELECT v, first FROM {col}_first ORDER BY first"
                       ).to_arrow_table().to_pandas()
    ids, missing = _id_strings(distinct["v"])
    if missing.any():
        k = int(np.flatnonzero(missing)[0])
        raise DataFormatError(
            f"{where(int(distinct['first'].iloc[k]))}: column {column!r} "
            f"has a missing id ({distinct['v'].iloc[k]!r}); expected a user or "
            "item id"
        )
    vocab = _sorted_vocab(ids)
    index = pd.Index(vocab).get_indexer(ids) + (1 if role == "item" else 0)
    con.register(f"{col}_index_df", pd.DataFrame(
        {"first": distinct["first"].to_numpy(np.int64),
         "idx": index.astype(np.int32)}))
    con.execute(f"CREATE TEMP TABLE {col}_map AS SELECT f.v, x.idx FROM "
                f"{col}_first f JOIN {col}_index_df x ON f.first = x.first")
    con.unregister(f"{col}_index_df")
    return vocab


def _check_values(con: Any, mapping: dict[str, str], where: Callable[[int], str]) -> None:
    """The first row whose timestamp or weight `read_table` would refuse, as its error."""
    if "timestamp" in mapping:
        bad = con.execute("SELECT rowid, ts_bad FROM raw WHERE ts_bad IS NOT NULL "
                          "ORDER BY rowid LIMIT 1").fetchone()
        if bad is not None:
            raise DataFormatError(
                f"{where(int(bad[0]))}: column {mapping['timestamp']!r} must be "
                "numeric: expected an integer timestamp within int64, got "
                f"{bad[1]!r}"
            )
    if "weight" in mapping:
        bad = con.execute(
            "SELECT rowid, w_raw FROM raw WHERE w IS NULL OR isnan(w) OR isinf(w) OR "
            f"abs(w) >= {_FLOAT32_OVERFLOW!r} ORDER BY rowid LIMIT 1").fetchone()
        if bad is not None:
            raise DataFormatError(
                f"{where(int(bad[0]))}: column {mapping['weight']!r} must be "
                "numeric: expected a finite number within float32, got "
                f"{bad[1]!r}"
            )


def _sorted_rows(con: Any, mapping: dict[str, str]) -> dict[str, Any]:
    """The interactions as numbered columns (user, item and, as mapped, timestamp and
    weight), ordered by user, time, the exact time and the row of the file."""
    out = ["um.idx AS user", "im.idx AS item"]
    order = ["um.idx"]
    if "timestamp" in mapping:
        out.append("raw.ts AS timestamp")
        order.append("raw.ts")
        described = con.execute("DESCRIBE raw").fetchall()
        if any(column == "ts_exact" for column, *_ in described):
            order.append("raw.ts_exact")  # a datetime's events within a second
    if "weight" in mapping:
        out.append("raw.w AS weight")
    order.append("raw.rowid")
    result: dict[str, Any] = con.execute(
        f"SELECT {', '.join(out)} FROM raw JOIN u_map um ON raw.u = um.v "
        f"JOIN i_map im ON raw.i = im.v ORDER BY {', '.join(order)}"
    ).fetchnumpy()
    return result
