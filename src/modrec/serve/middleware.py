"""What wraps every request of the HTTP app: the body limit and deadlines (413, 408),
the measurements (`Metrics`, Prometheus), and the error bodies (a `RequestError`'s
sentence, the 422 of validation as one entry per field, a 503 when the user state's
server cannot be reached). `install` adds them to an
app."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess

from modrec.serve.errors import RequestError
from modrec.serve.settings import AppSettings
from modrec.serve.state import StateUnavailable

log = logging.getLogger(__name__)


class Metrics:
    """One app's Prometheus registry: requests and latency per endpoint, batch sizes,
    index sizes, events written.

    In a worker of ``modrec serve --workers N`` (``PROMETHEUS_MULTIPROC_DIR`` set before
    prometheus_client was imported, as the supervisor does) every process writes its
    values to files in that folder, and `registry` reads all of them
    (prometheus_client's multiprocess mode): counters and histograms are summed over
    the workers, dead ones included, so totals never go back; the index gauge is the
    value a live worker set last (they all serve the same items once caught up)."""

    def __init__(self) -> None:
        own = CollectorRegistry()  # the metrics' own; what is shown is `registry`
        self.requests = Counter("modrec_requests", "HTTP requests answered",
                                ["endpoint", "method", "status"], registry=own)
        self.latency = Histogram(
            "modrec_request_seconds", "time to answer, by endpoint", ["endpoint"],
            buckets=(.0005, .001, .002, .004, .006, .008, .01, .015, .02, .03, .05, .1, .25,
                     .5, 1, 2.5), registry=own)
        self.batch = Histogram("modrec_batch_size", "requests per model call",
                               buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=own)
        self.index = Gauge("modrec_index_items", "items in a model's index", ["model"],
                           registry=own, multiprocess_mode="livemostrecent")
        self.events = Counter("modrec_events_written", "events written to the user state",
                              registry=own)
        self.registry = own
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            self.registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(self.registry)


_CLOSE = {"Connection": "close"}


UPLOAD_PATH = "/v1/media"  # the one route whose body is a file, not JSON


class BodyLimit:
    """ASGI middleware: refuse a body over ``limit`` bytes (413) or one that stalls
    (408), before the application reads it whole; read every POST body as JSON. The
    routes in ``uploads`` (a media file) have their own limit and deadline.

    Both refusals close the connection: the rest of the body is still on its way, and
    uvicorn would read the rest as the next request."""

    def __init__(self, app: Any, limit: int, timeout: float, deadline: float,
                 uploads: dict[str, tuple[int, float]] | None = None) -> None:
        self.app, self.limit, self.timeout, self.deadline = app, limit, timeout, deadline
        # path -> (limit, deadline) of the routes that take a file rather than JSON
        self.uploads = uploads or {}

    async def __call__(self, scope: dict[str, Any], receive: Callable[[], Awaitable[Any]],
                       send: Callable[[Any], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit, deadline = self.uploads.get(scope.get("path", ""), (self.limit, self.deadline))
        headers = dict(scope.get("headers", []))
        if scope["method"] == "POST" and headers.get(b"content-type", b"").split(b";")[0] in (
                b"", b"application/x-www-form-urlencoded"):
            # Every body here is JSON: read it so even when the client did not say so
            # (curl -d sends form encoding unless told otherwise).
            headers[b"content-type"] = b"application/json"
            scope["headers"] = list(headers.items())  # in place: the route lands in it
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await JSONResponse({"detail": f"request body over {limit} bytes"},
                               status_code=413, headers=_CLOSE)(scope, receive, send)
            return
        seen, started = 0, time.monotonic()

        async def limited() -> Any:
            nonlocal seen
            try:
                # Per chunk, and in all: a client trickling a byte at a time would
                # otherwise hold a request open for as long as it likes.
                left = deadline - (time.monotonic() - started)
                message = await asyncio.wait_for(receive(), max(0.0, min(self.timeout, left)))
            except TimeoutError:
                raise HTTPException(408, "the request body stalled", _CLOSE) from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise HTTPException(413, f"request body over {limit} bytes", _CLOSE)
            return message

        await self.app(scope, limited, send)


class Measure:
    """ASGI middleware: count every answer by route and status and time it. Plain ASGI
    rather than ``@app.middleware("http")``, which wraps every request and response in
    streams and a task group: work on the hot path for nothing this needs."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict[str, Any], receive: Callable[[], Awaitable[Any]],
                       send: Callable[[Any], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), 500

        async def sent(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sent)
        finally:
            endpoint = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(endpoint, scope["method"], str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)


def install(app: FastAPI, settings: AppSettings, metrics: Metrics) -> None:
    """Add the middleware (the measurements outermost, so that a 413 or 408 is counted
    too) and the error bodies to ``app``."""
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes,
                       timeout=settings.body_timeout_s, deadline=settings.body_deadline_s,
                       uploads={UPLOAD_PATH: (settings.max_upload_bytes,
                                              settings.upload_deadline_s)})
    app.add_middleware(Measure, metrics=metrics)

    @app.exception_handler(RequestError)
    async def request_error(request: Request, err: RequestError) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, status_code=err.status)

    @app.exception_handler(StateUnavailable)
    async def state_unavailable(request: Request, err: StateUnavailable) -> JSONResponse:
        # The state's server is down or cut off: nothing was acknowledged, and another
        # replica (or this one, once the server is back) may take the request again.
        log.warning("%s", err)
        return JSONResponse({"detail": str(err)}, status_code=503)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        problems = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""),
                     "type": e.get("type", "")} for e in err.errors()]
        return JSONResponse({"detail": problems}, status_code=422)
