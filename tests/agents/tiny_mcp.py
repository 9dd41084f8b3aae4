"""A tiny MCP server over stdio for the agent tests: `shout(text)` and `add(a, b)`; every call is
appended to the file named by $TINY_MCP_LOG, so a test can count them."""

from __future__ import annotations

import os

from mcp.server.mcpserver import MCPServer

server = MCPServer("tiny")


def _log(line: str) -> None:
    path = os.environ.get("TINY_MCP_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(line + "\n")


@server.tool(description="The text in capitals.")
def shout(text: str) -> str:
    _log(f"shout {text}")
    return text.upper() + "!"


@server.tool(description="The sum of two integers.")
def add(a: int, b: int) -> int:
    _log(f"add {a} {b}")
    return a + b


if __name__ == "__main__":
    server.run("stdio")
