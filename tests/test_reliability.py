"""Out of disk, read-only folders, missing permissions (issue 30, promise 7): every write
that fails names its path, and what was there before is intact: a run's checkpoint and
metrics, the dataset cache, an embedding store, the service's user state.

The tests run as root, for whom permission bits do not bite, so the failures are
injected where the operating system reports them: in the flush (``fsync``, where a
full disk surfaces with delayed allocation) and the ``write`` of `modrec.atomic`, and
in the cache's folder creation."""

from __future__ import annotations

import errno
import json
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import modrec.atomic as atomic
from modrec.atomic import WriteError, replace_atomic, write_text_atomic
from modrec.cli import main
from modrec.content import EmbeddingStore, embed
from modrec.runs import RunDir, load_run
from modrec.train.checkpoint import Checkpoint

FAULTS = {errno.ENOSPC: "No space left on device", errno.EROFS: "Read-only file system",
          errno.EACCES: "Permission denied"}
SMALL = ["--set", "model.max_len=20", "--set", "model.num_blocks=1", "--no-progress"]


def _failing_flush(monkeypatch: pytest.MonkeyPatch, code: int,
                   when: Callable[[Path], bool]) -> None:
    """`replace_atomic`'s flush of the temporary file fails with ``code`` for the
    temporary files ``when`` selects."""
    original = atomic._fsync

    def fsync(path: Path) -> None:
        if when(path):
            raise OSError(code, os.strerror(code))
        original(path)
    monkeypatch.setattr(atomic, "_fsync", fsync)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(".*"))


