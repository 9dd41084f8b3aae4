"""Client for any OpenAI-compatible server: OpenAI, DeepSeek, Qwen/DashScope (compatible mode),
vLLM, llama-server, Ollama, or another LLMForge; and the HTTP plumbing other vendor adapters share.

One client, configured by data (`base_url`, `api_key_env`, `model_id`, `timeout_s`); vendor defaults
come from `profiles.py`, filled in by the factories, so there are no per-vendor branches.
`HttpUpstream` is the part every vendor API has in common (pooled connections, JSON POST, SSE,
transport failures, reading answers into pydantic models); a subclass says only how its vendor
authenticates and spells errors. Transport failures, error statuses and answers of the wrong shape
are translated into the LLMForge error tree here, at the boundary.

The chat model speaks the whole chat protocol (tools and tool results, tool_choice,
parallel_tool_calls, response_format, logprobs, n choices, image parts) by passing each parameter
through as OpenAI spells it, and the legacy text API (`/completions`) for `TextModel`. Answers are
read by the models of `openai_answers.py`. It does not check what a vendor supports (a vendor that
refuses a parameter answers 400, which reaches the client as a 400) and sends nothing it was not
given: no default tool_choice, no `n` of 1.
"""

from __future__ import annotations

import asyncio
import os
import urllib.request
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, ClassVar, TypeVar
from urllib.parse import urlsplit

import aiohttp
import orjson
from pydantic import BaseModel, ValidationError

from llmforge.core.config import EmbeddingConfig, ModelConfig
from llmforge.core.errors import (
    ConfigError,
    ContextWindowExceededError,
    LLMForgeError,
    UpstreamError,
    UpstreamTimeoutError,
)
from llmforge.core.types import (
    Completion,
    Delta,
    Embeddings,
    Message,
    ResponseFormat,
    Sampling,
)
from llmforge.models.base import ModelContext
from llmforge.models.http_pool import ConnectFailed, HttpPool
from llmforge.models.openai_answers import (
    ChatAnswer,
    ChatChunk,
    ChunkReader,
    EmbeddingAnswer,
    TextAnswer,
    TextChunk,
    usage_of,
)
from llmforge.models.profiles import fill

A = TypeVar("A", bound=BaseModel)


