"""The fake embedder honours `max_request_tokens` (its tokens are words), like the real ones."""

from __future__ import annotations

import pytest

from llmforge.core.config import EmbeddingConfig
from llmforge.core.errors import InvalidRequestError
from llmforge.models.base import embedders


async def test_the_fake_embedder_refuses_a_request_over_max_request_tokens() -> None:
    config = EmbeddingConfig(name="e", provider="fake", max_request_tokens=5)
    embedder = embedders.get("fake")(config)
    try:
        assert (await embedder.embed(["two words", "three words here"])).prompt_tokens == 5
        with pytest.raises(InvalidRequestError, match=r"6 tokens.*over the 5") as caught:
            await embedder.embed(["two words", "three words here", "six"])
        assert caught.value.http_status == 400
    finally:
        await embedder.aclose()
