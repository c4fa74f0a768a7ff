"""``/healthz`` (the process is alive), ``/readyz`` (200 once the models are loaded,
503 before or when loading failed; the answering worker's pid, and with ``--workers N``
the pids of every worker that serves) and ``/metrics`` (Prometheus text: with ``--workers
N``, every worker's counts together, whichever worker answers)."""

import os
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from modrec.serve.dependencies import ServingDep

router = APIRouter()


@router.get("/healthz", summary="the process is alive")
def healthz() -> dict[str, str]:
    return {"status": "alive"}


@router.get("/readyz", summary="models loaded and serving",
            responses={503: {"description": "still loading, or loading failed"}})
def readyz(serving: ServingDep) -> JSONResponse:
    current = serving.current
    if current is None:
        return JSONResponse({"status": "loading" if serving.error is None else "failed",
                             "detail": serving.error}, status_code=503)
    current.sync()  # items another worker added count in the sizes below
    body: dict[str, Any] = {"status": "ready", "worker": os.getpid()}
    shared = serving.settings.shared
    if shared is not None:
        body["workers"] = {"serving": shared.ready(), "of": shared.workers}
    body["models"] = {name: m.describe() for name, m in current.models.items()}
    return JSONResponse(body)


@router.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics")
def prometheus(serving: ServingDep) -> Response:
    if serving.current is not None:
        serving.current.sync()  # items another worker added count in the index sizes
    serving.update_gauges()
    return Response(generate_latest(serving.metrics.registry), media_type=CONTENT_TYPE_LATEST)
