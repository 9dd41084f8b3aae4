"""The research agent (`graph: research`): a report with numbered citations from a knowledge base.

    START -> plan -> search -> read -> draft -> critique --(issues)--> revise -> report -> END
                                                         \\--(fine)----------/

- `plan`: the model writes up to four search queries for the question (JSON held to a schema);
  an unusable answer falls back to the question itself.
- `search`: each query through the agent's `kb_search` tool, as durable tool calls (a resumed
  run does not search again), passages numbered for the whole run.
- `read`: the passages found, best first, within `MAX_PASSAGES` (nothing found: the report says
  the knowledge base does not cover the question, and no draft is written).
- `draft`: a Markdown report citing passages as `[n]`.
- `critique`: the model checks the draft against the passages (JSON: ok, issues).
- `revise`: only when the critique found issues: the draft rewritten to fix them.
- `report`: markers that name no passage are removed, a numbered `Sources` list is appended, and
  the report is kept as Markdown and as HTML (`artifacts`), the HTML with raw HTML of the model
  escaped. The run's answer is the Markdown report.

Every model call goes through `RunContext.model`, so budgets, traces and events apply. It reads
only the knowledge base: no web, no code.
"""

from __future__ import annotations

import html
import json
import re
from typing import Any

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from markdown_it import MarkdownIt

from llmforge.agents.graphs import AgentDefinition, AgentState, RunContext
from llmforge.agents.knowledge import passages
from llmforge.core.types import Message, ResponseFormat, Source, ToolCall

MAX_QUERIES = 4
MAX_PASSAGES = 8
MARKER = re.compile(r"\[(\d{1,3})\]")

PLAN = (
    "You plan research in a knowledge base. Write up to {n} short search queries that together "
    'cover the question. Reply with JSON only: {{"queries": ["...", ...]}}.'
)
PLAN_SCHEMA = {
    "type": "object",
    "properties": {
        "queries": {"type": "array", "items": {"type": "string"}, "maxItems": MAX_QUERIES}
    },
    "required": ["queries"],
}
DRAFT = (
    "Write a short research report in Markdown that answers the question using only the numbered "
    "passages below. Start with a one-line title (# ...). After each statement cite its passage "
    "by number in square brackets, like [1]. Do not add a list of sources; it is added for you."
    "\n\nPassages:\n\n{passages}"
)
CRITIQUE = (
    "You review a research report against its passages. Check that every statement is supported "
    "by the passage it cites and that the question is answered. Reply with JSON only: "
    '{{"ok": true or false, "issues": ["...", ...]}}.\n\nPassages:\n\n{passages}'
)
CRITIQUE_SCHEMA = {
    "type": "object",
    "properties": {
        "ok": {"type": "boolean"},
        "issues": {"type": "array", "items": {"type": "string"}, "maxItems": 5},
    },
    "required": ["ok", "issues"],
}
REVISE = (
    "Revise the research report to fix these issues, keeping the citations [n] to the passages "
    "and the Markdown format. Reply with the whole revised report only.\n\nIssues:\n{issues}"
    "\n\nPassages:\n\n{passages}"
)
NOTHING = "# {question}\n\nThe knowledge base has no passages about this question."


class ResearchState(AgentState, total=False):
    question: str
    queries: list[str]
    draft: str
    issues: list[str]


def _json(text: str) -> dict[str, Any] | None:
    match = re.search(r"\{.*\}", text, re.DOTALL)
    try:
        value = json.loads(match.group(0)) if match else None
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


async def plan(state: ResearchState, runtime: Runtime[RunContext]) -> ResearchState:
    ctx = runtime.context
    await ctx.step("plan")
    messages = state.get("messages", [])
    question = next((m.content for m in reversed(messages) if m.role == "user"), "").strip()
    answer = await ctx.model(
        [Message(role="system", content=PLAN.format(n=MAX_QUERIES)), *messages[-6:]],
        response_format=ResponseFormat.for_schema(PLAN_SCHEMA, "plan"),
        report=False,
    )
    decided = _json(answer.text) or {}
    queries = [q.strip() for q in decided.get("queries") or [] if isinstance(q, str) and q.strip()]
    queries = list(dict.fromkeys([*queries[:MAX_QUERIES], question]))
    return {"question": question, "queries": [q for q in queries if q], "sources": []}


async def search(state: ResearchState, runtime: Runtime[RunContext]) -> ResearchState:
    ctx = runtime.context
    await ctx.step("search")
    context = ctx.tool_context(state.get("sources", []))
    for i, query in enumerate(state.get("queries", [])):
        arguments = {"query": query, "k": 4}
        if ctx.agent.config.kb:
            arguments["kb"] = ctx.agent.config.kb
        call = ToolCall(
            id=f"search-{ctx.usage.steps}-{i}", name="kb_search", arguments=json.dumps(arguments)
        )
        await ctx.call_tool(call, context)
    return {"sources": context.sources}


