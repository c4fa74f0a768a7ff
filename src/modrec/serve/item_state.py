"""Items added to the running service (``POST /v1/items``), kept in the service's
state (the SQLite file, or the PostgreSQL database) beside the users' events.

Why there: an item is acknowledged only once it is durable, and the state already is
the service's one durable store (WAL, ``synchronous=FULL``: a committed transaction
survives a killed process and a power cut); a second file would need its own crash
story and could disagree with the first. Several served models share one state, so
items are keyed by their external id, as events are.

Tables::

    live_items     seq (INTEGER PRIMARY KEY: the rowid, the order of first arrival),
                   item_id (TEXT, unique), fields (TEXT: a JSON object of the item's
                   catalog fields as sent, without item_id, media paths relative to
                   --media-dir), digest (of the fields and the media files' bytes: an
                   item sent again unchanged is not encoded again), added and updated
                   (REAL, Unix seconds)
    live_content   (item_id, encoder, version) -> the encoder's vector, float32 as the
                   encoder returned it (NULL: the item has no input for that encoder)
    live_vectors   (item_id, tower) -> the item's vector in a model, float32; ``tower``
                   is a digest of what made it (the tower's projection weights, the
                   encoder versions, the normalisation), so a restart of the same model
                   reuses it byte for byte and another model never does
    retired_items  item_id -> when it was retired (trained items can be retired too)

and one row in ``meta``, ``live_version``: a counter raised by every transaction that
changes what is served (an item added or updated, an item retired). Several processes
serve one state file (``modrec serve --workers N``); each reads the counter before it
answers and catches up from these tables when another process has raised it
(`modrec.serve.live.LiveItems.sync`): one indexed read per request batch.

``live_items`` is also what training reads back when it reads the state as a dataset
(``item_id`` and ``fields``, in rowid order: the shape of the seeded catalog's rows),
so its name and that of ``retired_items`` come from the layout module both sides
import, ``modrec.data.state_schema``. The vectors and
retirements are kept in tables of their own, the service's business only, so the
reader's table stays two plain columns it can rely on.

The SQL below is written once for both engines: ``?`` placeholders (which
`PostgresConnection` turns into psycopg's) and ``ON CONFLICT`` clauses, which SQLite
and PostgreSQL read alike. The tables are created here for SQLite and by the
PostgreSQL state's migrations there (`modrec.serve.postgres_state.MIGRATIONS`: column
types differ, e.g. BLOB and bytea).

Processes sharing a state (the workers of ``modrec serve --workers N``, replicas sharing
a PostgreSQL state) share these tables, and each holds its own index: before it answers,
each reads the ``live_version`` counter (below) and catches up from these tables when
another process raised it, so an item added through one is served by all.

Content vectors are kept per encoder *version*: a model whose encoder makes another
version never reads a vector made by the other one (`modrec.serve.live` encodes the
item again for it, from the stored fields). An update replaces the item's fields and
drops all its vectors in the same transaction as the new ones are written, so no
vector of an old version of an item outlives it.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from modrec.data.state_schema import LIVE_ITEMS, META, RETIRED_ITEMS
from modrec.serve.state import SQLiteUserState

if TYPE_CHECKING:
    from modrec.serve.postgres_state import PostgresUserState


class Connection(Protocol):
    """What these tables' SQL needs of a connection: sqlite3's, or a
    `PostgresConnection`."""

    def execute(self, sql: str, params: Sequence[Any] = ..., /) -> Any: ...

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]], /) -> Any: ...

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {LIVE_ITEMS} (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    item_id TEXT NOT NULL UNIQUE,
    fields TEXT NOT NULL,
    digest TEXT NOT NULL,
    added REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS live_content (
    item_id TEXT NOT NULL,
    encoder TEXT NOT NULL,
    version TEXT NOT NULL,
    vector BLOB,
    PRIMARY KEY (item_id, encoder, version)
);
CREATE TABLE IF NOT EXISTS live_vectors (
    item_id TEXT NOT NULL,
    tower TEXT NOT NULL,
    vector BLOB NOT NULL,
    PRIMARY KEY (item_id, tower)
);
CREATE TABLE IF NOT EXISTS {RETIRED_ITEMS} (item_id TEXT PRIMARY KEY, at REAL NOT NULL);
"""
VERSION = "live_version"  # the meta key of the change counter
# Written for both engines, as the rest: PostgreSQL assigns the integer to the TEXT
# column through its automatic text cast.
_BUMP = (f"INSERT INTO {META} (key, value) VALUES ('{VERSION}', '1') "  # noqa: S608
         f"ON CONFLICT (key) DO UPDATE SET value = CAST({META}.value AS INTEGER) + 1")


