"""The web page of the endpoint: ``GET /`` (``serve/static/index.html``) and its assets under ``/static/``.

The page is plain HTML, CSS and JavaScript (no framework, no build step, nothing from a CDN): it lists the published
machines (``GET /v1/models``), uploads or records a WAV, posts it to ``POST /v1/score`` and shows the score, the
threshold, the decision, each ensemble member's scores and the anomaly maps as heat maps. The page and its assets
hold no data, so they are served without an API key; the page sends the key the user enters with its API calls.

The API docs (``/docs``) are served offline too, by ``fastapi_offline.FastAPIOffline`` (serve/app.py), from the
Swagger UI assets inside that package (``/static-offline-docs/``). There is no ``/redoc``: ReDoc loads its logo from
the internet.
"""

from __future__ import annotations

import html
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).resolve().with_name("static")

#: index.html's base URL, replaced by the application's route prefix when the page is served.
BASE = '<base href="/">'
#: The page loads nothing from elsewhere: the browser refuses any script, style, image or connection that is not
#: from this server (recordings and heat maps are ``blob:`` / ``data:`` URLs made in the page).
CSP = "default-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:; object-src 'none'; base-uri 'self'"


def install(api: FastAPI) -> None:
    """Register ``GET /`` and ``/static/*`` on ``api``. Call before ``@serve.ingress(api)``: Serve freezes the app
    when the class is decorated. Starlette's StaticFiles answers only files inside ``serve/static/`` (``..`` and
    symlinks out of it are 404)."""
    api.mount("/static", StaticFiles(directory=STATIC), name="static")
    page = (STATIC / "index.html").read_text()

    @api.get("/", include_in_schema=False)
    async def index(request: Request) -> HTMLResponse:
        # the page's URLs are relative to <base href>: the application's route prefix (Serve's root_path)
        root = html.escape(request.scope.get("root_path", "").rstrip("/"), quote=True)
        return HTMLResponse(page.replace(BASE, f'<base href="{root}/">'), headers={"Content-Security-Policy": CSP})


__all__ = ["BASE", "CSP", "STATIC", "install"]
