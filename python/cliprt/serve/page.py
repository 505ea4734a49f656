"""The search page: ``GET /`` serves a small static page (HTML, JS and CSS from
``cliprt/serve/static``, under ``/static``) that queries ``/v1/search`` from the browser.

The page itself is public; the API calls it makes carry the key the user types in
(``Authorization: Bearer``), kept in the browser's localStorage. Thumbnails come from
``GET /v1/items/{id}/thumbnail`` when the service has that route; cards show a placeholder
otherwise.
"""
from __future__ import annotations

from pathlib import Path

STATIC = Path(__file__).resolve().parent / "static"

__all__ = ["mount_page", "STATIC"]


def mount_page(app) -> None:
    """Adds ``GET /`` (the page) and ``/static`` (its files) to `app`; neither is in the
    OpenAPI schema and neither needs the API key."""
    from fastapi.responses import FileResponse
    from fastapi.staticfiles import StaticFiles

    index = STATIC / "index.html"

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(index, media_type="text/html; charset=utf-8", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
