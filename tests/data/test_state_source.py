"""The service's user state read as a dataset (format ``modrec-state``): the stored
sequences come back as they were stored, with the seeded catalog and live items, in one
consistent read while a writer goes on."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from modrec.data import DataFormatError, load_dataset
from modrec.data import state_schema as schema
from modrec.data.formats import detect_format
from modrec.data.state_source import read_state
from modrec.serve.state import SQLiteUserState

CATALOG = pd.DataFrame({"item": [1, 2, 3], "item_id": ["10", "20", "30"],
                        "title": ["Ten", "Twenty", None],
                        "genres": ["a|b", np.nan, "c"], "year": [1999, 2001, 2003]})


def _seeded(path: Path) -> SQLiteUserState:
    """A state seeded as the service seeds one: two users' histories and the catalog."""
    state = SQLiteUserState(path)
    state.seed(["u1", "u1", "u2", "u2", "u2"], ["10", "20", "20", "30", "10"],
               [100, 200, 100, 150, 300], "toy:abc", schema.catalog_rows(CATALOG))
    return state


def _sequences(dataset: pd.DataFrame) -> dict[str, list[tuple[str, int | None]]]:
    """Each user's (item id, timestamp) in the dataset's order."""
    ds = dataset
    items = ds.items.set_index("item")["item_id"]
    users = ds.users.set_index("user")["user_id"]
    out: dict[str, list[tuple[str, int | None]]] = {}
    times = ds.interactions["timestamp"] if ds.has_timestamps else [None] * len(
        ds.interactions)
    for user, item, t in zip(ds.interactions["user"], ds.interactions["item"], times,
                             strict=True):
        out.setdefault(users[user], []).append((items[item], None if t is None else int(t)))
    return out


