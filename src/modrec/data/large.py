"""Out-of-core import of large CSV/TSV interaction tables through DuckDB.

`read_table` parses the whole file into Python strings (about 630 bytes an event);
`read_table_large` lets DuckDB read it under a memory limit, spilling to a temporary
folder, and gives back the same `Dataset` (equal `fingerprint()`): ids are the field
text stripped of surrounding blanks (Python's ``str.strip``), numbered by the same
`_sorted_vocab`, and rows ordered by (user, timestamp, row of the file).

Only the distinct user and item ids pass through Python; the interactions stay in
DuckDB until the final, sorted, fixed-width columns are fetched. Errors name the file
and the data row (1-based, header not counted), not the line.
"""

from __future__ import annotations

import codecs
import csv
import os
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from modrec.data.dataset import DataFormatError, Dataset, _sorted_vocab

# Files at least this big (bytes) that are detected as CSV go through DuckDB;
# MODREC_LARGE_IMPORT_BYTES changes it.
LARGE_IMPORT_BYTES = 1 << 30
# DuckDB's memory limit for the import; MODREC_IMPORT_MEMORY changes it.
IMPORT_MEMORY = "2GB"

# Python's str.strip() whitespace, as an RE2 class, so that timestamps and weights lose
# the same blanks the pandas path strips.
_WS = (r"[\t\n\x0b\x0c\r\x1c-\x1f \x{85}\x{a0}\x{1680}\x{2000}-\x{200a}\x{2028}\x{2029}"
       r"\x{202f}\x{205f}\x{3000}]")
_FLOAT32_OVERFLOW = 3.4028235677973366e38  # 2**128 - 2**103: rounds to inf as float32


def large_threshold() -> int:
    return int(os.environ.get("MODREC_LARGE_IMPORT_BYTES", LARGE_IMPORT_BYTES))


def _header(path: Path, sep: str) -> list[str]:
    """The header's column names, read as the csv module reads them."""
    try:
        with path.open(encoding="utf-8", newline="") as f:
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


def _trimmed(column: str) -> str:
    return f"regexp_replace({column}, '^{_WS}+|{_WS}+$', '', 'g')"


