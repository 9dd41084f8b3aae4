"""`AgentRuntime`: the agents of one process, and their runs from start to finish.

Built from the settings (agents in `agents.definitions`, the two built-ins `assistant` and
`research` unless redefined, agents added in Python with `define`) and a `ModelClient` (the
gateway's, so every model call is routed, accounted and traced). `start()` opens the checkpointer
and resumes runs a dead process left running; `aclose()` stops executing runs without marking
them (the next process resumes them) and closes MCP sessions.

A run executes in a task of its own, not in the request that started it: a client that goes away
does not stop it. Its lifecycle (`agent_runs.status`):

    running -> done | budget_exceeded | failed
    running -> waiting_approval -> (approve) running ... | (reject) rejected

- **Durability.** LangGraph checkpoints after every step (`durability="sync"`: written before the
  next step starts) under the run's thread. Tool calls are recorded with their results
  (`store.py`), so a resumed run repeats no finished call. A process that dies leaves its runs
  `running`: they are resumed by the next process on start (at once when the owner was a process of
  this host that no longer exists, else once its heartbeat is `agents.lease_s` old).
- **Approval** is the graph's interrupt; `approve`/`reject` resume it with the decision, in
  whatever process handles the request, since everything needed is in the database.
- **Budgets** are checked before every model call (`RunContext.check_budget`), and wall time is
  also enforced as a deadline on the execution; the run stops with `budget_exceeded` and names the
  limit.
- **Memory.** A run continues its thread (`thread_id`): the thread's messages are its
  checkpointed state. Long-term notes per user (`memory.py`) are recalled into the prompt at the
  start of a run and through the `recall` tool.
- **Retention.** A stopped run prunes its thread to `keep_per_thread` checkpoints; an hourly sweep
  deletes the threads of runs finished more than `max_age_days` ago.

Approvals and rejections are rows of the audit log (`AuditLogHook`, the default `audit` hook).
Events (events.py) are stored and published to followers in this process; a follower in another
process polls the table.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.types import Command
from sqlalchemy.engine import Engine

from llmforge import audit
from llmforge.agents import calculator, fetch, knowledge, memory, research, sandbox
from llmforge.agents.checkpoints import open_checkpointer, prune_thread
from llmforge.agents.events import (
    FINISHED,
    AgentEvent,
    ApprovalNeededEvent,
    DoneEvent,
    PendingCall,
    RunStatus,
    RunUsage,
)
from llmforge.agents.graphs import (
    AgentDefinition,
    BudgetExceeded,
    RunContext,
    agent_graphs,
    react_graph,
)
from llmforge.agents.mcp_client import MCPServerTools
from llmforge.agents.memory import MemoryStore
from llmforge.agents.models import ModelClient
from llmforge.agents.store import AgentRun, RunStore
from llmforge.agents.tools import Tool, ToolEnv, agent_tools
from llmforge.core.config import AgentConfig, AgentToolRef, MCPServerConfig
from llmforge.core.db import open_engine, sortable_id
from llmforge.core.errors import (
    BudgetExceededError,
    ConfigError,
    InvalidRequestError,
    LLMForgeError,
    NotFoundError,
    UnknownNameError,
)
from llmforge.core.settings import Settings
from llmforge.core.types import Message
from llmforge.models.base import Embedder

log = logging.getLogger(__name__)

SWEEP_S = 3600.0
BUILTIN_AGENTS = (
    AgentConfig(
        name="assistant",
        description="A tool-using assistant (ReAct): calculator, knowledge-base search, memory",
        tools=["calculator", "kb_search", "remember", "recall"],
    ),
    AgentConfig(
        name="research",
        graph="research",
        description="Plans, searches the knowledge base, drafts, critiques and revises a report "
        "with numbered citations (Markdown and HTML)",
        tools=["kb_search"],
        limits={"max_steps": 8},
    ),
)


BUILTIN_TOOLS = {
    "calculator": calculator.create,
    "python": sandbox.create,
    "http_fetch": fetch.create,
    "kb_search": knowledge.create,
    "remember": memory.create_remember,
    "recall": memory.create_recall,
}
BUILTIN_GRAPHS = {"react": react_graph, "research": research.research_graph}


def register_builtins() -> None:
    """The built-in tools and graphs, registered as a plugin's would be (a plugin's entry point
    of the same name wins)."""
    for registry, builtins in ((agent_tools, BUILTIN_TOOLS), (agent_graphs, BUILTIN_GRAPHS)):
        for name, factory in builtins.items():
            try:
                registry.get(name)
            except UnknownNameError:
                registry.register(name, factory)  # type: ignore[arg-type]


class AuditHook(Protocol):
    def __call__(
        self, action: str, run: AgentRun, actor: str | None, detail: dict[str, Any]
    ) -> None:
        """Record a person's decision on a run (approve, reject)."""
        ...


