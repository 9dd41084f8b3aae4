"""The app of one worker process of `llmforge serve --workers N`.

uvicorn starts each worker in a fresh process and builds its app from an import string, so the
settings cannot be handed over as an object: `serve` puts the config file's path in
LLMFORGE_CONFIG, and each worker loads the same file and the same environment. Nothing happens at
import; the app is built when uvicorn calls `web_app()`. State shared by the workers lives where
`database`, `redis_url` and `cache.backend` point; this module does not check that it does.
"""

from __future__ import annotations

from fastapi import FastAPI

from llmforge.core.settings import load_settings


def web_app() -> FastAPI:
    from llmforge.ui import create_web_app

    return create_web_app(load_settings(None))
