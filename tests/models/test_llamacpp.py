"""The in-process llama.cpp backend with the real SmolLM2 model: greedy output, template, limits,
and the whole protocol: tool calls held to their schemas, structured output, log probabilities, n
choices, raw text completion, exact prompt token counts, images refused."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import pytest_asyncio

from llmforge.core.config import ModelConfig
from llmforge.core.errors import ConfigError, InvalidRequestError, OverloadedError
from llmforge.core.types import (
    Completion,
    ImagePart,
    Message,
    ResponseFormat,
    Sampling,
    Tool,
    ToolCall,
    ToolChoice,
)
from llmforge.models import CompletionBuilder, collect
from llmforge.models.llamacpp import LlamaCppChatModel, StopMatcher

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

CAPITAL = [Message(role="user", content="What is the capital of France? Answer in one word.")]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def model() -> AsyncIterator[LlamaCppChatModel]:
    """One thread: threads that wait for each other at every layer slow down many times over
    when the machine's cores are busy with other work."""
    m = LlamaCppChatModel(
        ModelConfig(
            name="local",
            provider="llamacpp",
            path="builtin:smollm2",
            context_length=512,
            threads=1,
            max_queue=0,
        )
    )
    await m.load()
    yield m
    await m.aclose()


async def test_greedy_answer_is_correct_and_repeatable(model: LlamaCppChatModel) -> None:
    runs = [await model.complete(CAPITAL, Sampling(temperature=0, max_tokens=10)) for _ in range(2)]
    assert "Paris" in runs[0].text
    assert runs[0] == runs[1]
    assert runs[0].usage.prompt_tokens > 10


async def test_the_models_own_chat_template_is_used(model: LlamaCppChatModel) -> None:
    plain = LlamaCppChatModel(
        ModelConfig(
            name="plain",
            provider="llamacpp",
            path="builtin:smollm2",
            context_length=512,
            chat_template="{% for m in messages %}{{ m.content }}{% endfor %}",
        )
    )
    own = await model.complete(CAPITAL, Sampling(temperature=0, max_tokens=1))
    bare = await plain.complete(CAPITAL, Sampling(temperature=0, max_tokens=1))
    await plain.aclose()
    # SmolLM2's template wraps turns in <|im_start|>role ... <|im_end|> and adds a system prompt
    assert own.usage.prompt_tokens > bare.usage.prompt_tokens + 8


async def test_a_prompt_longer_than_the_context_is_a_clear_400(model: LlamaCppChatModel) -> None:
    long = [Message(role="user", content="word " * 600)]
    with pytest.raises(InvalidRequestError, match="context of 512") as err:
        await model.complete(long, Sampling(max_tokens=5))
    assert err.value.http_status == 400 and err.value.param == "messages"


async def test_stop_sequences_cut_the_answer(model: LlamaCppChatModel) -> None:
    full = await model.complete(CAPITAL, Sampling(temperature=0, max_tokens=10))
    cut = full.text[2:5]
    stopped = await model.complete(CAPITAL, Sampling(temperature=0, max_tokens=10, stop=(cut,)))
    assert stopped.text == full.text[: full.text.index(cut)]
    assert stopped.finish_reason == "stop"


async def test_a_full_queue_refuses_instead_of_piling_up(model: LlamaCppChatModel) -> None:
    busy = model.stream(CAPITAL, Sampling(temperature=0, max_tokens=50))
    await anext(busy)
    with pytest.raises(OverloadedError, match="busy"):
        await collect(model.stream(CAPITAL, Sampling(max_tokens=2)))
    await busy.aclose()
    assert (await model.complete(CAPITAL, Sampling(temperature=0, max_tokens=2))).text


async def test_generation_never_blocks_the_event_loop(model: LlamaCppChatModel) -> None:
    gaps: list[float] = []

    async def ticker() -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.005)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    tick = asyncio.create_task(ticker())
    await model.complete(
        [Message(role="user", content="Tell me a story.")], Sampling(temperature=0, max_tokens=60)
    )
    tick.cancel()
    assert len(gaps) > 20 and max(gaps) < 0.25


