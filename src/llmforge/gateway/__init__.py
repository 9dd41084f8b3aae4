"""The gateway: an OpenAI-compatible HTTP API (FastAPI) over the model catalog, with every call
traced."""

from llmforge.gateway.app import AppContext, Extension, create_app
from llmforge.gateway.service import Gateway

__all__ = ["AppContext", "Extension", "Gateway", "create_app"]
