"""Items: ``GET /v1/items/{item_id}`` (an item's catalog fields and where it came
from), ``GET /v1/items/{item_id}/similar`` (the items whose vectors are closest), ``POST
/v1/search`` (items by text relevance to a query), and the writes that need the API key
when the app has one: ``POST /v1/items`` (new items, encoded and indexed before the
answer: `modrec.serve.live`), ``DELETE /v1/items/{item_id}`` (retire an item) and ``POST
/v1/media`` (a media file, stored inside ``--media-dir`` for an item to name).

Why a raw body for media and not a multipart form: the file is the whole body, so it is
streamed to disk as it arrives (counted against its own limit, `middleware.BodyLimit`),
``curl --data-binary @clip.mp4`` sends it, and no form parser (python-multipart, not a
dependency of modrec) is needed. Files are named by their SHA-256, so sending the same
file twice stores it once."""

import hashlib
import os
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, Query, Request

from modrec.serve.dependencies import ServingDep, require_writer
from modrec.serve.errors import RequestError
from modrec.serve.schema import (
    BODY_ERRORS,
    ID,
    ItemAddedOut,
    ItemsOut,
    MediaOut,
    RetiredOut,
    Schema,
    error_responses,
)
from modrec.serve.service import ModelService

# What POST /v1/media takes, by file name suffix: what the decoders read.
MEDIA_SUFFIXES = frozenset({
    ".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg",  # video
    ".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp",  # image
    ".wav", ".flac", ".ogg", ".mp3", ".m4a", ".aac", ".opus"})  # audio
UPLOADS = "uploads"  # the folder inside --media-dir that POST /v1/media writes


def _item(service: ModelService, model: str | None, item_id: str) -> tuple[Any, int]:
    recommender = service.model(model)
    index = recommender.catalog.index_of.get(item_id)
    if index is None:
        service.item(item_id, model)  # raises the 404, saying why the model lacks it
        raise RequestError(f"model {recommender.name!r} has no item {item_id!r}", 404)
    if index in recommender.catalog.hidden:
        raise RequestError(f"item {item_id!r} was retired: it is no longer recommended", 410)
    return recommender, index


def router(schema: Schema) -> APIRouter:
    """The routes, with ``schema``'s limits on ``k``, its search and items bodies."""
    router = APIRouter()
    # Classes made per app, so Any to mypy (a variable is no type to it); FastAPI
    # reads the class itself from the annotation at runtime.
    SearchIn: Any = schema.SearchIn
    ItemsIn: Any = schema.ItemsIn

    @router.get("/v1/items/{item_id}", summary="an item's catalog fields and "
                "where it came from", responses=error_responses(
                    404, 422, 503, e404="unknown model or item (saying why a model lacks "
                    "an item that arrived live)"))
    def item(item_id: ID, serving: ServingDep, model: ID | None = None) -> dict[str, Any]:
        return serving.service().item(item_id, model)

    @router.get("/v1/items/{item_id}/similar", summary="items whose vectors "
                "are closest", responses=error_responses(
                    404, 410, 422, 503, e404="unknown model or item"))
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

    @router.post("/v1/items", response_model=ItemsOut, dependencies=[Depends(require_writer)],
                 response_model_exclude_none=True,
                 summary="add items (or new versions of items added before): encoded with "
                 "each model's content encoders and indexed before the answer",
                 responses=error_responses(
                     401, 409, 501, *BODY_ERRORS, e422="does not fit the schema, a field no "
                     "catalog has, media outside --media-dir, missing or broken, or no served "
                     "model with a content tower (nothing stored)", **schema.too_big))
    def add_items(body: ItemsIn, serving: ServingDep) -> ItemsOut:
        started = time.perf_counter()
        service = serving.service()
        rows, refusals = service.add_items([item.fields() for item in body.items])
        serving.update_gauges()  # the gauge follows the adds
        return ItemsOut(items=[ItemAddedOut(**row) for row in rows], skipped_models=refusals,
                        seconds=round(time.perf_counter() - started, 4))

    @router.delete("/v1/items/{item_id}", response_model=RetiredOut,
                   dependencies=[Depends(require_writer)],
                   summary="retire an item: never recommended again, still read in histories",
                   responses=error_responses(401, 404, 422, 501, 503, e404="no such item"))
    def retire(item_id: ID, serving: ServingDep) -> RetiredOut:
        return RetiredOut(**serving.service().retire(item_id))

    @router.post("/v1/media", response_model=MediaOut, dependencies=[Depends(require_writer)],
                 summary="store a media file (the body) for an item to name",
                 openapi_extra={"requestBody": {"required": True, "content": {
                     "application/octet-stream": {"schema": {"type": "string",
                                                             "format": "binary"}}}}},
                 responses=error_responses(401, 408, 413, 422, 503, e422="no --media-dir, "
                                           "an empty body, or a file name whose suffix is "
                                           "not a media type", **schema.upload_too_big))
    async def media(request: Request, serving: ServingDep, filename: Annotated[str, Query(
            min_length=1, max_length=255, description="the file's name; its suffix says what "
            f"it is ({', '.join(sorted(MEDIA_SUFFIXES))})")]) -> MediaOut:
        folder = serving.service().config.media_dir
        if folder is None:
            raise RequestError("this service takes no media files: start modrec serve with "
                               "--media-dir FOLDER")
        suffix = Path(filename).suffix.lower()
        if suffix not in MEDIA_SUFFIXES:
            raise RequestError(f"file name {filename!r}: its suffix {suffix or '(none)'!r} is "
                               f"not one of {', '.join(sorted(MEDIA_SUFFIXES))}")
        return await _store(request, Path(folder) / UPLOADS, suffix)

    return router


async def _store(request: Request, folder: Path, suffix: str) -> MediaOut:
    """The request's body streamed into ``folder`` under its SHA-256 (fsynced, then
    renamed: a file there is always whole); a body cut short leaves nothing."""
    await anyio.to_thread.run_sync(lambda: folder.mkdir(parents=True, exist_ok=True))
    handle, name = tempfile.mkstemp(prefix=".upload-", dir=folder)
    tmp = Path(name)
    digest, size = hashlib.sha256(), 0
    try:
        with os.fdopen(handle, "wb") as file:
            async for chunk in request.stream():
                file.write(chunk)
                digest.update(chunk)
                size += len(chunk)
            if size == 0:
                raise RequestError("the body is empty: send the file's bytes as the body")
            file.flush()
            await anyio.to_thread.run_sync(os.fsync, file.fileno())
        final = folder / f"{digest.hexdigest()[:32]}{suffix}"
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    return MediaOut(path=f"{UPLOADS}/{final.name}", bytes=size, sha256=digest.hexdigest())
