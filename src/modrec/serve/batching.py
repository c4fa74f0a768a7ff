"""Dynamic micro-batching: requests that arrive close together share one model call.

A forward pass over 32 histories costs little more than over one, so under load the
service answers more requests per second by running them together, as Triton and
TorchServe do. Model calls run one at a time on a worker thread (so the event loop that
accepts connections is never blocked by a forward pass), and requests queue for it:

- a request that finds the worker idle goes at once (``window_ms = 0``, the default),
  or waits up to ``window_ms`` for others to share its call;
- requests that arrive while the worker is busy wait for it and then go together, up to
  ``max_batch`` per call: the busier the service, the larger the batches, and an idle
  service adds no latency. This is Triton's dynamic batcher with no queue delay.

``max_batch = 1`` turns batching off: every request is its own call, in arrival order.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

In = TypeVar("In")
Out = TypeVar("Out")


class MicroBatcher(Generic[In, Out]):
    def __init__(self, handle: Callable[[Sequence[In]], Sequence[Out]], window_ms: float,
                 max_batch: int = 64,
                 on_batch: Callable[[int], None] | None = None) -> None:
        """``handle`` answers a list of requests with a list of the same length (an
        answer may be an error value; an exception fails the whole batch)."""
        self.handle, self.window, self.max_batch = handle, window_ms / 1000.0, max_batch
        self.on_batch = on_batch
        self._waiting: list[tuple[In, asyncio.Future[Out]]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._busy = False
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="modrec-batch")

    async def submit(self, request: In) -> Out:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Out] = loop.create_future()
        self._waiting.append((request, future))
        if not self._busy:  # a busy worker takes the queue when it finishes
            if self.window == 0 or len(self._waiting) >= self.max_batch:
                self._flush(loop)
            elif self._timer is None:
                self._timer = loop.call_later(self.window, self._flush, loop)
        return await future

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._busy or not self._waiting:
            return
        batch, self._waiting = self._waiting[:self.max_batch], self._waiting[self.max_batch:]
        self._busy = True
        if self.on_batch is not None:
            self.on_batch(len(batch))
        task = loop.run_in_executor(self._worker, self.handle, [r for r, _ in batch])
        task.add_done_callback(lambda done: self._finished(loop, batch, done))

    def _finished(self, loop: asyncio.AbstractEventLoop,
                  batch: list[tuple[In, asyncio.Future[Out]]],
                  done: asyncio.Future[Sequence[Out]]) -> None:
        self._busy = False
        error = done.exception()
        if error is None:
            answers = done.result()
            for (_, future), answer in zip(batch, answers, strict=True):
                if not future.done():
                    future.set_result(answer)
        else:
            log.error("a batch of %d requests failed: %s", len(batch), error)
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
        if self._waiting:  # they queued behind this batch: go at once
            self._flush(loop)

    def close(self) -> None:
        self._worker.shutdown(wait=False, cancel_futures=True)
