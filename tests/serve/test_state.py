"""The user state, SQLite and PostgreSQL alike (every test that takes ``where`` runs on
both): order and limits, durability (reopen, SIGKILL), threads, seeding; then what only
PostgreSQL has (migrations, a server that is down)."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modrec.serve.postgres_state import PostgresUserState
from modrec.serve.state import (
    SQLiteUserState,
    StateError,
    StateUnavailable,
    UserState,
    open_state,
)

SRC = Path(__file__).resolve().parents[2] / "src"


def _ints(items: np.ndarray) -> list[int]:
    """The stored ids (strings), read back as the numbers these tests wrote."""
    return [int(i) for i in items]


def test_history_is_oldest_first_and_limited(state_where: str) -> None:
    with open_state(state_where) as store:
        assert store.append("u1", [5, 3], [100, 200], kind="click") == 2
        assert store.append("u1", [9], [150]) == 1  # insertion order, not time order
        assert store.append("u1", []) == 0
        items, times = store.history("u1")
        assert items.tolist() == ['5', '3', '9'] and items.dtype == object  # external ids
        assert times is not None and times.tolist() == [100, 200, 150]
        items, times = store.history("u1", limit=2)  # the newest two, oldest first
        assert _ints(items) == [3, 9] and times is not None and times.tolist() == [200, 150]
        assert _ints(store.history("u1", limit=0)[0]) == []
        items, times = store.history("nobody")
        assert _ints(items) == [] and times is not None and times.tolist() == []


def test_timestamps_only_when_every_event_has_one(state_where: str) -> None:
    with open_state(state_where) as store:
        store.append("u", [1, 2])
        assert store.history("u")[1] is None
        store.append("u", [3], [30])
        assert store.history("u", limit=1)[1] is not None
        assert store.history("u")[1] is None
        store.append("u", [4, 5], [None, 50])
        assert store.history("u", limit=1)[1].tolist() == [50]  # type: ignore[union-attr]
        with pytest.raises(ValueError):
            store.append("u", [1, 2], [10])


def test_users_are_kept_apart(state_where: str) -> None:
    with open_state(state_where) as store:
        for i in range(10):
            store.append(f"user-{i % 3}", [i])
        assert _ints(store.history("user-0")[0]) == [0, 3, 6, 9]
        assert _ints(store.history("user-1")[0]) == [1, 4, 7]
        assert _ints(store.history("user-2")[0]) == [2, 5, 8]
        assert (store.users(), store.events()) == (3, 10)


def test_every_connection_is_durable(state_where: str) -> None:
    """Every thread's own connection acknowledges only flushed commits: SQLite's WAL
    with synchronous=FULL (2), PostgreSQL's synchronous_commit on. Both are set per
    connection, so a thread that forgot would acknowledge events before a flush."""
    with open_state(state_where) as store:
        seen: list[tuple[str, int | str]] = []

        def read() -> None:
            if isinstance(store, SQLiteUserState):
                conn = store._connection()
                seen.append((conn.execute("PRAGMA journal_mode").fetchone()[0],
                             conn.execute("PRAGMA synchronous").fetchone()[0]))
            else:
                row = store._connection().execute("SHOW synchronous_commit").fetchone()
                seen.append(("postgresql", row[0] if row else "?"))

        read()
        thread = threading.Thread(target=read)
        thread.start()
        thread.join()
        durable = ("wal", 2) if isinstance(store, SQLiteUserState) else ("postgresql", "on")
        assert seen == [durable, durable]
        assert len(store._connections) == 2


def test_events_survive_close_and_reopen(state_where: str) -> None:
    path = state_where
    store: UserState = open_state(path)
    store.append("u", [1, 2, 3], [10, 20, 30])
    store.close()
    with pytest.raises(RuntimeError):
        store.history("u")
    with open_state(path) as store:
        items, times = store.history("u")
        assert _ints(items) == [1, 2, 3] and times is not None
        store.append("u", [4])
        assert _ints(store.history("u", 2)[0]) == [3, 4]


CHILD = """
import sys
sys.path.insert(0, sys.argv[1])
from modrec.serve.state import open_state
store = open_state(sys.argv[2])
i = 0
while True:
    store.append("u", [i + 1], [i])
    i += 1
    print(i, flush=True)  # acknowledged: the append has returned
