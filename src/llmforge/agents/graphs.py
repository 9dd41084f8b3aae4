"""Agent graphs: the state they share, `RunContext` (what a node may do: call the model within the
run's budget, call a tool durably, report a step), the graph registry, and the ReAct graph.

The ReAct graph (`react`, the built-in tool-using assistant):

    START -> agent --(tool calls)--> [approve] -> tools -> agent ... --(an answer)--> END

- `agent`: the model gets the system prompt (the agent's, plus memories of the user recalled at
  the start of the run), the thread's messages and the tools, and answers or calls tools.
- `approve`: only when a call needs approval (the agent's `approval` list, a tool ref's
  `approval: required`, an MCP server's `approval: required`): a LangGraph `interrupt` that the
  checkpoint keeps, so the run waits, listed as pending, until someone approves (optionally with
  edited arguments) or rejects, in this process or one started later. A rejection ends the run:
  each call is answered "rejected" in the thread, and the run's status is `rejected`.
- `tools`: each call, in order, through `RunContext.call_tool`: recorded `started` before and
  `done` with its result after, so a resumed run reuses recorded results instead of calling again.

A graph of one's own (Python): a function `(AgentDefinition) -> StateGraph` registered in
`agent_graphs` (entry points `llmforge.agent_graphs`), whose nodes take `(state,
runtime: Runtime[RunContext])` and use `runtime.context.model(...)` / `.call_tool(...)` /
`.step(...)` so budgets, events, traces and durability come with them. Its state extends
`AgentState`; the run's answer is the last assistant message, `artifacts` any extra outputs.
This module does not start or store runs (runtime.py does).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from operator import add
from pathlib import Path
from typing import Annotated, Any, TypedDict

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from langgraph.types import interrupt

from llmforge.agents.events import (
    AgentEvent,
    MessageEvent,
    PendingCall,
    RunUsage,
    StepEvent,
    ToolCallEvent,
    ToolResultEvent,
)
from llmforge.agents.models import ModelClient
from llmforge.agents.store import RunStore
from llmforge.agents.tools import Tool, ToolContext, ToolResult, spec_of
from llmforge.core.config import AgentConfig, AgentLimits
from llmforge.core.errors import LLMForgeError
from llmforge.core.registry import Registry
from llmforge.core.types import (
    Completion,
    Message,
    ResponseFormat,
    Sampling,
    Source,
    ToolCall,
    ToolChoice,
)

DEFAULT_SYSTEM = (
    "You are a helpful assistant. Use the tools when they help: call a tool, read its result, "
    "then answer. When you use passages from the knowledge base, cite them by their number in "
    "square brackets, like [1]. Be concise."
)


class AgentState(TypedDict, total=False):
    """What every graph's state has (a graph may add keys)."""

    messages: Annotated[list[Message], add]
    sources: list[Source]
    approved: dict[str, str]  # call id -> the arguments (JSON) to call it with
    stop: str | None  # why the graph ended early (a rejection)
    artifacts: dict[str, str]


