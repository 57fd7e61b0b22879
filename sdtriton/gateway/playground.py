"""The playground: a page at ``/`` to try the gateway in a browser.

Static HTML, JS and CSS shipped in the package (``static/``), no build step and nothing loaded from anywhere but
this gateway. The page lists ``GET /v1/models`` (each model's sizes, steps and schedulers), submits a job
(``POST /v1/jobs``), reads its server-sent events from a ``fetch()`` body (``EventSource`` cannot send the
``Authorization`` header, so keys need no query parameter), cancels with ``DELETE`` and shows the recent jobs. The
routes here serve files only; every action of the page goes through the API routes and their keys and limits.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from sdtriton.gateway import errors
from sdtriton.gateway.errors import GatewayError

STATIC_DIR = Path(__file__).with_name("static")
PAGE = "index.html"
ASSET_PREFIX = "/playground"
# The files under ASSET_PREFIX, each with its media type (a fixed table: no path from a request reaches the disk).
ASSETS = {"playground.js": "text/javascript; charset=utf-8", "playground.css": "text/css; charset=utf-8"}
# The page runs this gateway's script only and talks to this gateway only; previews arrive as data: URLs and
# images are fetched (with the key) into blob: URLs.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data: blob:; "
    "base-uri 'self'; form-action 'none'; frame-ancestors 'none'"
)
_PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

router = APIRouter(include_in_schema=False)


@router.get("/")
async def page() -> FileResponse:
    """The playground page."""
    return FileResponse(STATIC_DIR / PAGE, media_type="text/html; charset=utf-8", headers=_PAGE_HEADERS)


@router.get(ASSET_PREFIX + "/{name}")
async def asset(name: str) -> FileResponse:
    """One of the page's scripts and style sheets."""
    media_type = ASSETS.get(name)
    if media_type is None:
        raise GatewayError(errors.NOT_FOUND, f"name: no playground file {name!r}", param="name")
    return FileResponse(STATIC_DIR / name, media_type=media_type, headers=_PAGE_HEADERS)