def read_table_large(
    path: str | Path,
    columns: dict[str, str] | None = None,
    name: str | None = None,
    memory_limit: str | None = None,
) -> Dataset:
    """A CSV/TSV table read by DuckDB under ``memory_limit``; the same Dataset as
    `read_table` on the same file."""
    try:
        import duckdb
    except ImportError:
        raise ImportError("the out-of-core importer needs DuckDB: pip install 'modrec[large]'"
                          ) from None

    from modrec.data.importers import _MISSING, _require_file, _resolve_columns, _where

    path = Path(path)
    _require_file(path)
    if path.suffix.lower() == ".parquet":
        raise DataFormatError(
            f"{path}: the DuckDB importer reads CSV/TSV only; expected a .csv or .tsv file "
            "(read Parquet with --format parquet)"
        )
    sep = "\t" if path.suffix in (".tsv", ".inter") else ","
    names = _header(path, sep)
    mapping = _resolve_columns(path, names, columns or {})
    limit = memory_limit or os.environ.get("MODREC_IMPORT_MEMORY", IMPORT_MEMORY)
    if not limit.replace(".", "").isalnum():
        raise ValueError(f"memory limit {limit!r}; expected something like '2GB'")

    select = [f"{_quote(mapping['user'])} AS u", f"{_quote(mapping['item'])} AS i"]
    if "timestamp" in mapping:
        t = _quote(mapping["timestamp"])
        ts = (f"TRY_CAST(CASE WHEN regexp_full_match({_trimmed(t)}, '[+-]?[0-9]+(\\.0*)?') "
              f"THEN split_part({_trimmed(t)}, '.', 1) END AS BIGINT)")
        select += [f"{ts} AS ts", f"CASE WHEN {ts} IS NULL THEN coalesce({t}, '') END AS ts_bad"]
    if "weight" in mapping:
        w = _quote(mapping["weight"])
        select += [f"TRY_CAST({_trimmed(w)} AS DOUBLE) AS w", f"{w} AS w_raw"]
    types = ", ".join(f"{_quote(n)}: 'VARCHAR'" for n in names)

    with tempfile.TemporaryDirectory(prefix="modrec-duckdb-") as tmp:
        con = duckdb.connect(str(Path(tmp) / "import.duckdb"))
        try:
            con.execute(f"SET memory_limit = '{limit}'")
            con.execute(f"SET temp_directory = '{Path(tmp) / 'spill'}'")
            con.execute("SET preserve_insertion_order = true")
            con.execute("SET enable_progress_bar = false")
            try:
                con.execute(
                    f"CREATE TABLE raw AS SELECT {', '.join(select)} FROM read_csv(?, "
                    f"delim = ?, header = true, quote = '\"', escape = '\"', "
                    f"auto_detect = false, columns = {{{types}}}, strict_mode = true)",
                    [str(path), sep],
                )
            except duckdb.Error as err:
                first = str(err).strip().split("\n")[0]
                raise DataFormatError(
                    f"{path}: not a readable {sep!r}-separated table ({first}); expected a "
                    "header row and the same number of fields on every line"
                ) from None
            (count,) = con.execute("SELECT count(*) FROM raw").fetchone() or (0,)
            if count == 0:
                raise DataFormatError(
                    f"{path}: table has a header but no rows; expected at least one interaction"
                )
            maps = {}
            for col, role in (("u", "user"), ("i", "item")):
                rows = con.execute(
                    f"SELECT {col}, min(rowid) AS first FROM raw GROUP BY {col} ORDER BY first"
                ).fetchall()
                for value, first in rows:
                    if value is None or value.strip() in _MISSING:
                        raise DataFormatError(
                            f"{_where(path, None, int(first))}: column {mapping[role]!r} has a "
                            f"missing id ({value or ''!r}); expected a user or item id"
                        )
                stripped = np.array([v.strip() for v, _ in rows], dtype=object)
                vocab = _sorted_vocab(stripped)
                index = pd.Index(vocab).get_indexer(stripped) + (1 if role == "item" else 0)
                con.register(f"{col}_map_df", pd.DataFrame(
                    {"v": [v for v, _ in rows], "idx": index.astype(np.int32)}))
                con.execute(f"CREATE TEMP TABLE {col}_map AS SELECT * FROM {col}_map_df")
                con.unregister(f"{col}_map_df")
                maps[role] = vocab
            if "timestamp" in mapping:
                bad = con.execute("SELECT rowid, ts_bad FROM raw WHERE ts_bad IS NOT NULL "
                                  "ORDER BY rowid LIMIT 1").fetchone()
                if bad is not None:
                    raise DataFormatError(
                        f"{_where(path, None, int(bad[0]))}: column {mapping['timestamp']!r} "
                        "must be numeric: expected an integer timestamp within int64, got "
                        f"{bad[1]!r}"
                    )
            if "weight" in mapping:
                bad = con.execute(
                    "SELECT rowid, w_raw FROM raw WHERE w IS NULL OR isnan(w) OR isinf(w) OR "
                    f"abs(w) >= {_FLOAT32_OVERFLOW!r} ORDER BY rowid LIMIT 1").fetchone()
                if bad is not None:
                    raise DataFormatError(
                        f"{_where(path, None, int(bad[0]))}: column {mapping['weight']!r} must "
                        "be numeric: expected a finite number within float32, got "
                        f"{bad[1]!r}"
                    )
            out = ["um.idx AS user", "im.idx AS item"]
            order = ["um.idx"]
            if "timestamp" in mapping:
                out.append("raw.ts AS timestamp")
                order.append("raw.ts")
            if "weight" in mapping:
                out.append("raw.w AS weight")
            order.append("raw.rowid")
            result = con.execute(
                f"SELECT {', '.join(out)} FROM raw JOIN u_map um ON raw.u = um.v "
                f"JOIN i_map im ON raw.i = im.v ORDER BY {', '.join(order)}"
            ).fetchnumpy()
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
        name or path.stem,
        frame,
        pd.DataFrame({"item": np.arange(1, len(items) + 1, dtype=np.int32), "item_id": items}),
        pd.DataFrame({"user": np.arange(len(users), dtype=np.int32), "user_id": users}),
        {"format": "table", "source": str(path), "columns": mapping},
    )