class BudgetExceeded(LLMForgeError):
    """A run reached one of its limits; `reason` names it."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"budget exceeded: {reason}")
        self.reason = reason


@dataclass
class AgentDefinition:
    """An agent ready to run: its config, its tools, and which of them need approval."""

    config: AgentConfig
    model: str
    tools: dict[str, Tool] = field(default_factory=dict)
    approval: set[str] = field(default_factory=set)

    @property
    def name(self) -> str:
        return self.config.name

    def needs_approval(self, tool: str) -> bool:
        return tool in self.approval


Emit = Callable[[AgentEvent], Awaitable[AgentEvent]]


@dataclass
class RunContext:
    """One execution of a run: what its nodes may use. Not checkpointed (rebuilt on resume)."""

    run_id: str
    thread_id: str
    user_id: str
    agent: AgentDefinition
    models: ModelClient
    store: RunStore
    emit: Emit
    usage: RunUsage
    scratch: Path
    key_id: str | None = None  # the API key that started the run: its steps are billed to it
    memories: list[str] = field(default_factory=list)  # recalled at the start of the run
    started: float = field(default_factory=time.monotonic)

    @property
    def limits(self) -> AgentLimits:
        return self.agent.config.limits

    def active_s(self) -> float:
        return self.usage.active_s + (time.monotonic() - self.started)

    def check_budget(self) -> None:
        """Raise BudgetExceeded when the run may not make another model call."""
        lim, use = self.limits, self.usage
        if use.steps >= lim.max_steps:
            raise BudgetExceeded(f"max_steps: {lim.max_steps} model turns used")
        if lim.max_tokens is not None and use.total_tokens >= lim.max_tokens:
            raise BudgetExceeded(f"max_tokens: {use.total_tokens} of {lim.max_tokens} tokens used")
        if lim.max_cost_usd is not None and use.cost_usd >= lim.max_cost_usd:
            raise BudgetExceeded(
                f"max_cost_usd: ${use.cost_usd:.6f} of ${lim.max_cost_usd:g} spent"
            )
        if lim.max_wall_s is not None and self.active_s() >= lim.max_wall_s:
            raise BudgetExceeded(f"max_wall_s: ran {self.active_s():.1f} s of {lim.max_wall_s:g} s")

    async def step(self, node: str) -> None:
        await self.emit(StepEvent(run_id=self.run_id, node=node, step=self.usage.steps))

    async def model(
        self,
        messages: Sequence[Message],
        *,
        tools: Sequence[Tool] = (),
        response_format: ResponseFormat | None = None,
        tool_choice: ToolChoice | None = None,
        report: bool = True,
    ) -> Completion:
        """One model turn within the budget: traced with the run id, counted, reported as a
        `message` event when it has text (and `report`)."""
        self.check_budget()
        cfg = self.agent.config
        sampling = Sampling(
            max_tokens=cfg.max_tokens,
            temperature=cfg.temperature,
            tools=tuple(spec_of(t) for t in tools),
            tool_choice=tool_choice,
            response_format=response_format,
        )
        self.usage.steps += 1
        tags = {"agent": cfg.name, "agent_run": self.run_id, "agent_step": str(self.usage.steps)}
        answer = await self.models.complete(
            self.agent.model, prompt(messages), sampling, tags, key_id=self.key_id
        )
        usage = answer.completion.usage
        self.usage.prompt_tokens += usage.prompt_tokens
        self.usage.completion_tokens += usage.completion_tokens
        self.usage.cost_usd += answer.cost_usd
        await asyncio.to_thread(self.store.update, self.run_id, usage=self.current_usage())
        if report and answer.completion.text.strip():
            await self.emit(
                MessageEvent(run_id=self.run_id, text=answer.completion.text, step=self.usage.steps)
            )
        return answer.completion

    def current_usage(self) -> RunUsage:
        return self.usage.model_copy(update={"active_s": self.active_s()})

    def tool_context(self, sources: Sequence[Source] = ()) -> ToolContext:
        return ToolContext(
            run_id=self.run_id,
            thread_id=self.thread_id,
            user_id=self.user_id,
            scratch=self.scratch,
            kb=self.agent.config.kb,
            sources=list(sources),
        )

    async def call_tool(
        self, call: ToolCall, context: ToolContext, arguments: str | None = None
    ) -> ToolResult:
        """Call the tool durably: a result recorded for this call (before a restart) is returned
        without calling again; an unfinished call of a non-idempotent tool is not repeated."""
        args_text = arguments if arguments is not None else call.arguments
        recorded = await asyncio.to_thread(self.store.recorded_call, self.run_id, call.id)
        if recorded is not None and recorded.status == "done" and recorded.result is not None:
            result = recorded.result
            for source in result.sources:
                context.cite(source)
            await self._report(call, result, replayed=True)
            return result
        tool = self.agent.tools.get(call.name)
        try:
            arguments_obj = json.loads(args_text or "{}")
        except ValueError:
            arguments_obj = None
        await self.emit(
            ToolCallEvent(
                run_id=self.run_id,
                call_id=call.id,
                name=call.name,
                arguments=arguments_obj if isinstance(arguments_obj, dict) else {},
            )
        )
        if tool is not None and recorded is not None and not tool.idempotent:
            result = ToolResult.error(
                f"the earlier call of {call.name} was interrupted by a restart before it "
                "finished; it is not repeated automatically because it may have taken effect"
            )
        else:
            await asyncio.to_thread(
                self.store.call_started, self.run_id, call.id, call.name, args_text
            )
            result = await self._run_tool(tool, call, arguments_obj, context)
        await asyncio.to_thread(self.store.call_done, self.run_id, call.id, result)
        await self._report(call, result, replayed=False)
        return result

    async def _run_tool(
        self, tool: Tool | None, call: ToolCall, arguments: Any, context: ToolContext
    ) -> ToolResult:
        if tool is None:
            known = ", ".join(sorted(self.agent.tools)) or "(none)"
            return ToolResult.error(f"there is no tool '{call.name}'; available: {known}")
        if not isinstance(arguments, dict):
            return ToolResult.error(f"the arguments of {call.name} must be a JSON object")
        try:
            return await tool.call(arguments, context)
        except LLMForgeError as e:
            return ToolResult.error(e.message)
        except Exception as e:  # a tool's own bug is the model's to read, not the run's end
            return ToolResult.error(f"{call.name} failed: {type(e).__name__}: {e}")

    async def _report(self, call: ToolCall, result: ToolResult, replayed: bool) -> None:
        await self.emit(
            ToolResultEvent(
                run_id=self.run_id,
                call_id=call.id,
                name=call.name,
                text=result.text,
                is_error=result.is_error,
                replayed=replayed,
            )
        )


def prompt(messages: Sequence[Message]) -> list[Message]:
    """Messages as a model accepts them: system turns merged into one at the front, and calls
    left without a result (a run stopped between a call and its result) answered as not run."""
    system = "\n\n".join(m.content for m in messages if m.role == "system" and m.content)
    rest = [m for m in messages if m.role != "system"]
    out: list[Message] = [Message(role="system", content=system)] if system else []
    for i, m in enumerate(rest):
        out.append(m)
        if m.role == "assistant" and m.tool_calls:
            following = {x.tool_call_id for x in rest[i + 1 :] if x.role == "tool"}
            for c in m.tool_calls:
                if c.id not in following:
                    out.append(
                        Message(
                            role="tool", tool_call_id=c.id, content="(not run: the run stopped)"
                        )
                    )
    return out


def system_prompt(ctx: RunContext, base: str | None = None) -> Message:
    text = ctx.agent.config.system_prompt or base or DEFAULT_SYSTEM
    if ctx.memories:
        text += "\n\nWhat you remember about this user from earlier conversations:\n" + "\n".join(
            f"- {m}" for m in ctx.memories
        )
    return Message(role="system", content=text)


# -- the ReAct graph ----------------------------------------------------------------------------


async def agent_node(state: AgentState, runtime: Runtime[RunContext]) -> AgentState:
    ctx = runtime.context
    await ctx.step("agent")
    completion = await ctx.model(
        [system_prompt(ctx), *state.get("messages", [])], tools=list(ctx.agent.tools.values())
    )
    reply = Message(role="assistant", content=completion.text, tool_calls=completion.tool_calls)
    return {"messages": [reply]}


def pending_calls(state: AgentState, agent: AgentDefinition) -> list[PendingCall]:
    last = state.get("messages", [])[-1:]
    out = []
    for call in last[0].tool_calls if last else ():
        if agent.needs_approval(call.name):
            try:
                args = json.loads(call.arguments or "{}")
            except ValueError:
                args = {}
            out.append(
                PendingCall(
                    call_id=call.id,
                    name=call.name,
                    arguments=args if isinstance(args, dict) else {},
                )
            )
    return out


async def approve_node(state: AgentState, runtime: Runtime[RunContext]) -> AgentState:
    """Pause for a person's decision on the calls that need one (LangGraph interrupt)."""
    ctx = runtime.context
    pending = pending_calls(state, ctx.agent)
    decision = interrupt({"calls": [p.model_dump() for p in pending]})
    if not isinstance(decision, dict) or decision.get("action") != "approve":
        reason = (decision or {}).get("reason") if isinstance(decision, dict) else None
        why = f"rejected by a reviewer{': ' + reason if reason else ''}"
        last = state["messages"][-1]
        answers = [
            Message(role="tool", tool_call_id=c.id, content=f"Not run: {why}.")
            for c in last.tool_calls
        ]
        return {"messages": answers, "stop": why}
    edits = decision.get("arguments") or {}
    approved = {
        p.call_id: json.dumps(edits[p.call_id]) if p.call_id in edits else None for p in pending
    }
    return {"approved": {k: v for k, v in approved.items() if v is not None}, "stop": None}