async def test_missing_or_broken_model_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        LlamaCppChatModel(
            ModelConfig(name="x", provider="llamacpp", path=str(tmp_path / "none.gguf"))
        )._ensure_loaded()
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf at all")
    with pytest.raises(ConfigError, match="cannot load GGUF"):
        LlamaCppChatModel(
            ModelConfig(name="x", provider="llamacpp", path=str(junk))
        )._ensure_loaded()
    with pytest.raises(ConfigError, match="needs `path`"):
        LlamaCppChatModel(ModelConfig(name="x", provider="llamacpp"))


@pytest.mark.parametrize(
    ("pieces", "stops", "expected"),
    [
        (["Hel", "lo wor", "ld"], ["wor"], ("Hello ", True)),
        (["a<", "/s", "> b"], ["</s>"], ("a", True)),
        (["ab", "c"], ["x"], ("abc", False)),
        (["a<", "b"], ["</s>"], ("a<b", False)),
    ],
)
async def test_stop_matcher_holds_back_partial_matches(
    pieces: list[str], stops: list[str], expected: tuple[str, bool]
) -> None:
    m = StopMatcher(stops)
    out, hit = "", False
    for p in pieces:
        text, hit = m.feed(p)
        out += text
        if hit:
            break
    if not hit:
        out += m.flush()
    assert (out, hit) == expected


# -- the whole protocol: tools, structured output, logprobs, n, raw text -----------------------

WEATHER = Tool(
    name="get_weather",
    description="Current weather in a city",
    parameters={
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "unit": {"enum": ["celsius", "fahrenheit"]},
        },
        "required": ["city", "unit"],
    },
)
BOOK = Tool(  # nested objects, enums, arrays, required and optional fields
    name="book_flight",
    description="Book a flight for passengers",
    parameters={
        "type": "object",
        "properties": {
            "origin": {"type": "string"},
            "destination": {"type": "string"},
            "passengers": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
                    "required": ["name", "age"],
                },
                "minItems": 1,
                "maxItems": 3,
            },
            "cabin": {"enum": ["economy", "business", "first"]},
            "options": {
                "type": "object",
                "properties": {
                    "window_seat": {"type": "boolean"},
                    "meals": {"type": "array", "items": {"enum": ["vegan", "regular"]}},
                },
                "required": ["window_seat"],
            },
        },
        "required": ["origin", "destination", "passengers", "cabin", "options"],
    },
)
TOOLS = (WEATHER, BOOK)
ASK_WEATHER = [Message(role="user", content="What is the weather in Paris?")]
ASK_BOOKING = [
    Message(
        role="user",
        content="Book a business class flight from Paris to Rome for Anna, 34 years old, "
        "with a window seat.",
    )
]
CALLED = [
    *ASK_WEATHER,
    Message(
        role="assistant",
        tool_calls=(
            ToolCall(
                id="call_1", name="get_weather", arguments='{"city":"Paris","unit":"celsius"}'
            ),
        ),
    ),
    Message(role="tool", tool_call_id="call_1", content="sunny, 24 degrees"),
]
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "languages": {"type": "array", "items": {"enum": ["en", "fr", "it"]}, "maxItems": 3},
        "address": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
            "required": ["city", "country"],
        },
    },
    "required": ["name", "age", "languages", "address"],
    "additionalProperties": False,
}
DESCRIBE = [
    Message(
        role="user",
        content="Describe Anna, a 34 year old from Rome who speaks Italian and English, as JSON.",
    )
]


def tools(mode: str = "auto", name: str | None = None, **kw: Any) -> Sampling:
    choice = ToolChoice(mode=mode, name=name)  # type: ignore[arg-type]
    return Sampling(
        **{"temperature": 0, "max_tokens": 160, "tools": TOOLS, **kw}, tool_choice=choice
    )


def assert_well_formed_calls(answer: Completion) -> None:
    """Every call names an offered tool, has a fresh id, and arguments valid for its schema."""
    assert answer.finish_reason == "tool_calls" and answer.text == "" and answer.tool_calls
    schemas = {t.name: t.parameters for t in TOOLS}
    for call in answer.tool_calls:
        assert call.id.startswith("call_") and len(call.id) > 10
        jsonschema.validate(json.loads(call.arguments), schemas[call.name])
    assert len({c.id for c in answer.tool_calls}) == len(answer.tool_calls)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def wide() -> AsyncIterator[LlamaCppChatModel]:
    """Room for tool descriptions (one thread, as `model`)."""
    m = LlamaCppChatModel(
        ModelConfig(
            name="wide",
            provider="llamacpp",
            path="builtin:smollm2",
            context_length=2048,
            threads=1,
            max_queue=0,
        )
    )
    await m.load()
    yield m
    await m.aclose()


