"""Agents: durable LangGraph graphs over the gateway's models, with tools, human approval, memory
and budgets, served over HTTP and as models.

Contract for code built on this package (the gateway's `/v1/agents` routes, the CLI, evals):

- `AgentRuntime(settings, models, engine=, knowledge_bases=, embedder=, audit=)`: the process's
  agents and runs. `await start()` / `aclose()`; `agents()`, `config(name)`,
  `define(AgentConfig, tools)` (Python agents); `await start_run(agent, messages, thread_id=,
  user_id=, key_id=) -> AgentRun` (runs in the background), `await wait(run_id)`, `get(run_id)`,
  `store.list(...)`, `follow(run_id, after) -> AsyncIterator[AgentEvent]`,
  `await approve(run_id, arguments, actor)`, `await reject(run_id, reason, actor)`,
  `await resume(run_id)`, `await sweep()`.
- `ModelClient` (models.py): how the runtime calls models; the gateway supplies one over its
  `Gateway`. `CatalogModels` calls the catalog directly.
- Tools (tools.py): the `Tool` protocol, `@tool` / `FunctionTool` (schema from a typed
  signature), `ToolResult`, `ToolContext`, the `agent_tools` registry; built-ins `calculator`,
  `python` (sandbox.py), `http_fetch` (fetch.py), `kb_search` (knowledge.py), `remember` /
  `recall` (memory.py), and every tool of `agents.mcp_servers` (mcp_client.py).
- Graphs (graphs.py): `AgentState`, `RunContext`, `agent_graphs` registry; built-ins `react` and
  `research` (research.py).
- Events (events.py): `step`, `tool_call`, `tool_result`, `approval_needed`, `message`, `done`.
- Provider `agent` (model.py): an agent as a chat model.

It never imports the gateway.
"""

from llmforge.agents.events import (
    EVENT,
    AgentEvent,
    ApprovalNeededEvent,
    DoneEvent,
    MessageEvent,
    PendingCall,
    RunStatus,
    RunUsage,
    StepEvent,
    ToolCallEvent,
    ToolResultEvent,
)
from llmforge.agents.graphs import (
    AgentDefinition,
    AgentState,
    BudgetExceeded,
    RunContext,
    agent_graphs,
)
from llmforge.agents.memory import Memory, MemoryStore
from llmforge.agents.models import CatalogModels, ModelAnswer, ModelClient
from llmforge.agents.runtime import AgentInfo, AgentRuntime, AuditHook, describe
from llmforge.agents.store import AgentRun, RunStore
from llmforge.agents.tools import (
    FunctionTool,
    Tool,
    ToolContext,
    ToolEnv,
    ToolResult,
    agent_tools,
    tool,
)

__all__ = [
    "EVENT",
    "AgentDefinition",
    "AgentEvent",
    "AgentInfo",
    "AgentRun",
    "AgentRuntime",
    "AgentState",
    "ApprovalNeededEvent",
    "AuditHook",
    "BudgetExceeded",
    "CatalogModels",
    "DoneEvent",
    "FunctionTool",
    "Memory",
    "MemoryStore",
    "MessageEvent",
    "ModelAnswer",
    "ModelClient",
    "PendingCall",
    "RunContext",
    "RunStatus",
    "RunStore",
    "RunUsage",
    "StepEvent",
    "Tool",
    "ToolCallEvent",
    "ToolContext",
    "ToolEnv",
    "ToolResult",
    "ToolResultEvent",
    "agent_graphs",
    "agent_tools",
    "describe",
    "tool",
]
