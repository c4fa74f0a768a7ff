"""The progress of a long job (training epochs, encoding, annotating, transcribing),
by one rule: a tqdm bar on a terminal, and elsewhere (output redirected to a file or a
pipe) log lines, since a bar's carriage-return updates would fill a log file with
partial lines. ``enabled=False`` (``--no-progress``) shows neither.

Off a terminal a line is logged at every tenth of the job, but at most one every
``interval`` seconds, plus a last one at the end when any was logged: a job of a few
seconds logs nothing (the caller logs its own summary, such as training's line per
epoch), a job of hours logs about ten lines.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, Generic, Protocol, TextIO, TypeVar

from tqdm import tqdm

log = logging.getLogger(__name__)

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


class Bar(Protocol[T_co]):
    """What the callers use of a tqdm bar."""

    def __iter__(self) -> Iterator[T_co]: ...

    def update(self, n: int = 1) -> Any: ...

    def set_postfix(self, **values: Any) -> Any: ...

    def close(self) -> Any: ...


def progress_bar(iterable: Iterable[T] | None = None, *, total: int | None, desc: str,
                 unit: str = "it", enabled: bool = True, leave: bool = True,
                 stream: TextIO | None = None, interval: float = 30.0) -> Bar[T]:
    """A bar over ``iterable`` (or updated by hand) of ``total`` steps, on ``stream``
    (standard error by default) when it is a terminal; else `LogLines`."""
    stream = stream or sys.stderr
    if not enabled or _is_terminal(stream):
        return tqdm(iterable, total=total, desc=desc, unit=unit, disable=not enabled,
                    leave=leave, file=stream)
    return LogLines(iterable, total, desc, unit, interval)


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class LogLines(Generic[T]):
    """tqdm's interface, writing log lines instead of a bar: "embed text: 40% (400/1000
    item) 12.3 item/s, failures=0" at each tenth of ``total`` that comes at least
    ``interval`` seconds after the previous line."""

    def __init__(self, iterable: Iterable[T] | None, total: int | None, desc: str, unit: str,
                 interval: float) -> None:
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.interval = interval
        self.count, self.postfix = 0, ""
        self.started = self.last = time.perf_counter()
        self.logged = False
        self.closed = False

    def __iter__(self) -> Iterator[T]:
        if self.iterable is None:
            raise TypeError("this progress has no iterable; call update() instead")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def update(self, n: int = 1) -> None:
        before, self.count = self.count, self.count + n
        now = time.perf_counter()
        if now - self.last < self.interval:
            return
        # A line when a tenth is crossed (with no total: every interval).
        if self.total and before * 10 // self.total == self.count * 10 // self.total:
            return
        self._line(now)

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{key}={value}" for key, value in values.items())

    def close(self) -> None:
        if not self.closed and self.logged:
            self._line(time.perf_counter())
        self.closed = True

    def _line(self, now: float) -> None:
        elapsed = now - self.started
        done = (f"{self.count * 100 // self.total}% ({self.count}/{self.total} {self.unit})"
                if self.total else f"{self.count} {self.unit}")
        rate = f", {self.count / elapsed:.1f} {self.unit}/s" if elapsed > 0 else ""
        log.info("%s: %s in %.0fs%s%s", self.desc, done, elapsed, rate,
                 f", {self.postfix}" if self.postfix else "")
        self.last, self.logged = now, True
