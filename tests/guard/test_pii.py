"""Personal data and secrets are found where they are (checksums checked), masked reversibly
within a request, and restored in answers even when a stream splits a placeholder."""

from __future__ import annotations

import pytest

from llmforge.guard import StreamRestorer, Vault, find_pii, redact


def kinds(text: str) -> list[tuple[str, str]]:
    return [(s.kind, text[s.start : s.end]) for s in find_pii(text)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("card 4111 1111 1111 1111 ok", [("card", "4111 1111 1111 1111")]),
        ("card 4111-1111-1111-1112 fails Luhn", []),
        ("IBAN DE89 3704 0044 0532 0130 00.", [("iban", "DE89 3704 0044 0532 0130 00")]),
        ("IBAN DE88 3704 0044 0532 0130 00 wrong check", []),
        ("from 192.168.1.20 and 2001:db8::1", [("ip", "192.168.1.20"), ("ip", "2001:db8::1")]),
        ("not an ip 999.1.1.1", []),
        ("mail john.doe@example.com now", [("email", "john.doe@example.com")]),
        ("call +1 415-555-0132 today", [("phone", "+1 415-555-0132")]),
        ("身份证 11010519491231002X 号", [("cn_id", "11010519491231002X")]),
        ("bad checksum 110105194912310021", []),
        ("bad date 110105194913310028", []),
        ("手机 13812345678 或 138-1234-5678", [("cn_mobile", "13812345678"),
                                              ("cn_mobile", "138-1234-5678")]),
        ("key AKIAIOSFODNN7EXAMPLE here", [("secret", "AKIAIOSFODNN7EXAMPLE")]),
        ("token ghp_" + "a" * 36, [("secret", "ghp_" + "a" * 36)]),
        ("password = hunter2hunter2", [("secret", "hunter2hunter2")]),
        ("-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----",
         [("secret", "-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----")]),
        ("Hello, my name is Alice Smith.", [("name", "Alice Smith")]),
        ("Dr. Jones will see you", [("name", "Jones")]),
        ("我叫王小明，谢谢", [("name", "王小明")]),
        ("The meeting is at 10:30 in room 4.", []),
    ],
)  # fmt: skip
def test_each_kind_is_found_and_checksums_are_checked(
    text: str, expected: list[tuple[str, str]]
) -> None:
    assert kinds(text) == expected


def test_the_same_value_gets_the_same_placeholder_and_comes_back() -> None:
    vault = Vault()
    text = "Write to a@b.example and cc a@b.example and c@d.example"
    masked = vault.mask(text, find_pii(text))
    assert masked == "Write to [EMAIL_1] and cc [EMAIL_1] and [EMAIL_2]"
    assert vault.restore("Sent to [EMAIL_2] and [EMAIL_1]; [EMAIL_9] unknown") == (
        "Sent to c@d.example and a@b.example; [EMAIL_9] unknown"
    )
    assert vault.scrub("reply to a@b.example") == "reply to [EMAIL_1]"


def test_redaction_is_for_good() -> None:
    text = "card 4111 1111 1111 1111"
    assert redact(text, find_pii(text)) == "card [CARD]"


def test_a_stream_that_splits_a_placeholder_is_restored_whole() -> None:
    vault = Vault()
    vault.mask("x@y.example", find_pii("x@y.example"))
    restorer = StreamRestorer(vault)
    pieces = ["Mail [EM", "AIL", "_1] now, [not a placeholder", "] ok ["]
    out = "".join(restorer.feed(p) for p in pieces) + restorer.flush()
    assert out == "Mail x@y.example now, [not a placeholder] ok ["
