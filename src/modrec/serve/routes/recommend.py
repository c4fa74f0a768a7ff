"""``POST /v1/recommend``: the top ``k`` items for a stored user or a sent history,
through the app's micro-batcher."""

from typing import Any

from fastapi import APIRouter

from modrec.serve.dependencies import ServingDep
from modrec.serve.errors import RequestError
from modrec.serve.schema import BODY_ERRORS, ItemOut, RecommendOut, Schema, error_responses
from modrec.serve.service import Request as ServiceRequest


def router(schema: Schema) -> APIRouter:
    """The route, with ``schema``'s request body (its limits are the app's)."""
    router = APIRouter()
    # A class made per app, so Any to mypy (a variable is no type to it); FastAPI
    # reads the class itself from the annotation at runtime.
    RecommendIn: Any = schema.RecommendIn

    @router.post("/v1/recommend", response_model=RecommendOut,
                 responses=error_responses(404, *BODY_ERRORS, **schema.too_big))
    async def recommend(body: RecommendIn, serving: ServingDep) -> RecommendOut:
        serving.service()  # 503 before the models are loaded
        reply = await serving.batcher.submit(ServiceRequest(
            body.user_id, body.history, body.timestamps, body.k, body.exclude_seen,
            body.exclude, body.model))
        if isinstance(reply, RequestError):
            raise reply
        return RecommendOut(model=reply.model, source=reply.source,
                            items=[ItemOut(**item) for item in reply.items],
                            history_length=reply.history_length,
                            unknown_items=reply.unknown_items)

    return router