@pytest.mark.parametrize(
    ("ask", "choice", "parallel"),
    [
        (ASK_WEATHER, ("required", None), None),
        (ASK_BOOKING, ("required", None), False),
        (ASK_BOOKING, ("function", "book_flight"), None),
    ],
)
async def test_forced_calls_parse_and_follow_the_tools_schema(
    wide: LlamaCppChatModel,
    ask: list[Message],
    choice: tuple[str, str | None],
    parallel: bool | None,
) -> None:
    answer = await wide.complete(ask, tools(*choice, parallel_tool_calls=parallel))
    assert_well_formed_calls(answer)
    if choice[0] == "function":
        assert [c.name for c in answer.tool_calls] == ["book_flight"]
    if parallel is False:
        assert len(answer.tool_calls) == 1


async def test_a_named_tool_is_called_even_when_it_does_not_fit_the_question(
    wide: LlamaCppChatModel,
) -> None:
    answer = await wide.complete(ASK_BOOKING, tools("function", "get_weather"))
    assert_well_formed_calls(answer)
    assert [c.name for c in answer.tool_calls] == ["get_weather"]


@pytest.mark.parametrize("ask", [ASK_WEATHER, ASK_BOOKING, CALLED])
async def test_auto_answers_in_text_or_calls_and_either_is_well_formed(
    wide: LlamaCppChatModel, ask: list[Message]
) -> None:
    answer = await wide.complete(ask, tools(parallel_tool_calls=False))
    if answer.tool_calls:
        assert_well_formed_calls(answer)
    else:  # a text answer, un-wrapped from its envelope
        assert answer.finish_reason == "stop" and answer.text
        assert not answer.text.startswith('{"response"')


async def test_tool_choice_none_answers_in_plain_text(wide: LlamaCppChatModel) -> None:
    answer = await wide.complete(ASK_WEATHER, tools("none", max_tokens=20))
    assert not answer.tool_calls and answer.finish_reason in ("stop", "length")
    assert answer.text and not answer.text.startswith("{")
    # the tools are not described to a model that may not call them
    with_tools = wide.count_prompt_tokens(ASK_WEATHER, tools())
    assert with_tools is not None and answer.usage.prompt_tokens < with_tools - 50


async def test_streamed_calls_reassemble_to_the_answer_given_whole(
    wide: LlamaCppChatModel,
) -> None:
    sampling = tools("required", parallel_tool_calls=False)
    whole = await wide.complete(ASK_BOOKING, sampling)
    deltas = [d async for d in wide.stream(ASK_BOOKING, sampling)]
    streamed = CompletionBuilder()
    for d in deltas:
        streamed.add(d)
    got = streamed.result()
    assert [(c.name, c.arguments) for c in got.tool_calls] == [
        (c.name, c.arguments) for c in whole.tool_calls
    ]
    assert got.finish_reason == "tool_calls" and got.usage == whole.usage
    pieces = [p for d in deltas for p in d.tool_calls]
    for index in range(len(got.tool_calls)):
        mine = [p for p in pieces if p.index == index]
        # as OpenAI streams them: id and name first, then the arguments piece by piece
        assert mine[0].id and mine[0].name and not mine[0].arguments
        assert all(p.id is None and p.name is None for p in mine[1:])
        assert len(mine) > 5


async def test_an_auto_text_answer_streams_as_text(wide: LlamaCppChatModel) -> None:
    sampling = tools(parallel_tool_calls=False, max_tokens=40)
    deltas = [d async for d in wide.stream(ASK_WEATHER, sampling)]
    texts = [d.text for d in deltas if d.text]
    assert len(texts) > 5  # piece by piece, as generated
    assert "".join(texts) == (await wide.complete(ASK_WEATHER, sampling)).text
    assert not any(d.tool_calls for d in deltas)


