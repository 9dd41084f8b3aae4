"""Client for any OpenAI-compatible server: OpenAI, DeepSeek, Qwen/DashScope (compatible mode),
vLLM,
llama-server, Ollama, or another LLMForge.

One client, configured by data (`base_url`, `api_key_env`, `model_id`, `timeout_s`); no per-vendor
branches. Transport failures and error statuses are translated into the LLMForge error tree here, at
the boundary.
"""

from __future__ import annotations

import os
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import Any

import httpx
import orjson

from llmforge.core.config import EmbeddingConfig, ModelConfig
from llmforge.core.errors import (
    ConfigError,
    ContextWindowExceededError,
    LLMForgeError,
    UpstreamError,
    UpstreamTimeoutError,
)
from llmforge.core.types import Completion, Delta, Embeddings, Message, Sampling, Usage


class OpenAICompatClient:
    """Shared HTTP plumbing: one pooled httpx client per configured model."""

    def __init__(
        self,
        name: str,
        base_url: str | None,
        api_key_env: str | None,
        model_id: str | None,
        timeout_s: float,
    ) -> None:
        if not base_url:
            raise ConfigError(
                f"model '{name}': provider openai needs `base_url` (e.g. http://host/v1)"
            )
        self.name = name
        self.model_id = model_id or name
        self._api_key_env = api_key_env
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/") + "/",
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0)),
            limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
        )

    def _headers(self) -> dict[str, str]:
        if not self._api_key_env:
            return {}
        key = os.environ.get(self._api_key_env)
        if not key:
            raise ConfigError(
                f"model '{self.name}': environment variable {self._api_key_env} is not set; "
                "export it or change `api_key_env` in llmforge.yaml"
            )
        return {"Authorization": f"Bearer {key}"}

    async def post(self, path: str, payload: dict[str, Any]) -> Any:
        try:
            r = await self._http.post(
                path, content=orjson.dumps(payload), headers=self._json_headers()
            )
        except httpx.TimeoutException:
            raise self._timeout() from None
        except httpx.TransportError as e:
            raise UpstreamError(f"model '{self.name}': cannot reach upstream: {e!r}") from None
        if r.status_code >= 400:
            raise self._status_error(r, r.content)
        try:
            return orjson.loads(r.content)
        except orjson.JSONDecodeError:
            raise UpstreamError(f"model '{self.name}': upstream sent invalid JSON") from None

    async def sse(self, path: str, payload: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """POST and yield each `data:` event of the SSE answer as a dict, up to `[DONE]`."""
        try:
            req = self._http.build_request(
                "POST", path, content=orjson.dumps(payload), headers=self._json_headers()
            )
            r = await self._http.send(req, stream=True)
            try:
                if r.status_code >= 400:
                    raise self._status_error(r, await r.aread())
                async for line in r.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        return
                    try:
                        event = orjson.loads(data)
                    except orjson.JSONDecodeError:
                        raise UpstreamError(
                            f"model '{self.name}': bad SSE event {data[:80]!r}"
                        ) from None
                    if isinstance(event, dict) and "error" in event:
                        raise UpstreamError(f"model '{self.name}': {_error_message(event)}")
                    yield event
            finally:
                await r.aclose()
        except httpx.TimeoutException:
            raise self._timeout() from None
        except httpx.TransportError as e:
            raise UpstreamError(f"model '{self.name}': upstream connection failed: {e!r}") from None

    def _json_headers(self) -> dict[str, str]:
        return {"Content-Type": "application/json", **self._headers()}

    def _timeout(self) -> UpstreamTimeoutError:
        return UpstreamTimeoutError(
            f"model '{self.name}': upstream did not answer within the timeout"
        )

    def _status_error(self, r: httpx.Response, body: bytes) -> LLMForgeError:
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            parsed = body[:200].decode("utf-8", "replace")
        detail = _error_message(parsed)
        message = f"model '{self.name}': upstream answered {r.status_code}: {detail}"
        if r.status_code == 400 and "context_length_exceeded" in str(parsed):
            return ContextWindowExceededError(message, param="messages")
        return UpstreamError(
            message, status_code=r.status_code, retry_after_s=retry_after(r.headers)
        )

    async def aclose(self) -> None:
        await self._http.aclose()


class OpenAICompatChatModel:
    def __init__(self, config: ModelConfig) -> None:
        self._client = OpenAICompatClient(
            config.name, config.base_url, config.api_key_env, config.model_id, config.timeout_s
        )

    def _payload(
        self, messages: Sequence[Message], sampling: Sampling, stream: bool
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self._client.model_id,
            "messages": [m.model_dump(exclude_none=True) for m in messages],
            "stream": stream,
        }
        body.update(sampling.model_dump(exclude_none=True, exclude={"stop"}))
        if sampling.stop:
            body["stop"] = list(sampling.stop)
        if stream:
            body["stream_options"] = {"include_usage": True}
        return body

    async def complete(self, messages: Sequence[Message], sampling: Sampling) -> Completion:
        data = await self._client.post("chat/completions", self._payload(messages, sampling, False))
        try:
            choice = data["choices"][0]
            return Completion(
                text=choice["message"].get("content") or "",
                finish_reason=_finish(choice.get("finish_reason")),
                usage=_usage(data.get("usage")),
            )
        except (KeyError, IndexError, TypeError):
            raise UpstreamError(f"model '{self._client.name}': unexpected answer shape") from None

    async def stream(
        self, messages: Sequence[Message], sampling: Sampling
    ) -> AsyncGenerator[Delta, None]:
        finish: str | None = None
        usage: Usage | None = None
        async for event in self._client.sse(
            "chat/completions", self._payload(messages, sampling, True)
        ):
            if event.get("usage"):
                usage = _usage(event["usage"])
            for choice in event.get("choices") or ():
                text = (choice.get("delta") or {}).get("content")
                if text:
                    yield Delta(text=text)
                if choice.get("finish_reason"):
                    finish = choice["finish_reason"]
        yield Delta(finish_reason=_finish(finish), usage=usage or Usage())

    async def aclose(self) -> None:
        await self._client.aclose()


class OpenAICompatEmbedder:
    def __init__(self, config: EmbeddingConfig) -> None:
        self._client = OpenAICompatClient(
            config.name, config.base_url, config.api_key_env, config.model_id, config.timeout_s
        )

    async def embed(self, texts: Sequence[str]) -> Embeddings:
        data = await self._client.post(
            "embeddings", {"model": self._client.model_id, "input": list(texts)}
        )
        rows = sorted(data["data"], key=lambda d: d["index"])
        return Embeddings(
            vectors=[r["embedding"] for r in rows],
            prompt_tokens=(data.get("usage") or {}).get("prompt_tokens", 0),
        )

    async def aclose(self) -> None:
        await self._client.aclose()


def retry_after(headers: httpx.Headers) -> float | None:
    """Seconds from a Retry-After (or retry-after-ms) header, if present and numeric."""
    ms = headers.get("retry-after-ms")
    if ms and ms.replace(".", "", 1).isdigit():
        return float(ms) / 1000
    value = headers.get("retry-after")
    if value and value.replace(".", "", 1).isdigit():
        return float(value)
    return None


def _finish(reason: str | None) -> Any:
    return reason if reason in ("stop", "length") else "stop"


def _usage(raw: dict[str, Any] | None) -> Usage:
    raw = raw or {}
    return Usage(
        prompt_tokens=raw.get("prompt_tokens") or 0,
        completion_tokens=raw.get("completion_tokens") or 0,
    )


def _error_message(body: Any) -> str:
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict):
            return str(err.get("message") or err)
        return str(err)
    return str(body)


def create(config: ModelConfig) -> OpenAICompatChatModel:
    return OpenAICompatChatModel(config)


def create_embedder(config: EmbeddingConfig) -> OpenAICompatEmbedder:
    return OpenAICompatEmbedder(config)
