"""The HTTP app's schema: the request and response bodies, the documented error
answers, and the path parameter that holds any id.

Every limit the service enforces is in the schema, from the app's settings (``--max-k``
is a server option), so that a client generated from /openapi.json is never refused by
surprise: the bodies that carry a limit (`RecommendIn`, `EventsIn`, `SearchIn`) are
made per app by `Schema.of(settings)`; the rest are plain classes here.
"""

# No ``from __future__ import annotations``: the per-app bodies are classes made in
# `Schema.of`, whose annotations name its local limits (``K``, ``Items``): pydantic
# reads them as objects there, and the routes annotate their parameters with the
# classes themselves (FastAPI reads a route's annotations at runtime).

from collections import Counter
from dataclasses import dataclass
from typing import Annotated, Any, Self

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, model_validator
from starlette.convertors import Convertor, register_url_convertor

from modrec.serve.settings import AppSettings

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


register_url_convertor("modrec_id", _AnyID())  # ``{user_id:modrec_id}`` in a route path


# ---- bodies every app shares -----------------------------------------------------------
class _Strict(BaseModel):  # a request body: a field the schema does not name is a 422
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
    unknown_items: list[str] = Field(description="item ids no served model knows (yet): "
                                     "their events are kept, and read once the item arrives")


# ---- items added while serving ---------------------------------------------------------
MediaPath = Annotated[str, Field(min_length=1, max_length=4096, description="a file inside "
                                 "the server's --media-dir, relative to it (or a path that "
                                 "POST /v1/media returned)")]
ColumnValue = (Annotated[str, Field(min_length=1, max_length=10_000)]
               | Annotated[list[Annotated[str, Field(min_length=1, max_length=200)]],
                           Field(min_length=1, max_length=200)])
MAX_FIELDS = 64  # catalog fields besides the named ones, per item


class ItemIn(BaseModel):
    """A new item (or a new version of one added before): its id and catalog fields.
    Besides the fields named here, any column of the served catalogs (e.g. ``genres``,
    as text ``"A|B"`` or a list); a field no served catalog has is refused (422)."""

    model_config = ConfigDict(extra="allow", json_schema_extra={
        "maxProperties": MAX_FIELDS + 6, "propertyNames": {"minLength": 1, "maxLength": 64}})

    item_id: ID
    title: Annotated[str, Field(min_length=1, max_length=1000)] | None = None
    text: Annotated[str, Field(min_length=1, max_length=20_000)] | None = Field(
        None, description="what a text encoder reads (a dataset without a text column "
        "trained it on titles: then the title is read)")
    image: MediaPath | None = None
    video: MediaPath | None = None
    audio: MediaPath | None = None
    __pydantic_extra__: dict[str, ColumnValue] = Field(init=False)

    @model_validator(mode="after")
    def _bounded(self) -> Self:
        extra = self.__pydantic_extra__ or {}
        if len(extra) > MAX_FIELDS:
            raise ValueError(f"at most {MAX_FIELDS} catalog fields besides the named ones")
        if any(not 1 <= len(name) <= 64 for name in extra):
            raise ValueError("a field name has 1 to 64 characters")
        return self

    def fields(self) -> dict[str, Any]:
        """The fields that were given (None ones left out), item_id included."""
        return self.model_dump(exclude_none=True)


class InModelOut(BaseModel):
    model_config = ConfigDict(extra="forbid")
    index: int | None = Field(None, description="the item's index in the model")
    vector_sha256: str | None = Field(None, description="the first 16 hex digits of the "
                                      "SHA-256 of its vector's float32 bytes")
    skipped: str | None = Field(None, description="why the model left the item out")


class ItemAddedOut(BaseModel):
    item_id: str
    status: str = Field(description="'added', 'updated' (encoded again) or 'unchanged' "
                        "(the same fields and media as stored: not encoded again)")
    models: dict[str, InModelOut] = Field(description="per served model that takes new "
                                          "items: where the item is, or why it left it out")


class ItemsOut(BaseModel):
    items: list[ItemAddedOut]
    skipped_models: dict[str, str] = Field(description="the served models that take no new "
                                           "items, and why (e.g. an ID item tower)")
    seconds: float = Field(description="from the request's arrival to stored and indexed")


