"""A knowledge base exposed as a model (`provider: rag`): grounded answers with numbered citations
that point to real chunks, through the `openai` SDK against a real server."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import openai
import pytest

from llmforge.core.errors import ConfigError
from llmforge.core.settings import Settings, load_settings
from llmforge.gateway import create_app
from llmforge.kb import KnowledgeBase, KnowledgeBases
from llmforge.kb.rag import NO_ANSWER, NO_ANSWER_CJK, _attribute, _MarkerFilter, _queries
from llmforge.models import ModelCatalog
from tests.fakes.server import serve
from tests.kb.conftest import HASH_EMBEDDING, minilm, write_corpus

SEALS = "How often should the impeller seals of the pump be replaced?"
# Hashed words, wide enough that unrelated texts rarely collide (cosine ~0.1 vs ~0.5 for a match).
WORDS = {**HASH_EMBEDDING, "dimensions": 512}
T = TypeVar("T")


def rag_settings(tmp_path: Path, replies: list[str], **rag: Any) -> Settings:
    return load_settings(
        None,
        database=f"sqlite:///{tmp_path / 'rag.db'}",
        embeddings=[WORDS],
        kb={"path": str(tmp_path / "kbs")},
        server={"preload": False},
        models=[
            {"name": "writer", "provider": "fake", "responses": replies},
            {
                "name": "docs-assistant",
                "provider": "rag",
                "kb": "docs",
                "model": "writer",
                "rag": rag,
            },
        ],
    )


def on_docs(settings: Settings, action: Callable[[KnowledgeBase], Awaitable[T]]) -> T:
    """Run `action` on the knowledge base 'docs' (created when missing), outside the server."""

    async def run() -> T:
        kbs = KnowledgeBases(settings)
        try:
            return await action(await kbs.open("docs", create=True))
        finally:
            await kbs.aclose()

    return asyncio.run(run())


def ingest_corpus(settings: Settings, folder: Path) -> None:
    on_docs(settings, lambda kb: kb.ingest([folder]))


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    write_corpus(tmp_path / "docs")
    return tmp_path / "docs"


@contextmanager
def client_for(settings: Settings) -> Iterator[openai.OpenAI]:
    with serve(create_app(settings)) as base:
        yield openai.OpenAI(base_url=base + "/v1", api_key="x", max_retries=0, timeout=60)


def chunk_ids(settings: Settings, ids: set[str]) -> set[str]:
    """Those of `ids` that are chunks of the knowledge base (each fetched by id)."""

    async def fetch(kb: KnowledgeBase) -> set[str]:
        return {(await kb.get_chunk(i)).id for i in ids}

    return on_docs(settings, fetch)


def ask(client: openai.OpenAI, question: str, **options: Any) -> Any:
    return client.chat.completions.create(
        model="docs-assistant", messages=[{"role": "user", "content": question}], **options
    )


def test_answer_cites_numbered_sources_that_are_real_chunks(tmp_path: Path, corpus: Path) -> None:
    settings = rag_settings(tmp_path, ["Replace the impeller seals every 2000 hours [1]."])
    ingest_corpus(settings, corpus)
    with client_for(settings) as client:
        reply = ask(client, SEALS)
    text = reply.choices[0].message.content or ""
    sources = (reply.model_extra or {})["sources"]
    assert "[1]" in text
    assert sources[0]["number"] == 1 and sources[0]["cited"] is True
    assert sources[0]["source"].endswith("pump.md")
    assert "2000 hours" in sources[0]["text"]
    assert chunk_ids(settings, {s["id"] for s in sources}) == {s["id"] for s in sources}
    assert [s["number"] for s in sources] == list(range(1, len(sources) + 1))


def test_streamed_answer_ends_with_its_sources(tmp_path: Path, corpus: Path) -> None:
    settings = rag_settings(tmp_path, ["Seals last 2000 hours [1]."])
    ingest_corpus(settings, corpus)
    with client_for(settings) as client:
        chunks = list(ask(client, SEALS, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    final = [c for c in chunks if (c.model_extra or {}).get("sources")]
    assert text == "Seals last 2000 hours [1]."
    assert len(final) == 1 and final[0].choices[0].finish_reason == "stop"
    assert final[0].model_extra is not None
    assert final[0].model_extra["sources"][0]["source"].endswith("pump.md")


def test_markers_naming_no_passage_are_removed_and_uncited_answers_get_attributed(
    tmp_path: Path, corpus: Path
) -> None:
    settings = rag_settings(
        tmp_path, ["Replace the impeller seals every 2000 hours of running [9]."]
    )
    ingest_corpus(settings, corpus)
    with client_for(settings) as client:
        reply = ask(client, SEALS)
    text = reply.choices[0].message.content or ""
    sources = (reply.model_extra or {})["sources"]
    assert "[9]" not in text
    cited = [s for s in sources if s["cited"]]
    assert cited and all(f"[{s['number']}]" in text for s in cited)
    assert cited[0]["source"].endswith("pump.md")


def test_question_outside_the_knowledge_base_is_answered_plainly_without_the_model(
    tmp_path: Path, corpus: Path
) -> None:
    settings = rag_settings(tmp_path, ["MODEL WAS CALLED"])
    ingest_corpus(settings, corpus)
    with client_for(settings) as client:
        english = ask(client, "Which volcano erupted in Iceland last year?")
        chinese = ask(client, "冰岛去年哪座火山喷发了？")
    assert english.choices[0].message.content == NO_ANSWER.format(kb="docs")
    assert chinese.choices[0].message.content == NO_ANSWER_CJK.format(kb="docs")
    assert "sources" not in (english.model_extra or {})


def test_small_talk_is_answered_without_a_search(tmp_path: Path, corpus: Path) -> None:
    # brackets in an answer given without passages are the model's own text, not citations
    settings = rag_settings(tmp_path, ["You are welcome! Footnotes look like [1]."])
    ingest_corpus(settings, corpus)
    with client_for(settings) as client:
        reply = ask(client, "Thanks!")
    assert reply.choices[0].message.content == "You are welcome! Footnotes look like [1]."
    assert "sources" not in (reply.model_extra or {})


def test_model_mode_lets_the_model_decide_and_write_the_query(tmp_path: Path, corpus: Path) -> None:
    decision = '{"search": true, "queries": ["impeller seals replacement interval"]}'
    settings = rag_settings(
        tmp_path, [decision, "Every 2000 hours [1]."], retrieval="model", max_searches=1
    )
    ingest_corpus(settings, corpus)
    with client_for(settings) as client:
        reply = ask(client, "What about the thing that leaks in it?")
    sources = (reply.model_extra or {})["sources"]
    assert reply.choices[0].message.content == "Every 2000 hours [1]."
    assert sources[0]["source"].endswith("pump.md")  # found by the model's query alone
    assert reply.usage is not None and reply.usage.completion_tokens > 3  # both calls counted


def test_unknown_knowledge_base_is_a_clear_404(tmp_path: Path) -> None:
    settings = rag_settings(tmp_path, ["x"])
    with client_for(settings) as client, pytest.raises(openai.NotFoundError) as err:
        ask(client, SEALS)
    assert "Unknown knowledge base 'docs'" in str(err.value)


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ({"kb": "docs"}, "needs `kb:`"),
        ({"kb": "docs", "model": "nowhere"}, "nowhere"),
        ({"kb": "docs", "model": "docs-assistant"}, "through itself"),
    ],
)
def test_misconfigured_rag_model_fails_at_start_up(
    tmp_path: Path, model: dict[str, Any], message: str
) -> None:
    settings = load_settings(
        None,
        database=f"sqlite:///{tmp_path / 'rag.db'}",
        embeddings=[HASH_EMBEDDING],
        models=[{"name": "docs-assistant", "provider": "rag", **model}],
    )
    with pytest.raises(ConfigError) as err:
        ModelCatalog.from_settings(settings)
    assert message in err.value.message and "docs-assistant" in err.value.message


def test_follow_up_is_searched_with_its_conversation() -> None:
    assert _queries(["Tell me about the water pump"]) == ["Tell me about the water pump"]
    assert _queries(["Tell me about the water pump", "How often are its seals replaced?"]) == [
        "How often are its seals replaced?",
        "Tell me about the water pump How often are its seals replaced?",
    ]


def test_marker_filter_keeps_valid_markers_across_stream_pieces() -> None:
    markers = _MarkerFilter(passages=2)
    pieces = ["Seals [", "1] and housing [", "3", "] and [2", "]"]
    out = "".join(markers.feed(p) for p in pieces) + markers.flush()
    assert out == "Seals [1] and housing  and [2]"
    assert markers.cited == {1, 2}


def test_attribution_needs_real_overlap() -> None:
    from llmforge.core.types import Source

    pump = Source(number=1, id="a", kb="k", source="p.md", text="replace impeller seals 2000 hours")
    garden = Source(number=2, id="b", kb="k", source="g.md", text="tomatoes need full sun")
    assert _attribute("Replace the impeller seals after 2000 hours.", [pump, garden]) == {1}
    assert _attribute("I have no idea at all.", [pump, garden]) == set()


def test_real_model_and_embedder_answer_from_the_documents_and_decline_the_rest(
    tmp_path: Path, corpus: Path, onnx_cache: Path
) -> None:
    settings = load_settings(
        None,
        database=f"sqlite:///{tmp_path / 'rag.db'}",
        embeddings=[minilm(onnx_cache)],
        kb={"path": str(tmp_path / "kbs")},
        server={"preload": False},
        models=[
            {"name": "local", "provider": "llamacpp", "path": "builtin:smollm2"},
            {"name": "docs-assistant", "provider": "rag", "kb": "docs", "model": "local"},
        ],
    )
    ingest_corpus(settings, corpus)
    with client_for(settings) as client:
        chunks = list(ask(client, SEALS, stream=True, max_tokens=24, temperature=0))
        declined = ask(client, "Which volcano erupted in Iceland last year?", max_tokens=24)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    sources = next(c.model_extra["sources"] for c in chunks if (c.model_extra or {}).get("sources"))
    assert text.strip()
    assert sources[0]["source"].endswith("pump.md") and "2000 hours" in sources[0]["text"]
    assert chunk_ids(settings, {s["id"] for s in sources}) == {s["id"] for s in sources}
    assert declined.choices[0].message.content == NO_ANSWER.format(kb="docs")
