"""A generic name -> factory registry, fed by code and by package entry points.

Built-in backends register exactly the way a third-party plugin does: an entry point in the group
the registry names (e.g. `llmforge.models`), loaded the first time a name is looked up. `register()`
adds one directly (tests, notebooks). It deliberately does no instantiation: it hands back the
factory.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Generic, TypeVar

from llmforge.core.errors import UnknownNameError

F = TypeVar("F", bound=Callable[..., object])


class Registry(Generic[F]):
    """Factories of one pluggable kind, by name."""

    def __init__(self, kind: str, group: str) -> None:
        self.kind = kind
        self.group = group
        self._factories: dict[str, F] = {}
        self._loaded = False

    def register(self, name: str, factory: F) -> None:
        self._factories[name] = factory

    def get(self, name: str) -> F:
        if name not in self._factories:
            self._load_entry_points()
        try:
            return self._factories[name]
        except KeyError:
            raise UnknownNameError(self.kind, name, self.names()) from None

    def names(self) -> list[str]:
        self._load_entry_points()
        return sorted(self._factories)

    def _load_entry_points(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        for ep in entry_points(group=self.group):
            self._factories.setdefault(ep.name, ep.load())
