"""What a run reports as it goes: typed events, stored in order and streamed to clients (SSE).

    step             a node of the graph starts (agent, tools, plan, ...), with the turns so far
    tool_call        a tool is about to be called (or waits for approval), with its arguments
    tool_result      what it returned; `replayed` when a resumed run reused a recorded result
    approval_needed  the run is paused until the calls listed are approved, edited or rejected
    message          the model's text of a step (the final answer is the last one)
    done             the run stopped: its status, why, the answer, its sources and usage

Every event carries the run id and its sequence number in the run, so a client that reconnects
asks for the events after the last it saw. This module only defines shapes.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, TypeAdapter

from llmforge.core.types import Source

RunStatus = Literal[
    "running", "waiting_approval", "done", "rejected", "budget_exceeded", "failed", "cancelled"
]
FINISHED: frozenset[str] = frozenset({"done", "rejected", "budget_exceeded", "failed", "cancelled"})


class RunUsage(BaseModel):
    steps: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    active_s: float = Field(0.0, description="seconds spent executing (approval waits excluded)")

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class PendingCall(BaseModel):
    """A tool call waiting for a person's decision."""

    call_id: str
    name: str
    arguments: dict[str, Any]


class _Event(BaseModel):
    run_id: str
    seq: int = 0


class StepEvent(_Event):
    type: Literal["step"] = "step"
    node: str
    step: int = Field(description="model turns so far in the run")


class ToolCallEvent(_Event):
    type: Literal["tool_call"] = "tool_call"
    call_id: str
    name: str
    arguments: dict[str, Any]
    approval: bool = Field(False, description="needs a person's approval first")


class ToolResultEvent(_Event):
    type: Literal["tool_result"] = "tool_result"
    call_id: str
    name: str
    text: str
    is_error: bool = False
    replayed: bool = Field(False, description="recorded before a restart, not called again")


class ApprovalNeededEvent(_Event):
    type: Literal["approval_needed"] = "approval_needed"
    calls: list[PendingCall]


class MessageEvent(_Event):
    type: Literal["message"] = "message"
    text: str
    step: int


class DoneEvent(_Event):
    type: Literal["done"] = "done"
    status: RunStatus
    stop_reason: str | None = None
    output: str = ""
    sources: list[Source] = Field(default_factory=list)
    usage: RunUsage = Field(default_factory=RunUsage)


AgentEvent = Annotated[
    StepEvent | ToolCallEvent | ToolResultEvent | ApprovalNeededEvent | MessageEvent | DoneEvent,
    Field(discriminator="type"),
]
EVENT = TypeAdapter(AgentEvent)
