"""Which columns of an interaction table hold what, and the checks every table reader
makes of them alike: the roles' guessed names and the user's mapping
(`resolve_columns`), the spellings that mean a missing id (`MISSING_IDS`), Parquet
column types no reader can make sense of (`check_parquet_types`), and where a row is,
for a message (`location`).

Below both table readers, the pandas one (`modrec.data.importers.read_table`) and the
DuckDB ones (`modrec.data.large`), so that they refuse the same files with the same
words.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from modrec.data.dataset import DataFormatError

# Column names that the table importer recognises when no mapping is given.
_COLUMN_GUESSES = {
    "user": ("user", "user_id", "userid", "userId", "uid", "user_id:token"),
    "item": ("item", "item_id", "itemid", "itemId", "iid", "movieId", "item_id:token"),
    "timestamp": ("timestamp", "time", "ts", "timestamp:float"),
    "weight": ("weight", "rating", "rating:float"),
}

# Spellings that mean "no value" to pandas and to most tools that wrote the file; an id
# spelled so would be indistinguishable from a missing one once it is saved.
MISSING_IDS = frozenset({"", "nan", "NaN", "NAN", "NA", "N/A", "n/a", "null", "NULL", "None",
                         "<NA>", "-nan", "-NaN"})


def location(path: Path, lines: np.ndarray | None, row: int) -> str:
    """``file:line`` for a text table, ``file: row N`` for Parquet."""
    return f"{path}:{lines[row]}" if lines is not None else f"{path}: row {row + 1}"


def resolve_columns(path: Path, present: list[str], given: dict[str, str]) -> dict[str, str]:
    """Which column plays each role (user, item, timestamp, weight): the mapping given,
    else the first column named like one of `_COLUMN_GUESSES`; user and item must be
    found."""
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


def check_parquet_types(path: Path, schema: pa.Schema, mapping: dict[str, str]) -> None:
    """Refuse what no reader could make sense of, before anything is read: a column of
    lists, structs or maps in any role (its values would become ids like "[10]"), and
    booleans as user or item ids (True and False would become two users or items).
    Both Parquet readers call this, so they refuse the same files."""
    for role, column in mapping.items():
        index = schema.get_field_index(column)
        if index < 0:
            continue  # absent or named twice: the reader says so
        kind = schema.field(index).type
        if pa.types.is_dictionary(kind):
            kind = kind.value_type
        what = {"user": "a user id", "item": "an item id", "timestamp": "a timestamp",
                "weight": "a number"}[role]
        if pa.types.is_nested(kind):
            raise DataFormatError(
                f"{path}: column {column!r} ({role}) holds nested values ({kind}); expected "
                f"{what} in each row: flatten the column first (one row per element)")
        if role in ("user", "item") and pa.types.is_boolean(kind):
            raise DataFormatError(
                f"{path}: column {column!r} ({role}) holds booleans; expected {what} in "
                "each row (an integer or text), not true or false; if another column holds "
                f"the ids, name it with --columns {role}=COLUMN")
