"""Personal data and secrets in text: where they are, checked where a checksum exists.

`find_pii(text, kinds)` returns the spans of: `email`, `phone` (international or North American
form), `card` (13-19 digits passing Luhn), `iban` (ISO 13616, mod-97), `ip` (IPv4 and IPv6,
parsed), `secret` (private key blocks, JWTs, AWS/GitHub/Slack/OpenAI-style keys, and the value of
`password=` / `api_key:` style assignments), `cn_id` (18-character Chinese resident identity
number with a valid birth date and ISO 7064 MOD 11-2 check character), `cn_mobile` (mainland
mobile numbers, 1[3-9] + 9 digits, optionally +86), and `name` (only where the text says it is
one: "my name is ...", "Name: ...", an honorific such as "Dr." or "Mrs.", "我叫..."/"姓名：...").
Overlaps are resolved by kind priority, then length.

It deliberately does not run a named-entity model: names outside those cues are not found (see
docs/safety.md). `PiiGuard` wraps it as a `Guard`; masking and restoring are in `masking.py`.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Collection, Iterator
from datetime import date

from llmforge.core.config import GuardSpec
from llmforge.guard.base import GuardContext, Span, Verdict, Where, allow

KINDS = ("secret", "card", "cn_id", "iban", "email", "ip", "cn_mobile", "phone", "name")
PRIORITY = {k: i for i, k in enumerate(KINDS)}

_EMAIL = re.compile(r"(?<![\w.+-])[\w.+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
_PHONE = re.compile(
    r"(?<![\w+])(?:\+\d{1,3}[\s.-]?(?:\(\d{1,4}\)[\s.-]?)?\d{1,4}(?:[\s.-]?\d{2,4}){1,4}"
    r"|\(?\b\d{3}\)?[\s.-]\d{3}[\s.-]\d{4})(?![\w])"
)
_CARD = re.compile(r"(?<![\d-])(?:\d[ -]?){12,18}\d(?![\d-])")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?:[ ]?[A-Z0-9]){11,30}\b")
_IPV4 = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.])")
_IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")
_CN_ID = re.compile(r"(?<![0-9A-Za-z])\d{17}[\dXx](?![0-9A-Za-z])")
_CN_MOBILE = re.compile(r"(?<![\d+])(?:\+?86[- ]?)?1[3-9]\d[- ]?\d{4}[- ]?\d{4}(?!\d)")
_SECRETS = [
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"\beyJ[\w-]{8,}\.eyJ[\w-]{8,}\.[\w-]{8,}"),
    re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    re.compile(r"\bgh[pousr]_[A-Za-z0-9]{30,}\b"),
    re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}\b"),
    re.compile(r"\bsk-[A-Za-z0-9_-]{20,}"),
]
_ASSIGNED = re.compile(
    r"(?i)\b(?:password|passwd|pwd|secret|api[_-]?key|access[_-]?token|auth[_-]?token|token)"
    r"\s*[:=]\s*[\"']?([^\s\"',;]{8,})"
)
_NAME = re.compile(
    r"(?:\b(?:[Mm]y name is|I am called|[Nn]ame:)\s+"
    r"|\b(?:Mr|Mrs|Ms|Miss|Dr|Prof|Herr|Frau)\.?\s+)"
    r"((?:[A-Z][a-z'’-]+)(?:\s+[A-Z][a-z'’-]+){0,2})"
)
_CN_NAME = re.compile(r"(?:我叫|我的名字是|姓名[:：]\s*)([\u4e00-\u9fff]{2,4})")
_CN_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_CN_CHECK = "10X98765432"


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_ok(iban: str) -> bool:
    s = iban.replace(" ", "")
    if not 15 <= len(s) <= 34:
        return False
    moved = s[4:] + s[:4]
    number = "".join(str(int(c, 36)) for c in moved)
    return int(number) % 97 == 1


def cn_id_ok(value: str) -> bool:
    """Checksum (ISO 7064 MOD 11-2) and a real birth date in characters 7-14."""
    body, check = value[:17], value[17].upper()
    if _CN_CHECK[sum(int(c) * w for c, w in zip(body, _CN_WEIGHTS, strict=True)) % 11] != check:
        return False
    try:
        born = date(int(value[6:10]), int(value[10:12]), int(value[12:14]))
    except ValueError:
        return False
    return date(1900, 1, 1) <= born <= date.today()


def _ip_ok(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


Finder = Callable[[str], Iterator[Span]]


def _matches(pattern: re.Pattern[str], kind: str, ok: Callable[[str], bool] | None = None,
             group: int = 0) -> Finder:  # fmt: skip
    def find(text: str) -> Iterator[Span]:
        for m in pattern.finditer(text):
            value = m.group(group)
            if ok is None or ok(value):
                yield Span(start=m.start(group), end=m.end(group), kind=kind)

    return find


def _secrets(text: str) -> Iterator[Span]:
    for pattern in _SECRETS:
        for m in pattern.finditer(text):
            yield Span(start=m.start(), end=m.end(), kind="secret")
    for m in _ASSIGNED.finditer(text):
        yield Span(start=m.start(1), end=m.end(1), kind="secret")


def _phones(text: str) -> Iterator[Span]:
    for m in _PHONE.finditer(text):
        digits = sum(c.isdigit() for c in m.group())
        if 9 <= digits <= 15:
            yield Span(start=m.start(), end=m.end(), kind="phone")


FINDERS: dict[str, Finder] = {
    "secret": _secrets,
    "card": _matches(_CARD, "card", lambda v: luhn_ok(re.sub(r"\D", "", v))),
    "cn_id": _matches(_CN_ID, "cn_id", cn_id_ok),
    "iban": _matches(_IBAN, "iban", iban_ok),
    "email": _matches(_EMAIL, "email"),
    "ip": lambda t: (s for p in (_IPV4, _IPV6) for s in _matches(p, "ip", _ip_ok)(t)),
    "phone": _phones,
    "cn_mobile": _matches(_CN_MOBILE, "cn_mobile"),
    "name": lambda t: (s for p in (_NAME, _CN_NAME) for s in _matches(p, "name", group=1)(t)),
}


def find_pii(text: str, kinds: Collection[str] = KINDS) -> list[Span]:
    """Non-overlapping spans of the given kinds, in text order."""
    found = [s for kind in kinds for s in FINDERS[kind](text)]
    found.sort(key=lambda s: (PRIORITY[s.kind], -(s.end - s.start), s.start))
    taken: list[Span] = []
    for span in found:
        if all(span.end <= t.start or span.start >= t.end for t in taken):
            taken.append(span)
    return sorted(taken, key=lambda s: s.start)


class PiiGuard:
    """Finds personal data and secrets; a hit's action is the configured one (mask, redact,
    block, ...); the spans say what to replace."""

    def __init__(self, spec: GuardSpec) -> None:
        unknown = sorted(set(spec.entities or ()) - set(KINDS))
        if unknown:
            from llmforge.core.errors import ConfigError

            raise ConfigError(
                f"guard '{spec.name}': unknown entities {', '.join(unknown)}; "
                f"known: {', '.join(KINDS)}"
            )
        self.name = spec.name
        self.action = spec.action
        self.kinds = tuple(k for k in KINDS if spec.entities is None or k in spec.entities)

    async def check(self, text: str, where: Where) -> Verdict:
        spans = find_pii(text, self.kinds)
        if not spans:
            return allow(self.name, stage="rules")
        kinds = sorted({s.kind for s in spans})
        return Verdict(
            guard=self.name,
            action=self.action,
            score=1.0,
            code="pii_detected",
            reason=f"the text holds personal data or secrets ({', '.join(kinds)})",
            spans=tuple(spans),
            stage="rules",
        )

    async def aclose(self) -> None:
        return None


def create(spec: GuardSpec, context: GuardContext) -> PiiGuard:
    return PiiGuard(spec)