async def test_a_conversation_with_calls_and_results_counts_as_it_is_sent(
    wide: LlamaCppChatModel,
) -> None:
    for ask, sampling in [
        (ASK_WEATHER, Sampling(temperature=0, max_tokens=2)),
        (ASK_WEATHER, tools(max_tokens=2)),
        (CALLED, tools(max_tokens=2)),
        (CALLED, tools("none", max_tokens=2)),
    ]:
        counted = wide.count_prompt_tokens(ask, sampling)
        answer = await wide.complete(ask, sampling)
        assert counted == answer.usage.prompt_tokens


async def test_counting_tokens_is_safe_while_the_model_decodes(wide: LlamaCppChatModel) -> None:
    expected = wide.count_prompt_tokens(CALLED, tools())
    busy = wide.stream(ASK_WEATHER, Sampling(temperature=0, max_tokens=40))
    await anext(busy)
    counts = []
    async for _ in busy:
        counts.append(wide.count_prompt_tokens(CALLED, tools()))
    assert counts and set(counts) == {expected}


async def test_counting_tokens_before_the_weights_load_is_unknown() -> None:
    fresh = LlamaCppChatModel(ModelConfig(name="x", provider="llamacpp", path="builtin:smollm2"))
    assert fresh.count_prompt_tokens(ASK_WEATHER, Sampling()) is None
    await fresh.aclose()


async def test_json_object_answers_parse(wide: LlamaCppChatModel) -> None:
    ask = [Message(role="user", content="Give the capital of France as JSON.")]
    fmt = ResponseFormat(type="json_object")
    answer = await wide.complete(ask, Sampling(temperature=0, max_tokens=60, response_format=fmt))
    assert answer.finish_reason == "stop"
    assert isinstance(json.loads(answer.text), dict)


async def test_json_schema_answers_follow_the_schema(wide: LlamaCppChatModel) -> None:
    fmt = ResponseFormat(type="json_schema", json_schema=PERSON, name="person", strict=True)
    sampling = Sampling(temperature=0, max_tokens=120, response_format=fmt)
    answer = await wide.complete(DESCRIBE, sampling)
    assert answer.finish_reason == "stop"
    jsonschema.validate(json.loads(answer.text), PERSON)
    streamed = "".join([d.text async for d in wide.stream(DESCRIBE, sampling)])
    assert streamed == answer.text


async def test_an_auto_answer_with_a_response_format_follows_it_too(
    wide: LlamaCppChatModel,
) -> None:
    fmt = ResponseFormat(type="json_schema", json_schema=PERSON)
    sampling = tools(response_format=fmt, parallel_tool_calls=False, tools=(WEATHER,))
    answer = await wide.complete(DESCRIBE, sampling)
    if answer.tool_calls:
        assert_well_formed_calls(answer)
    else:
        jsonschema.validate(json.loads(answer.text), PERSON)


async def test_logprobs_come_per_token_with_the_top_alternatives(
    model: LlamaCppChatModel,
) -> None:
    sampling = Sampling(temperature=0, max_tokens=10, logprobs=True, top_logprobs=3)
    answer = await model.complete(CAPITAL, sampling)
    assert answer.logprobs is not None
    assert len(answer.logprobs) == answer.usage.completion_tokens > 3
    assert "".join(lp.token for lp in answer.logprobs) == answer.text
    for lp in answer.logprobs:
        assert lp.logprob <= 0 and len(lp.top_logprobs) == 3
        ranked = [t.logprob for t in lp.top_logprobs]
        assert ranked == sorted(ranked, reverse=True)
        # greedy picks the most likely token
        assert lp.top_logprobs[0].token == lp.token and lp.top_logprobs[0].logprob == lp.logprob
        assert bytes(lp.bytes or []) == lp.token.encode()
    deltas = [d async for d in model.stream(CAPITAL, sampling)]
    assert [lp for d in deltas for lp in d.logprobs or []] == answer.logprobs
    without = await model.complete(CAPITAL, Sampling(temperature=0, max_tokens=10))
    assert without.logprobs is None and without.text == answer.text


