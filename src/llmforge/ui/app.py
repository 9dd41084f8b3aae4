"""The web app: the gateway plus the chat page and its conversation history.

`mount(app, ctx)` is a gateway extension: it adds `/api/conversations` (see `conversations.py`),
serves the single-page chat at `/` and its assets under `/static/`. `create_web_app(settings)` is
the gateway built with that extension. The page is plain HTML, CSS and JavaScript with its two
libraries (marked, DOMPurify) vendored under `static/vendor/`; nothing is built at install time and
nothing is loaded from elsewhere, which the page's Content-Security-Policy enforces.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles

from llmforge.core.settings import Settings
from llmforge.gateway import AppContext, create_app
from llmforge.models import ModelCatalog
from llmforge.ui.conversations import router as conversations

STATIC_DIR = Path(__file__).parent / "static"

# Everything from this origin only; inline styles/scripts are not used by the page.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
    "form-action 'self'"
)


def mount(app: FastAPI, ctx: AppContext) -> None:
    """Add the conversations API, the page at `/` and its assets at `/static/`."""
    app.include_router(conversations)
    index = STATIC_DIR / "index.html"

    @app.get("/", include_in_schema=False)
    def chat_page() -> Response:
        return FileResponse(
            index,
            media_type="text/html; charset=utf-8",
            headers={
                "Cache-Control": "no-cache",
                "Content-Security-Policy": CONTENT_SECURITY_POLICY,
                "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "no-referrer",
            },
        )

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="ui-static")


def create_web_app(settings: Settings, *, catalog: ModelCatalog | None = None) -> FastAPI:
    """The gateway with the chat page and conversation history."""
    return create_app(settings, catalog=catalog, extensions=(mount,))
