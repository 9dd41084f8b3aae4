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

import orjson
from fastapi import Depends, FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from llmforge.gateway.admission import KeyAdmission
from llmforge.gateway.keys import ApiKey


class KeyCreate(BaseModel):
    """The body of `POST /admin/keys`."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    models: list[str] | None = Field(None, description="the models the key may use (all if unset)")
    rpm: int | None = Field(None, ge=1, description="requests per minute")
    tpm: int | None = Field(None, ge=1, description="tokens per minute (prompt + completion)")
    budget_usd: float | None = Field(None, ge=0, description="total spend allowed, in USD")


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def _record(key: ApiKey) -> dict[str, Any]:
    return {"object": "api_key", **key.model_dump()}


def add_admin_routes(app: FastAPI, admission: KeyAdmission, known_models: list[str]) -> None:
    store = admission.store

    async def master_only(request: Request) -> None:
        await admission.require_master(request)  # before the body is even validated

    guard = [Depends(master_only)]

    @app.post("/admin/keys", status_code=201, dependencies=guard)
    async def create_key(body: KeyCreate) -> Response:
        created = await asyncio.to_thread(
            store.create,
            body.name,
            models=body.models,
            rpm=body.rpm,
            tpm=body.tpm,
            budget_usd=body.budget_usd,
            known_models=known_models,
        )
        return _json({**_record(created.record), "key": created.key}, 201)

    @app.get("/admin/keys", dependencies=guard)
    async def list_keys() -> Response:
        keys = await asyncio.to_thread(store.list)
        return _json({"object": "list", "data": [_record(k) for k in keys]})

    @app.get("/admin/keys/{key_id}", dependencies=guard)
    async def get_key(key_id: str) -> Response:
        return _json(_record(await asyncio.to_thread(store.get, key_id)))

    @app.delete("/admin/keys/{key_id}", dependencies=guard)
    async def revoke_key(key_id: str) -> Response:
        return _json(_record(await asyncio.to_thread(store.revoke, key_id)))
