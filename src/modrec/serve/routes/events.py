"""``POST /v1/events`` (one event or a list, written in one transaction; needs the API
key when the app has one; an event naming an item no model knows yet is kept and
reported) and ``GET /v1/users/{user_id}/history``."""

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query

from modrec.serve.dependencies import ServingDep, require_writer
from modrec.serve.schema import BODY_ERRORS, ID, EventIn, EventsOut, Schema, error_responses
from modrec.serve.service import Event


def router(schema: Schema) -> APIRouter:
    """The routes, with ``schema``'s list of events (at most the app's max_events)."""
    router = APIRouter()
    # A class made per app, so Any to mypy (a variable is no type to it); FastAPI
    # reads the class itself from the annotation at runtime.
    EventsIn: Any = schema.EventsIn

    @router.post("/v1/events", response_model=EventsOut, dependencies=[Depends(require_writer)],
                 responses=error_responses(401, *BODY_ERRORS, e422="malformed (nothing "
                                           "written)", **schema.too_big))
    def events(body: EventIn | EventsIn, serving: ServingDep) -> EventsOut:
        given = body.events if isinstance(body, EventsIn) else [body]
        written, unknown = serving.service().record([
            Event(e.user_id, e.item_id, e.timestamp, e.type) for e in given])
        serving.metrics.events.inc(written)
        return EventsOut(written=written, unknown_items=unknown)

    @router.get("/v1/users/{user_id:modrec_id}/history", responses=error_responses(422, 503),
                summary="a user's stored events, oldest first")
    def history(user_id: ID, serving: ServingDep,
                limit: Annotated[int, Query(ge=1, le=10_000)] = 200) -> dict[str, Any]:
        return {"user_id": user_id, "items": serving.service().history(user_id, limit)}

    return router
