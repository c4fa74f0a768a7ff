"""SQLiteUserState: order and limits, durability (reopen, SIGKILL), threads, seeding."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from modrec.serve import state as state_module
from modrec.serve.state import SQLiteUserState, UserState


def _ints(items: np.ndarray) -> list[int]:
    """The stored ids (strings), read back as the numbers these tests wrote."""
    return [int(i) for i in items]


def test_history_is_oldest_first_and_limited(tmp_path: Path) -> None:
    with SQLiteUserState(tmp_path / "state.db") as store:
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


def test_timestamps_only_when_every_event_has_one(tmp_path: Path) -> None:
    with SQLiteUserState(tmp_path / "state.db") as store:
        store.append("u", [1, 2])
        assert store.history("u")[1] is None
        store.append("u", [3], [30])
        assert store.history("u", limit=1)[1] is not None
        assert store.history("u")[1] is None
        store.append("u", [4, 5], [None, 50])
        assert store.history("u", limit=1)[1].tolist() == [50]  # type: ignore[union-attr]
        with pytest.raises(ValueError):
            store.append("u", [1, 2], [10])


def test_users_are_kept_apart(tmp_path: Path) -> None:
    with SQLiteUserState(tmp_path / "state.db") as store:
        for i in range(10):
            store.append(f"user-{i % 3}", [i])
        assert _ints(store.history("user-0")[0]) == [0, 3, 6, 9]
        assert _ints(store.history("user-1")[0]) == [1, 4, 7]
        assert _ints(store.history("user-2")[0]) == [2, 5, 8]
        assert (store.users(), store.events()) == (3, 10)


def test_every_connection_is_durable(tmp_path: Path) -> None:
    """WAL, and synchronous=FULL (2) on each thread's own connection: the setting is per
    connection, so a thread that forgot it would acknowledge events before an fsync."""
    with SQLiteUserState(tmp_path / "state.db") as store:
        seen: list[tuple[str, int]] = []

        def read() -> None:
            conn = store._connection()
            seen.append((conn.execute("PRAGMA journal_mode").fetchone()[0],
                         conn.execute("PRAGMA synchronous").fetchone()[0]))

        read()
        thread = threading.Thread(target=read)
        thread.start()
        thread.join()
        assert seen == [("wal", 2), ("wal", 2)]
        assert len(store._connections) == 2


def test_events_survive_close_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store: UserState = SQLiteUserState(path)
    store.append("u", [1, 2, 3], [10, 20, 30])
    store.close()
    with pytest.raises(RuntimeError):
        store.history("u")
    with SQLiteUserState(path) as store:
        items, times = store.history("u")
        assert _ints(items) == [1, 2, 3] and times is not None
        store.append("u", [4])
        assert _ints(store.history("u", 2)[0]) == [3, 4]


# Loads state.py by path, not through the package: the child needs nothing else from
# modrec and starts in a fraction of a second.
CHILD = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("user_state", sys.argv[1])
module = importlib.util.module_from_spec(spec)
sys.modules["user_state"] = module
spec.loader.exec_module(module)
store = module.SQLiteUserState(sys.argv[2])
i = 0
while True:
    store.append("u", [i + 1], [i])
    i += 1
    print(i, flush=True)  # acknowledged: the append has returned
"""


def test_acknowledged_events_survive_sigkill(tmp_path: Path) -> None:
    """A child appends one event at a time and prints each acknowledged count; SIGKILL
    lands while it is writing. Every acknowledged event must be there after a reopen.
    (A killed process leaves the OS cache intact, so this cannot tell synchronous=FULL
    from NORMAL; that difference only shows on a power cut.)"""
    path = tmp_path / "state.db"
    child = subprocess.Popen([sys.executable, "-c", CHILD, state_module.__file__, str(path)],
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
    with SQLiteUserState(path) as store:
        items, times = store.history("u")
        assert len(items) >= acknowledged and store.events() == len(items)
        assert _ints(items) == list(range(1, len(items) + 1))
        assert times is not None and times.tolist() == list(range(len(items)))


def test_concurrent_appends_lose_nothing(tmp_path: Path) -> None:
    per_thread, threads = 40, 8
    errors: list[Exception] = []
    with SQLiteUserState(tmp_path / "state.db") as store:
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


def test_seeding_happens_once(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    users = np.array(["a", "a", "b", "a"])
    items = np.array([1, 2, 3, 4])
    with SQLiteUserState(path) as store:
        assert store.seeded_from() is None
        with pytest.raises(ValueError):
            store.seed(users, items[:3], None, "ds:1")
        assert store.seed(users, items, np.array([10, 20, 30, 40]), "ds:1") == 4
        assert store.seeded_from() == "ds:1"
        store.append("a", [5], [50])
        items_a, times_a = store.history("a")
        assert _ints(items_a) == [1, 2, 4, 5]
        assert times_a is not None and times_a.tolist() == [10, 20, 40, 50]
    with SQLiteUserState(path) as store:  # a restart sees the mark and does not seed again
        assert store.seeded_from() == "ds:1"
        with pytest.raises(RuntimeError, match="already seeded"):
            store.seed(["c"], [1], None, "ds:2")
        assert (store.users(), store.events()) == (2, 5)
        assert _ints(store.history("b")[0]) == [3]
