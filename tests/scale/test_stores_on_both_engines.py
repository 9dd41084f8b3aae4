"""Every store behaves the same on SQLite and on PostgreSQL: what users rely on when they move
`database:` to a PostgreSQL URL (traces, keys and budgets, conversations, Responses, evals, the
knowledge-base manifest, the database response cache).

Each test runs twice through the `database_url` fixture (tests/conftest.py): on a SQLite file and
on a fresh PostgreSQL schema (skipped without LLMFORGE_TEST_POSTGRES_URL; `make test` sets it).
The cases are the ones where the engines differ: concurrency (SQLite serialises writers,
PostgreSQL does not), text PostgreSQL refuses (NUL), integers past 32 bits, cascades, ordering."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import pytest

from llmforge.core.db import open_engine
from llmforge.core.errors import BudgetExceededError, NotFoundError
from llmforge.core.types import Completion, Message
from llmforge.evals.base import Output, Score
from llmforge.evals.store import CaseResult, EvalStore, RunInfo
from llmforge.gateway.cache import CachedAnswer, SqlBackend
from llmforge.gateway.call import Caller
from llmforge.gateway.keys import NANO, KeyStore
from llmforge.gateway.response_store import ResponseStore
from llmforge.gateway.wire.responses import StoredResponse
from llmforge.kb.manifest import BaseRow, FileRow, Manifest
from llmforge.traces import Trace, TraceRecorder, TraceStore
from llmforge.ui.conversations import ConversationStore

ODD_TEXT = "naïve 中文 🙂 tab\there \x00 nul"  # NUL: PostgreSQL's text cannot hold it


def in_threads(n: int, fn: Callable[[int], object]) -> list[object]:
    """`fn(i)` on n threads released together; their results (or exceptions)."""
    gate = threading.Barrier(n)
    out: list[object] = [None] * n

    def run(i: int) -> None:
        gate.wait()
        try:
            out[i] = fn(i)
        except Exception as e:
            out[i] = e

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


# -- traces ------------------------------------------------------------------------------------


def test_traces_round_trip_with_every_field(database_url: str) -> None:
    store = TraceStore(open_engine(database_url))
    first = Trace(
        model="m",
        request={"messages": [{"role": "user", "content": ODD_TEXT}], "n": [1, 2.5, None]},
        output=ODD_TEXT,
        prompt_tokens=200_000,
        latency_ms=12.125,
        fallbacks=["a", "b"],
        tool_calls=[{"id": "c1", "name": "f", "arguments": '{"x": 1}'}],
        metadata={"team": "ops"},
        cost_usd=1.5e-9,
        stream=True,
    )
    second = Trace(model="other", request={}, created_at=first.created_at + 1)
    store.write([first, second])
    got = store.get(first.id)
    # stored whole; PostgreSQL's text cannot hold NUL, which comes back as U+FFFD
    assert got.output in (ODD_TEXT, ODD_TEXT.replace("\x00", "\ufffd"))
    assert got.request == first.request  # JSON keeps even NUL (escaped)
    assert (got.prompt_tokens, got.latency_ms, got.cost_usd) == (200_000, 12.125, 1.5e-9)
    assert (got.fallbacks, got.tool_calls, got.metadata) == (
        first.fallbacks,
        first.tool_calls,
        first.metadata,
    )
    assert got.stream is True
    assert [t.id for t in store.list()] == [second.id, first.id]  # newest first
    assert [t.id for t in store.list(model="m")] == [first.id]


async def test_recorder_writes_every_trace_including_odd_text(database_url: str) -> None:
    store = TraceStore(open_engine(database_url))
    recorder = TraceRecorder(store, linger_s=0.01)
    texts = [ODD_TEXT, "lone \ud800 surrogate", "plain"] * 20
    for i, text in enumerate(texts):
        recorder.record(Trace(model=f"m{i % 3}", request={"i": i}, output=text))
    await recorder.flush()
    await recorder.stop()
    assert recorder.stats.written == len(texts)
    assert recorder.dropped == 0
    assert len(store.list(limit=1000)) == len(texts)


# -- keys and budgets ----------------------------------------------------------------------------


def test_concurrent_reservations_never_pass_the_budget(database_url: str) -> None:
    keys = KeyStore(open_engine(database_url))
    key = keys.create("k", budget_usd=100.0).record  # 1e11 nano-dollars: past 32 bits
    cost = 7 * NANO  # 14 fit in $100

    # 24 callers at once: 14 get a reservation, the rest are told to wait (None), as the room
    # is held by calls in flight, not spent
    results = in_threads(24, lambda _: keys.reserve(key.id, cost))
    errors = [r for r in results if isinstance(r, Exception)]
    assert errors == []
    held = [r for r in results if isinstance(r, str)]
    assert len(held) == 14 and results.count(None) == 10
    assert keys.get(key.id).reserved_usd == 98.0
    for rid in held:
        keys.settle(rid, key.id, 5 * NANO)
    after = keys.get(key.id)
    assert (after.spent_usd, after.reserved_usd) == (70.0, 0.0)
    with pytest.raises(BudgetExceededError):
        keys.reserve(key.id, 31 * NANO)


def test_a_retried_settlement_is_charged_once(database_url: str) -> None:
    """Admission retries a settlement the database refused; if the first try had gone through
    (its commit lost in transit), the retry finds its reservation gone and charges nothing."""
    keys = KeyStore(open_engine(database_url))
    key = keys.create("k", budget_usd=10.0).record
    first, second = keys.reserve(key.id, 2 * NANO), keys.reserve(key.id, 2 * NANO)
    assert first is not None and second is not None
    keys.settle(first, key.id, NANO)
    keys.settle(first, key.id, NANO, again=True)  # took effect already
    keys.settle(second, key.id, NANO, again=True)  # the first try never reached the database
    after = keys.get(key.id)
    assert (after.spent_usd, after.reserved_usd) == (2.0, 0.0)


def test_keys_lookup_revoke_and_stale_reservations(database_url: str) -> None:
    keys = KeyStore(open_engine(database_url))
    created = keys.create("team", models=["local"], rpm=5, budget_usd=1.0)
    assert keys.lookup(created.key) == created.record
    rid = keys.reserve(created.record.id, NANO // 2)
    assert rid is not None
    assert keys.release_stale(older_than_s=-1) == 1
    keys.settle(rid, created.record.id, 0)  # released already: nothing is given back twice
    assert keys.get(created.record.id).reserved_usd == 0.0
    keys.revoke(created.record.id)
    assert keys.lookup(created.key) is None
    assert [k.name for k in keys.list(include_revoked=False)] == []


# -- conversations -----------------------------------------------------------------------------


def test_concurrent_appends_get_distinct_positions_in_order(database_url: str) -> None:
    store = ConversationStore(open_engine(database_url))
    conv = store.create()
    results = in_threads(12, lambda i: store.append(conv.id, "user", f"message {i}"))
    assert not [r for r in results if isinstance(r, Exception)]
    got = store.get(conv.id)
    assert [m.position for m in got.messages] == list(range(12))
    assert sorted(m.content for m in got.messages) == sorted(f"message {i}" for i in range(12))
    assert got.title  # from the first user message


def test_conversation_text_is_kept_and_deleting_removes_its_messages(database_url: str) -> None:
    engine = open_engine(database_url)
    store = ConversationStore(engine)
    conv = store.create(title=ODD_TEXT)
    store.append(conv.id, "user", ODD_TEXT)
    assert store.get(conv.id).messages[0].content in (ODD_TEXT, ODD_TEXT.replace("\x00", "\ufffd"))
    store.delete(conv.id)
    with pytest.raises(NotFoundError):
        store.get(conv.id)
    with engine.connect() as conn:  # ON DELETE CASCADE, on both engines
        assert conn.exec_driver_sql("SELECT count(*) FROM conversation_messages").scalar() == 0


# -- Responses API store -----------------------------------------------------------------------


def test_stored_responses_are_scoped_to_their_key(database_url: str) -> None:
    store = ResponseStore(open_engine(database_url))
    stored = StoredResponse(
        id="resp_1",
        key_id="key_a",
        created_at=time.time(),
        body={"id": "resp_1", "output": [{"text": ODD_TEXT}]},
        conversation=[Message(role="user", content="hi")],
    )
    store.put(stored)
    mine = Caller(key_id="key_a", name="a")
    theirs = Caller(key_id="key_b", name="b")
    assert store.get("resp_1", mine).body == stored.body
    with pytest.raises(NotFoundError):
        store.get("resp_1", theirs)
    with pytest.raises(NotFoundError):
        store.delete("resp_1", theirs)
    store.delete("resp_1", mine)
    with pytest.raises(NotFoundError):
        store.get("resp_1", None)


# -- evals -------------------------------------------------------------------------------------


def test_eval_results_are_stored_once_and_counted(database_url: str) -> None:
    store = EvalStore(open_engine(database_url))
    run = RunInfo(
        id="run-1",
        created_at=time.time(),
        dataset="d.jsonl",
        dataset_digest="0" * 64,
        cases=3,
        target="local",
        metrics=["exact_match"],
        status="running",
    )
    store.create_run(run)

    def result(i: int) -> CaseResult:
        return CaseResult(
            case_id=f"c{i}",
            position=i,
            case={"input": ODD_TEXT},
            output=Output(text=ODD_TEXT),
            scores={"exact_match": Score(value=1.0)},
        )

    # a resumed run storing the same cases from several workers: each lands once
    stored = in_threads(6, lambda i: store.add_result("run-1", result(i % 3)))
    assert sorted(stored, key=str) == [False, False, False, True, True, True]
    assert [r.case_id for r in store.results("run-1")] == ["c0", "c1", "c2"]
    assert store.get_run("run-1").done == 3
    store.cache_output("k", "local", Output(text="x"), 1.0)
    store.cache_output("k", "local", Output(text="y"), 2.0)  # the first one stays
    assert store.cached_output("k") == (Output(text="x"), 1.0)


# -- knowledge-base manifest -------------------------------------------------------------------


def test_manifest_marks_counts_and_forgets_files(database_url: str) -> None:
    manifest = Manifest(open_engine(database_url))
    manifest.add_base(BaseRow("docs", "minilm", 384, "lancedb", time.time()))

    def row(path: str, status: str, chunks: int) -> FileRow:
        return FileRow(path, "h" + path, status, "t", "txt", chunks, time.time())  # type: ignore[arg-type]

    paths = [f"dir/file-{i:04d}.txt" for i in range(1200)]  # past the 500-path batches
    manifest.mark("docs", [row(p, "done", 2) for p in paths])
    manifest.mark("docs", [row(paths[0], "pending", 0)])  # replaced, not added
    assert manifest.counts("docs") == (1199, 2398)
    manifest.forget("docs", paths[:1000])
    assert len(manifest.files("docs")) == 200
    manifest.remove_base("docs")
    assert manifest.base("docs") is None and manifest.files("docs") == {}


# -- the response cache in the database ----------------------------------------------------------


async def test_database_cache_shares_answers_and_expires_them(database_url: str) -> None:
    now = [1000.0]
    backend = SqlBackend(open_engine(database_url), clock=lambda: now[0])
    other = SqlBackend(open_engine(database_url), clock=lambda: now[0])  # a second gateway
    answer = Completion(text=ODD_TEXT)
    entry = CachedAnswer(
        key="a" * 64,
        namespace="ns",
        completion=answer,
        vector=b"\x00\x01\xff",
        created_at=now[0],
        expires_at=now[0] + 10,
    )
    await asyncio.gather(backend.put(entry), other.put(entry))  # both store it: one row
    assert backend.count() == 1
    got = await other.get("a" * 64)
    assert got is not None and got.text in (ODD_TEXT, ODD_TEXT.replace("\x00", "\ufffd"))
    assert await other.neighbours("ns", 5) == [("a" * 64, b"\x00\x01\xff")]
    now[0] += 11
    assert await other.get("a" * 64) is None
