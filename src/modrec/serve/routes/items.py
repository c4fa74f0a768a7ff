"""``GET /v1/items/{item_id}`` (an item's catalog fields), ``GET
/v1/items/{item_id}/similar`` (the items whose vectors are closest) and ``POST
/v1/search`` (items by text relevance to a query)."""

from typing import Annotated, Any

from fastapi import APIRouter, Query

from modrec.serve.dependencies import ServingDep
from modrec.serve.errors import RequestError
from modrec.serve.schema import BODY_ERRORS, ID, Schema, error_responses
from modrec.serve.service import ModelService


def _item(service: ModelService, model: str | None, item_id: str) -> tuple[Any, int]:
    recommender = service.model(model)
    index = recommender.catalog.index_of.get(item_id)
    if index is None:
        raise RequestError(f"model {recommender.name!r} has no item {item_id!r}", 404)
    return recommender, index


def router(schema: Schema) -> APIRouter:
    """The routes, with ``schema``'s limits on ``k`` and its search body."""
    router = APIRouter()
    # A class made per app, so Any to mypy (a variable is no type to it); FastAPI
    # reads the class itself from the annotation at runtime.
    SearchIn: Any = schema.SearchIn

    @router.get("/v1/items/{item_id}", summary="an item's catalog fields",
                responses=error_responses(404, 422, 503, e404="unknown model or item"))
    def item(item_id: ID, serving: ServingDep, model: ID | None = None) -> dict[str, Any]:
        recommender, index = _item(serving.service(), model, item_id)
        return recommender.catalog.describe(index)  # type: ignore[no-any-return]

    @router.get("/v1/items/{item_id}/similar", summary="items whose vectors are closest",
                responses=error_responses(404, 422, 503, e404="unknown model or item"))
    def similar(item_id: ID, serving: ServingDep,
                k: Annotated[int, Query(ge=1, le=schema.max_k)] = schema.k_default,
                model: ID | None = None) -> dict[str, Any]:
        recommender, index = _item(serving.service(), model, item_id)
        return {"item_id": item_id, "items": recommender.similar(index, k)}

    @router.post("/v1/search", summary="items by text relevance to a query",
                 responses=error_responses(404, *BODY_ERRORS, e404="unknown model, or no text "
                                           "embeddings", **schema.too_big))
    def search(body: SearchIn, serving: ServingDep) -> dict[str, Any]:
        recommender = serving.service().model(body.model)
        return {"query": body.query, "items": recommender.search(body.query, body.k)}

    return router