async def test_n_answers_come_as_choices_with_the_prompt_counted_once(
    model: LlamaCppChatModel,
) -> None:
    one = await model.complete(CAPITAL, Sampling(temperature=0, max_tokens=6))
    two = await model.complete(CAPITAL, Sampling(temperature=0, max_tokens=6, n=2))
    assert [c.text for c in two.choices()] == [one.text, one.text]  # greedy: the same answer
    assert [c.index for c in two.choices()] == [0, 1]
    assert two.usage.prompt_tokens == one.usage.prompt_tokens
    assert two.usage.completion_tokens == 2 * one.usage.completion_tokens
    sampled = Sampling(temperature=1.0, seed=7, max_tokens=12, n=2)
    first, again = [await model.complete(DESCRIBE, sampled) for _ in range(2)]
    texts = [c.text for c in first.choices()]
    assert texts == [c.text for c in again.choices()]  # seed, seed + 1: reproducible
    assert texts[0] != texts[1]


async def test_n_streamed_choices_each_end_and_usage_comes_last(
    model: LlamaCppChatModel,
) -> None:
    deltas = [d async for d in model.stream(CAPITAL, Sampling(temperature=0, max_tokens=4, n=2))]
    assert [d.choice for d in deltas] == sorted(d.choice for d in deltas)
    ends = [d for d in deltas if d.finish_reason]
    assert [d.choice for d in ends] == [0, 1] and ends[-1] is deltas[-1]
    assert [d for d in deltas if d.usage] == [deltas[-1]]


async def test_stream_text_continues_raw_text(model: LlamaCppChatModel) -> None:
    greedy = Sampling(temperature=0, max_tokens=6)
    answer = await collect(model.stream_text("The capital of France is", greedy))
    assert answer.text.startswith(" Paris")
    assert answer.usage.prompt_tokens == 5  # no chat template around it
    assert answer.finish_reason == "length" and answer.usage.completion_tokens == 6
    stopped = await collect(
        model.stream_text("The capital of France is", greedy.model_copy(update={"stop": (".",)}))
    )
    assert stopped.text == " Paris" and stopped.finish_reason == "stop"
    two = CompletionBuilder()
    sampling = greedy.model_copy(update={"n": 2, "logprobs": True, "top_logprobs": 1})
    async for d in model.stream_text("The capital of France is", sampling):
        two.add(d)
    both = two.result(logprobs=True)
    assert [c.text for c in both.choices()] == [answer.text, answer.text]
    assert all(len(c.logprobs or []) == 6 for c in both.choices())


async def test_closing_a_text_stream_stops_it_and_frees_the_model(
    model: LlamaCppChatModel,
) -> None:
    started = time.perf_counter()
    stream = model.stream_text("Once upon a time", Sampling(temperature=0, max_tokens=400))
    await anext(stream)
    await stream.aclose()
    answer = await model.complete(CAPITAL, Sampling(temperature=0, max_tokens=2))
    assert answer.text and time.perf_counter() - started < 30


async def test_text_completion_refuses_what_it_cannot_do(model: LlamaCppChatModel) -> None:
    with pytest.raises(InvalidRequestError, match="empty"):
        await collect(model.stream_text("", Sampling()))
    with pytest.raises(InvalidRequestError, match="cannot call tools"):
        await collect(model.stream_text("Hi", Sampling(tools=(WEATHER,))))
    with pytest.raises(InvalidRequestError, match="context of 512") as err:
        await collect(model.stream_text("word " * 600, Sampling(max_tokens=5)))
    assert err.value.param == "prompt"


async def test_images_and_unknown_tools_are_refused_before_queueing(
    model: LlamaCppChatModel,
) -> None:
    picture = Message(
        role="user", content="What is this?", images=(ImagePart(url="data:image/png;base64,AA"),)
    )
    busy = model.stream(CAPITAL, Sampling(temperature=0, max_tokens=50))
    await anext(busy)  # the only slot is taken: a queued request would get 503
    with pytest.raises(InvalidRequestError, match="'local' reads text only") as err:
        await model.complete([picture], Sampling(max_tokens=2))
    assert err.value.http_status == 400 and err.value.param == "messages"
    unknown = Sampling(tools=(WEATHER,), tool_choice=ToolChoice(mode="function", name="nope"))
    with pytest.raises(InvalidRequestError, match="'nope'"):
        await model.complete(CAPITAL, unknown)
    await busy.aclose()