class RetiredOut(BaseModel):
    item_id: str
    origin: str = Field(description="'live' (added while serving) or 'trained'")
    retired_at: float = Field(description="Unix seconds; the first retirement's")


class MediaOut(BaseModel):
    path: str = Field(description="where the file is, relative to --media-dir: name it in "
                      "an item's image, video or audio field")
    bytes: int
    sha256: str


class ReloadIn(_Strict):
    model: ID | None = Field(None, description="the name to (re)load (default: the first)")
    run_dir: Annotated[str, Field(min_length=1, max_length=4096)] | None = Field(
        None, description="a run folder or bundle (default: the model's own, again)")


# ---- the error answers -----------------------------------------------------------------
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
    409: "the item id is a trained or retired item's (nothing stored)",
    410: "the item was retired",
    422: "the request does not fit the schema, or cannot be answered as asked",
    501: "this service cannot do it (its user state keeps no items)",
    503: "the models are still loading, or loading failed",
}


def error_responses(*codes: int, **described: str) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI entries of a route's error answers (``described``: ``e404="..."`` for a
    route's own wording): every status it may give, so none is undocumented."""
    return {code: {"model": ErrorOut,
                   "description": described.get(f"e{code}", _ERRORS[code])}
            for code in codes}


BODY_ERRORS = (400, 408, 413, 422, 503)  # a route that reads a JSON body


# ---- bodies made per app ---------------------------------------------------------------
@dataclass(frozen=True)
class Schema:
    """One app's request bodies whose limits are its settings, and the limits the
    routes state beside them."""

    RecommendIn: type[_Strict]
    EventsIn: type[_Strict]
    SearchIn: type[_Strict]
    ItemsIn: type[_Strict]
    max_k: int  # ``k`` of /v1/items/{item_id}/similar, a query parameter
    k_default: int
    too_big: dict[str, str]  # the 413's wording, with this app's body limit
    upload_too_big: dict[str, str]  # the same for POST /v1/media

    @classmethod
    def of(cls, settings: AppSettings) -> Self:
        K = Annotated[int, Field(strict=True, ge=1, le=settings.max_k, description="how many "
                                 f"items (at most {settings.max_k})"),
                      BeforeValidator(_integral)]
        k_default = min(10, settings.max_k)
        Items = Annotated[list[ID], Field(max_length=settings.max_history)]
        Times = Annotated[list[Seconds], Field(max_length=settings.max_history)]
        Events = Annotated[list[EventIn], Field(min_length=1, max_length=settings.max_events)]

        class RecommendIn(_Strict):
            # The schema's form of `_who`'s first rule, for clients and fuzzers; the
            # second (as many timestamps as history items) is beyond JSON Schema and told
            # in words.
            model_config = ConfigDict(json_schema_extra={"anyOf": [
                {"required": ["user_id"], "properties": {"user_id": {"type": "string"}}},
                {"required": ["history"], "properties": {"history": {"type": "array"}}}]})

            user_id: ID | None = Field(None, description="a user whose stored history is read")
            history: Items | None = Field(
                None, description="item ids, oldest first; used instead of the stored history")
            timestamps: Times | None = Field(
                None, description="seconds since the epoch, one per history item, sent with "
                "a history (models that learned from elapsed time need them)")
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
                if self.timestamps is not None and (
                        self.history is None or len(self.timestamps) != len(self.history)):
                    raise ValueError("timestamps must come with a history, one per item")
                return self

        class EventsIn(_Strict):
            events: Events

        class SearchIn(_Strict):
            query: Annotated[str, Field(min_length=1, max_length=1000)]
            k: K = k_default
            model: ID | None = None

        class ItemsIn(_Strict):
            items: Annotated[list[ItemIn], Field(
                min_length=1, max_length=settings.max_items, description="at most "
                f"{settings.max_items} items, each id once")]

            @model_validator(mode="after")
            def _unique(self) -> Self:
                counts = Counter(item.item_id for item in self.items)
                twice = sorted(i for i, n in counts.items() if n > 1)
                if twice:
                    raise ValueError(f"each item id once per request; {twice[:10]} come "
                                     "more than once")
                return self

        return cls(RecommendIn, EventsIn, SearchIn, ItemsIn, settings.max_k, k_default,
                   {"e413": f"the request body is over {settings.max_body_bytes} bytes"},
                   {"e413": f"the file is over {settings.max_upload_bytes} bytes"})
