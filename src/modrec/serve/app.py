"""The HTTP face of `ModelService` (FastAPI): thin on purpose, every decision is the
service's. ``create_app(load, settings)`` returns the ASGI app; ``modrec serve`` runs
it with uvicorn.

Contract with clients:

* reads are open, writes (``/v1/events``, ``/v1/admin/reload``) need
  ``Authorization: Bearer <key>`` when the service has an API key (compared in
  constant time);
* a bad request gets a 4xx whose ``detail`` says what is wrong (422 for a body that
  does not fit the schema, 404 for an unknown model, user-facing item or route, 413
  for a body over ``max_body_bytes``, 408 for a body that stalls), never a 5xx and
  never a partial write;
* the schema states every limit the service enforces (``k`` at most ``max_k``, lists
  at most ``max_history`` items, ``max_events`` events, from this app's settings), and
  numbers are strict: ``true`` or ``"10"`` is not a number; a schema-valid request is
  refused only for what the data decides (an unknown item, a time-aware model sent no
  timestamps, a folder that is not a run) or for what the schema says in words (as
  many timestamps as history items, the body's size in bytes);
* an acknowledged event is on disk (SQLite, synchronous=FULL) before the answer;
* the app answers ``/healthz`` at once and ``/readyz`` with 200 once the models are
  loaded (503 before; every other endpoint too);
* ``/metrics`` is Prometheus text: requests and latency per endpoint, batch sizes,
  index sizes, events written.
"""

# No ``from __future__ import annotations``: the request bodies are classes made per app
# (their limits are its settings), and FastAPI reads a route's annotations through the
# module's globals, where a class local to `create_app` is not.

import asyncio
import hmac
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib.resources import files
from typing import Annotated, Any, Self

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, model_validator
from starlette.convertors import Convertor, register_url_convertor

from modrec.serve.batching import MicroBatcher
from modrec.serve.errors import RequestError
from modrec.serve.service import Event, ModelService, Reply
from modrec.serve.service import Request as ServiceRequest

log = logging.getLogger(__name__)

ID = Annotated[str, Field(min_length=1, max_length=256)]


def _integral(value: Any) -> Any:
    """10.0 is the integer 10 to JSON Schema (as to JSON): a number without a fraction
    becomes an int before the strict check, which refuses everything else."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


# Whole numbers are strict: pydantic's lax mode would read true as 1 and "10" as 10,
# which the schema ("type": "integer") does not allow. The bounds go beside the strict
# flag, before `_integral`, so that they reach the schema as minimum and maximum.
# Seconds are bounded: a number beyond int64 failed the whole micro-batch (500).
Seconds = Annotated[int, Field(strict=True, ge=0, le=2**53), BeforeValidator(_integral)]


class _AnyID(Convertor[str]):
    """A path parameter that may hold any character: an id with a slash (sent as %2F,
    which the router sees decoded) or a newline is still one id. Starlette's ``str``
    stops at a slash and its ``path`` (``.*``) at a newline."""

    regex = "[\\s\\S]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("modrec_id", _AnyID())


@dataclass
class AppSettings:
    api_key: str | None = None  # required for writes when set
    # how long a request that finds the model idle waits for company (requests queued
    # behind a busy model always share its next call); max_batch=1: no batching
    batch_window_ms: float = 0.0
    max_batch: int = 64
    max_body_bytes: int = 1_000_000
    body_timeout_s: float = 10.0  # a body that stalls longer than this per chunk: 408
    body_deadline_s: float = 60.0  # a body still arriving after this long in all: 408
    max_events: int = 1000  # events per request
    max_k: int = 1000
    max_history: int = 10_000
    on_ready: list[Callable[[ModelService], None]] = field(default_factory=list)
    # Called with the error when loading fails, instead of the app's own error log line
    # (``modrec serve`` stops and exits with it rather than answer 503 forever).
    on_failure: list[Callable[[Exception], None]] = field(default_factory=list)


# ---- the schema ------------------------------------------------------------------------
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ItemOut(BaseModel):
    model_config = ConfigDict(extra="allow")  # the catalog's display columns
    item_id: str
    score: float | None = None


class RecommendOut(BaseModel):
    model: str
    source: str = Field(description="'history' (sent), 'user' (stored) or 'popularity' "
                        "(no history: the most frequent items)")
    items: list[ItemOut]
    history_length: int
    unknown_items: list[str] = Field(description="ids the model does not know: left out "
                                     "of its input and of the exclusions")


class EventIn(_Strict):
    user_id: ID
    item_id: ID
    timestamp: Seconds | None = Field(None, description="seconds; the time received when "
                                      "absent")
    type: Annotated[str, Field(max_length=64)] | None = None


class EventsOut(BaseModel):
    written: int


class ReloadIn(_Strict):
    model: ID | None = Field(None, description="the name to (re)load (default: the first)")
    run_dir: Annotated[str, Field(min_length=1, max_length=4096)] | None = Field(
        None, description="a run folder or bundle (default: the model's own, again)")


class Problem(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ErrorOut(BaseModel):
    """Every 4xx/5xx body: a sentence, or one entry per field that does not fit the schema
    (the 422 of validation). Documented so that clients, and schema checks, know that a
    422 may carry either."""

    detail: str | list[Problem]


_ERRORS = {
    400: "the body is not JSON text (e.g. not UTF-8)",
    401: "an API key is set and was not sent",
    404: "unknown model",
    408: "the request body stalled",
    413: "the request body is over max_body_bytes",
    422: "the request does not fit the schema, or cannot be answered as asked",
    503: "the models are still loading, or loading failed",
}


def _errors(*codes: int, **described: str) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI entries of a route's error answers (``described``: ``e404="..."`` for a
    route's own wording): every status it may give, so none is undocumented."""
    return {code: {"model": ErrorOut,
                   "description": described.get(f"e{code}", _ERRORS[code])}
            for code in codes}