@pytest.mark.parametrize("code", sorted(FAULTS))
def test_a_failed_write_names_the_file_and_keeps_its_previous_version(
        code: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "results.json"
    write_text_atomic(target, "old")
    _failing_flush(monkeypatch, code, lambda path: True)
    with pytest.raises(WriteError) as caught:
        write_text_atomic(target, "new")
    message = str(caught.value)
    assert str(target) in message and FAULTS[code] in message
    assert "previous version is unchanged" in message and caught.value.errno == code
    assert target.read_text() == "old" and _leftovers(tmp_path) == []

    def half_then_full(tmp: Path) -> None:  # the disk fills up in the middle of a write
        tmp.write_text("ne")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    with pytest.raises(WriteError, match="No space left on device"):
        replace_atomic(target, half_then_full)
    assert target.read_text() == "old" and _leftovers(tmp_path) == []


def test_a_metrics_line_cut_short_by_a_full_disk_leaves_no_torn_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = RunDir(tmp_path)
    run.append_metrics({"epoch": 1, "loss": 5.0})
    before = run.metrics_file.read_bytes()

    def short_write(fd: int, data: bytes) -> int:
        os.write(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(atomic, "_write", short_write)
    with pytest.raises(WriteError, match=r"metrics\.jsonl: No space left on device"):
        run.append_metrics({"epoch": 2, "loss": 4.0})
    assert run.metrics_file.read_bytes() == before
    monkeypatch.setattr(atomic, "_write", os.write)
    run.append_metrics({"epoch": 2, "loss": 4.0})
    assert [r["epoch"] for r in run.metrics()] == [1, 2]
    # A torn line left by an older version does not swallow the next record either.
    with run.metrics_file.open("a") as f:
        f.write('{"epoch": 3, "lo')
    run.append_metrics({"epoch": 3, "loss": 3.0})
    assert [r["epoch"] for r in run.metrics()] == [1, 2, 3]


def test_training_into_a_full_disk_keeps_the_last_checkpoint(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    train = ["train", "-d", "ml-100k", "-m", "sasrec", "--out", str(out), *SMALL]
    assert main([*train, "--epochs", "1"]) == 0
    capsys.readouterr()
    saved = (out / "checkpoint.pt").read_bytes()
    # Epoch 2 trains and validates, then its checkpoint meets a full disk.
    _failing_flush(monkeypatch, errno.ENOSPC, lambda path: path.name == ".checkpoint.pt.tmp")
    assert main([*train, "--epochs", "2", "--resume"]) == 2
    err = capsys.readouterr().err
    assert (f"could not write {out / 'checkpoint.pt'}: No space left on device; its previous "
            "version is unchanged (free some space or write elsewhere)") in err
    assert "Traceback" not in err
    assert (out / "checkpoint.pt").read_bytes() == saved and _leftovers(out) == []
    assert Checkpoint(out / "checkpoint.pt").progress().epoch == 1
    assert load_run(out).config.train.epochs == 2
    monkeypatch.undo()
    assert main([*train, "--epochs", "2", "--resume", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["epochs"] == 2
    assert [r["epoch"] for r in RunDir(out).metrics()] == [1, 2]


class _FillingFile:
    """A file on a disk with ``room`` bytes left: a write past it stores what fits and
    raises ENOSPC, as write(2) on a full disk does."""

    def __init__(self, file: Any, room: int) -> None:
        self.file, self.room = file, room

    def write(self, data: bytes) -> int:
        if len(data) > self.room:
            self.file.write(bytes(data[:self.room]))
            self.room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return int(self.file.write(data))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.file, name)

    def __enter__(self) -> _FillingFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.file.close()


def _full_disk_for(monkeypatch: pytest.MonkeyPatch, name: str, room: int = 4096) -> None:
    """The temporary file ``name`` meets a full disk after ``room`` bytes: torch.save
    writes it through the file object that `modrec.runs.save_tensors` opens."""
    original = Path.open

    def open_(self: Path, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        file = original(self, mode, *args, **kwargs)
        return _FillingFile(file, room) if self.name == name and "w" in mode else file
    monkeypatch.setattr(Path, "open", open_)


def test_a_checkpoint_that_fills_the_disk_is_a_write_error_naming_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture) -> None:
    """torch.save's own writer reported a full disk as "[enforce fail at
    inline_container.cc:672] . unexpected pos ..." and the CLI then hinted at --resume
    with no checkpoint to resume from."""
    out = tmp_path / "run"
    train = ["train", "-d", "ml-100k", "-m", "sasrec", "--out", str(out), *SMALL]
    _full_disk_for(monkeypatch, ".checkpoint.pt.tmp")
    assert main([*train, "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert (f"could not write {out / 'checkpoint.pt'}: No space left on device (free some "
            "space or write elsewhere)") in err
    assert "enforce fail" not in err and "unexpected pos" not in err
    # Nothing to resume from: no hint to --resume, and the new folder is gone.
    assert "--resume" not in caplog.text and not out.exists()

    monkeypatch.undo()
    assert main([*train, "--epochs", "1"]) == 0
    capsys.readouterr()
    saved = (out / "checkpoint.pt").read_bytes()
    _full_disk_for(monkeypatch, ".checkpoint.pt.tmp")
    assert main([*train, "--epochs", "2", "--resume"]) == 2
    assert (f"could not write {out / 'checkpoint.pt'}: No space left on device; its previous "
            "version is unchanged") in capsys.readouterr().err
    assert (out / "checkpoint.pt").read_bytes() == saved and _leftovers(out) == []
    assert Checkpoint(out / "checkpoint.pt").progress().epoch == 1


def test_torch_save_on_a_real_full_file_system_keeps_the_checkpoint(tmp_path: Path) -> None:
    """The same on a small tmpfs, where torch's C++ writer meets ENOSPC itself (needs
    the right to mount, as root in a container usually has)."""
    import subprocess

    import torch

    from modrec.runs import save_tensors

    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)],
                      capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        target = disk / "checkpoint.pt"
        save_tensors({"w": torch.zeros(100)}, target)
        saved = target.read_bytes()
        with pytest.raises(WriteError) as caught:
            save_tensors({"w": torch.zeros(200_000)}, target)  # 800 kB into 256 kB
        assert str(caught.value) == (f"could not write {target}: No space left on device; "
                                     "its previous version is unchanged (free some space "
                                     "or write elsewhere)")
        assert target.read_bytes() == saved and _leftovers(disk) == []
    finally:
        # lazily: a file torch left open must not keep the mount (and tmp_path) busy
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_new_run_that_meets_a_read_only_disk_leaves_no_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    _failing_flush(monkeypatch, errno.EROFS, lambda path: path.name == ".model.pt.tmp")
    out = tmp_path / "run"
    assert main(["train", "-d", "ml-100k", "-m", "sasrec", "--epochs", "1", "--out", str(out),
                 *SMALL]) == 2
    err = capsys.readouterr().err
    assert f"could not write {out / 'model.pt'}: Read-only file system" in err
    assert not out.exists()


def _csv(path: Path, data_dir: Path) -> Path:
    ratings = pd.read_csv(data_dir / "ml-100k" / "u.data", sep="\t",
                          names=["user", "item", "rating", "timestamp"])
    ratings[ratings["user"] <= 50].to_csv(path, index=False)
    return path


def test_a_cache_that_cannot_be_written_costs_only_speed(
        tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    from modrec.data import dataset as dataset_module
    from modrec.data import load_dataset

    csv = _csv(tmp_path / "ratings.csv", data_dir)
    # A cache folder that cannot exist (a file stands in its path): real, even for root.
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("MODREC_CACHE_DIR", str(tmp_path / "file" / "cache"))
    assert load_dataset(csv).num_users == 50
    assert "could not cache dataset" in caplog.text
    # A cache on a full disk: the half-written conversion is removed, the data loads.
    cache = tmp_path / "cache"
    monkeypatch.setenv("MODREC_CACHE_DIR", str(cache))
    original = pd.DataFrame.to_parquet

    def full(self: pd.DataFrame, path: object, *args: object, **kwargs: object) -> None:
        if str(path).endswith("items.parquet"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        original(self, path, *args, **kwargs)  # type: ignore[arg-type]
    monkeypatch.setattr(pd.DataFrame, "to_parquet", full)
    caplog.clear()
    assert load_dataset(csv).num_users == 50
    assert "No space left on device" in caplog.text and str(cache) in caplog.text
    assert [p.name for p in cache.rglob("*") if p.name.startswith(".")] == []
    monkeypatch.setattr(pd.DataFrame, "to_parquet", original)
    assert load_dataset(csv).num_users == 50  # cached now
    [cached] = [p for p in cache.iterdir() if p.name.startswith("ratings")]
    # The source changed and the cache turned read-only: converted again, not cached,
    # and the previous cached copy is left whole.
    stat = csv.stat()
    os.utime(csv, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    monkeypatch.setattr(dataset_module.tempfile, "mkdtemp", _raise(errno.EROFS))
    caplog.clear()
    assert load_dataset(csv).num_users == 50
    assert "Read-only file system" in caplog.text
    assert dataset_module.Dataset.read(cached).num_users == 50


def _raise(code: int) -> Callable[..., object]:
    def fail(*args: object, **kwargs: object) -> object:
        raise OSError(code, os.strerror(code))
    return fail


def test_an_embedding_store_on_a_full_disk_keeps_its_committed_rows(
        ml100k, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "store"
    commits = []

    def third_done_mask(path: Path) -> bool:  # prepare's, the first batch's, then full
        commits.append(path.name)
        return path.name.endswith(".done.npy.tmp") and commits.count(path.name) >= 3
    _failing_flush(monkeypatch, errno.ENOSPC, third_done_mask)
    argv = ["embed", "-d", "ml-100k", "--encoder", "tags:genres", "--store", str(folder),
            "--batch-size", "500", "--no-progress", "--json"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "could not write" in err and ".done.npy: No space left on device" in err
    store = EmbeddingStore.for_dataset(ml100k, folder)
    assert store.validate()["tags-genres"]["done"] == 500  # the first batch survived
    assert [p.name for p in folder.glob(".*")] == []
    monkeypatch.undo()
    assert main(argv) == 0
    [report] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["encoders"]
    assert (report["already_stored"], report["encoded"]) == (500, ml100k.num_items - 500)
    again = EmbeddingStore.for_dataset(ml100k, folder)
    assert again.validate()["tags-genres"]["done"] == ml100k.num_items


def test_an_embedding_store_refuses_a_damaged_manifest_by_name(ml100k, tmp_path: Path) -> None:
    from modrec.content.store import StoreError

    store = EmbeddingStore.for_dataset(ml100k, tmp_path)
    embed(ml100k, ["tags:genres"], store, progress=False)
    assert store.validate()["tags-genres"]["done"] == ml100k.num_items
    done = tmp_path / f"tags-genres.{store.digest}.done.npy"
    np.save(done, np.ones(5, bool))
    with pytest.raises(StoreError, match=r"done\.npy: bool \(5,\), expected bool \(1683,\)"):
        store.validate()
    (tmp_path / "manifest.json").write_text('{"encoders": ')
    with pytest.raises(StoreError, match="manifest.json is not an embedding store manifest"):
        EmbeddingStore.for_dataset(ml100k, tmp_path)


def test_the_service_state_keeps_every_committed_event_when_the_disk_fills(
        tmp_path: Path) -> None:
    """SQLite reports a full database (here: a page limit) and rolls the transaction
    back; what was committed before stays readable and the next write goes through
    once there is room."""
    from modrec.serve.state import SQLiteUserState

    state = SQLiteUserState(tmp_path / "state.db")
    state.append("u1", ["a", "b"])
    conn = state._connection()
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count={pages + 2}")
    written, failure = 2, None
    for i in range(10_000):
        try:
            written += state.append(f"user-{i}", [f"item-{i}-{j}" for j in range(50)])
        except sqlite3.OperationalError as err:
            failure = err
            break
    assert failure is not None and "full" in str(failure)
    assert state.events() == written
    assert state.history("u1")[0].tolist() == ["a", "b"]
    conn.execute("PRAGMA max_page_count=1073741823")
    assert state.append("u1", ["c"]) == 1 and state.events() == written + 1
    state.close()
