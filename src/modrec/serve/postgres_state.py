"""The user state in PostgreSQL, for replicas on several machines sharing one state.

`SQLiteUserState` is one file on one machine; two replicas behind a load balancer need
a state both of them read and write, so that an event posted through one is in the
next recommendation the other makes. `PostgresUserState` keeps the same tables
(`modrec.data.state_schema`) in a PostgreSQL database and keeps the same promises:

* Durable acknowledgement: every connection sets ``synchronous_commit = on`` (whatever
  the server's or role's default), so a write returns only after its commit record is
  flushed to the server's WAL: an acknowledged event survives a killed replica, and a
  killed or crashed PostgreSQL server (``fsync`` on, its default).
* Throughput: the events of one call go in one statement (arrays unnested, in their
  order), its own transaction in autocommit: one round trip to the server; rows written
  with metadata or catalog entries go in one transaction, and seeding in one ``COPY``;
  and concurrent commits of
  the server threads (each has its own connection) share WAL flushes, PostgreSQL's
  group commit, so the events per second grow with the writers while each event still
  waits for its own flush.
* Order: ``events.seq`` is an identity column, so a history is in insertion order, read
  newest first through an index on ``(user_id, seq)``.

The schema is created and migrated by modrec: ``modrec_migrations`` holds the version of
every migration applied (`MIGRATIONS`, numbered from 1), each applied in a transaction
under an advisory lock, so two replicas starting at once do not both create the tables,
and a database migrated by a newer modrec is refused rather than misread.

Threads: as in SQLite, each thread gets its own connection (``threading.local``),
opened on first use and opened again after the server dropped it (a restart of
PostgreSQL costs the requests in flight a 503, not the replica). A server with 40
request threads holds up to 40 connections: size ``max_connections`` for the replicas.

The live-item tables (`modrec.serve.item_state`) live in the same database and write
through `transaction`, as they do in the SQLite file; their SQL is shared, written in
the dialect both engines accept, with ``?`` placeholders (`PostgresConnection`).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np

from modrec.data import state_schema
from modrec.data.state_schema import redact
from modrec.serve.state import (
    AlreadySeeded,
    Row,
    StateError,
    StateUnavailable,
    ThreadConnections,
    as_rows,
    event_rows,
    seed_rows,
)

if TYPE_CHECKING:  # psycopg is imported when a PostgreSQL state is opened (serve extra)
    import psycopg

log = logging.getLogger(__name__)

MIGRATIONS_TABLE = "modrec_migrations"
# pg_advisory_xact_lock key that serialises migrations: any constant unlikely to clash
# with another program's locks in the same database ("modrec" in ASCII).
_MIGRATION_LOCK = 0x6D6F64726563

# One entry per layout change, never edited once released: a new layout is a new entry.
MIGRATIONS: tuple[str, ...] = (
    # 1: SQLite's layout version 2 (events, meta, catalog) and the live-item tables.
    # catalog gets a seq so that it reads back in the order it was written (SQLite's
    # rowid); vectors are bytea (SQLite's BLOB).
    f"""
    CREATE TABLE {state_schema.EVENTS} (
        seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        user_id TEXT NOT NULL,
        item TEXT NOT NULL,
        ts BIGINT,
        kind TEXT
    );
    CREATE INDEX events_by_user ON {state_schema.EVENTS} (user_id, seq);
    CREATE TABLE {state_schema.META} (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE {state_schema.CATALOG} (
        seq BIGINT GENERATED ALWAYS AS IDENTITY,
        item_id TEXT PRIMARY KEY,
        fields TEXT NOT NULL
    );
    CREATE TABLE {state_schema.LIVE_ITEMS} (
        seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        item_id TEXT NOT NULL UNIQUE,
        fields TEXT NOT NULL,
        digest TEXT NOT NULL,
        added DOUBLE PRECISION NOT NULL,
        updated DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE live_content (
        item_id TEXT NOT NULL,
        encoder TEXT NOT NULL,
        version TEXT NOT NULL,
        vector BYTEA,
        PRIMARY KEY (item_id, encoder, version)
    );
    CREATE TABLE live_vectors (
        item_id TEXT NOT NULL,
        tower TEXT NOT NULL,
        vector BYTEA NOT NULL,
        PRIMARY KEY (item_id, tower)
    );
    CREATE TABLE {state_schema.RETIRED_ITEMS} (
        item_id TEXT PRIMARY KEY,
        at DOUBLE PRECISION NOT NULL
    );
    """,
)

# Rows as four arrays, inserted in their order (the identity column numbers them so):
# one statement whatever the number of rows.
_INSERT_ARRAYS = (f"INSERT INTO {state_schema.EVENTS} (user_id, item, ts, kind) "
                  "SELECT u, i, t, k FROM unnest(%s::text[], %s::text[], %s::bigint[], "
                  "%s::text[]) WITH ORDINALITY AS r(u, i, t, k, n) ORDER BY n")
_INSERT_CATALOG = (f"INSERT INTO {state_schema.CATALOG} (item_id, fields) VALUES (%s, %s) "
                   "ON CONFLICT (item_id) DO NOTHING")


def _columns(rows: Sequence[Row]) -> list[list[Any]]:
    """Rows as the four arrays `_INSERT_ARRAYS` unnests: users, items, times, kinds."""
    return [[row[c] for row in rows] for c in range(4)]


class PostgresConnection:
    """A psycopg connection with the two calls the shared SQL of the live-item tables
    makes, ``execute`` and ``executemany``, taking SQLite's ``?`` placeholders (psycopg's
    are ``%s``; that SQL holds no other ``?`` or ``%``)."""

    def __init__(self, conn: psycopg.Connection[Any],
                 errors: Callable[[], contextlib.AbstractContextManager[None]]) -> None:
        self.conn = conn
        self.errors = errors  # the state's: a lost server as StateUnavailable

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """A cursor, whose rows are read as sqlite3's are (fetchone, fetchall, iter);
        psycopg fetches them with the statement, so its errors are raised here."""
        with self.errors():
            return self.conn.execute(sql.replace("?", "%s"), params)  # type: ignore[arg-type]

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        with self.errors(), self.conn.cursor() as cursor:
            cursor.executemany(sql.replace("?", "%s"), rows)  # type: ignore[arg-type]


class PostgresUserState:
    """`UserState` in a PostgreSQL database (its tables created or migrated when it is
    opened). ``url``: a libpq connection URI, ``postgresql://user@host/db``, its
    password best in ``PGPASSWORD`` or ``~/.pgpass`` (libpq reads both), not in the URL."""

    dialect = "postgresql"

    def __init__(self, url: str, timeout: float = 30.0) -> None:
        try:
            import psycopg  # noqa: F401 - only to say what is missing, here
        except ImportError:
            raise StateError(f"user state {redact(url)}: PostgreSQL needs psycopg; install "
                             "modrec's serve extra (pip install 'modrec[serve]')") from None
        self.url = url
        self.path = redact(url)  # what logs and errors name (never the password)
        self.timeout = timeout  # connecting, and waiting for a lock, at most this long
        self._connections = ThreadConnections[psycopg.Connection[Any]](self.path)
        try:
            self._migrate()
        except BaseException:
            self.close()
            raise

    # ---- connections ---------------------------------------------------------------
    def _connection(self) -> psycopg.Connection[Any]:
        """This thread's connection, opened on first use or when the last one broke."""
        import psycopg

        conn = self._connections.current()
        if conn is not None and not conn.closed:
            return conn
        self._connections.check_open()
        try:
            # autocommit: a read is its own statement and holds no transaction open;
            # writes open one explicitly (`_write`, `transaction`).
            conn = psycopg.connect(self.url, autocommit=True,
                                   connect_timeout=max(1, int(self.timeout)))
            conn.execute("SET synchronous_commit = on")  # durable acknowledgement
            conn.execute(f"SET lock_timeout = {int(self.timeout * 1000)}")
        except psycopg.Error as err:
            raise self._unavailable(err) from None
        return self._connections.keep(conn)

    def _unavailable(self, err: Exception) -> StateUnavailable:
        return StateUnavailable(f"user state {self.path} cannot be reached (PostgreSQL: "
                                f"{str(err).strip()}); check that the server runs and the "
                                "URL's host, port, database, user and password")

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """psycopg's errors as the state's: a lost server as `StateUnavailable` (the
        HTTP layer answers 503), after which this thread connects again."""
        import psycopg

        try:
            yield
        except psycopg.OperationalError as err:
            raise self._unavailable(err) from None

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._errors():
            return self._connection().execute(sql, params).fetchall()  # type: ignore[arg-type]

    # ---- schema ----------------------------------------------------------------------
    def _migrate(self) -> None:
        """Create or bring the tables up to `MIGRATIONS`, under an advisory lock."""
        import psycopg

        try:
            conn = self._connection()
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
                self._check_foreign(conn)
                conn.execute(f"CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} ("
                             "version INTEGER PRIMARY KEY, "
                             "applied_at TIMESTAMPTZ NOT NULL DEFAULT now())")
                row = conn.execute(f"SELECT max(version) FROM {MIGRATIONS_TABLE}").fetchone()
                applied = int(row[0] or 0) if row else 0
                if applied > len(MIGRATIONS):
                    raise StateError(
                        f"user state {self.path} was migrated to layout {applied} by a newer "
                        f"modrec (this one knows up to {len(MIGRATIONS)}); serve it with "
                        "that version, or pass another database")
                for version in range(applied + 1, len(MIGRATIONS) + 1):
                    conn.execute(MIGRATIONS[version - 1])  # type: ignore[arg-type]
                    conn.execute(f"INSERT INTO {MIGRATIONS_TABLE} (version) VALUES (%s)",
                                 (version,))
                    log.info("user state %s: applied migration %d", self.path, version)
                conn.execute(
                    f"INSERT INTO {state_schema.META} (key, value) VALUES (%s, %s) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (state_schema.VERSION_KEY, str(state_schema.SCHEMA_VERSION)))
        except psycopg.OperationalError as err:
            raise self._unavailable(err) from None
        except psycopg.Error as err:  # e.g. no right to create tables
            raise StateError(f"user state {self.path} cannot be used (PostgreSQL: "
                             f"{str(err).strip()}); modrec creates its tables there: "
                             "pass a database its user may create tables in") from None

    def _check_foreign(self, conn: psycopg.Connection[Any]) -> None:
        """Refuse a database whose ``events`` table is another program's."""
        columns = {r[0] for r in conn.execute(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND table_name = %s",
            (state_schema.EVENTS,))}
        if columns and columns != state_schema.EVENT_COLUMNS:
            raise StateError(f"user state {self.path} holds another program's events table "
                             f"(columns {', '.join(sorted(columns))}); pass another database")

    def migrations(self) -> list[int]:
        """The versions of the migrations applied, in order."""
        return [int(r[0]) for r in self._read(
            f"SELECT version FROM {MIGRATIONS_TABLE} ORDER BY version")]

    # ---- UserState -------------------------------------------------------------------
    def _write(self, rows: Iterable[Row], meta: dict[str, str] | None = None,
               catalog: Iterable[tuple[str, str]] = (), copy: bool = False) -> int:
        """Insert ``rows`` (and ``meta`` entries, and ``catalog`` rows an id does not hold
        yet) in one transaction; returns rows written once the commit is flushed."""
        if not copy and not meta and catalog == ():
            # Events alone, the hot path: in autocommit one statement is its own
            # transaction, so one round trip instead of three (BEGIN, INSERT, COMMIT),
            # and it still returns only once its commit is flushed (measured once against
            # the three, by a script not kept: 1.3-1.8x the durable events/s from 1 to 16
            # writers; benchmarks/serve_replicas.py measures what it gives now).
            batch = list(rows)
            with self._errors():
                self._connection().execute(_INSERT_ARRAYS, _columns(batch))
            return len(batch)
        with self._errors():
            conn = self._connection()
            with conn.transaction(), conn.cursor() as cursor:
                written = 0
                if copy:  # seeding: a million rows stream in one COPY
                    with cursor.copy(f"COPY {state_schema.EVENTS} (user_id, item, ts, kind) "
                                     "FROM STDIN") as out:
                        for row in rows:
                            out.write_row(row)
                            written += 1
                elif batch := list(rows):
                    cursor.execute(_INSERT_ARRAYS, _columns(batch))
                    written = len(batch)
                if meta:
                    cursor.executemany(f"INSERT INTO {state_schema.META} (key, value) "
                                       "VALUES (%s, %s)", list(meta.items()))
                cursor.executemany(_INSERT_CATALOG, list(catalog))
        return written

    def append(self, user_id: str, items: Sequence[str],
               timestamps: Sequence[int | None] | None = None,
               kind: str | None = None) -> int:
        rows = event_rows(user_id, items, timestamps, kind)
        return self._write(rows) if rows else 0

    def append_many(self, events: Sequence[Row]) -> int:
        return self._write(as_rows(events)) if events else 0

    def history(self, user_id: str, limit: int | None = None) -> tuple[np.ndarray,
                                                                        np.ndarray | None]:
        if limit is not None and limit < 0:
            raise ValueError(f"limit must not be negative, got {limit}")
        # Newest first through the (user_id, seq) index; LIMIT NULL is no limit.
        rows = self._read(f"SELECT item, ts FROM {state_schema.EVENTS} WHERE user_id = %s "
                          "ORDER BY seq DESC LIMIT %s", (user_id, limit))
        rows.reverse()
        items = np.array([r[0] for r in rows], dtype=object)
        if any(r[1] is None for r in rows):
            return items, None
        return items, np.fromiter((r[1] for r in rows), np.int64, len(rows))

    def users(self) -> int:
        return int(self._read(
            f"SELECT COUNT(DISTINCT user_id) FROM {state_schema.EVENTS}")[0][0])

    def events(self) -> int:
        return int(self._read(f"SELECT COUNT(*) FROM {state_schema.EVENTS}")[0][0])

    def seeded_from(self) -> str | None:
        rows = self._read(f"SELECT value FROM {state_schema.META} WHERE key = %s",
                          (state_schema.SEEDED_FROM,))
        return str(rows[0][0]) if rows else None

    def seed(self, users: Sequence[str] | np.ndarray, items: Sequence[str] | np.ndarray,
             timestamps: Sequence[int] | np.ndarray | None, source: str,
             catalog: Iterable[tuple[str, str]] = ()) -> int:
        """As `SQLiteUserState.seed`: once, in one transaction (one ``COPY``); a replica
        seeding meanwhile makes the second one wait on the ``seeded_from`` key and fail
        with `AlreadySeeded`, its rows rolled back."""
        import psycopg

        rows = seed_rows(users, items, timestamps)
        if (seeded := self.seeded_from()) is not None:
            raise AlreadySeeded(f"user state {self.path} was already seeded from {seeded!r}")
        start = time.perf_counter()
        try:
            written = self._write(rows, {state_schema.SEEDED_FROM: source}, catalog, copy=True)
        except psycopg.errors.UniqueViolation as e:  # another replica seeded meanwhile
            raise AlreadySeeded(f"user state {self.path} was already seeded") from e
        log.info("seeded %d events from %s in %.1f s", written, source,
                 time.perf_counter() - start)
        return written

    def catalog_size(self) -> int:
        return int(self._read(f"SELECT COUNT(*) FROM {state_schema.CATALOG}")[0][0])

    def seed_catalog(self, catalog: Iterable[tuple[str, str]]) -> int:
        before = self.catalog_size()
        self._write((), catalog=catalog)
        return self.catalog_size() - before

    def close(self) -> None:
        """Close every thread's connection; the store cannot be used afterwards."""
        self._connections.close()

    # ---- the other tables kept in this database (modrec.serve.item_state) ------------
    def connection(self) -> PostgresConnection:
        """This thread's connection, for reads by the live-item tables."""
        return PostgresConnection(self._connection(), self._errors)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[PostgresConnection]:
        """This thread's connection inside one transaction, committed (flushed:
        synchronous_commit on) when the block ends and rolled back if it raises."""
        with self._errors():
            conn = self._connection()
            with conn.transaction():
                yield PostgresConnection(conn, self._errors)

    def __enter__(self) -> PostgresUserState:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()
