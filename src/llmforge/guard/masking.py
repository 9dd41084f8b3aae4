"""Replacing what guards found: reversible placeholders within one request, or for good.

`Vault` belongs to one request. `mask(text, spans)` swaps each found value for a placeholder such
as `[EMAIL_1]` (the same value gets the same placeholder everywhere in the request, so the model
can still tell two people apart) and remembers it; `restore(text)` puts the values back into the
model's answer. `StreamRestorer` does the same over a streamed answer whose pieces may split a
placeholder, holding back at most one placeholder's length. `redact(text, spans)` replaces for
good (`[EMAIL]`). Nothing here decides what to mask: that is the guards' and the policy's job.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from llmforge.guard.base import Span

_PLACEHOLDER = re.compile(r"\[([A-Z_]+)_(\d+)\]")
_LONGEST = 24  # characters a placeholder can take, e.g. "[CN_MOBILE_123]"


class Vault:
    def __init__(self) -> None:
        self._by_value: dict[str, str] = {}
        self._by_placeholder: dict[str, str] = {}
        self._counts: dict[str, int] = {}

    def __bool__(self) -> bool:
        return bool(self._by_placeholder)

    def mask(self, text: str, spans: Sequence[Span]) -> str:
        out, at = [], 0
        for span in sorted(spans, key=lambda s: s.start):
            value = text[span.start : span.end]
            out.append(text[at : span.start])
            out.append(self._placeholder(value, span.kind))
            at = span.end
        out.append(text[at:])
        return "".join(out)

    def restore(self, text: str) -> str:
        if not self._by_placeholder or "[" not in text:
            return text
        return _PLACEHOLDER.sub(lambda m: self._by_placeholder.get(m.group(), m.group()), text)

    def scrub(self, text: str) -> str:
        """`text` with every value this vault holds replaced by its placeholder (for traces)."""
        for value in sorted(self._by_value, key=len, reverse=True):
            if value in text:
                text = text.replace(value, self._by_value[value])
        return text

    def _placeholder(self, value: str, kind: str) -> str:
        known = self._by_value.get(value)
        if known is not None:
            return known
        tag = kind.upper()
        self._counts[tag] = self._counts.get(tag, 0) + 1
        placeholder = f"[{tag}_{self._counts[tag]}]"
        self._by_value[value] = placeholder
        self._by_placeholder[placeholder] = value
        return placeholder


def redact(text: str, spans: Sequence[Span]) -> str:
    out, at = [], 0
    for span in sorted(spans, key=lambda s: s.start):
        out.append(text[at : span.start])
        out.append(f"[{span.kind.upper()}]")
        at = span.end
    out.append(text[at:])
    return "".join(out)


class StreamRestorer:
    """Restores placeholders in a stream: `feed(piece)` returns what may be sent now; `flush()`
    the rest at the end."""

    def __init__(self, vault: Vault) -> None:
        self.vault = vault
        self._held = ""

    def feed(self, piece: str) -> str:
        text = self._held + piece
        cut = text.rfind("[")
        if cut != -1 and "]" not in text[cut:] and len(text) - cut < _LONGEST:
            self._held, text = text[cut:], text[:cut]  # may be the start of a placeholder
        else:
            self._held = ""
        return self.vault.restore(text)

    def flush(self) -> str:
        text, self._held = self._held, ""
        return self.vault.restore(text)
