"""``GET /``: the service's page (``serve/static/index.html``), outside the schema."""

from importlib.resources import files

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

router = APIRouter()


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def page() -> str:
    return files("modrec.serve").joinpath("static/index.html").read_text()
