"""API keys against a live gateway with a master key: who may call, which models, the admin API."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from llmforge.core.settings import load_settings
from llmforge.gateway import create_app
from tests.fakes.server import serve

MASTER = "master-test-key"
MODELS = [
    {"name": "fake", "provider": "fake", "responses": ["Hello from the fake model."]},
    {"name": "other", "provider": "fake", "responses": ["Hello from the other model."]},
    {
        "name": "priced",
        "provider": "fake",
        "responses": ["one two three"],
        "price": {"input_per_mtok": 1000, "output_per_mtok": 2000},
    },
]
EMBEDDINGS = [{"name": "hash", "provider": "fake", "dimensions": 8}]
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("keys")
    settings = load_settings(
        None,
        database=f"sqlite:///{tmp / 'gw.db'}",
        models=MODELS,
        embeddings=EMBEDDINGS,
        master_key=MASTER,
    )
    with serve(create_app(settings)) as url:
        yield url


def admin(base: str, method: str, path: str, key: str | None = MASTER, **kw: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.request(method, base + path, headers=headers, timeout=10, **kw)


def new_key(base: str, **body: Any) -> tuple[str, str]:
    r = admin(base, "POST", "/admin/keys", json={"name": "test", **body})
    assert r.status_code == 201, r.text
    return r.json()["key"], r.json()["id"]


def client(base: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0, timeout=30)


def test_a_created_key_calls_the_api(base: str) -> None:
    key, _ = new_key(base)
    reply = client(base, key).chat.completions.create(model="fake", messages=HI)
    assert reply.choices[0].message.content == "Hello from the fake model."


def test_no_key_is_401(base: str) -> None:
    r = httpx.post(base + "/v1/chat/completions", json={"model": "fake", "messages": HI})
    assert r.status_code == 401
    assert r.json()["error"]["type"] == "authentication_error"
    assert "llmforge keys create" in r.json()["error"]["message"]


def test_unknown_key_is_401_with_the_openai_sdk(base: str) -> None:
    with pytest.raises(openai.AuthenticationError) as e:
        client(base, "sk-lf-not-a-real-key").chat.completions.create(model="fake", messages=HI)
    assert e.value.status_code == 401
    assert "unknown or was revoked" in str(e.value)


def test_revoked_key_is_401_at_once(base: str) -> None:
    key, key_id = new_key(base)
    sdk = client(base, key)
    sdk.chat.completions.create(model="fake", messages=HI)
    revoked = admin(base, "DELETE", f"/admin/keys/{key_id}")
    assert revoked.status_code == 200 and revoked.json()["active"] is False
    with pytest.raises(openai.AuthenticationError):
        sdk.chat.completions.create(model="fake", messages=HI)
    with pytest.raises(openai.AuthenticationError):
        sdk.embeddings.create(model="hash", input="hi")
    # both changes are in the audit log, named as the master key's doing
    rows = admin(base, "GET", "/v1/audit/entries?limit=1000").json()["data"]
    mine = [(r["kind"], r["actor"]) for r in rows if r["subject"] == key_id]
    assert mine == [("key.created", "master"), ("key.revoked", "master")]


def test_key_scoped_to_a_model_gets_403_for_others(base: str) -> None:
    key, _ = new_key(base, models=["fake", "hash"])
    sdk = client(base, key)
    assert sdk.chat.completions.create(model="fake", messages=HI).choices
    assert sdk.embeddings.create(model="hash", input="hi").data
    with pytest.raises(openai.PermissionDeniedError) as e:
        sdk.chat.completions.create(model="other", messages=HI)
    assert e.value.status_code == 403
    assert "may not use model 'other'" in str(e.value)
    with pytest.raises(openai.PermissionDeniedError):
        sdk.chat.completions.create(model="other", messages=HI, stream=True)
    assert [m.id for m in sdk.models.list()] == ["fake", "hash"]  # it sees what it may use


def test_x_api_key_header_is_accepted(base: str) -> None:
    key, _ = new_key(base)
    r = httpx.post(
        base + "/v1/chat/completions",
        json={"model": "fake", "messages": HI},
        headers={"x-api-key": key},
    )
    assert r.status_code == 200, r.text


def test_master_key_calls_everything(base: str) -> None:
    sdk = client(base, MASTER)
    for model in ("fake", "other", "priced"):
        assert sdk.chat.completions.create(model=model, messages=HI).choices
    assert len(sdk.models.list().data) == 4


def test_admin_api_needs_the_master_key(base: str) -> None:
    key, key_id = new_key(base)
    for method, path in (
        ("GET", "/admin/keys"),
        ("GET", f"/admin/keys/{key_id}"),
        ("DELETE", f"/admin/keys/{key_id}"),
        ("POST", "/admin/keys"),
    ):
        assert admin(base, method, path, key=None).status_code == 401, path
        assert admin(base, method, path, key="sk-lf-unknown").status_code == 401, path
        refused = admin(base, method, path, key=key)
        assert refused.status_code == 403, path
        assert refused.json()["error"]["type"] == "permission_error"
    assert admin(base, "GET", f"/admin/keys/{key_id}").json()["active"] is True


def test_admin_api_creates_lists_and_shows_spend(base: str) -> None:
    created = admin(
        base,
        "POST",
        "/admin/keys",
        json={"name": "team-a", "models": ["priced"], "rpm": 100, "tpm": 10_000, "budget_usd": 5},
    )
    assert created.status_code == 201
    body = created.json()
    key, key_id = body["key"], body["id"]
    assert key.startswith("sk-lf-") and len(key) > 40
    assert body["prefix"] == key[: len(body["prefix"])] and len(body["prefix"]) < 16
    assert (body["models"], body["rpm"], body["tpm"], body["budget_usd"]) == (
        ["priced"],
        100,
        10_000,
        5.0,
    )
    reply = client(base, key).chat.completions.create(model="priced", messages=HI, max_tokens=5)
    assert reply.usage is not None
    cost = (reply.usage.prompt_tokens * 1000 + reply.usage.completion_tokens * 2000) / 1e6
    shown = admin(base, "GET", f"/admin/keys/{key_id}").json()
    assert shown["spent_usd"] == pytest.approx(cost) and shown["reserved_usd"] == 0
    assert "key" not in shown
    listed = admin(base, "GET", "/admin/keys").json()["data"]
    mine = next(k for k in listed if k["id"] == key_id)
    assert mine["spent_usd"] == pytest.approx(cost)
    assert all("key" not in k and "hash" not in k for k in listed)


def test_admin_api_rejects_bad_keys_with_400_and_unknown_ids_with_404(base: str) -> None:
    unknown_model = admin(base, "POST", "/admin/keys", json={"name": "x", "models": ["gpt-9"]})
    assert unknown_model.status_code == 400
    assert "gpt-9" in unknown_model.json()["error"]["message"]
    assert admin(base, "POST", "/admin/keys", json={"name": "x", "rpm": 0}).status_code == 400
    assert admin(base, "GET", "/admin/keys/key_nope").status_code == 404
    assert admin(base, "DELETE", "/admin/keys/key_nope").status_code == 404


def test_without_a_master_key_auth_is_off_and_the_admin_api_too(tmp_path: Path) -> None:
    settings = load_settings(
        None, database=f"sqlite:///{tmp_path / 'open.db'}", models=MODELS, embeddings=EMBEDDINGS
    )
    with serve(create_app(settings)) as url:
        sdk = client(url, "anything")
        assert sdk.chat.completions.create(model="other", messages=HI).choices
        r = admin(url, "GET", "/admin/keys", key="anything")
        assert r.status_code == 403
        assert "LLMFORGE_MASTER_KEY" in r.json()["error"]["message"]