_BODY = (400, 408, 413, 422, 503)  # a route that reads a JSON body


class _Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("modrec_requests", "HTTP requests answered",
                                ["endpoint", "method", "status"], registry=self.registry)
        self.latency = Histogram(
            "modrec_request_seconds", "time to answer, by endpoint", ["endpoint"],
            buckets=(.0005, .001, .002, .004, .006, .008, .01, .015, .02, .03, .05, .1, .25,
                     .5, 1, 2.5), registry=self.registry)
        self.batch = Histogram("modrec_batch_size", "requests per model call",
                               buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=self.registry)
        self.index = Gauge("modrec_index_items", "items in a model's index", ["model"],
                           registry=self.registry)
        self.events = Counter("modrec_events_written", "events written to the user state",
                              registry=self.registry)


_CLOSE = {"Connection": "close"}


class _BodyLimit:
    """ASGI middleware: refuse a body over ``limit`` bytes (413) or one that stalls
    (408), before the application reads it whole; read every POST body as JSON.

    Both refusals close the connection: the rest of the body is still on its way, and
    uvicorn (h11) would read it as the next request and fail on it with a traceback."""

    def __init__(self, app: Any, limit: int, timeout: float, deadline: float) -> None:
        self.app, self.limit, self.timeout, self.deadline = app, limit, timeout, deadline

    async def __call__(self, scope: dict[str, Any], receive: Callable[[], Awaitable[Any]],
                       send: Callable[[Any], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", []))
        if scope["method"] == "POST" and headers.get(b"content-type", b"").split(b";")[0] in (
                b"", b"application/x-www-form-urlencoded"):
            # Every body here is JSON: read it so even when the client did not say so
            # (curl -d sends form encoding unless told otherwise).
            headers[b"content-type"] = b"application/json"
            scope["headers"] = list(headers.items())  # in place: the route lands in it
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await JSONResponse({"detail": f"request body over {self.limit} bytes"},
                               status_code=413, headers=_CLOSE)(scope, receive, send)
            return
        seen, started = 0, time.monotonic()

        async def limited() -> Any:
            nonlocal seen
            try:
                # Per chunk, and in all: a client trickling a byte at a time would
                # otherwise hold a request open for as long as it likes.
                left = self.deadline - (time.monotonic() - started)
                message = await asyncio.wait_for(receive(), max(0.0, min(self.timeout, left)))
            except TimeoutError:
                raise HTTPException(408, "the request body stalled", _CLOSE) from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise HTTPException(413, f"request body over {self.limit} bytes", _CLOSE)
            return message

        await self.app(scope, limited, send)


class _Measure:
    """ASGI middleware: count every answer by route and status and time it. Plain ASGI
    rather than ``@app.middleware("http")``, which wraps every request and response in
    streams and a task group: work on the hot path for nothing this needs."""

    def __init__(self, app: Any, metrics: _Metrics) -> None:
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


def create_app(load: ModelService | Callable[[], ModelService],
               settings: AppSettings | None = None) -> FastAPI:
    """The app for a loaded service, or for a loader run in the background at start-up
    (``/readyz`` answers 503 until it returns)."""
    settings = settings or AppSettings()
    metrics = _Metrics()
    holder: dict[str, Any] = {"service": None, "error": None}

    # ---- the request bodies: every limit the service enforces is in the schema, from
    # this app's settings (--max-k is a server option), so that a client generated from
    # /openapi.json is never refused by surprise
    K = Annotated[int, Field(strict=True, ge=1, le=settings.max_k, description="how many "
                             f"items (at most {settings.max_k})"), BeforeValidator(_integral)]
    k_default = min(10, settings.max_k)
    Items = Annotated[list[ID], Field(max_length=settings.max_history)]
    Times = Annotated[list[Seconds], Field(max_length=settings.max_history)]
    Events = Annotated[list[EventIn], Field(min_length=1, max_length=settings.max_events)]

    class RecommendIn(_Strict):
        # The schema's form of `_who`'s first rule, for clients and fuzzers; the second
        # (as many timestamps as history items) is beyond JSON Schema and told in words.
        model_config = ConfigDict(json_schema_extra={"anyOf": [
            {"required": ["user_id"], "properties": {"user_id": {"type": "string"}}},
            {"required": ["history"], "properties": {"history": {"type": "array"}}}]})

        user_id: ID | None = Field(None, description="a user whose stored history is read")
        history: Items | None = Field(
            None, description="item ids, oldest first; used instead of the stored history")
        timestamps: Times | None = Field(
            None, description="seconds since the epoch, one per history item, sent with a "
            "history (models that learned from elapsed time need them)")
        k: K = k_default
        exclude_seen: StrictBool = Field(True, description="leave out the items of the "
                                         "history")
        exclude: Items = Field(default_factory=list, description="item ids to leave out")
        model: ID | None = Field(None, description="a served model's name (default: the "
                                 "first)")

        @model_validator(mode="after")
        def _who(self) -> Self:
            if self.user_id is None and self.history is None:
                raise ValueError("send a user_id or a history")
            if self.timestamps is not None and (self.history is None
                                                or len(self.timestamps) != len(self.history)):
                raise ValueError("timestamps must come with a history, one per item")
            return self

    class EventsIn(_Strict):
        events: Events

    class SearchIn(_Strict):
        query: Annotated[str, Field(min_length=1, max_length=1000)]
        k: K = k_default
        model: ID | None = None

    too_big = {"e413": f"the request body is over {settings.max_body_bytes} bytes"}

    def ready(service: ModelService) -> None:
        holder["service"] = service
        for name, model in service.models.items():
            metrics.index.labels(name).set(model.index.size)
        for callback in settings.on_ready:
            callback(service)

    def load_in_background() -> None:
        try:
            ready(load() if callable(load) else load)
        except Exception as err:  # noqa: BLE001 - reported on /readyz and in the log
            holder["error"] = f"{type(err).__name__}: {err}"
            for callback in settings.on_failure:
                callback(err)
            if not settings.on_failure:
                log.error("loading the models failed: %s", holder["error"])

    def answer(requests: Sequence[ServiceRequest]) -> Sequence[Reply | RequestError]:
        return service().recommend(requests)

    batcher: MicroBatcher[ServiceRequest, Reply | RequestError] = MicroBatcher(
        answer, settings.batch_window_ms, settings.max_batch, metrics.batch.observe)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if isinstance(load, ModelService):
            ready(load)
        else:
            threading.Thread(target=load_in_background, name="modrec-load", daemon=True).start()
        yield
        batcher.close()

    app = FastAPI(title="modrec", version="1", lifespan=lifespan,
                  description="Recommendations from trained modrec runs: sequence models over "
                  "the users' live histories, with ANN retrieval.")
    app.add_middleware(_BodyLimit, limit=settings.max_body_bytes,
                       timeout=settings.body_timeout_s, deadline=settings.body_deadline_s)
    app.state.metrics = metrics

    def service() -> ModelService:
        current = holder["service"]
        if current is None:
            raise HTTPException(503, holder["error"] or "models are loading")
        return current  # type: ignore[no-any-return]

    def writer(request: Request) -> None:
        if settings.api_key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
                token.strip().encode(), settings.api_key.encode()):
            raise HTTPException(401, "this write needs Authorization: Bearer <api key>",
                                headers={"WWW-Authenticate": "Bearer"})

    app.add_middleware(_Measure, metrics=metrics)

    @app.exception_handler(RequestError)
    async def request_error(request: Request, err: RequestError) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, status_code=err.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        problems = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""),
                     "type": e.get("type", "")} for e in err.errors()]
        return JSONResponse({"detail": problems}, status_code=422)

    # ---- probes and metrics ----------------------------------------------------------
    @app.get("/healthz", summary="the process is alive")
    def healthz() -> dict[str, str]:
        return {"status": "alive"}

    @app.get("/readyz", summary="models loaded and serving",
             responses={503: {"description": "still loading, or loading failed"}})
    def readyz() -> JSONResponse:
        current = holder["service"]
        if current is None:
            return JSONResponse({"status": "loading" if holder["error"] is None else "failed",
                                 "detail": holder["error"]}, status_code=503)
        return JSONResponse({"status": "ready", "models": {
            name: m.describe() for name, m in current.models.items()}})

    @app.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics")
    def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    # ---- recommendations -------------------------------------------------------------
    @app.post("/v1/recommend", response_model=RecommendOut,
              responses=_errors(404, *_BODY, **too_big))
    async def recommend(body: RecommendIn) -> RecommendOut:
        service()  # 503 before the models are loaded
        reply = await batcher.submit(ServiceRequest(
            body.user_id, body.history, body.timestamps, body.k, body.exclude_seen,
            body.exclude, body.model))
        if isinstance(reply, RequestError):
            raise reply
        return RecommendOut(model=reply.model, source=reply.source,
                            items=[ItemOut(**item) for item in reply.items],
                            history_length=reply.history_length,
                            unknown_items=reply.unknown_items)

    # ---- events and users ------------------------------------------------------------
    @app.post("/v1/events", response_model=EventsOut, dependencies=[Depends(writer)],
              responses=_errors(401, *_BODY, e422="malformed, or an unknown item (nothing "
                                "written)", **too_big))
    def events(body: EventIn | EventsIn) -> EventsOut:
        given = body.events if isinstance(body, EventsIn) else [body]
        written = service().record([Event(e.user_id, e.item_id, e.timestamp, e.type)
                                    for e in given])
        metrics.events.inc(written)
        return EventsOut(written=written)

    @app.get("/v1/users/{user_id:modrec_id}/history", responses=_errors(422, 503),
             summary="a user's stored events, oldest first")
    def history(user_id: ID, limit: Annotated[int, Query(ge=1, le=10_000)] = 200
                ) -> dict[str, Any]:
        return {"user_id": user_id, "items": service().history(user_id, limit)}

    # ---- items -----------------------------------------------------------------------
    def _item(model: str | None, item_id: str) -> tuple[Any, int]:
        recommender = service().model(model)
        index = recommender.catalog.index_of.get(item_id)
        if index is None:
            raise RequestError(f"model {recommender.name!r} has no item {item_id!r}", 404)
        return recommender, index

    @app.get("/v1/items/{item_id}", summary="an item's catalog fields",
             responses=_errors(404, 422, 503, e404="unknown model or item"))
    def item(item_id: ID, model: ID | None = None) -> dict[str, Any]:
        recommender, index = _item(model, item_id)
        return recommender.catalog.describe(index)  # type: ignore[no-any-return]

    @app.get("/v1/items/{item_id}/similar", summary="items whose vectors are closest",
             responses=_errors(404, 422, 503, e404="unknown model or item"))
    def similar(item_id: ID, k: Annotated[int, Query(ge=1, le=settings.max_k)] = k_default,
                model: ID | None = None) -> dict[str, Any]:
        recommender, index = _item(model, item_id)
        return {"item_id": item_id, "items": recommender.similar(index, k)}

    @app.post("/v1/search", summary="items by text relevance to a query",
              responses=_errors(404, *_BODY, e404="unknown model, or no text embeddings",
                                **too_big))
    def search(body: SearchIn) -> dict[str, Any]:
        recommender = service().model(body.model)
        return {"query": body.query, "items": recommender.search(body.query, body.k)}

    # ---- admin -----------------------------------------------------------------------
    @app.post("/v1/admin/reload", dependencies=[Depends(writer)],
              responses=_errors(401, 404, *_BODY, e404="no such model, and no run_dir to "
                                "add it from", e422="not a loadable run (the old model "
                                "keeps serving)", **too_big),
              summary="load a run (again) and swap it in without downtime")
    def reload(body: ReloadIn) -> dict[str, Any]:
        try:
            fresh = service().reload(body.model, body.run_dir)
        # OSError, not only FileNotFoundError: a name over 255 bytes (ENAMETOOLONG) or an
        # unreadable folder is a bad run_dir too, not a server error.
        except (OSError, ValueError) as err:
            if isinstance(err, RequestError):
                raise
            raise RequestError(f"could not load {body.run_dir}: {err}") from None
        metrics.index.labels(body.model or service().default).set(fresh.index.size)
        return {"model": body.model or service().default, **fresh.describe()}

    # ---- the page --------------------------------------------------------------------
    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> str:
        return files("modrec.serve").joinpath("static/index.html").read_text()

    return app
