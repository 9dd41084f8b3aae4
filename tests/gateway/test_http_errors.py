"""Raw HTTP failure paths: every client mistake is a 4xx with an OpenAI-style body, never a 500."""

from __future__ import annotations

import httpx
import pytest

from llmforge.core.settings import Settings

pytestmark = pytest.mark.slow


def post(base: str, path: str, content: bytes, ctype: str = "application/json") -> httpx.Response:
    return httpx.post(base + path, content=content, headers={"content-type": ctype}, timeout=30)


def assert_error(r: httpx.Response, status: int, param: str | None = None) -> dict[str, object]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if param is not None:
        assert err["param"] == param
    return err  # type: ignore[no-any-return]


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/embeddings"])
def test_malformed_json_is_400(live: tuple[str, Settings], path: str) -> None:
    err = assert_error(post(live[0], path, b'{"model": "fake", "messages": [}'), 400)
    assert "Malformed JSON" in str(err["message"])


@pytest.mark.parametrize("body", [b"[1, 2]", b'"text"', b"null", b""])
def test_body_that_is_not_an_object_is_400(live: tuple[str, Settings], body: bytes) -> None:
    assert_error(post(live[0], "/v1/chat/completions", body), 400)


def test_missing_and_wrongly_typed_fields_name_the_field(live: tuple[str, Settings]) -> None:
    assert_error(post(live[0], "/v1/chat/completions", b'{"model": "fake"}'), 400, "messages")
    assert_error(
        post(
            live[0],
            "/v1/chat/completions",
            b'{"model": "fake", "messages": [{"role": "user", "content": 5}]}',
        ),
        400,
        "messages.0.content",
    )
    assert_error(
        post(
            live[0],
            "/v1/chat/completions",
            b'{"model": 3, "messages": [{"role": "user", "content": "x"}]}',
        ),
        400,
        "model",
    )
    assert_error(
        post(
            live[0],
            "/v1/chat/completions",
            b'{"model": "fake", "stream": "yes", "messages": [{"role": "user", "content": "x"}]}',
        ),
        400,
        "stream",
    )
    assert_error(
        post(live[0], "/v1/embeddings", b'{"model": "hash", "input": [1, 2]}'), 400, "input"
    )
    assert_error(post(live[0], "/v1/embeddings", b'{"model": "hash", "input": []}'), 400, "input")
    assert_error(
        post(
            live[0], "/v1/embeddings", b'{"model": "hash", "input": "x", "encoding_format": "hex"}'
        ),
        400,
        "encoding_format",
    )


def test_non_text_content_and_tools_are_refused_not_ignored(live: tuple[str, Settings]) -> None:
    image = (
        b'{"model": "fake", "messages": [{"role": "user", "content": [{"type": "image_url", '
        b'"image_url": {"url": "data:,"}}]}]}'
    )
    assert_error(post(live[0], "/v1/chat/completions", image), 400)
    tools = (
        b'{"model": "fake", "messages": [{"role": "user", "content": "x"}], '
        b'"tools": [{"type": "function", "function": {"name": "f"}}]}'
    )
    assert_error(post(live[0], "/v1/chat/completions", tools), 400, "tools")
    for extra, param in ((b'"logprobs": true', "logprobs"), (b'"n": 2', "n")):
        body = b'{"model": "fake", "messages": [{"role": "user", "content": "x"}], ' + extra + b"}"
        assert_error(post(live[0], "/v1/chat/completions", body), 400, param)


def test_an_embedding_model_named_for_chat_is_a_400_that_says_so(
    live: tuple[str, Settings],
) -> None:
    err = assert_error(
        post(
            live[0],
            "/v1/chat/completions",
            b'{"model": "hash", "messages": [{"role": "user", "content": "x"}]}',
        ),
        400,
        "model",
    )
    assert "embedding model" in str(err["message"])


def test_text_content_parts_are_accepted(live: tuple[str, Settings]) -> None:
    r = post(
        live[0],
        "/v1/chat/completions",
        b'{"model": "fake", "messages": [{"role": "user", "content": [{"type": "text", '
        b'"text": "hi"}]}]}',
    )
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"]


def test_huge_body_is_413(live: tuple[str, Settings]) -> None:
    big = b'{"model": "fake", "messages": [{"role": "user", "content": "' + b"x" * 100_000 + b'"}]}'
    err = assert_error(post(live[0], "/v1/chat/completions", big), 413)
    assert err["code"] == "request_too_large"

    def chunks():  # no content-length: counted as it arrives
        yield big[:50_000]
        yield big[50_000:]

    r = httpx.post(
        live[0] + "/v1/chat/completions",
        content=chunks(),
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert_error(r, 413)


def test_unknown_path_and_wrong_method_are_json(live: tuple[str, Settings]) -> None:
    assert_error(httpx.get(live[0] + "/v1/nothing"), 404)
    assert_error(httpx.get(live[0] + "/v1/chat/completions"), 405)


def test_dimensions_other_than_native_is_400(live: tuple[str, Settings]) -> None:
    assert_error(
        post(live[0], "/v1/embeddings", b'{"model": "hash", "input": "x", "dimensions": 4}'),
        400,
        "dimensions",
    )
    ok = post(live[0], "/v1/embeddings", b'{"model": "hash", "input": "x", "dimensions": 8}')
    assert ok.status_code == 200


def test_health(live: tuple[str, Settings]) -> None:
    r = httpx.get(live[0] + "/health")
    assert r.status_code == 200 and r.json()["status"] == "ok"
