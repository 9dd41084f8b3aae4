"""Operations: `GET /health` (liveness, always open) and `GET /metrics` (Prometheus).

`/metrics` names key ids, models and traffic, so it is protected whenever anything is: with a
master key configured it needs the master key or `metrics_token` (`Authorization: Bearer ...`, what
Prometheus' `authorization` scrape setting sends); with only `metrics_token` set it needs that
token; with neither, it is open like the rest of the API.
"""

from __future__ import annotations

import hmac

from fastapi import Depends, Request
from fastapi.responses import Response

from llmforge import __version__
from llmforge.core.errors import AuthenticationError, PermissionDeniedError
from llmforge.gateway.admission import presented_key
from llmforge.gateway.context import Ctx, api_router, context_of
from llmforge.gateway.replies import json_response

router = api_router(tags=["operations"])


@router.get("/health")
async def health() -> Response:
    return json_response({"status": "ok", "version": __version__})


async def metrics_reader(request: Request) -> None:
    """The master key or the metrics token, when either is configured."""
    ctx = context_of(request.app)
    token = ctx.settings.metrics_token
    if token is None and ctx.settings.master_key is None:
        return
    presented = presented_key(request.headers)
    if presented is None:
        raise AuthenticationError(
            "/metrics needs `Authorization: Bearer <metrics_token or master key>`."
        )
    if token is not None and hmac.compare_digest(
        presented.encode(), token.get_secret_value().encode()
    ):
        return
    caller = await ctx.authenticate(request)
    if caller is None or not caller.master:
        raise PermissionDeniedError("/metrics needs the metrics token or the master key.")


@router.get("/metrics", include_in_schema=False, dependencies=[Depends(metrics_reader)])
async def metrics(ctx: Ctx) -> Response:
    return Response(ctx.metrics.render(), media_type=ctx.metrics.content_type)
