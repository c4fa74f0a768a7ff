"""Replacing a file so that a reader sees the old version or the new one, never half
of one: write a hidden sibling, flush it to disk, then rename it over the target (atomic
on POSIX).

A write that fails (a full disk, a read-only folder, missing permissions) removes its
temporary sibling and raises `WriteError`, which names the file and says that its
previous version, when there is one, is intact: that is true by construction, since the
target is touched only by the final rename.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

from modrec.errors import ModrecError

_HINTS = {
    errno.ENOSPC: "free some space or write elsewhere",
    errno.EDQUOT: "free some space or write elsewhere",
    errno.EROFS: "the file system is read-only; write elsewhere",
    errno.EACCES: "check the folder's permissions or write elsewhere",
    errno.EPERM: "check the folder's permissions or write elsewhere",
}


# The system calls the helpers write and flush with, by name, so that a test can make
# them fail as a full or read-only disk would (tests/test_reliability.py).
_write = os.write


class WriteError(ModrecError, OSError):
    """A file could not be written. ``str()`` is a whole sentence naming the path, the
    reason and whether the previous version survived; ``errno`` is the cause's."""

    def __init__(self, path: Path, cause: OSError, kept: bool = True) -> None:
        reason = cause.strerror or str(cause) or type(cause).__name__
        hint = _HINTS.get(cause.errno or 0)
        self.message = (f"could not write {path}: {reason}"
                        + ("; its previous version is unchanged" if kept else "")
                        + (f" ({hint})" if hint else ""))
        super().__init__(cause.errno, self.message, str(path))

    def __str__(self) -> str:
        return self.message


def replace_atomic(path: Path, write: Callable[[Path], object]) -> None:
    """``write(tmp)`` fills a temporary sibling of ``path``, which then replaces it.

    The sibling is flushed to disk before the rename, so a crash of the machine (not
    only of the process) leaves the old file or the complete new one. On any failure
    the sibling is removed and ``path`` is left as it was."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException as err:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass  # the folder itself refuses writes; there is nothing to clean up then
        if isinstance(err, OSError) and not isinstance(err, WriteError):
            raise WriteError(path, err, kept=path.exists()) from err
        raise


def write_text_atomic(path: Path, text: str) -> None:
    replace_atomic(path, lambda tmp: tmp.write_text(text))


def append_line(path: Path, line: str) -> None:
    """Append one line (``line`` has no newline) with a single ``write``: a process
    killed around it leaves the whole line or none of it. A write that fails part-way
    (a full disk) is cut back to the file's previous length, so no torn line stays to
    swallow the next one."""
    data = (line + "\n").encode()
    try:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError as err:
        raise WriteError(path, err) from err
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":  # a torn line from before
            data = b"\n" + data
        try:
            written = _write(fd, data)
            if written != len(data):  # a short write: the disk filled up during it
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError as err:
            try:
                os.ftruncate(fd, size)
            except OSError:
                pass
            raise WriteError(path, err) from err
    finally:
        os.close(fd)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
