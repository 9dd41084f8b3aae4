"""The gateway: the OpenAI-, Anthropic- and Responses-compatible HTTP API over the model catalog,
and the request path every call takes (admission, cache, router, settlement, traces, metrics)."""

from llmforge.gateway.app import Extension, create_app
from llmforge.gateway.context import AppContext
from llmforge.gateway.service import Gateway

__all__ = ["AppContext", "Extension", "Gateway", "create_app"]
