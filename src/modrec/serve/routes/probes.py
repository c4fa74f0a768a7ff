"""``/healthz`` (the process is alive), ``/readyz`` (200 once the models are loaded,
503 before or when loading failed) and ``/metrics`` (Prometheus text)."""


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
    return JSONResponse({"status": "ready", "models": {
        name: m.describe() for name, m in current.models.items()}})


@router.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics")
def prometheus(serving: ServingDep) -> Response:
    return Response(generate_latest(serving.metrics.registry), media_type=CONTENT_TYPE_LATEST)
