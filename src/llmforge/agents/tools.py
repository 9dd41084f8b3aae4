"""The tool protocol, function tools whose JSON schema comes from a typed signature, and the tool
registry.

A `Tool` has a name, a description, a JSON schema of its arguments, whether calling it twice is
harmless (`idempotent`: a run resumed after a crash re-runs an unfinished call only then), and
`call(arguments, context) -> ToolResult`. A tool never raises for a bad call: a wrong argument, a
refused host, a script that failed are all results with `is_error`, which the model reads and can
correct.

`@tool` turns a typed Python function (sync or async) into a Tool: parameters become the schema's
properties (`Annotated[int, Field(description=...)]` or the docstring's `Args:` lines describe
them), defaults make them optional, a parameter typed `ToolContext` receives the call's context,
the first docstring paragraph is the description. Arguments are validated by the same pydantic
model before the function runs.

Built-in tools register in `agent_tools` (entry points `llmforge.agent_tools`) as factories taking
the `ToolEnv` (settings and the services tools share); a plugin does the same. This module runs
no tool and knows none.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, get_type_hints, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from llmforge.core.registry import Registry
from llmforge.core.settings import Settings
from llmforge.core.types import Source
from llmforge.core.types import Tool as ToolSpec

if TYPE_CHECKING:
    from llmforge.agents.memory import MemoryStore
    from llmforge.kb import KnowledgeBases

TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class ToolResult(BaseModel):
    """What a call returned: the text the model reads, and passages it may cite."""

    text: str
    is_error: bool = False
    sources: tuple[Source, ...] = Field(
        (), description="knowledge passages, numbered for the whole run"
    )

    @classmethod
    def error(cls, message: str) -> ToolResult:
        return cls(text=f"Error: {message}", is_error=True)


@dataclass
class ToolContext:
    """Who a call is made for, and the run's state a tool may read or extend."""

    run_id: str
    thread_id: str
    user_id: str
    scratch: Path = field(default_factory=Path.cwd)
    kb: str | None = None  # the agent's default knowledge base
    sources: list[Source] = field(default_factory=list)  # cited so far in the run

    def cite(self, source: Source) -> Source:
        """`source` numbered for the run: the number it already has when the same passage was
        cited before, else the next one."""
        for known in self.sources:
            if known.id == source.id and known.kb == source.kb:
                return known
        numbered = source.model_copy(update={"number": len(self.sources) + 1})
        self.sources.append(numbered)
        return numbered


@runtime_checkable
class Tool(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def description(self) -> str: ...

    @property
    def parameters(self) -> dict[str, Any]:
        """JSON schema of the arguments (an object)."""
        ...

    @property
    def idempotent(self) -> bool:
        """Calling it again with the same arguments does no harm (a resumed run may)."""
        ...

    async def call(self, arguments: dict[str, Any], context: ToolContext) -> ToolResult: ...


def spec_of(tool: Tool) -> ToolSpec:
    """How the model is told about a tool."""
    return ToolSpec(name=tool.name, description=tool.description, parameters=tool.parameters)


class FunctionTool:
    """A Tool made from a typed Python function (see `tool`)."""

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        description: str | None = None,
        idempotent: bool = True,
    ) -> None:
        self._fn = fn
        self._name = name or fn.__name__
        if not TOOL_NAME.fullmatch(self._name):
            raise ValueError(f"tool name '{self._name}': letters, digits, '_' and '-' only")
        doc = inspect.getdoc(fn) or ""
        self._description = description or doc.split("\n\n", 1)[0].strip() or self._name
        self._idempotent = idempotent
        self._context_param: str | None = None
        hints = get_type_hints(fn, include_extras=True)
        arg_docs = _arg_docs(doc)
        fields: dict[str, Any] = {}
        for p in inspect.signature(fn).parameters.values():
            annotation = hints.get(p.name, Any)
            if annotation is ToolContext:
                self._context_param = p.name
                continue
            default = ... if p.default is inspect.Parameter.empty else p.default
            if p.name in arg_docs and not _described(annotation):
                default = Field(default, description=arg_docs[p.name])
            fields[p.name] = (annotation, default)
        self._args: type[BaseModel] = create_model(
            f"{self._name}_arguments", __config__=ConfigDict(extra="forbid"), **fields
        )
        self._schema = _clean(self._args.model_json_schema())

    @property
    def name(self) -> str:
        return self._name

    @property
    def description(self) -> str:
        return self._description

    @property
    def parameters(self) -> dict[str, Any]:
        return self._schema

    @property
    def idempotent(self) -> bool:
        return self._idempotent

    async def call(self, arguments: dict[str, Any], context: ToolContext) -> ToolResult:
        try:
            args = self._args.model_validate(arguments)
        except ValidationError as e:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'arguments'}: {err['msg']}"
                for err in e.errors()
            )
            return ToolResult.error(f"invalid arguments for {self._name}: {problems}")
        kwargs = {name: getattr(args, name) for name in type(args).model_fields}
        if self._context_param:
            kwargs[self._context_param] = context
        if inspect.iscoroutinefunction(self._fn):
            value = await self._fn(**kwargs)
        else:
            value = await asyncio.to_thread(self._fn, **kwargs)
        return as_result(value)


def tool(
    fn: Callable[..., Any] | None = None,
    *,
    name: str | None = None,
    description: str | None = None,
    idempotent: bool = True,
) -> Any:
    """Decorator: `@tool` or `@tool(name=..., idempotent=False)` makes a FunctionTool."""

    def wrap(f: Callable[..., Any]) -> FunctionTool:
        return FunctionTool(f, name=name, description=description, idempotent=idempotent)

    return wrap(fn) if fn is not None else wrap


def as_result(value: Any) -> ToolResult:
    """A function's return value as a ToolResult: itself, text, or JSON of anything else."""
    if isinstance(value, ToolResult):
        return value
    if isinstance(value, str):
        return ToolResult(text=value)
    if isinstance(value, BaseModel):
        return ToolResult(text=value.model_dump_json())
    return ToolResult(text=json.dumps(value, ensure_ascii=False, default=str))


def _described(annotation: Any) -> bool:
    return any(getattr(m, "description", None) for m in getattr(annotation, "__metadata__", ()))


def _arg_docs(doc: str) -> dict[str, str]:
    """`name: text` lines of a Google-style `Args:` section."""
    out: dict[str, str] = {}
    section = re.search(r"^\s*(Args|Arguments|Parameters):\s*\n(.*?)(\n\s*\n|\Z)", doc, re.M | re.S)
    if section:
        for m in re.finditer(r"^\s*(\w+)(?:\s*\([^)]*\))?:\s*(.+)$", section.group(2), re.M):
            out[m.group(1)] = m.group(2).strip()
    return out


def _clean(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema without pydantic's `title`s (noise in every prompt)."""

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            return {
                k: walk(v) for k, v in node.items() if not (k == "title" and isinstance(v, str))
            }
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    cleaned: dict[str, Any] = walk(schema)
    cleaned.setdefault("properties", {})
    return cleaned


@dataclass
class ToolEnv:
    """What tool factories may use: the settings and the services tools share in a process."""

    settings: Settings
    knowledge_bases: Callable[[], KnowledgeBases] | None = None
    memory: MemoryStore | None = None


ToolFactory = Callable[[ToolEnv], Tool]

agent_tools: Registry[ToolFactory] = Registry("agent tool", "llmforge.agent_tools")
