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

The app is assembled, in FastAPI's "bigger applications" layout, from
`serve/settings.py` (`AppSettings`), `serve/schema.py` (the bodies, per app from its
settings), `serve/middleware.py` (body limits and deadlines, metrics, error bodies),
`serve/dependencies.py` (the app's `Serving`, the API key check) and `serve/routes/`
(one router per concern).
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import FastAPI

from modrec.serve import middleware
from modrec.serve.dependencies import Serving
from modrec.serve.routes import routers
from modrec.serve.schema import Schema
from modrec.serve.service import ModelService
from modrec.serve.settings import AppSettings

__all__ = ["AppSettings", "create_app"]


def create_app(load: ModelService | Callable[[], ModelService],
               settings: AppSettings | None = None) -> FastAPI:
    """The app for a loaded service, or for a loader run in the background at start-up
    (``/readyz`` answers 503 until it returns)."""
    settings = settings or AppSettings()
    serving = Serving(load, settings)
    app = FastAPI(title="modrec", version="1", lifespan=serving.lifespan,
                  description="Recommendations from trained modrec runs: sequence models over "
                  "the users' live histories, with ANN retrieval.")
    app.state.serving = serving  # what `get_serving` hands the routes
    app.state.metrics = serving.metrics
    middleware.install(app, settings, serving.metrics)
    for router in routers(Schema.of(settings)):
        app.include_router(router)
    return app
