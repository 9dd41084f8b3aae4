"""Every tool of the MCP servers named in `agents.mcp_servers`, as agent tools: LLMForge as an MCP
client (it is an MCP server too, `kb/mcp.py`).

One `MCPServerTools` per configured server, over stdio (a `command` started as a subprocess) or
streamable HTTP (`url`, with headers read from environment variables). The session lives in one
task of its own, started on first use, that lists the tools and then serves calls one at a time
(the SDK's transports are task-scoped, so opening and closing must happen in the same task);
`aclose()` ends it and with it the subprocess. A server's tools are named
`<server>__<tool>` for the model (tool names may not contain dots) and described by the server's
own schema. A server that cannot be started, or a call that fails or times out, is a tool error
the model reads, never an exception through the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from llmforge.agents.tools import ToolContext, ToolResult
from llmforge.core.config import MCPServerConfig
from llmforge.core.errors import ConfigError

if TYPE_CHECKING:
    from mcp import Client

SEPARATOR = "__"


class MCPToolInfo(BaseModel):
    name: str
    description: str
    parameters: dict[str, Any]


class MCPTool:
    """One tool of an MCP server (the Tool protocol)."""

    def __init__(self, server: MCPServerTools, info: MCPToolInfo) -> None:
        self._server = server
        self._info = info

    @property
    def name(self) -> str:
        return f"{self._server.config.name}{SEPARATOR}{self._info.name}"

    @property
    def description(self) -> str:
        return self._info.description or self._info.name

    @property
    def parameters(self) -> dict[str, Any]:
        return self._info.parameters

    @property
    def idempotent(self) -> bool:
        return False  # unknown: a resumed run does not repeat an unfinished call

    @property
    def server(self) -> str:
        return self._server.config.name

    async def call(self, arguments: dict[str, Any], context: ToolContext) -> ToolResult:
        return await self._server.call(self._info.name, arguments)


_Job = tuple[str, dict[str, Any], "asyncio.Future[ToolResult]"]


class MCPServerTools:
    def __init__(self, config: MCPServerConfig) -> None:
        self.config = config
        self._jobs: asyncio.Queue[_Job | None] = asyncio.Queue()
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._tools: list[MCPToolInfo] = []
        self._error: str | None = None

    async def tools(self) -> list[MCPTool]:
        """The server's tools (starting it on first use). ConfigError if it cannot start."""
        await self._start()
        if self._error is not None:
            raise ConfigError(f"MCP server '{self.config.name}' is unavailable: {self._error}")
        return [MCPTool(self, info) for info in self._tools]

    async def call(self, name: str, arguments: dict[str, Any]) -> ToolResult:
        await self._start()
        if self._error is not None or self._task is None or self._task.done():
            return ToolResult.error(
                f"MCP server '{self.config.name}' is unavailable: {self._error or 'stopped'}"
            )
        future: asyncio.Future[ToolResult] = asyncio.get_running_loop().create_future()
        await self._jobs.put((name, arguments, future))
        try:
            return await asyncio.wait_for(asyncio.shield(future), self.config.timeout_s + 5)
        except TimeoutError:
            return ToolResult.error(f"{name} on MCP server '{self.config.name}' timed out")

    async def _start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._own(), name=f"mcp-{self.config.name}")
        await self._ready.wait()

    def _client(self) -> Client:
        from mcp import Client
        from mcp.client.stdio import StdioServerParameters

        cfg = self.config
        if cfg.command is not None:
            params = StdioServerParameters(
                command=cfg.command, args=cfg.args, env=cfg.env or None, cwd=cfg.cwd
            )
            return Client(params, read_timeout_seconds=cfg.timeout_s, mode="legacy")
        assert cfg.url is not None
        if not cfg.headers_env:
            return Client(cfg.url, read_timeout_seconds=cfg.timeout_s, mode="legacy")
        import httpx2
        from mcp.client.streamable_http import streamable_http_client

        missing = [v for v in cfg.headers_env.values() if v not in os.environ]
        if missing:
            raise ConfigError(f"environment variable(s) {', '.join(missing)} are not set")
        headers = {h: os.environ[v] for h, v in cfg.headers_env.items()}
        http = httpx2.AsyncClient(headers=headers, timeout=cfg.timeout_s)
        transport = streamable_http_client(cfg.url, http_client=http)
        return Client(transport, read_timeout_seconds=cfg.timeout_s, mode="legacy")

    async def _own(self) -> None:
        """The session's task: connect, list, serve calls until told to stop."""
        try:
            async with self._client() as client:
                listed = await client.list_tools()
                self._tools = [
                    MCPToolInfo(
                        name=t.name,
                        description=t.description or "",
                        parameters=t.input_schema or {"type": "object", "properties": {}},
                    )
                    for t in listed.tools
                ]
                self._ready.set()
                while (job := await self._jobs.get()) is not None:
                    name, arguments, future = job
                    result = await self._call(client, name, arguments)
                    if not future.done():
                        future.set_result(result)
        except Exception as e:  # the SDK raises many kinds; all mean "unavailable"
            self._error = f"{type(e).__name__}: {e}"
        finally:
            self._ready.set()
            while not self._jobs.empty():
                job = self._jobs.get_nowait()
                if job is not None and not job[2].done():
                    job[2].set_result(ToolResult.error(f"MCP server '{self.config.name}' stopped"))

    async def _call(self, client: Client, name: str, arguments: dict[str, Any]) -> ToolResult:
        try:
            result = await client.call_tool(name, arguments)
        except Exception as e:
            return ToolResult.error(f"{name} failed: {type(e).__name__}: {e}")
        parts = []
        for block in result.content:
            text = getattr(block, "text", None)
            parts.append(text if isinstance(text, str) else f"[{getattr(block, 'type', 'data')}]")
        if not any(parts) and result.structured_content is not None:
            parts = [json.dumps(result.structured_content, ensure_ascii=False, default=str)]
        return ToolResult(text="\n".join(parts) or "(no output)", is_error=result.is_error)

    async def aclose(self) -> None:
        if self._task is None:
            return
        await self._jobs.put(None)
        try:
            await asyncio.wait_for(asyncio.shield(self._task), 10)
        except TimeoutError:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        self._task = None
