"""The model service's user state as a dataset (format ``modrec-state``): what users did
in the running service becomes training data with no export step.

``modrec train -d state.db --init-from RUN`` reads the SQLite file `modrec serve
--state` writes (its layout: `modrec.data.state_schema`) and trains on it:

* interactions: every event, each user's in the order the service stored them (the
  order its model read them in, which is insertion order, not timestamp order: clocks
  disagree). The seeding copied the run's dataset histories in once, so this is the
  original histories plus everything since. Timestamps are kept when every event has
  one (the state's own rule for a history) and left out otherwise, saying so; an
  event's kind (click, purchase, ...) is counted in the provenance, and every kind is
  an interaction;
* items: the catalog the state was seeded with (the seeded run's items with their
  titles and other fields, stored beside the histories), then the live items added
  to the running service (table ``live_items``, when present; a live item's fields
  replace a seeded item's of the same id), then the ids that occur only in events.
  A retired item (table ``retired_items``) stays: events name it, and the service,
  not the dataset, keeps it out of answers; the provenance counts them;
* users: every user with an event.

Why the catalog is read from the state rather than from a run folder given beside it
(``--catalog-from RUN``): the state is the one thing that outlives the runs it serves,
seeded once and written since, so one file is the whole dataset, and its fingerprint
pins what a run trained on; a run folder named beside it may be deleted or retrained
in place, and a second input would have to be carried by every reader of a dataset
(train, resume, refit, the snapshot).

A consistent read of a state the service is writing to: everything is read inside one
read transaction of a read-only connection. The service keeps the file in WAL mode, in
which a reader sees the database as of its transaction's first read while writers go
on committing (and never waits for them), so the events, the catalog and the live
items come from one moment: an event never names a live item that the same read
misses. Nothing is written to the file.

A state kept in PostgreSQL (``modrec train -d postgresql://USER:PASSWORD@HOST/DB``,
what replicas share: `modrec.serve.postgres_state`) is read the same way, inside one
``REPEATABLE READ READ ONLY`` transaction (one snapshot, no writes), through psycopg
(the serve extra). It is read afresh on every load, never cached: no file's size and
time tell that it changed. The URL's password never reaches the dataset's provenance.

Reading SQLite with the standard library only, and nothing of ``modrec.serve``: the
service sits above the data package.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from modrec.data import state_schema as schema
from modrec.data.dataset import DataFormatError, Dataset, build_dataset
from modrec.data.files import dataset_name, require_file

log = logging.getLogger(__name__)

FORMAT = "modrec-state"


def is_sqlite(path: Path) -> bool:
    """Whether ``path`` is a file that starts as every SQLite database does."""
    if not path.is_file():  # never open a FIFO or a device to look
        return False
    try:
        with path.open("rb") as f:
            return f.read(len(schema.SQLITE_MAGIC)) == schema.SQLITE_MAGIC
    except OSError:
        return False


def check_state(path: Path) -> None:
    """Refuse an SQLite file that is not a modrec user state, naming what it holds."""
    with _snapshot(path) as conn:
        _check_tables(conn, path)


def read_state(path: str | Path) -> Dataset:
    """The state in ``path`` (an SQLite file `modrec serve --state` wrote, or a
    ``postgresql://`` URL) as a Dataset: see the module docstring. Raises
    `DataFormatError` naming the file for anything else, and for a state without
    events."""
    if schema.is_postgres_url(path):
        return read_postgres_state(str(path))
    path = Path(path)
    require_file(path)
    with _snapshot(path) as conn:
        tables = _check_tables(conn, path)
        meta = dict(conn.execute(f"SELECT key, value FROM {schema.META}").fetchall())
        _check_version(path, meta)
        catalog = _items(conn, path, schema.CATALOG, tables)
        live = _items(conn, path, schema.LIVE_ITEMS, tables)
        retired = _count(conn, schema.RETIRED_ITEMS, tables)
        events = pd.DataFrame(conn.execute(
            f"SELECT seq, user_id, item, ts, kind FROM {schema.EVENTS} ORDER BY seq"
        ).fetchall(), columns=["seq", "user_id", "item", "ts", "kind"])
    _check_events(path, events)
    return _dataset(path, events, catalog, live, meta, retired)


def read_postgres_state(url: str) -> Dataset:
    """The state in the PostgreSQL database ``url`` names, as `read_state` reads a file."""
    where = schema.redact(url)
    try:
        import psycopg
    except ImportError:
        raise DataFormatError(f"{where}: reading a PostgreSQL state needs psycopg; install "
                              "modrec's serve extra (pip install 'modrec[serve]')") from None
    try:
        with psycopg.connect(url, connect_timeout=30) as conn:
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            conn.read_only = True
            with conn.transaction():
                tables = {r[0] for r in conn.execute(
                    "SELECT table_name FROM information_schema.tables "
                    "WHERE table_schema = current_schema()")}
                columns = {r[0] for r in conn.execute(
                    "SELECT column_name FROM information_schema.columns WHERE "
                    "table_schema = current_schema() AND table_name = %s", (schema.EVENTS,))}
                _check_layout(where, tables, columns)
                meta = {str(k): str(v) for k, v in conn.execute(
                    f"SELECT key, value FROM {schema.META}")}
                _check_version(where, meta)
                # The seq columns keep the order rows were written in (SQLite's rowid).
                catalog, live = (schema.catalog_frame(conn.execute(
                    f"SELECT item_id, fields FROM {table} ORDER BY seq").fetchall(),
                    f"{where}: table {table}") for table in (schema.CATALOG,
                                                               schema.LIVE_ITEMS))
                retired = int(conn.execute(f"SELECT COUNT(*) FROM {schema.RETIRED_ITEMS}")
                              .fetchall()[0][0]) if schema.RETIRED_ITEMS in tables else 0
                events = pd.DataFrame(conn.execute(
                    f"SELECT seq, user_id, item, ts, kind FROM {schema.EVENTS} ORDER BY seq"
                ).fetchall(), columns=["seq", "user_id", "item", "ts", "kind"])
    except psycopg.Error as err:
        raise DataFormatError(f"{where}: cannot be read as a modrec user state (PostgreSQL: "
                              f"{str(err).strip()}); check the URL, and that modrec serve "
                              "--state wrote that database") from None
    except ValueError as err:  # an item's fields that are not a JSON object
        raise DataFormatError(str(err)) from None
    _check_events(where, events)
    if not events.empty and events["ts"].notna().all():
        events["ts"] = events["ts"].astype(np.int64)  # BIGINT read as Python ints
    name = urllib.parse.urlsplit(url).path.strip("/") or "postgres-state"
    return _dataset(where, events, catalog, live, meta, retired, name=name)


def _check_events(where: str | Path, events: pd.DataFrame) -> None:
    if events.empty:
        raise DataFormatError(
            f"{where}: the user state holds no events yet, so there is nothing to train on; "
            "serve a run with it (modrec serve RUN --state FILE seeds it with the run's "
            "histories) or POST events to /v1/events first")


@contextlib.contextmanager
def _snapshot(path: Path) -> Iterator[sqlite3.Connection]:
    """A read-only connection inside one read transaction (WAL: a snapshot of the file
    as of the first read), closed afterwards; SQLite's errors as `DataFormatError`."""
    uri = f"file:{urllib.parse.quote(str(path.resolve()))}?mode=ro"
    conn = None
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=30.0, isolation_level=None)
        conn.execute("BEGIN")  # deferred: the snapshot is taken at the first read
        yield conn
        conn.execute("COMMIT")
    except sqlite3.Error as err:
        raise DataFormatError(
            f"{path}: cannot be read as a modrec user state (SQLite: {err}); expected the "
            "file modrec serve --state writes") from None
    finally:
        if conn is not None:
            conn.close()


