"""The registry: entry-point plugins, direct registration, and errors that list valid names."""

from __future__ import annotations

import pytest

from llmforge.core.errors import UnknownNameError
from llmforge.core.registry import Registry
from llmforge.models import chat_models, embedders


def test_builtins_arrive_through_entry_points_like_plugins() -> None:
    assert {"llamacpp", "openai", "fake"} <= set(chat_models.names())
    assert {"sentence-transformers", "openai", "fake"} <= set(embedders.names())


def test_unknown_name_lists_the_valid_ones() -> None:
    with pytest.raises(UnknownNameError) as err:
        chat_models.get("gpt4all")
    assert "Unknown model provider 'gpt4all'" in err.value.message
    assert "Known: " + ", ".join(chat_models.names()) + "." in err.value.message


def test_registered_factories_are_returned_as_is() -> None:
    reg: Registry[object] = Registry("widget", "llmforge.tests.none")

    def factory() -> str:
        return "w"

    reg.register("w", factory)
    assert reg.get("w") is factory
    assert reg.names() == ["w"]
