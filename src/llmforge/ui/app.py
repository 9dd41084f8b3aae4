"""The web app: the gateway plus the workbench pages and the conversation history.

`mount(app, ctx)` is a gateway extension: it adds `/api/conversations` (see `conversations.py`),
serves each page of `PAGES` (the chat at `/`, knowledge bases, traces, evaluations, keys,
distillation, agents, the guards' review queue, the audit log) and their assets under `/static/`.
`create_web_app(settings)` is the gateway built with that extension. The pages are plain HTML, CSS
and JavaScript sharing one shell (`static/shell.js`: navigation, language, API key) with two
vendored libraries (marked, DOMPurify) under `static/vendor/`; nothing is built at install time
and nothing is loaded from elsewhere, which the pages' Content-Security-Policy enforces. The pages
read the gateway's own JSON APIs like any client; this module adds no data route but the
conversations.

A new page is an HTML file plus its script in `static/`, an entry in `PAGES` here and one in the
shell's navigation (`static/shell.js`). `MOVED` pages answer with a redirect to their workbench
page: the bare gateway's minimal review page at `/guard/review` (routes/guard.py) becomes the
workbench's `/review` here, ahead of the gateway's own route.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from llmforge.core.settings import Settings
from llmforge.gateway import AppContext, create_app
from llmforge.models import ModelCatalog
from llmforge.ui.conversations import router as conversations

STATIC_DIR = Path(__file__).parent / "static"

# path -> the page's file under static/
PAGES = {
    "/": "index.html",
    "/kb": "kb.html",
    "/traces": "traces.html",
    "/evals": "evals.html",
    "/keys": "keys.html",
    "/distill": "distill.html",
    "/agents": "agents.html",
    "/review": "review.html",
    "/audit": "audit.html",
}
# old address -> the workbench page that replaces it
MOVED = {"/guard/review": "/review"}

# Everything from this origin only; inline styles/scripts are not used by the pages.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
    "form-action 'self'"
)
PAGE_HEADERS = {
    "Cache-Control": "no-cache",
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def mount(app: FastAPI, ctx: AppContext) -> None:
    """Add the conversations API, the pages and their assets at `/static/`."""
    app.include_router(conversations)
    for path, file in PAGES.items():
        app.add_api_route(path, _page(STATIC_DIR / file), methods=["GET"], include_in_schema=False)
    for old, new in MOVED.items():
        app.add_api_route(old, _moved(new), methods=["GET"], include_in_schema=False)
        app.router.routes.insert(0, app.router.routes.pop())  # matched before the gateway's own
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="ui-static")


def _page(file: Path) -> Callable[[], Response]:
    def page() -> Response:
        return FileResponse(file, media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)

    page.__name__ = f"page_{file.stem}"
    return page


def _moved(target: str) -> Callable[[], Response]:
    def moved() -> Response:
        return RedirectResponse(target, status_code=308)

    moved.__name__ = "moved_" + target.strip("/").replace("/", "_")
    return moved


def create_web_app(settings: Settings, *, catalog: ModelCatalog | None = None) -> FastAPI:
    """The gateway with the workbench pages and conversation history."""
    return create_app(settings, catalog=catalog, extensions=(mount,))