def _check_tables(conn: sqlite3.Connection, path: Path) -> set[str]:
    """The state's table names, after checking that its events table is modrec's."""
    tables = {row[0] for row in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table'")}
    columns = {row[1] for row in conn.execute(f"PRAGMA table_info({schema.EVENTS})")}
    _check_layout(path, tables, columns)
    return tables


def _check_layout(where: str | Path, tables: set[str], columns: set[str]) -> None:
    """Refuse a database whose tables (``tables``, ``columns`` of its events) are not a
    modrec user state's."""
    if columns != schema.EVENT_COLUMNS or schema.META not in tables:
        held = ", ".join(sorted(t for t in tables if not t.startswith("sqlite_"))) or "none"
        engine = "a PostgreSQL" if isinstance(where, str) else "an SQLite"
        raise DataFormatError(
            f"{where}: {engine} database, but not a modrec user state (its tables: {held}; "
            f"expected {schema.EVENTS} with the columns "
            f"{', '.join(sorted(schema.EVENT_COLUMNS))}, and {schema.META}); pass the "
            "state modrec serve --state writes")


def _check_version(path: str | Path, meta: dict[str, str]) -> None:
    version = meta.get(schema.VERSION_KEY, "1")
    if not version.isdigit() or int(version) > schema.SCHEMA_VERSION:
        raise DataFormatError(
            f"{path}: user state layout {version!r} is newer than this modrec reads (up "
            f"to {schema.SCHEMA_VERSION}); read it with the modrec version that served it")


def _items(conn: sqlite3.Connection, path: Path, table: str,
           tables: set[str]) -> pd.DataFrame:
    """The item table ``table`` (catalog or live items) as item_id plus field columns;
    empty when the state has no such table."""
    if table not in tables:
        return schema.catalog_frame([], table)
    columns = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
    missing = [c for c in schema.ITEM_COLUMNS if c not in columns]
    if missing:
        raise DataFormatError(
            f"{path}: table {table} has no column {', '.join(missing)} (it has "
            f"{', '.join(sorted(columns))}); expected {', '.join(schema.ITEM_COLUMNS)} "
            "(modrec.data.state_schema)")
    rows = conn.execute(f"SELECT item_id, fields FROM {table} ORDER BY rowid").fetchall()
    try:
        return schema.catalog_frame(rows, f"{path}: table {table}")
    except ValueError as err:
        raise DataFormatError(str(err)) from None


def _count(conn: sqlite3.Connection, table: str, tables: set[str]) -> int:
    """Rows of ``table``; 0 when the state has no such table."""
    if table not in tables:
        return 0
    return int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])