def no_audit(action: str, run: AgentRun, actor: str | None, detail: dict[str, Any]) -> None:
    """A hook that records nothing (for embedding the runtime without an audit log)."""
    return None


class AuditLogHook:
    """The default hook: each decision is a row of the hash-chained audit log
    (`agent.approve` / `agent.reject`, subject the run id) in the runtime's database."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def __call__(
        self, action: str, run: AgentRun, actor: str | None, detail: dict[str, Any]
    ) -> None:
        data = {"agent": run.agent, "thread_id": run.thread_id, **detail}
        audit.record(self.engine, f"agent.{action}", actor=actor, subject=run.id, data=data)


@dataclass
class AgentInfo:
    name: str
    graph: str
    model: str
    description: str | None
    tools: list[str]
    approval: list[str]
    needs_approval: list[str]
    """entries of `tools` whose calls wait for a person (the agent's `approval` list, a tool's
    own `approval: required`, an MCP server's `approval: required`)"""


def needs_approval(config: AgentConfig, servers: Sequence[MCPServerConfig]) -> list[str]:
    """The entries of the agent's tool list whose calls need approval, as `_build` decides it
    (a tool's `never` wins over the agent's list and its server's policy; `*` over everything)."""
    asked = set(config.approval)
    required = {f"mcp:{s.name}" for s in servers if s.approval == "required"}
    refs = [AgentToolRef(name=t) if isinstance(t, str) else t for t in config.tools]
    return [
        ref.name
        for ref in refs
        if "*" in asked
        or ref.approval == "required"
        or (ref.approval != "never" and (ref.name in asked or ref.name in required))
    ]


class AgentRuntime:
    def __init__(
        self,
        settings: Settings,
        models: ModelClient,
        *,
        engine: Engine | None = None,
        knowledge_bases: Callable[[], Any] | None = None,
        embedder: Callable[[str], Embedder] | None = None,
        audit: AuditHook | None = None,
    ) -> None:
        register_builtins()
        self.settings = settings
        self.models = models
        self._own_engine = engine is None
        self.engine = engine or open_engine(settings.database)
        self.audit: AuditHook = audit if audit is not None else AuditLogHook(self.engine)
        self.store = RunStore(self.engine)
        self._knowledge_bases = knowledge_bases
        self._embedder = embedder
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._configs: dict[str, AgentConfig] = {a.name: a for a in BUILTIN_AGENTS}
        self._configs.update({a.name: a for a in settings.agents.definitions})
        self._python_tools: dict[str, dict[str, Tool]] = {}
        self._definitions: dict[str, AgentDefinition] = {}
        self._graphs: dict[str, Any] = {}
        self._mcp = {m.name: MCPServerTools(m) for m in settings.agents.mcp_servers}
        self._memory: MemoryStore | None = None
        self._stack: AsyncExitStack | None = None
        self._saver: BaseCheckpointSaver[Any] | None = None
        self._started: asyncio.Lock | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._followers: dict[str, set[asyncio.Queue[AgentEvent]]] = {}
        self._background: asyncio.Task[None] | None = None
        chat = [m.name for m in settings.models]
        for config in self._configs.values():
            if config.model is not None and config.model not in chat:
                raise ConfigError(
                    f"agents: '{config.name}' uses model '{config.model}', which is not under "
                    f"`models:`; known: {', '.join(chat) or '(none)'}"
                )

    # -- definitions ----------------------------------------------------------------------------

    def define(self, config: AgentConfig, tools: Sequence[Tool] = ()) -> None:
        """Add (or replace) an agent from Python, with tools of its own besides registered
        ones. Its `graph` may be registered with `agent_graphs.register(name, builder)`."""
        self._configs[config.name] = config
        self._python_tools[config.name] = {t.name: t for t in tools}
        self._definitions.pop(config.name, None)
        self._graphs.pop(config.name, None)

    def agents(self) -> list[AgentInfo]:
        return [
            AgentInfo(
                name=c.name,
                graph=c.graph,
                model=self._model_of(c),
                description=c.description,
                tools=[t if isinstance(t, str) else t.name for t in c.tools],
                approval=sorted(c.approval),
                needs_approval=needs_approval(c, self.settings.agents.mcp_servers),
            )
            for c in self._configs.values()
        ]

    def config(self, name: str) -> AgentConfig:
        try:
            return self._configs[name]
        except KeyError:
            raise NotFoundError(
                f"No agent '{name}'. Known: {', '.join(sorted(self._configs))}. Define it under "
                "`agents.definitions` in llmforge.yaml."
            ) from None

    def _model_of(self, config: AgentConfig) -> str:
        if config.model:
            return config.model
        if not self.settings.models:
            raise ConfigError(f"agent '{config.name}' needs a model; none is configured")
        return self.settings.models[0].name

    async def definition(self, name: str) -> AgentDefinition:
        found = self._definitions.get(name)
        if found is None:
            found = await self._build(self.config(name))
            self._definitions[name] = found
        return found

    async def _build(self, config: AgentConfig) -> AgentDefinition:
        env = ToolEnv(self.settings, self._knowledge_bases, self.memory())
        tools: dict[str, Tool] = {}
        approval = set(config.approval)
        refs = [AgentToolRef(name=t) if isinstance(t, str) else t for t in config.tools]
        if config.graph == "research" and not any(r.name == "kb_search" for r in refs):
            refs.append(AgentToolRef(name="kb_search"))
        own = self._python_tools.get(config.name, {})
        for ref in refs:
            found: list[Tool]
            if ref.name.startswith("mcp:"):
                server = self._mcp.get(ref.name.removeprefix("mcp:"))
                if server is None:
                    raise ConfigError(
                        f"agent '{config.name}': no MCP server '{ref.name[4:]}' under "
                        f"agents.mcp_servers; known: {', '.join(self._mcp) or '(none)'}"
                    )
                found = list(await server.tools())
                if server.config.approval == "required":
                    approval.update(t.name for t in found)
            elif ref.name in own:
                found = [own[ref.name]]
            else:
                try:
                    found = [agent_tools.get(ref.name)(env)]
                except ConfigError as e:
                    raise ConfigError(f"agent '{config.name}': {e.message}") from None
            for tool in found:
                tools[tool.name] = tool
                if ref.approval == "required":
                    approval.add(tool.name)
                elif ref.approval == "never":
                    approval.discard(tool.name)
        for name, tool in own.items():
            tools.setdefault(name, tool)
        if "*" in approval:
            approval = set(tools)
        return AgentDefinition(config, self._model_of(config), tools, approval & set(tools))

    def memory(self) -> MemoryStore | None:
        if self._memory is None and self._embedder is not None and self.settings.embeddings:
            name = self.settings.agents.memory_embedding or self.settings.embeddings[0].name
            self._memory = MemoryStore(self.engine, self._embedder(name))
        return self._memory

    async def _graph(self, name: str) -> Any:
        graph = self._graphs.get(name)
        if graph is None:
            definition = await self.definition(name)
            builder = agent_graphs.get(definition.config.graph)
            graph = builder(definition).compile(checkpointer=await self._checkpointer())
            self._graphs[name] = graph
        return graph

    # -- lifecycle ------------------------------------------------------------------------------

    async def _checkpointer(self) -> BaseCheckpointSaver[Any]:
        await self.start()
        assert self._saver is not None
        return self._saver

    async def start(self) -> None:
        """Open the checkpointer and resume runs dead processes left running (idempotent)."""
        if self._started is None:
            self._started = asyncio.Lock()
        async with self._started:
            if self._saver is not None:
                return
            self._stack = AsyncExitStack()
            url = self.settings.agents.checkpoints.database or self.settings.database
            self._saver = await self._stack.enter_async_context(open_checkpointer(url))
            self._background = asyncio.create_task(self._maintain(), name="agents-maintenance")

    async def aclose(self) -> None:
        if self._background is not None:
            self._background.cancel()
            with contextlib.suppress(BaseException):
                await self._background
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        for server in self._mcp.values():
            await server.aclose()
        if self._stack is not None:
            await self._stack.aclose()
        self._saver = None
        if self._memory is not None and self._embedder is None:
            await self._memory.embedder.aclose()
        if self._own_engine:
            self.engine.dispose()

    async def _maintain(self) -> None:
        """Heartbeats for this process's runs, resuming orphaned runs, the retention sweep."""
        lease = self.settings.agents.lease_s
        last_sweep = 0.0
        while True:
            try:
                await asyncio.to_thread(self.store.heartbeat, list(self._tasks), self.owner)
                if self.settings.agents.resume_on_start:
                    await self.resume_orphans()
                if time.monotonic() - last_sweep > SWEEP_S:
                    last_sweep = time.monotonic()
                    await self.sweep()
            except Exception:  # the database may be briefly unavailable; try again next round
                log.exception("agent maintenance failed")
            await asyncio.sleep(min(lease / 3, 10.0))

    async def resume_orphans(self) -> list[str]:
        """Resume runs left `running` by a process that is gone; returns their ids."""
        now = time.time()
        lease = self.settings.agents.lease_s
        resumed = []
        for run in await asyncio.to_thread(self.store.list_runs, None, ["running"], None, 1000):
            if run.id in self._tasks or run.owner == self.owner:
                continue
            stale = now - lease if not _dead(run.owner) else now + 1
            if await asyncio.to_thread(self.store.claim, run.id, self.owner, stale, run.owner):
                log.info("resuming agent run %s (left by %s)", run.id, run.owner)
                self._spawn(run, None)
                resumed.append(run.id)
        return resumed

    async def sweep(self) -> int:
        """Delete the checkpoints of threads whose runs all finished `max_age_days` ago."""
        saver = await self._checkpointer()
        cutoff = time.time() - self.settings.agents.checkpoints.max_age_days * 86400
        threads = await asyncio.to_thread(self.store.finished_threads, cutoff)
        for thread in threads:
            await saver.adelete_thread(thread)
        return len(threads)

    # -- runs -----------------------------------------------------------------------------------

    async def start_run(
        self,
        agent: str,
        messages: Sequence[Message],
        *,
        thread_id: str | None = None,
        user_id: str | None = None,
        key_id: str | None = None,
    ) -> AgentRun:
        """Start a run in the background; returns it (status `running`)."""
        await self.definition(agent)  # unknown agent or broken tools: fail now, not in the task
        await self.start()
        if not messages:
            raise InvalidRequestError("An agent run needs input: a message or a list of them.")
        thread = thread_id or f"thread-{sortable_id()}"
        busy = await asyncio.to_thread(
            self.store.list_runs, None, ["running", "waiting_approval"], thread, 1
        )
        if busy:
            raise InvalidRequestError(
                f"Thread '{thread}' has a run in progress ({busy[0].id}, {busy[0].status}); wait "
                "for it, or approve or reject it, before starting another.",
                param="thread_id",
            )
        now = time.time()
        run = AgentRun(
            id=f"run-{sortable_id()}",
            agent=agent,
            thread_id=thread,
            user_id=user_id or "default",
            key_id=key_id,
            status="running",
            input=list(messages),
            created_at=now,
            updated_at=now,
            owner=self.owner,
            heartbeat_at=now,
        )
        await asyncio.to_thread(self.store.create, run)
        state: dict[str, Any] = {
            "messages": list(messages),
            "sources": [],
            "approved": {},
            "stop": None,
            "artifacts": {},
        }
        self._spawn(run, state)
        return run

    def get(self, run_id: str) -> AgentRun:
        return self.store.get(run_id)

    async def wait(self, run_id: str, timeout_s: float | None = None) -> AgentRun:
        """The run once it is no longer `running` (done, stopped, or waiting for approval)."""
        task = self._tasks.get(run_id)
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(task), timeout_s)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            run = await asyncio.to_thread(self.store.get, run_id)
            if run.status != "running" or (deadline and time.monotonic() > deadline):
                return run
            await asyncio.sleep(0.2)  # run by another process

    async def approve(
        self,
        run_id: str,
        arguments: dict[str, dict[str, Any]] | None = None,
        actor: str | None = None,
    ) -> AgentRun:
        """Let the paused calls run (`arguments`: edited arguments by call id)."""
        run = await self._decide(run_id, "approve", actor, arguments or {})
        unknown = set(arguments or {}) - {p.call_id for p in run.pending}
        if unknown:
            raise InvalidRequestError(
                f"No pending call {', '.join(sorted(unknown))} in run '{run_id}'; pending: "
                f"{', '.join(p.call_id for p in run.pending)}",
                param="arguments",
            )
        self._spawn(run, Command(resume={"action": "approve", "arguments": arguments or {}}))
        return run

    async def reject(
        self, run_id: str, reason: str | None = None, actor: str | None = None
    ) -> AgentRun:
        """Refuse the paused calls; the run ends with status `rejected`."""
        run = await self._decide(run_id, "reject", actor, {"reason": reason})
        self._spawn(run, Command(resume={"action": "reject", "reason": reason}))
        return run

    async def _decide(
        self, run_id: str, action: str, actor: str | None, detail: dict[str, Any]
    ) -> AgentRun:
        await self.start()
        run = await asyncio.to_thread(self.store.get, run_id)
        if run.status != "waiting_approval":
            raise InvalidRequestError(
                f"Run '{run_id}' is not waiting for approval (status: {run.status}).",
                param="run_id",
            )
        claimed = await asyncio.to_thread(self._claim_waiting, run_id)
        if not claimed:
            raise InvalidRequestError(f"Run '{run_id}' was decided by someone else meanwhile.")
        await asyncio.to_thread(self.audit, action, run, actor, detail)
        return run

    def _claim_waiting(self, run_id: str) -> bool:
        now = time.time()
        return self.store.transition(
            run_id, "waiting_approval", status="running", owner=self.owner, heartbeat_at=now
        )

    async def resume(self, run_id: str) -> AgentRun:
        """Resume a run left `running` by a process that is gone (at once, without waiting for
        its lease): what the start-up sweep does, for one run."""
        await self.start()
        run = await asyncio.to_thread(self.store.get, run_id)
        if run.status != "running" or run.id in self._tasks:
            return run
        if not await asyncio.to_thread(
            self.store.claim, run.id, self.owner, time.time() + 1, run.owner
        ):
            raise InvalidRequestError(f"Run '{run_id}' is being run by another process.")
        self._spawn(run, None)
        return run

    def _spawn(self, run: AgentRun, command: Any) -> None:
        task = asyncio.create_task(self._execute(run, command), name=f"agent-run-{run.id}")
        self._tasks[run.id] = task
        task.add_done_callback(lambda _t: self._tasks.pop(run.id, None))

    async def _execute(self, run: AgentRun, command: Any) -> None:
        lock = self._locks.setdefault(run.thread_id, asyncio.Lock())
        async with lock:
            try:
                await self._execute_locked(run, command)
            except Exception as e:  # before the graph ran (a broken definition): end the run
                log.exception("agent run %s could not run", run.id)
                reason = e.message if isinstance(e, LLMForgeError) else f"{type(e).__name__}: {e}"
                await asyncio.to_thread(
                    self.store.update,
                    run.id,
                    status="failed",
                    stop_reason=reason,
                    finished_at=time.time(),
                )
                await self._emit(DoneEvent(run_id=run.id, status="failed", stop_reason=reason))

    async def _execute_locked(self, run: AgentRun, command: Any) -> None:
        definition = await self.definition(run.agent)
        graph = await self._graph(run.agent)
        usage = (await asyncio.to_thread(self.store.get, run.id)).usage
        ctx = RunContext(
            run_id=run.id,
            thread_id=run.thread_id,
            user_id=run.user_id,
            agent=definition,
            models=self.models,
            store=self.store,
            emit=lambda e: self._emit(e),
            usage=usage,
            scratch=Path(self.settings.agents.sandbox.scratch) / run.id,
            key_id=run.key_id,
        )
        config = {"configurable": {"thread_id": run.thread_id}}
        status: RunStatus = "done"
        stop_reason: str | None = None
        values: dict[str, Any] = {}
        pending: list[PendingCall] = []
        limit = definition.config.limits.max_wall_s
        try:
            ctx.memories = await self._recall(definition, run)
            remaining = None if limit is None else max(limit - usage.active_s, 0.001)
            async with asyncio.timeout(remaining) as deadline:
                try:
                    async for _ in graph.astream(
                        command, config, context=ctx, durability="sync", stream_mode="updates"
                    ):
                        pass
                except TimeoutError:
                    if not deadline.expired():
                        raise
            snapshot = await graph.aget_state(config)
            values = dict(snapshot.values or {})
            interrupts = [i for t in snapshot.tasks for i in t.interrupts] or list(
                getattr(snapshot, "interrupts", ()) or ()
            )
            if interrupts:
                status = "waiting_approval"
                calls = (interrupts[0].value or {}).get("calls", [])
                pending = [PendingCall.model_validate(c) for c in calls]
            elif values.get("stop"):
                status, stop_reason = "rejected", str(values["stop"])
        except TimeoutError:
            status, stop_reason = "budget_exceeded", f"max_wall_s: ran {limit:g} s"
        except BudgetExceeded as e:
            status, stop_reason = "budget_exceeded", e.reason
        except BudgetExceededError as e:  # the budget of the API key that started the run
            status, stop_reason = "budget_exceeded", e.message
        except asyncio.CancelledError:
            # shutting down: leave the run `running` so that the next process resumes it
            await asyncio.to_thread(self.store.update, run.id, usage=ctx.current_usage())
            raise
        except LLMForgeError as e:
            status, stop_reason = "failed", e.message
        except Exception as e:
            log.exception("agent run %s failed", run.id)
            status, stop_reason = "failed", f"{type(e).__name__}: {e}"
        await self._finish(run, ctx, status, stop_reason, values, pending)

    async def _finish(
        self,
        run: AgentRun,
        ctx: RunContext,
        status: RunStatus,
        stop_reason: str | None,
        values: dict[str, Any],
        pending: list[PendingCall],
    ) -> None:
        usage = ctx.current_usage()
        messages: list[Message] = values.get("messages") or []
        last = messages[-1] if messages else None
        output = last.content if last is not None and last.role == "assistant" else ""
        sources = values.get("sources") or []
        update: dict[str, Any] = {
            "status": status,
            "stop_reason": stop_reason,
            "usage": usage,
            "pending": pending,
        }
        if status == "waiting_approval":
            await asyncio.to_thread(self.store.update, run.id, **update)
            await self._emit(ApprovalNeededEvent(run_id=run.id, calls=pending))
            return
        if status == "done":
            update.update(output=output, sources=sources, artifacts=values.get("artifacts") or {})
        update["finished_at"] = time.time()
        await asyncio.to_thread(self.store.update, run.id, **update)
        await self._emit(
            DoneEvent(
                run_id=run.id,
                status=status,
                stop_reason=stop_reason,
                output=output if status == "done" else "",
                sources=sources if status == "done" else [],
                usage=usage,
            )
        )
        saver = await self._checkpointer()
        keep = self.settings.agents.checkpoints.keep_per_thread
        try:
            await prune_thread(saver, run.thread_id, keep)
        except Exception:
            log.exception("pruning the checkpoints of thread %s failed", run.thread_id)

    async def _recall(self, definition: AgentDefinition, run: AgentRun) -> list[str]:
        memory = self.memory()
        k = definition.config.recall
        query = next((m.content for m in reversed(run.input) if m.role == "user"), "")
        if memory is None or k <= 0 or not query:
            return []
        try:
            return [m.text for m in await memory.search(run.user_id, query, k)]
        except LLMForgeError as e:
            log.warning("recalling memories for run %s failed: %s", run.id, e.message)
            return []

    # -- events ---------------------------------------------------------------------------------

    async def _emit(self, event: AgentEvent) -> AgentEvent:
        numbered = await asyncio.to_thread(self.store.add_event, event)
        for queue in self._followers.get(event.run_id, ()):
            queue.put_nowait(numbered)
        return numbered

    async def follow(self, run_id: str, after: int = 0) -> AsyncIterator[AgentEvent]:
        """The run's events after `after`: those stored, then new ones as they come. It ends with
        the run's `done` event, or at the `approval_needed` the run is waiting on now; an approval
        that was decided is passed by, so a finished run replays its whole history."""
        queue: asyncio.Queue[AgentEvent] = asyncio.Queue()
        self._followers.setdefault(run_id, set()).add(queue)
        try:
            await asyncio.to_thread(self.store.get, run_id)  # unknown run: 404
            last: AgentEvent | None = None
            stopped_polls = 0
            while True:
                for event in await asyncio.to_thread(self.store.events, run_id, after):
                    after, last = event.seq, event
                    yield event
                    if event.type == "done":
                        return
                run = await asyncio.to_thread(self.store.get, run_id)
                waiting = run.status == "waiting_approval"
                if waiting and last is not None and last.type == "approval_needed":
                    # paused at the last event, unless events came since the status was read
                    if not await asyncio.to_thread(self.store.events, run_id, after):
                        return
                    continue
                if run.status in FINISHED:
                    # its `done` is stored right after the status; a run without one still ends
                    stopped_polls += 1
                    if stopped_polls > 2:
                        return
                with contextlib.suppress(TimeoutError):
                    # woken by this process's events; every second, the table (other processes)
                    await asyncio.wait_for(queue.get(), 1.0)
        finally:
            self._followers[run_id].discard(queue)
            if not self._followers[run_id]:
                self._followers.pop(run_id, None)


def _dead(owner: str | None) -> bool:
    """Whether the owner is a process of this host that no longer exists."""
    if not owner:
        return True
    host, _, rest = owner.partition(":")
    pid_text = rest.split(":", 1)[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def describe(run: AgentRun) -> str:
    """A stopped run in one sentence (for clients that only read text)."""
    if run.status == "done":
        return run.output
    if run.status == "waiting_approval":
        calls = ", ".join(f"{p.name}({p.arguments})" for p in run.pending)
        return (
            f"Run {run.id} is waiting for approval of: {calls}. Approve with "
            f"`llmforge agent approve {run.id}` or POST /v1/agents/{run.agent}/runs/{run.id}/"
            "approve (reject: .../reject)."
        )
    return f"Run {run.id} stopped: {run.status}" + (
        f" ({run.stop_reason})" if run.stop_reason else ""
    )


__all__ = [
    "AgentInfo",
    "AgentRuntime",
    "AuditHook",
    "AuditLogHook",
    "RunUsage",
    "describe",
    "needs_approval",
    "no_audit",
]