@dataclasses.dataclass(frozen=True)
class StoredItem:
    item_id: str
    fields: dict[str, Any]
    digest: str
    added: float
    updated: float


@dataclasses.dataclass
class ItemVersion:
    """What one write stores for an item: its fields and every vector made from them."""

    item_id: str
    fields: dict[str, Any]
    digest: str
    # (encoder, version) -> vector (None: no input for that encoder)
    content: dict[tuple[str, str], np.ndarray | None]
    vectors: dict[str, np.ndarray]  # tower digest -> the item's vector in that model


def blob(vector: np.ndarray) -> bytes:
    return np.ascontiguousarray(vector, dtype="<f4").tobytes()


def unblob(data: bytes | None) -> np.ndarray | None:
    return None if data is None else np.frombuffer(data, dtype="<f4").copy()


class LiveItemState:
    """The live-item tables of a user state (created when missing)."""

    def __init__(self, state: SQLiteUserState | PostgresUserState) -> None:
        self.state = state
        self.path = state.path
        if state.dialect == "sqlite":  # PostgreSQL's migrations created them
            with state.transaction() as conn:
                for statement in filter(str.strip, _SCHEMA.split(";")):
                    conn.execute(statement)

    # ---- reading -------------------------------------------------------------------------
    def items(self) -> list[StoredItem]:
        """Every live item (retired ones too), in the order they first arrived."""
        rows = self.state.connection().execute(
            f"SELECT item_id, fields, digest, added, updated FROM {LIVE_ITEMS} "  # noqa: S608
            "ORDER BY seq")
        return [_item(row) for row in rows]

    def get(self, item_id: str) -> StoredItem | None:
        row = self.state.connection().execute(
            f"SELECT item_id, fields, digest, added, updated FROM {LIVE_ITEMS} "  # noqa: S608
            "WHERE item_id = ?",
            (item_id,)).fetchone()
        return None if row is None else _item(row)

    def version(self) -> int:
        """The change counter: raised by every write that changes what is served (0 before
        the first), so an unchanged number means nothing to catch up on."""
        row = self.state.connection().execute(
            f"SELECT value FROM {META} WHERE key = ?", (VERSION,)).fetchone()  # noqa: S608
        return 0 if row is None else int(row[0])

    def count(self) -> int:
        return int(self.state.connection().execute(
            f"SELECT COUNT(*) FROM {LIVE_ITEMS}").fetchone()[0])  # noqa: S608

    def retired(self) -> dict[str, float]:
        """item id -> when it was retired."""
        return {str(i): float(at) for i, at in self.state.connection().execute(
            f"SELECT item_id, at FROM {RETIRED_ITEMS}")}  # noqa: S608

    def retired_at(self, item_id: str) -> float | None:
        row = self.state.connection().execute(
            f"SELECT at FROM {RETIRED_ITEMS} WHERE item_id = ?",  # noqa: S608
            (item_id,)).fetchone()
        return None if row is None else float(row[0])

    def content(self, encoder: str, version: str) -> dict[str, np.ndarray | None]:
        """item id -> its stored vector of ``encoder`` at ``version`` (None: no input)."""
        return {str(i): unblob(v) for i, v in self.state.connection().execute(
            "SELECT item_id, vector FROM live_content WHERE encoder = ? AND version = ?",
            (encoder, version))}

    def vectors(self, tower: str) -> dict[str, np.ndarray]:
        """item id -> its stored vector in the model whose tower digest is ``tower``."""
        found: dict[str, np.ndarray] = {}
        for item_id, data in self.state.connection().execute(
                "SELECT item_id, vector FROM live_vectors WHERE tower = ?", (tower,)):
            vector = unblob(data)
            assert vector is not None
            found[str(item_id)] = vector
        return found

    # ---- writing -------------------------------------------------------------------------
    def write(self, versions: Sequence[ItemVersion], now: float | None = None) -> None:
        """New items and new versions of items, in one transaction: durable when this
        returns. An item's earlier vectors are dropped with its earlier fields."""
        now = time.time() if now is None else now
        with self.state.transaction() as conn:
            for version in versions:
                conn.execute(
                    f"INSERT INTO {LIVE_ITEMS} (item_id, fields, digest, added, updated) "  # noqa: S608
                    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (item_id) DO UPDATE SET "
                    "fields = excluded.fields, digest = excluded.digest, "
                    "updated = excluded.updated",
                    (version.item_id, json.dumps(
                        {k: v for k, v in version.fields.items() if k != "item_id"},
                        ensure_ascii=False),
                     version.digest, now, now))
                for table in ("live_content", "live_vectors"):
                    conn.execute(f"DELETE FROM {table} WHERE item_id = ?",  # noqa: S608
                                 (version.item_id,))
                _insert_vectors(conn, version.item_id, version.content.items(),
                                version.vectors.items())
            conn.execute(_BUMP)

    def add_vectors(self, item_id: str,
                    content: Iterable[tuple[tuple[str, str], np.ndarray | None]],
                    vectors: Iterable[tuple[str, np.ndarray]]) -> None:
        """Vectors made for an item already stored, for a model loaded after it arrived
        (the item's fields are unchanged, so nothing is dropped)."""
        with self.state.transaction() as conn:
            _insert_vectors(conn, item_id, content, vectors)

    def retire(self, item_id: str, now: float | None = None) -> float:
        """Retire ``item_id`` (once: retiring it again keeps the first time); returns
        when it was retired."""
        with self.state.transaction() as conn:
            conn.execute(f"INSERT INTO {RETIRED_ITEMS} (item_id, at) "  # noqa: S608
                         "VALUES (?, ?) ON CONFLICT (item_id) DO NOTHING",
                         (item_id, time.time() if now is None else now))
            conn.execute(_BUMP)
            row = conn.execute(f"SELECT at FROM {RETIRED_ITEMS} WHERE item_id = ?",  # noqa: S608
                               (item_id,)).fetchone()
        return float(row[0])


def _insert_vectors(conn: Connection, item_id: str,
                    content: Iterable[tuple[tuple[str, str], np.ndarray | None]],
                    vectors: Iterable[tuple[str, np.ndarray]]) -> None:
    conn.executemany(
        "INSERT INTO live_content (item_id, encoder, version, vector) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (item_id, encoder, version) DO UPDATE SET vector = excluded.vector",
        [(item_id, encoder, version, None if v is None else blob(v))
         for (encoder, version), v in content])
    conn.executemany(
        "INSERT INTO live_vectors (item_id, tower, vector) VALUES (?, ?, ?) "
        "ON CONFLICT (item_id, tower) DO UPDATE SET vector = excluded.vector",
        [(item_id, tower, blob(v)) for tower, v in vectors])


def _item(row: tuple[Any, ...]) -> StoredItem:
    """A live_items row; its fields with item_id among them, as the item was sent."""
    item_id, fields, digest, added, updated = row
    return StoredItem(str(item_id), {"item_id": str(item_id), **json.loads(fields)},
                      str(digest), float(added), float(updated))
