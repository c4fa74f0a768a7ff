"""``POST /v1/admin/reload``: load a run (again) and swap it in without downtime; needs
the API key when the app has one."""

from typing import Any

from fastapi import APIRouter, Depends

from modrec.serve.dependencies import ServingDep, require_writer
from modrec.serve.errors import RequestError
from modrec.serve.schema import BODY_ERRORS, ReloadIn, Schema, error_responses


def router(schema: Schema) -> APIRouter:
    """The route, its 413 worded with the app's body limit."""
    router = APIRouter()

    @router.post("/v1/admin/reload", dependencies=[Depends(require_writer)],
                 responses=error_responses(401, 404, *BODY_ERRORS, e404="no such model, and "
                                           "no run_dir to add it from", e422="not a loadable "
                                           "run (the old model keeps serving)", **schema.too_big),
                 summary="load a run (again) and swap it in without downtime")
    def reload(body: ReloadIn, serving: ServingDep) -> dict[str, Any]:
        try:
            fresh = serving.reload(body.model, body.run_dir)  # every worker's
        # OSError, not only FileNotFoundError: a name over 255 bytes (ENAMETOOLONG) or an
        # unreadable folder is a bad run_dir too, not a server error.
        except (OSError, ValueError) as err:
            if isinstance(err, RequestError):
                raise
            raise RequestError(f"could not load {body.run_dir}: {err}") from None
        serving.update_gauges()
        return {"model": body.model or serving.service().default, **fresh.describe()}

    return router
