"""Tool `http_fetch`: GET a page from a host on the allow-list and return its text.

`agents.fetch.allow` lists hosts (`docs.python.org`) or domains (`*.example.com`, which also
matches `example.com`); an empty list allows nothing. Every redirect is followed by hand and its
target checked against the same list, so an allowed host cannot forward the agent elsewhere. Only
http(s) URLs; the body is read up to `max_bytes`, HTML reduced to its text, and at most
`max_chars` handed to the model. The server's proxy variables are honoured like any other
outbound call. It never sends cookies, credentials or request bodies (GET only), and does not run
scripts of the page.
"""

from __future__ import annotations

import fnmatch
import html
import re
from typing import Annotated
from urllib.parse import urljoin, urlsplit

import httpx
from pydantic import Field

from llmforge.agents.tools import FunctionTool, ToolEnv, ToolResult
from llmforge.core.config import FetchConfig

MAX_REDIRECTS = 5
USER_AGENT = "LLMForge-agent/1 (+http_fetch)"
_SCRIPT = re.compile(r"<(script|style|noscript|template)\b.*?</\1\s*>", re.I | re.S)
_TAG = re.compile(r"<[^>]+>")
_BLOCK = re.compile(r"</?(p|div|br|li|tr|h[1-6]|section|article|pre|table|ul|ol)\b[^>]*>", re.I)


def allowed(url: str, allow: list[str]) -> bool:
    parts = urlsplit(url)
    host = (parts.hostname or "").lower().rstrip(".")
    if parts.scheme not in ("http", "https") or not host:
        return False
    for pattern in allow:
        pattern = pattern.lower().strip()
        if pattern.startswith("*.") and (host == pattern[2:] or fnmatch.fnmatch(host, pattern)):
            return True
        if host == pattern:
            return True
    return False


def page_text(body: str, content_type: str) -> str:
    if "html" not in content_type:
        return body
    text = _BLOCK.sub("\n", _SCRIPT.sub(" ", body))
    text = html.unescape(_TAG.sub(" ", text))
    lines = (re.sub(r"[ \t\r\f\v]+", " ", line).strip() for line in text.split("\n"))
    return "\n".join(line for line in lines if line)


class Fetcher:
    def __init__(self, config: FetchConfig) -> None:
        self.config = config

    async def get(self, url: str) -> ToolResult:
        cfg = self.config
        if not allowed(url, cfg.allow):
            hosts = ", ".join(cfg.allow) or "(none: agents.fetch.allow is empty)"
            return ToolResult.error(
                f"{urlsplit(url).hostname or url} is not on the allow-list; allowed hosts: {hosts}"
            )
        async with httpx.AsyncClient(
            timeout=cfg.timeout_s, follow_redirects=False, headers={"user-agent": USER_AGENT}
        ) as client:
            for _ in range(MAX_REDIRECTS + 1):
                try:
                    async with client.stream("GET", url) as response:
                        if response.is_redirect:
                            target = urljoin(url, response.headers.get("location", ""))
                            if not allowed(target, cfg.allow):
                                return ToolResult.error(
                                    f"{url} redirects to {target}, which is not on the allow-list"
                                )
                            url = target
                            continue
                        body = bytearray()
                        async for chunk in response.aiter_bytes():
                            body += chunk
                            if len(body) >= cfg.max_bytes:
                                break
                        status = response.status_code
                        kind = response.headers.get("content-type", "")
                        encoding = response.encoding or "utf-8"
                except httpx.HTTPError as e:
                    return ToolResult.error(f"fetching {url} failed: {type(e).__name__}: {e}")
                text = page_text(bytes(body[: cfg.max_bytes]).decode(encoding, "replace"), kind)
                cut = len(text) > cfg.max_chars
                text = text[: cfg.max_chars] + ("\n[truncated]" if cut else "")
                return ToolResult(text=f"[{status} {url}]\n{text}", is_error=status >= 400)
        return ToolResult.error(f"{url}: more than {MAX_REDIRECTS} redirects")


def create(env: ToolEnv) -> FunctionTool:
    fetcher = Fetcher(env.settings.agents.fetch)

    async def http_fetch(
        url: Annotated[str, Field(description="an http(s) URL on an allowed host")],
    ) -> ToolResult:
        """Fetch a web page (GET) from an allowed host and return its text."""
        return await fetcher.get(url)

    return FunctionTool(http_fetch)
