"""The HTTP app's routes, one `APIRouter` per concern: the probes and metrics, the
recommendations, events and users, items and search, the admin reload, the page.
Routers whose bodies or limits follow the app's settings are made per app from its
`Schema`; `routers` gives them all in the order /openapi.json lists them.

No module here has ``from __future__ import annotations``: FastAPI reads a route's
parameter annotations at runtime, and a per-app body class is a local name, which a
string annotation could not reach."""

from fastapi import APIRouter

from modrec.serve.routes import admin, events, items, page, probes, recommend
from modrec.serve.schema import Schema


def routers(schema: Schema) -> list[APIRouter]:
    """Every router of an app with ``schema``."""
    return [probes.router, recommend.router(schema), events.router(schema),
            items.router(schema), admin.router(schema), page.router]