async def tools_node(state: AgentState, runtime: Runtime[RunContext]) -> AgentState:
    ctx = runtime.context
    await ctx.step("tools")
    context = ctx.tool_context(state.get("sources", []))
    approved = state.get("approved") or {}
    answers = []
    for call in state["messages"][-1].tool_calls:
        result = await ctx.call_tool(call, context, approved.get(call.id))
        answers.append(Message(role="tool", tool_call_id=call.id, content=result.text))
    return {"messages": answers, "sources": context.sources, "approved": {}}


def after_agent(state: AgentState, runtime: Runtime[RunContext]) -> str:
    last = state.get("messages", [])[-1:]
    if not last or not last[0].tool_calls:
        return END
    return "approve" if pending_calls(state, runtime.context.agent) else "tools"


def after_approve(state: AgentState) -> str:
    return END if state.get("stop") else "tools"


def react_graph(_agent: AgentDefinition) -> StateGraph[Any, Any, Any, Any]:
    graph: StateGraph[Any, Any, Any, Any] = StateGraph(AgentState, context_schema=RunContext)
    graph.add_node("agent", agent_node)
    graph.add_node("approve", approve_node)
    graph.add_node("tools", tools_node)
    graph.add_edge(START, "agent")
    graph.add_conditional_edges("agent", after_agent, ["approve", "tools", END])
    graph.add_conditional_edges("approve", after_approve, ["tools", END])
    graph.add_edge("tools", "agent")
    return graph


GraphBuilder = Callable[[AgentDefinition], StateGraph[Any, Any, Any, Any]]

agent_graphs: Registry[GraphBuilder] = Registry("agent graph", "llmforge.agent_graphs")
