"""The admin API: API keys over HTTP, for the master key only.

    POST   /admin/keys          create a key; the answer holds the key itself, shown this once
    GET    /admin/keys          every key with its limits and spend (never the key)
    GET    /admin/keys/{id}     one key with its spend
    DELETE /admin/keys/{id}     revoke a key (it stays listed, with its spend)

With no master key configured the admin API is off (403). The routes only translate HTTP to
`KeyStore` calls; the rules live there and in admission.py.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from llmforge.gateway.context import Ctx, MasterOnly, api_router
from llmforge.gateway.keys import ApiKey
from llmforge.gateway.replies import json_response


class KeyCreate(BaseModel):
    """The body of `POST /admin/keys`."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    models: list[str] | None = Field(None, description="the models the key may use (all if unset)")
    rpm: int | None = Field(None, ge=1, description="requests per minute")
    tpm: int | None = Field(None, ge=1, description="tokens per minute (prompt + completion)")
    budget_usd: float | None = Field(None, ge=0, description="total spend allowed, in USD")


def _record(key: ApiKey) -> dict[str, Any]:
    return {"object": "api_key", **key.model_dump()}


ADMIN_ACTOR = "master"  # who the audit log names: only the master key reaches these routes

# the master key is checked before the body is even validated
router = api_router(tags=["admin"], dependencies=[MasterOnly])


@router.post("/admin/keys", status_code=201)
async def create_key(ctx: Ctx, body: KeyCreate) -> Response:
    created = await asyncio.to_thread(
        ctx.admission.store.create,
        body.name,
        models=body.models,
        rpm=body.rpm,
        tpm=body.tpm,
        budget_usd=body.budget_usd,
        known_models=[m.name for m in ctx.catalog.infos()],
        actor=ADMIN_ACTOR,
    )
    return json_response({**_record(created.record), "key": created.key}, 201)


@router.get("/admin/keys")
async def list_keys(ctx: Ctx) -> Response:
    keys = await asyncio.to_thread(ctx.admission.store.list)
    return json_response({"object": "list", "data": [_record(k) for k in keys]})


@router.get("/admin/keys/{key_id}")
async def get_key(ctx: Ctx, key_id: str) -> Response:
    return json_response(_record(await asyncio.to_thread(ctx.admission.store.get, key_id)))


@router.delete("/admin/keys/{key_id}")
async def revoke_key(ctx: Ctx, key_id: str) -> Response:
    revoked = await asyncio.to_thread(ctx.admission.store.revoke, key_id, actor=ADMIN_ACTOR)
    return json_response(_record(revoked))
