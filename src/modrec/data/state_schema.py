"""The user state's SQLite layout, stated once for its writer and its readers.

The model service writes what users do into one SQLite file (`modrec.serve.state`);
training reads that file back as a dataset (`modrec.data.state_source`). Both import
the table names, columns and the catalog's encoding from here: ``data`` sits below
``serve``, so the learning loop (events -> dataset -> run -> reload) adds no upward
import, and a change of layout is made in one place.

Tables::

    events      seq (insertion order), user_id, item (external ids), ts, kind
    meta        key -> value: ``seeded_from`` (the dataset the histories were seeded
                from), ``schema_version``
    catalog     the seeded run's items: item_id, fields (a JSON object of its catalog
                columns: title, genres, text, ...), in the run's item order; written in
                the seeding transaction, so a state holds the catalog its histories
                refer to
    live_items  items added to the running service (issue 39, item 1), written by the
                service beside the events; the reader needs ``item_id`` and ``fields``
                (a JSON object, as in ``catalog``) and reads any other column as
                whatever it is not: vectors and encoder versions stay the service's
                business. A state without the table has no live items. The service's
                writer (``modrec.serve.item_state``) keys it by ``seq`` (the order of first
                arrival; SQLite's rowid), which is the order the reader keeps.
    retired_items  item_id -> when it was retired from recommendations (live or
                trained items); read only to count them: a retired item stays in the
                catalog, since events name it and a model may learn from them, and the
                service keeps it out of its answers.

The same tables may live in a PostgreSQL database instead (replicas sharing one
state): `is_postgres_url` tells the two apart by what names them, and the writer there
(`modrec.serve.postgres_state`) creates and migrates them.

``SCHEMA_VERSION`` counts layouts: 1 had events and meta only; 2 added the catalog. A
reader refuses a state written by a newer layout than it knows (its tables may mean
something it would misread), and reads an older one (a missing table is empty).
"""

from __future__ import annotations

import json
import math
import re
import urllib.parse
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd

SCHEMA_VERSION = 2
SQLITE_MAGIC = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite database file

EVENTS = "events"
META = "meta"
CATALOG = "catalog"
LIVE_ITEMS = "live_items"
RETIRED_ITEMS = "retired_items"

EVENT_COLUMNS = frozenset({"seq", "user_id", "item", "ts", "kind"})
ITEM_COLUMNS = ("item_id", "fields")  # what a reader needs of catalog and live_items

# meta keys
SEEDED_FROM = "seeded_from"
VERSION_KEY = "schema_version"

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {EVENTS} (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- insertion order, never reused
    user_id TEXT NOT NULL,
    item TEXT NOT NULL,  -- the external item id
    ts INTEGER,  -- the caller's timestamp (e.g. Unix seconds), NULL when not given
    kind TEXT  -- e.g. "click", "purchase"; NULL when not given
);
CREATE INDEX IF NOT EXISTS events_by_user ON {EVENTS} (user_id, seq);
CREATE TABLE IF NOT EXISTS {META} (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS {CATALOG} (
    item_id TEXT PRIMARY KEY,
    fields TEXT NOT NULL  -- JSON object: the item's catalog columns
);
"""


def is_postgres_url(spec: object) -> bool:
    """Whether ``spec`` names a PostgreSQL database (``postgresql://`` or
    ``postgres://``, libpq's URI schemes) rather than an SQLite file."""
    return isinstance(spec, str) and spec.startswith(("postgresql://", "postgres://"))


def redact(url: str) -> str:
    """A PostgreSQL ``url`` with its password hidden, for logs, errors and provenance."""
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        netloc = netloc.replace(f":{parts.password}@", ":***@", 1)
    query = re.sub(r"(password=)[^&]*", r"\1***", parts.query)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc, query=query))


def catalog_rows(items: pd.DataFrame) -> Iterator[tuple[str, str]]:
    """A dataset's item table as ``catalog`` rows: (item id, JSON object of every other
    column but the index ``item``), in the table's order. A missing value (None, NaN) is
    left out of its object, so reading it back gives a missing value again. Made as they
    are read: as a list, 10M items' rows took more than a GiB at a service's start."""
    columns = [c for c in items.columns if c not in ("item", "item_id")]
    ids = items["item_id"].astype(str).tolist()
    values = items[columns].itertuples(index=False, name=None)
    return ((item_id, json.dumps({c: _plain(v) for c, v in zip(columns, row, strict=True)
                                  if not _missing(v)}, ensure_ascii=False))
            for item_id, row in zip(ids, values, strict=True))


def catalog_frame(rows: Iterable[tuple[str, str]], where: str) -> pd.DataFrame:
    """``catalog`` or ``live_items`` rows back as an item table (``item_id`` plus one
    column per field any row has; a later row of the same id replaces an earlier one).
    ``where`` names the file and table for the error a row that is not a JSON object
    raises (ValueError: the caller words it for its file)."""
    records: dict[str, dict[str, Any]] = {}
    for item_id, text in rows:
        try:
            fields = json.loads(text)
        except (TypeError, ValueError):
            fields = None
        if not isinstance(fields, dict):
            raise ValueError(f"{where}: item {item_id!r} has fields {str(text)[:80]!r}; "
                             "expected a JSON object of catalog columns")
        records[str(item_id)] = {**fields, "item_id": str(item_id)}
    frame = pd.DataFrame.from_records(list(records.values()))
    if frame.empty:
        return pd.DataFrame({"item_id": pd.Series([], dtype=object)})
    return frame[["item_id", *(c for c in frame.columns if c != "item_id")]]


def _missing(value: Any) -> bool:
    return (value is None or value is pd.NA or value is pd.NaT
            or (isinstance(value, float) and math.isnan(value)))


def _plain(value: Any) -> Any:
    """A value JSON can hold: numpy scalars and arrays as Python numbers and lists."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray | Sequence) and not isinstance(value, str | bytes):
        return [_plain(v) for v in value]
    if isinstance(value, str | int | float | bool):
        return value
    return str(value)