def test_the_state_reads_back_as_the_sequences_it_stores(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with _seeded(path) as state:
        state.append("u1", ["30", "new-item"], [50, 400], kind="click")  # out of time order
        state.append("u3", ["20", "20"], [500, 600], kind="purchase")  # a repeat, kept
        state.append("u2", ["20"], [700])
        assert detect_format(path) == "modrec-state"
        dataset = load_dataset(path, repeats="keep")  # the state is open meanwhile
        stored = {}
        for user in ("u1", "u2", "u3"):
            items, times = state.history(user)
            assert times is not None
            stored[user] = [(str(i), int(t)) for i, t in zip(items, times, strict=True)]
    assert _sequences(dataset) == stored  # insertion order, not timestamp order
    catalog = dataset.items.set_index("item_id")
    assert catalog.loc["10", "title"] == "Ten" and catalog.loc["20", "genres"] != "a|b"
    assert pd.isna(catalog.loc["30", "title"]) and pd.isna(catalog.loc["20", "genres"])
    assert catalog.loc["30", "year"] == 2003
    assert pd.isna(catalog.loc["new-item", "title"])  # known from the events alone
    info = dataset.provenance
    assert info["format"] == "modrec-state" and info["seeded_from"] == "toy:abc"
    assert (info["events"], info["catalog_items"], info["live_items"],
            info["items_only_in_events"]) == (10, 3, 0, 1)
    assert info["kinds"] == {"(none)": 6, "click": 2, "purchase": 2}
    assert info["timestamps"] == "kept"


def test_repeats_are_dropped_by_default_as_from_any_file(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with _seeded(path) as state:
        state.append("u3", ["20", "20"], [500, 600])
    assert _sequences(load_dataset(path))["u3"] == [("20", 500)]


def test_timestamps_are_left_out_when_an_event_has_none(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with _seeded(path) as state:
        state.append("u1", ["30"])  # no timestamp
    dataset = read_state(path)
    assert not dataset.has_timestamps
    assert _sequences(dataset)["u1"] == [("10", None), ("20", None), ("30", None)]
    assert dataset.provenance["timestamps"] == "left out: 1 events have none"


def _add_live_table(path: Path) -> sqlite3.Connection:
    """A live-items table as the service may keep one: the columns the reader needs
    plus vectors and versions it does not read."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(f"CREATE TABLE {schema.LIVE_ITEMS} (item_id TEXT PRIMARY KEY, "
                 "fields TEXT NOT NULL, vector BLOB, encoders TEXT, retired_at INTEGER)")
    return conn


def test_live_items_join_the_catalog(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with _seeded(path) as state:
        with _add_live_table(path) as conn:  # sqlite3's context manager only commits
            conn.executemany(
                f"INSERT INTO {schema.LIVE_ITEMS} (item_id, fields, vector) VALUES (?, ?, ?)",
                [("live-1", json.dumps({"title": "Fresh", "text": "a new video"}), b"\0" * 8),
                 ("30", json.dumps({"title": "Thirty, retitled"}), None)])
        conn.close()
        state.append("u1", ["live-1"], [900])
    dataset = read_state(path)
    catalog = dataset.items.set_index("item_id")
    assert catalog.loc["live-1", "title"] == "Fresh"
    assert catalog.loc["live-1", "text"] == "a new video"
    assert catalog.loc["30", "title"] == "Thirty, retitled"  # live fields win
    assert (dataset.provenance["catalog_items"], dataset.provenance["live_items"]) == (3, 2)
    assert _sequences(dataset)["u1"][-1] == ("live-1", 900)


def test_a_live_table_without_the_columns_it_needs_is_named(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    _seeded(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute(f"CREATE TABLE {schema.LIVE_ITEMS} (id TEXT, catalog TEXT)")
    conn.close()
    with pytest.raises(DataFormatError, match=r"table live_items has no column item_id, "
                       r"fields \(it has catalog, id\)"):
        read_state(path)


def test_a_field_that_is_not_a_json_object_is_named(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    _seeded(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute(f"UPDATE {schema.CATALOG} SET fields = '[1, 2]' WHERE item_id = '20'")
    conn.close()
    with pytest.raises(DataFormatError, match=r"table catalog: item '20' has fields "
                       r"'\[1, 2\]'; expected a JSON object"):
        read_state(path)


def test_what_is_not_a_state_is_refused_by_name(tmp_path: Path) -> None:
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE events (id INTEGER, what TEXT)")
    conn.close()
    with pytest.raises(DataFormatError, match=r"other.sqlite: an SQLite database, but not "
                       r"a modrec user state \(its tables: events; expected events"):
        load_dataset(other)
    empty = tmp_path / "empty.db"
    SQLiteUserState(empty).close()
    with pytest.raises(DataFormatError, match="holds no events yet"):
        read_state(empty)
    broken = tmp_path / "broken.db"
    broken.write_bytes(schema.SQLITE_MAGIC + b"\0" * 100)
    with pytest.raises(DataFormatError, match="broken.db: cannot be read as a modrec user "
                       "state"):
        read_state(broken)


def test_a_state_of_a_newer_layout_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    _seeded(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = ?", (schema.VERSION_KEY,))
    conn.close()
    with pytest.raises(DataFormatError, match="layout '99' is newer than this modrec reads"):
        read_state(path)


def test_a_state_seeded_before_the_catalog_was_kept_reads_its_ids(tmp_path: Path) -> None:
    """Layout 1 (events and meta only): the items are those the events name."""
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.executescript("""
            CREATE TABLE events (seq INTEGER PRIMARY KEY AUTOINCREMENT, user_id TEXT NOT
                NULL, item TEXT NOT NULL, ts INTEGER, kind TEXT);
            CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
            INSERT INTO events (user_id, item, ts) VALUES ('u', '1', 5), ('u', '2', 6);""")
    conn.close()
    dataset = read_state(path)
    assert dataset.items["item_id"].tolist() == ["1", "2"]
    assert dataset.provenance["schema_version"] == 1


def test_new_events_are_read_though_only_the_wal_file_changed(tmp_path: Path) -> None:
    """While the service runs, SQLite commits into the -wal file and leaves the main file
    alone: the converted-dataset cache must still see the new events."""
    path = tmp_path / "state.db"
    with _seeded(path) as state:
        before = load_dataset(path, repeats="keep")
        main_file = path.stat().st_mtime_ns, path.stat().st_size
        state.append("u9", ["30"], [1000])
        assert (path.stat().st_mtime_ns, path.stat().st_size) == main_file
        after = load_dataset(path, repeats="keep")
    assert len(after.interactions) == len(before.interactions) + 1
    assert "u9" in set(after.users["user_id"])


def test_one_read_sees_one_moment_while_the_service_writes(tmp_path: Path) -> None:
    """A writer commits a live item and an event naming it together, again and again;
    every read sees both or neither (one read transaction), and no read stops it."""
    path = tmp_path / "state.db"
    _seeded(path).close()
    _add_live_table(path).close()
    stop = threading.Event()
    written = [0]

    def write() -> None:
        conn = sqlite3.connect(path, isolation_level=None)
        while not stop.is_set():
            n = written[0]
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(f"INSERT INTO {schema.LIVE_ITEMS} (item_id, fields) VALUES (?, ?)",
                         (f"live-{n}", json.dumps({"title": f"live {n}"})))
            conn.execute("INSERT INTO events (user_id, item, ts) VALUES (?, ?, ?)",
                         (f"w{n % 7}", f"live-{n}", n))
            conn.execute("COMMIT")
            written[0] = n + 1
        conn.close()

    writer = threading.Thread(target=write)
    writer.start()
    try:
        reads = []
        for _ in range(15):
            dataset = read_state(path)
            live = dataset.items[dataset.items["item_id"].str.startswith("live-")]
            named = {dataset.items["item_id"].iloc[i - 1]
                     for i in dataset.interactions["item"]} - {"10", "20", "30"}
            assert set(live["item_id"]) == named  # both or neither, for every live item
            assert live["title"].notna().all()
            reads.append(len(live))
    finally:
        stop.set()
        writer.join()
    assert written[0] > 0 and reads[-1] > 0


# The live-items writer's layout (modrec.serve.item_state, built beside this reader):
# keyed by seq, with digests and times the reader leaves alone, vectors in tables of their
# own, and retired items in a table the reader only counts.
LIVE_LAYOUT = """
CREATE TABLE live_items (seq INTEGER PRIMARY KEY AUTOINCREMENT, item_id TEXT NOT NULL
    UNIQUE, fields TEXT NOT NULL, digest TEXT NOT NULL, added REAL NOT NULL,
    updated REAL NOT NULL);
CREATE TABLE live_content (item_id TEXT NOT NULL, encoder TEXT NOT NULL, version TEXT NOT
    NULL, vector BLOB, PRIMARY KEY (item_id, encoder, version));
CREATE TABLE live_vectors (item_id TEXT NOT NULL, tower TEXT NOT NULL, vector BLOB NOT
    NULL, PRIMARY KEY (item_id, tower));
CREATE TABLE retired_items (item_id TEXT PRIMARY KEY, at REAL NOT NULL);
"""


def test_the_live_item_writers_tables_are_read(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with _seeded(path) as state:
        with sqlite3.connect(path) as conn:
            conn.executescript(LIVE_LAYOUT)
            add = ("INSERT INTO live_items (item_id, fields, digest, added, updated) VALUES "
                   "(?, ?, 'd', 1, 1) ON CONFLICT (item_id) DO UPDATE SET fields = "
                   "excluded.fields")
            conn.execute(add, ("live-b", json.dumps({"title": "B", "image": "b.jpg"})))
            conn.execute(add, ("live-a", json.dumps({"title": "A"})))
            conn.execute(add, ("live-b", json.dumps({"title": "B, updated"})))  # keeps seq
            conn.execute("INSERT INTO live_vectors VALUES ('live-a', 't', x'00000000')")
            conn.execute("INSERT INTO retired_items VALUES ('20', 5.0)")
        conn.close()
        state.append("u1", ["live-a", "20"], [900, 901])
    dataset = read_state(path)
    assert sorted(dataset.items["item_id"]) == ["10", "20", "30", "live-a", "live-b"]
    catalog = dataset.items.set_index("item_id")
    assert catalog.loc["live-b", "title"] == "B, updated"
    assert "image" not in catalog.columns  # the update replaced the fields
    assert _sequences(dataset)["u1"][-2:] == [("live-a", 900), ("20", 901)]
    info = dataset.provenance
    assert (info["catalog_items"], info["live_items"], info["retired_items"]) == (3, 2, 1)


def test_a_postgres_state_reads_back_as_the_same_dataset(tmp_path: Path,
                                                         postgres: Any) -> None:
    """The same writes (seed, events, a live item, a retirement) into an SQLite file and
    a PostgreSQL database read back as one dataset: the reader does not care where the
    state is kept. The URL's password never reaches the provenance, and a run, which
    records its dataset, refuses a URL that holds one."""
    from modrec.config import absolute_dataset
    from modrec.errors import ConfigError
    from modrec.serve.item_state import ItemVersion, LiveItemState
    from modrec.serve.state import open_state

    url = postgres.database()
    datasets = []
    for where in (str(tmp_path / "state.db"), url):
        with open_state(where) as state:
            state.seed(["u1", "u1", "u2", "u2", "u2"], ["10", "20", "20", "30", "10"],
                       [100, 200, 100, 150, 300], "toy:abc", schema.catalog_rows(CATALOG))
            state.append("u1", ["30", "new-item"], [50, 400], kind="click")
            live = LiveItemState(state)
            live.write([ItemVersion("new-item", {"title": "New"}, "d", {}, {})], now=1.0)
            live.retire("30", now=2.0)
            datasets.append(load_dataset(where, repeats="keep"))
    lite, pg = datasets
    pd.testing.assert_frame_equal(lite.interactions, pg.interactions)
    pd.testing.assert_frame_equal(lite.items, pg.items)
    pd.testing.assert_frame_equal(lite.users, pg.users)
    assert pg.items.set_index("item_id").loc["new-item", "title"] == "New"
    assert {k: v for k, v in lite.provenance.items() if k != "source"} == \
        {k: v for k, v in pg.provenance.items() if k != "source"}
    assert pg.provenance["retired_items"] == 1
    with_password = url.replace("modrec@", "modrec:secret@")
    assert "secret" not in str(load_dataset(with_password).provenance)
    with pytest.raises(ConfigError, match="PGPASSWORD"):
        absolute_dataset(with_password)
    assert absolute_dataset(url) == url
    from modrec.cli.common import dataset_source, media_root

    assert dataset_source(url) == url and media_root(url, None) is None  # `train -d URL`