class HttpUpstream:
    """Shared HTTP plumbing: pooled keep-alive connections per configured model (`HttpPool`), made
    on first use in the event loop that uses them. An upstream that the environment sends through
    a proxy (`HTTPS_PROXY`, ...) goes through an aiohttp session instead, which speaks proxies.

    The defaults speak OpenAI's dialect (bearer key, `{"error": ...}` events). Another vendor's
    subclass sets `headers` (sent with every request) and `context_exceeded` (the text by which its
    400 body says the prompt is too long), and overrides `_auth_headers` / `_event_error`."""

    headers: ClassVar[dict[str, str]] = {}
    context_exceeded: ClassVar[str] = "context_length_exceeded"
    api: ClassVar[str] = "an OpenAI-compatible API"  # what `base_url` should point at

    def __init__(self, name: str, base_url: str, api_key_env: str | None, timeout_s: float) -> None:
        self.name = name
        self._api_key_env = api_key_env
        self._base_url = base_url.rstrip("/") + "/"
        self._base_path = urlsplit(self._base_url).path
        self._proxy = env_proxy(self._base_url)  # HTTP(S)_PROXY / NO_PROXY, read once
        self._timeout_s = timeout_s
        self._pool: HttpPool | None = None
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _connections(self) -> HttpPool:
        loop = asyncio.get_running_loop()
        if self._pool is None or self._loop is not loop:
            self._pool = HttpPool(
                self._base_url,
                connect_timeout=min(self._timeout_s, 10.0),
                read_timeout=self._timeout_s,
            )
            self._loop = loop
        return self._pool

    def _proxied(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._loop is not loop:
            timeouts = aiohttp.ClientTimeout(
                total=None,
                connect=self._timeout_s,
                sock_connect=min(self._timeout_s, 10.0),
                sock_read=self._timeout_s,
            )
            self._session = aiohttp.ClientSession(timeout=timeouts, proxy=self._proxy)
            self._loop = loop
        return self._session

    def _auth_headers(self, key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}

    def _event_error(self, event: dict[str, Any]) -> LLMForgeError | None:
        """The error an SSE event reports, if it is one."""
        if "error" in event:
            return UpstreamError(f"model '{self.name}': {error_message(event)}")
        return None

    def _key_headers(self) -> dict[str, str]:
        if not self._api_key_env:
            return {}
        key = os.environ.get(self._api_key_env)
        if not key:
            raise ConfigError(
                f"model '{self.name}': environment variable {self._api_key_env} is not set; "
                "export it or change `api_key_env` in llmforge.yaml"
            )
        return self._auth_headers(key)

    def _json_headers(self) -> dict[str, str]:
        return {"Content-Type": "application/json", **self.headers, **self._key_headers()}

    async def post(self, path: str, payload: dict[str, Any]) -> Any:
        body = orjson.dumps(payload)
        try:
            async with self._exchange(path, body) as (status, headers, chunks):
                data = b"".join([chunk async for chunk in chunks])
        except TimeoutError:
            raise self._timeout() from None
        except (ConnectFailed, aiohttp.ClientError) as e:
            raise self._unreachable(e) from None
        except OSError as e:
            raise self._broken(e) from None
        if status >= 400:
            raise self._status_error(status, headers, data)
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            raise UpstreamError(f"model '{self.name}': upstream sent invalid JSON") from None

    async def sse(self, path: str, payload: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """POST and yield each `data:` event of the SSE answer as a dict, up to `[DONE]` or the
        end of the stream. Closing the iterator early closes the upstream connection."""
        body = orjson.dumps(payload)
        try:
            async with self._exchange(path, body) as (status, headers, chunks):
                if status >= 400:
                    data = b"".join([chunk async for chunk in chunks])
                    raise self._status_error(status, headers, data)
                async for line in _lines(chunks):
                    if not line.startswith("data:"):
                        continue
                    data_line = line[5:].strip()
                    if data_line == "[DONE]":
                        return
                    try:
                        event = orjson.loads(data_line)
                    except orjson.JSONDecodeError:
                        raise UpstreamError(
                            f"model '{self.name}': bad SSE event {data_line[:80]!r}"
                        ) from None
                    if not isinstance(event, dict):
                        continue
                    if (error := self._event_error(event)) is not None:
                        raise error
                    yield event
        except TimeoutError:
            raise self._timeout() from None
        except (ConnectFailed, aiohttp.ClientConnectorError) as e:
            raise self._unreachable(e) from None
        except (OSError, aiohttp.ClientError) as e:
            raise self._broken(e) from None

    @asynccontextmanager
    async def _exchange(
        self, path: str, body: bytes
    ) -> AsyncIterator[tuple[int, Mapping[str, str], AsyncIterator[bytes]]]:
        """POST `body` as JSON to `path`: the answer's status, headers and body chunks; the
        connection is given back (or closed, if the body was not read to its end) on exit."""
        headers = self._json_headers()
        if self._proxy is None:
            response = await self._connections().request(
                "POST", self._base_path + path, list(headers.items()), body
            )
            try:
                yield response.status, response.headers, response.iter_chunks()
            finally:
                response.close()
            return
        async with self._proxied().post(self._base_url + path, data=body, headers=headers) as r:
            yield r.status, r.headers, r.content.iter_any()

    def _timeout(self) -> UpstreamTimeoutError:
        return UpstreamTimeoutError(
            f"model '{self.name}': upstream did not answer within the timeout"
        )

    def _unreachable(self, e: Exception) -> UpstreamError:
        return UpstreamError(
            f"model '{self.name}': cannot reach upstream {self._base_url}: {e}; "
            "check `base_url` in llmforge.yaml and that the server is running"
        )

    def _broken(self, e: Exception) -> UpstreamError:
        return UpstreamError(f"model '{self.name}': upstream connection failed: {e!r}")

    def _status_error(self, status: int, headers: Mapping[str, str], body: bytes) -> LLMForgeError:
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            parsed = body[:200].decode("utf-8", "replace")
        detail = error_message(parsed)
        message = f"model '{self.name}': upstream answered {status}: {detail}"
        if status == 400 and self.context_exceeded in str(parsed):
            return ContextWindowExceededError(message, param="messages")
        return UpstreamError(message, status_code=status, retry_after_s=retry_after(headers))

    def parse(self, kind: type[A], data: Any) -> A:
        """`data` (a decoded answer or stream event) read as `kind`; a shape that does not fit is
        an `UpstreamError` naming the model, never a KeyError."""
        try:
            return kind.model_validate(data)
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "the answer"
            raise UpstreamError(
                f"model '{self.name}': upstream sent an answer LLMForge cannot read "
                f"({where}: {first['msg']}); check that `base_url` points at {self.api}"
            ) from None

    async def aclose(self) -> None:
        if self._pool is not None:
            await self._pool.aclose()
            self._pool = None
        if self._session is not None:
            await self._session.close()
            self._session = None


async def _lines(chunks: AsyncIterator[bytes]) -> AsyncIterator[str]:
    """The lines of a body as it arrives (ended by `\\n`, `\\r\\n` or `\\r`)."""
    pending = b""
    async for chunk in chunks:
        lines = (pending + chunk).splitlines(keepends=True)
        pending = lines.pop() if lines and not lines[-1].endswith((b"\n", b"\r")) else b""
        for line in lines:
            yield line.rstrip(b"\r\n").decode("utf-8", "replace")
    if pending:
        yield pending.decode("utf-8", "replace")


def env_proxy(url: str) -> str | None:
    """The proxy the environment names for `url` (`HTTPS_PROXY`, `HTTP_PROXY`, `NO_PROXY`)."""
    host = urlsplit(url).hostname
    if host is None or urllib.request.proxy_bypass(host):
        return None
    return urllib.request.getproxies().get(urlsplit(url).scheme)


class OpenAICompatClient(HttpUpstream):
    """An OpenAI-compatible server: bearer key, OpenAI error bodies."""

    def __init__(
        self,
        name: str,
        base_url: str | None,
        api_key_env: str | None,
        model_id: str | None,
        timeout_s: float,
        provider: str = "openai",
    ) -> None:
        if not base_url:
            raise ConfigError(
                f"model '{name}': provider {provider} needs `base_url` (e.g. http://host/v1)"
            )
        super().__init__(name, base_url, api_key_env, timeout_s)
        self.model_id = model_id or name


class OpenAICompatChatModel:
    """Chat (`/chat/completions`) and raw text (`/completions`) on an OpenAI-compatible server.

    Every parameter of the protocol is passed through as OpenAI spells it (tools, tool_choice,
    parallel_tool_calls, response_format, logprobs / top_logprobs, n, tool calls and tool results
    in the history, image parts); whether the server supports it is the server's to say, and its
    400 comes back as an `UpstreamError` with status 400."""

    def __init__(self, config: ModelConfig) -> None:
        self._client = OpenAICompatClient(
            config.name,
            config.base_url,
            config.api_key_env,
            config.model_id,
            config.timeout_s,
            config.provider,
        )

    def _payload(
        self, messages: Sequence[Message], sampling: Sampling, stream: bool
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self._client.model_id,
            "messages": [_message(m) for m in messages],
            "stream": stream,
            **_sampling(sampling, stream),
            **_tools(sampling),
        }
        if sampling.response_format is not None:
            body["response_format"] = _response_format(sampling.response_format)
        if sampling.logprobs:
            body["logprobs"] = True
            if sampling.top_logprobs is not None:
                body["top_logprobs"] = sampling.top_logprobs
        return body

    def _text_payload(self, prompt: str, sampling: Sampling, stream: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self._client.model_id,
            "prompt": prompt,
            "stream": stream,
            **_sampling(sampling, stream),
        }
        if sampling.logprobs:  # the legacy API's `logprobs` is the number of alternatives
            body["logprobs"] = sampling.top_logprobs or 0
        return body

    async def complete(self, messages: Sequence[Message], sampling: Sampling) -> Completion:
        data = await self._client.post("chat/completions", self._payload(messages, sampling, False))
        return self._client.parse(ChatAnswer, data).to_core(sampling.logprobs)

    async def stream(
        self, messages: Sequence[Message], sampling: Sampling
    ) -> AsyncGenerator[Delta, None]:
        reader = ChunkReader()
        payload = self._payload(messages, sampling, True)
        async for event in self._client.sse("chat/completions", payload):
            for delta in reader.chat(self._client.parse(ChatChunk, event)):
                yield delta
        for delta in reader.end():
            yield delta

    async def complete_text(self, prompt: str, sampling: Sampling) -> Completion:
        """Continue `prompt` as raw text (`POST /completions`), whole."""
        data = await self._client.post("completions", self._text_payload(prompt, sampling, False))
        return self._client.parse(TextAnswer, data).to_core(sampling.logprobs)

    async def stream_text(self, prompt: str, sampling: Sampling) -> AsyncGenerator[Delta, None]:
        """Continue `prompt` as raw text (`POST /completions` with `stream`), piece by piece."""
        reader = ChunkReader()
        payload = self._text_payload(prompt, sampling, True)
        async for event in self._client.sse("completions", payload):
            for delta in reader.text(self._client.parse(TextChunk, event)):
                yield delta
        for delta in reader.end():
            yield delta

    async def aclose(self) -> None:
        await self._client.aclose()


def _message(m: Message) -> dict[str, Any]:
    """A core message as OpenAI's chat API takes it."""
    out: dict[str, Any] = {"role": m.role, "content": m.content}
    if m.images:
        parts: list[dict[str, Any]] = [{"type": "text", "text": m.content}] if m.content else []
        for image in m.images:
            url: dict[str, Any] = {"url": image.url}
            if image.detail is not None:
                url["detail"] = image.detail
            parts.append({"type": "image_url", "image_url": url})
        out["content"] = parts
    if m.name is not None and m.role != "tool":  # OpenAI's tool messages take no name
        out["name"] = m.name
    if m.tool_calls:
        out["content"] = m.content or None
        out["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in m.tool_calls
        ]
    if m.tool_call_id is not None:
        out["tool_call_id"] = m.tool_call_id
    return out


def _sampling(sampling: Sampling, stream: bool) -> dict[str, Any]:
    """The sampling fields both the chat and the text API take."""
    body = sampling.model_dump(
        exclude_none=True,
        include={
            "max_tokens",
            "temperature",
            "top_p",
            "seed",
            "presence_penalty",
            "frequency_penalty",
        },
    )
    if sampling.stop:
        body["stop"] = list(sampling.stop)
    if sampling.n > 1:
        body["n"] = sampling.n
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


def _tools(sampling: Sampling) -> dict[str, Any]:
    """`tools`, `tool_choice` and `parallel_tool_calls`; the last two only with tools (OpenAI
    refuses them alone)."""
    if not sampling.tools:
        return {}
    tools = []
    for t in sampling.tools:
        function: dict[str, Any] = {"name": t.name, "parameters": t.parameters}
        if t.description is not None:
            function["description"] = t.description
        if t.strict is not None:
            function["strict"] = t.strict
        tools.append({"type": "function", "function": function})
    body: dict[str, Any] = {"tools": tools}
    choice = sampling.tool_choice
    if choice is not None:
        body["tool_choice"] = (
            {"type": "function", "function": {"name": choice.name}}
            if choice.mode == "function"
            else choice.mode
        )
    if sampling.parallel_tool_calls is not None:
        body["parallel_tool_calls"] = sampling.parallel_tool_calls
    return body


def _response_format(fmt: ResponseFormat) -> dict[str, Any]:
    if fmt.type == "json_object":
        return {"type": "json_object"}
    spec: dict[str, Any] = {"name": fmt.name, "schema": fmt.json_schema or {"type": "object"}}
    if fmt.strict is not None:
        spec["strict"] = fmt.strict
    return {"type": "json_schema", "json_schema": spec}


class OpenAICompatEmbedder:
    def __init__(self, config: EmbeddingConfig) -> None:
        self._client = OpenAICompatClient(
            config.name,
            config.base_url,
            config.api_key_env,
            config.model_id,
            config.timeout_s,
            config.provider,
        )

    async def embed(self, texts: Sequence[str]) -> Embeddings:
        data = await self._client.post(
            "embeddings", {"model": self._client.model_id, "input": list(texts)}
        )
        answer = self._client.parse(EmbeddingAnswer, data)
        return Embeddings(
            vectors=answer.vectors(), prompt_tokens=usage_of(answer.usage).prompt_tokens
        )

    async def aclose(self) -> None:
        await self._client.aclose()


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds from a Retry-After (or retry-after-ms) header, if present and numeric."""
    ms = headers.get("retry-after-ms")
    if ms and ms.replace(".", "", 1).isdigit():
        return float(ms) / 1000
    value = headers.get("retry-after")
    if value and value.replace(".", "", 1).isdigit():
        return float(value)
    return None


def error_message(body: Any) -> str:
    """The human part of a vendor's error body (`{"error": {"message": ...}}` in both OpenAI's and
    Anthropic's shape), or the body itself."""
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict):
            return str(err.get("message") or err)
        return str(err)
    return str(body)


def create(config: ModelConfig, context: ModelContext | None = None) -> OpenAICompatChatModel:
    """The factory of `openai` and of every OpenAI-compatible vendor profile (`deepseek`, `qwen`,
    `llama-server`, `ollama`; `vllm` with a `base_url`): the same client, the provider's defaults
    filled in."""
    return OpenAICompatChatModel(fill(config))


def create_embedder(config: EmbeddingConfig) -> OpenAICompatEmbedder:
    return OpenAICompatEmbedder(fill(config))