def _dataset(path: str | Path, events: pd.DataFrame, catalog: pd.DataFrame,
             live: pd.DataFrame, meta: dict[str, str], retired: int,
             name: str | None = None) -> Dataset:
    """The dataset of the events (in stored order) over the catalog plus live items;
    ``path``: the SQLite file, or the PostgreSQL URL without its password."""
    name = name or dataset_name(Path(path))
    times = _timestamps(path, events)
    items = pd.concat([catalog, live], ignore_index=True).drop_duplicates(
        "item_id", keep="last")  # a live item's fields replace a seeded item's
    # build_dataset sorts each user's events by its timestamps, stably: give it the
    # events' positions as the time, so that each user's order is the stored one, and
    # put the real timestamps (or none) in afterwards.
    dataset = build_dataset(name, events["user_id"].to_numpy(), events["item"].to_numpy(),
                            timestamps=np.arange(len(events), dtype=np.int64),
                            item_table=items)
    position = dataset.interactions["timestamp"].to_numpy()
    if times is None:
        dataset.interactions = dataset.interactions.drop(columns="timestamp")
    else:
        dataset.interactions["timestamp"] = times[position]
    known = set(items["item_id"])
    only_in_events = int(sum(1 for i in dataset.items["item_id"] if i not in known))
    kinds = Counter(str(k) for k in events["kind"].fillna("(none)"))
    dataset.provenance = {
        "source": path if isinstance(path, str) else str(path.resolve()), "format": FORMAT,
        "seeded_from": meta.get(schema.SEEDED_FROM),
        "schema_version": int(meta.get(schema.VERSION_KEY, "1")),
        "events": len(events), "last_seq": int(events["seq"].iloc[-1]),
        "kinds": dict(sorted(kinds.items())),
        "catalog_items": len(catalog), "live_items": len(live), "retired_items": retired,
        "items_only_in_events": only_in_events,
        "timestamps": "kept" if times is not None else
        f"left out: {int(events['ts'].isna().sum())} events have none"}
    _log_read(path, dataset, dataset.provenance)
    return dataset


def _timestamps(path: str | Path, events: pd.DataFrame) -> np.ndarray | None:
    """The events' timestamps as int64, or None when any event has none."""
    ts = events["ts"]
    if ts.isna().any():
        return None
    if ts.dtype.kind != "i":  # SQLite keeps what it was given: a text or a real, say
        bad = next(i for i, t in enumerate(ts) if not isinstance(t, int | np.integer))
        row = events.iloc[bad]
        raise DataFormatError(
            f"{path}: event {int(row['seq'])} (user {row['user_id']!r}) has the timestamp "
            f"{row['ts']!r}; expected whole seconds (an integer) or none")
    return ts.to_numpy(dtype=np.int64)


def _log_read(path: str | Path, dataset: Dataset, provenance: dict[str, Any]) -> None:
    log.info("%s: %d events of %d users over %d items (%d seeded, %d live, %d only in "
             "events); timestamps %s", path, provenance["events"], dataset.num_users,
             dataset.num_items, provenance["catalog_items"], provenance["live_items"],
             provenance["items_only_in_events"], provenance["timestamps"])