"""


def test_acknowledged_events_survive_sigkill(state_where: str) -> None:
    """A child appends one event at a time and prints each acknowledged count; SIGKILL
    lands while it is writing. Every acknowledged event must be there after a reopen.
    (A killed process leaves the OS cache intact, so this cannot tell synchronous=FULL
    from NORMAL; that difference only shows on a power cut, and PostgreSQL's
    synchronous_commit=on from off only on a crash of the server.)"""
    path = state_where
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(SRC), path],
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    acknowledged = 0
    try:
        for line in child.stdout:
            acknowledged = int(line)
            if acknowledged >= 300:
                break
    finally:
        child.send_signal(signal.SIGKILL)
    # Acknowledgements already in the pipe count too; only whole lines are.
    for line in child.stdout.read().splitlines(keepends=True):
        if line.endswith("\n"):
            acknowledged = int(line)
    assert child.wait() == -signal.SIGKILL
    assert acknowledged >= 300
    with open_state(path) as store:
        items, times = store.history("u")
        assert len(items) >= acknowledged and store.events() == len(items)
        assert _ints(items) == list(range(1, len(items) + 1))
        assert times is not None and times.tolist() == list(range(len(items)))


def test_concurrent_appends_lose_nothing(state_where: str) -> None:
    per_thread, threads = 40, 8
    errors: list[Exception] = []
    with open_state(state_where) as store:
        start = threading.Barrier(threads)

        def work(t: int) -> None:
            try:
                start.wait()
                for i in range(per_thread):
                    store.append(f"own-{t}", [i, i + 1000])
                    store.append("shared", [t * 10_000 + i], [i])
                    store.history("shared", 50)  # reads interleave with the writes
            except Exception as e:  # reported to the main thread
                errors.append(e)

        pool = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()
        assert not errors
        assert store.events() == threads * per_thread * 3
        assert store.users() == threads + 1
        for t in range(threads):
            own = _ints(store.history(f"own-{t}")[0])
            assert own == [v for i in range(per_thread) for v in (i, i + 1000)]
        shared = np.array(_ints(store.history("shared")[0]))
        assert len(shared) == threads * per_thread
        for t in range(threads):  # each thread's events in the order it wrote them
            mine = shared[shared // 10_000 == t].tolist()
            assert mine == [t * 10_000 + i for i in range(per_thread)]


def test_seeding_happens_once(state_where: str) -> None:
    path = state_where
    users = np.array(["a", "a", "b", "a"])
    items = np.array([1, 2, 3, 4])
    with open_state(path) as store:
        assert store.seeded_from() is None
        with pytest.raises(ValueError):
            store.seed(users, items[:3], None, "ds:1")
        assert store.seed(users, items, np.array([10, 20, 30, 40]), "ds:1") == 4
        assert store.seeded_from() == "ds:1"
        store.append("a", [5], [50])
        items_a, times_a = store.history("a")
        assert _ints(items_a) == [1, 2, 4, 5]
        assert times_a is not None and times_a.tolist() == [10, 20, 40, 50]
    with open_state(path) as store:  # a restart sees the mark and does not seed again
        assert store.seeded_from() == "ds:1"
        with pytest.raises(RuntimeError, match="already seeded"):
            store.seed(["c"], [1], None, "ds:2")
        assert (store.users(), store.events()) == (2, 5)
        assert _ints(store.history("b")[0]) == [3]


# ---- PostgreSQL only ----------------------------------------------------------------
def test_postgres_is_created_and_migrated_once(postgres: Any) -> None:
    """Replicas that start together open a fresh database at once: the advisory lock
    lets one create the tables and the others find them; each migration is recorded
    once, and a database migrated by a newer modrec is refused, saying so."""
    url = postgres.database()
    errors: list[BaseException] = []
    opened: list[PostgresUserState] = []

    def start() -> None:
        try:
            opened.append(PostgresUserState(url))
        except BaseException as e:  # reported to the main thread
            errors.append(e)

    pool = [threading.Thread(target=start) for _ in range(4)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    assert not errors and len(opened) == 4
    opened[0].append("u", ["1"])
    assert [s.history("u")[0].tolist() for s in opened] == [["1"]] * 4
    assert opened[0].migrations() == [1]
    opened[0]._connection().execute("INSERT INTO modrec_migrations (version) VALUES (99)")
    for store in opened:
        store.close()
    with pytest.raises(StateError, match="migrated to layout 99 by a newer modrec"):
        PostgresUserState(url)


def test_postgres_refuses_another_programs_events(postgres: Any) -> None:
    import psycopg

    url = postgres.database()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE events (id INTEGER, payload TEXT)")
    with pytest.raises(StateError, match="another program's events table"):
        open_state(url)


def test_postgres_down_is_a_clear_unavailable_error(postgres: Any, tmp_path: Path) -> None:
    """No server where the URL points: the error names the state (never its password)
    and what to check, as `StateUnavailable` (the HTTP layer answers 503)."""
    url = f"postgresql://modrec:secret@/nowhere?host={tmp_path}"
    with pytest.raises(StateUnavailable) as caught:
        open_state(url)
    message = str(caught.value)
    assert "secret" not in message and "cannot be reached" in message
    assert "host, port, database, user and password" in message


def test_postgres_crash_keeps_acknowledged_events_and_the_state_reconnects() -> None:
    """PostgreSQL itself stopped as a crash would stop it (``pg_ctl -m immediate``):
    every acknowledged event is there after its recovery (synchronous_commit on: each
    was flushed to the WAL before it was acknowledged); meanwhile the state says it
    cannot reach the server (`StateUnavailable`: a 503), and afterwards the same
    state object reconnects by itself."""
    from replicas import PostgresServer, unavailable

    if (why := unavailable()) is not None:
        pytest.skip(f"PostgreSQL: {why}")
    server = PostgresServer()  # its own: this test stops it
    try:
        with open_state(server.database()) as store:
            for i in range(20):
                store.append("u", [str(i)], [i])
            server.crash()
            with pytest.raises(StateUnavailable, match="cannot be reached"):
                store.append("u", ["lost"])
            server.start()
            store.append("u", ["20"], [20])
            items, times = store.history("u")
            assert _ints(items) == list(range(21))
            assert times is not None and times.tolist() == list(range(21))
    finally:
        server.stop()


def test_the_live_items_change_counter_rises_with_each_write_on_both_engines(
        postgres: Any, tmp_path: Path) -> None:
    """What the workers of `modrec serve --workers N` (and replicas) read before they
    answer: one more for each stored item version and each retirement, on SQLite and on
    PostgreSQL alike."""
    from modrec.serve.item_state import ItemVersion, LiveItemState

    for state in (SQLiteUserState(tmp_path / "state.db"),
                  PostgresUserState(postgres.database())):
        live = LiveItemState(state)
        assert live.version() == 0
        live.write([ItemVersion("a", {"title": "A"}, "d1", {}, {})])
        live.write([ItemVersion("a", {"title": "B"}, "d2", {}, {}),
                    ItemVersion("b", {"title": "C"}, "d3", {}, {})])
        live.retire("a")
        assert live.version() == 3
        assert [item.digest for item in live.items()] == ["d2", "d3"]
        state.close()