async def read(state: ResearchState, runtime: Runtime[RunContext]) -> ResearchState:
    await runtime.context.step("read")
    found = sorted(state.get("sources", []), key=lambda s: -(s.score or 0.0))[:MAX_PASSAGES]
    return {"sources": sorted(found, key=lambda s: s.number)}


def _ask(state: ResearchState) -> Message:
    return Message(role="user", content=state.get("question", ""))


async def draft(state: ResearchState, runtime: Runtime[RunContext]) -> ResearchState:
    ctx = runtime.context
    await ctx.step("draft")
    if not state.get("sources"):
        return {"draft": NOTHING.format(question=state.get("question", "")), "issues": []}
    system = DRAFT.format(passages=passages(state["sources"]))
    answer = await ctx.model([Message(role="system", content=system), _ask(state)])
    return {"draft": answer.text.strip()}


async def critique(state: ResearchState, runtime: Runtime[RunContext]) -> ResearchState:
    ctx = runtime.context
    if not state.get("sources"):
        return {"issues": []}
    await ctx.step("critique")
    system = CRITIQUE.format(passages=passages(state["sources"]))
    answer = await ctx.model(
        [
            Message(role="system", content=system),
            Message(
                role="user",
                content=f"Question: {state.get('question', '')}\n\n"
                f"Report:\n{state.get('draft', '')}",
            ),
        ],
        response_format=ResponseFormat.for_schema(CRITIQUE_SCHEMA, "critique"),
        report=False,
    )
    verdict = _json(answer.text) or {"ok": True, "issues": []}
    issues = [i for i in verdict.get("issues") or [] if isinstance(i, str) and i.strip()]
    return {"issues": [] if verdict.get("ok") is True else issues}


async def revise(state: ResearchState, runtime: Runtime[RunContext]) -> ResearchState:
    ctx = runtime.context
    await ctx.step("revise")
    system = REVISE.format(
        issues="\n".join(f"- {i}" for i in state.get("issues", [])),
        passages=passages(state.get("sources", [])),
    )
    answer = await ctx.model(
        [
            Message(role="system", content=system),
            _ask(state),
            Message(role="assistant", content=state.get("draft", "")),
            Message(role="user", content="Revise the report now."),
        ]
    )
    return {"draft": answer.text.strip() or state.get("draft", "")}


async def report(state: ResearchState, runtime: Runtime[RunContext]) -> ResearchState:
    await runtime.context.step("report")
    sources = state.get("sources", [])
    markdown, cited = finish_report(state.get("draft", ""), sources)
    final = [s.model_copy(update={"cited": s.number in cited}) for s in sources]
    return {
        "messages": [Message(role="assistant", content=markdown)],
        "sources": final,
        "artifacts": {"markdown": markdown, "html": render_html(markdown)},
    }


def finish_report(draft: str, sources: list[Source]) -> tuple[str, set[int]]:
    """The draft with markers naming no passage removed, and a numbered Sources list."""
    numbers = {s.number for s in sources}
    cited: set[int] = set()

    def keep(match: re.Match[str]) -> str:
        n = int(match.group(1))
        if n in numbers:
            cited.add(n)
            return match.group(0)
        return ""

    body = MARKER.sub(keep, draft).strip()
    if not sources:
        return body, cited
    lines = [
        f"{s.number}. {s.title or s.source}"
        + (f" — {s.heading}" if s.heading else "")
        + (f", page {s.page}" if s.page else "")
        + f" (`{s.source}`)"
        for s in sources
    ]
    return body + "\n\n## Sources\n\n" + "\n".join(lines) + "\n", cited


_MD = MarkdownIt("commonmark", {"html": False})


def render_html(markdown: str) -> str:
    """A self-contained HTML page of the report (no scripts; the model's raw HTML escaped)."""
    title = next((line.lstrip("# ").strip() for line in markdown.splitlines() if line.strip()), "")
    return (
        '<!doctype html><html><head><meta charset="utf-8">'
        f"<title>{html.escape(title or 'Report')}</title>"
        "<style>body{font:16px/1.5 system-ui,sans-serif;max-width:46rem;margin:2rem auto;"
        "padding:0 1rem}</style></head><body>" + _MD.render(markdown) + "</body></html>"
    )


def after_critique(state: ResearchState) -> str:
    return "revise" if state.get("issues") else "report"


def research_graph(_agent: AgentDefinition) -> StateGraph[Any, Any, Any, Any]:
    graph: StateGraph[Any, Any, Any, Any] = StateGraph(ResearchState, context_schema=RunContext)
    for name, node in (
        ("plan", plan),
        ("search", search),
        ("read", read),
        ("draft", draft),
        ("critique", critique),
        ("revise", revise),
        ("report", report),
    ):
        graph.add_node(name, node)
    graph.add_edge(START, "plan")
    graph.add_edge("plan", "search")
    graph.add_edge("search", "read")
    graph.add_edge("read", "draft")
    graph.add_edge("draft", "critique")
    graph.add_conditional_edges("critique", after_critique, ["revise", "report"])
    graph.add_edge("revise", "report")
    graph.add_edge("report", END)
    return graph
