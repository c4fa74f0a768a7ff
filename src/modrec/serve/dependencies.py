"""What the HTTP routes depend on: the app's `Serving` (the service once loaded, or why
loading failed; the metrics; the micro-batcher in front of the models), handed to a
route by ``Depends(get_serving)`` (a parameter ``serving: ServingDep``), and
`require_writer`, the API key check for writes.

A route asks ``serving.service()`` for the loaded service itself, after FastAPI has
validated the request: a dependency that answered 503 while loading would run before
validation and turn a request that does not fit the schema from 422 into 503.
"""

from __future__ import annotations

import hmac
import logging
import os
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, Request

from modrec.serve.batching import MicroBatcher
from modrec.serve.errors import RequestError
from modrec.serve.middleware import Metrics
from modrec.serve.recommender import Recommender
from modrec.serve.service import ModelService, Reply
from modrec.serve.service import Request as ServiceRequest
from modrec.serve.settings import AppSettings
from modrec.serve.shared import ReloadFollower

log = logging.getLogger(__name__)


class Serving:
    """One app's service while it runs: handed over loaded, or loaded in the background
    at start-up (`lifespan`); ``/readyz`` reports which."""

    def __init__(self, load: ModelService | Callable[[], ModelService],
                 settings: AppSettings) -> None:
        self.load, self.settings = load, settings
        self.metrics = Metrics()
        self.current: ModelService | None = None
        self.error: str | None = None  # why loading failed
        self.follower: ReloadFollower | None = None  # one of several workers: its reloads
        self.batcher: MicroBatcher[ServiceRequest, Reply | RequestError] = MicroBatcher(
            self._answer, settings.batch_window_ms, settings.max_batch,
            self.metrics.batch.observe)

    def service(self) -> ModelService:
        """The loaded service; 503 before it is loaded or when loading failed."""
        current = self.current
        if current is None:
            raise HTTPException(503, self.error or "models are loading")
        return current

    def _answer(self, requests: Sequence[ServiceRequest]) -> Sequence[Reply | RequestError]:
        return self.service().recommend(requests)

    def reload(self, name: str | None, folder: str | None) -> Recommender:
        """Reload model ``name`` (the default when None) from ``folder`` (its own when
        None) here, and in every other worker of the service (`ReloadFollower`)."""
        service = self.service()
        if self.follower is None:
            return service.reload(name, folder)
        return self.follower.reload(name or service.default, folder)

    def _ready(self, service: ModelService) -> None:
        self.current = service
        self.update_gauges()
        shared = self.settings.shared
        if shared is not None:
            self.follower = ReloadFollower(shared, service.reload, self.settings.reloads_applied)
            self.follower.start()
            shared.mark_ready(os.getpid())
        for callback in self.settings.on_ready:
            callback(service)

    def update_gauges(self) -> None:
        """The index-size gauges from the models served now."""
        if self.current is not None:
            for name, model in self.current.models.items():
                self.metrics.index.labels(name).set(model.index.size)

    def _load_in_background(self) -> None:
        try:
            self._ready(self.load() if callable(self.load) else self.load)
        except Exception as err:  # noqa: BLE001 - reported on /readyz and in the log
            self.error = f"{type(err).__name__}: {err}"
            for callback in self.settings.on_failure:
                callback(err)
            if not self.settings.on_failure:
                log.error("loading the models failed: %s", self.error)

    @asynccontextmanager
    async def lifespan(self, app: FastAPI) -> AsyncIterator[None]:
        """The app's start-up (the service handed over, or its loader started on a
        thread) and shutdown (the micro-batcher closed)."""
        if isinstance(self.load, ModelService):
            self._ready(self.load)
        else:
            threading.Thread(target=self._load_in_background, name="modrec-load",
                             daemon=True).start()
        yield
        if self.follower is not None:
            self.follower.stop()
        if self.settings.shared is not None:  # /readyz no longer lists this worker
            self.settings.shared.forget(os.getpid())
        self.batcher.close()


async def get_serving(request: Request) -> Serving:
    """The app's `Serving` (async, so it runs on the event loop rather than a thread)."""
    serving: Serving = request.app.state.serving
    return serving


# A route's parameter ``serving: ServingDep`` is the app's `Serving`.
ServingDep = Annotated[Serving, Depends(get_serving)]


def require_writer(request: Request) -> None:
    """A write needs ``Authorization: Bearer <key>`` when the app has an API key
    (compared in constant time); 401 otherwise."""
    api_key = request.app.state.serving.settings.api_key
    if api_key is None:
        return
    given = request.headers.get("authorization", "")
    scheme, _, token = given.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), api_key.encode()):
        raise HTTPException(401, "this write needs Authorization: Bearer <api key>",
                            headers={"WWW-Authenticate": "Bearer"})
