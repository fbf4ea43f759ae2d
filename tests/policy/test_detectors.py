"""Detectors: table tests for hits and near misses, and hypothesis properties."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.policy.detectors import BUILTIN_NAMES, Scanner, builtin, expand, iban_ok, luhn_ok

ALL = Scanner([builtin(n) for n in BUILTIN_NAMES])


def labels(text: str) -> list[str]:
    return [m.label for m in ALL.find(text)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("mail john.doe+x@example.co.uk today", ["email"]),
        ("not an email: john@localhost", []),
        ("visa 4111 1111 1111 1111 exp", ["card"]),
        ("amex 3782-822463-10005", ["card"]),
        ("compact 5500005555555559.", ["card"]),
        ("call 4111 1111 1111 1111 2 times", ["card"]),
        ("ssn 123-45-6789", ["ssn"]),
        ("ssn 123 45 6789", ["ssn"]),
        ("not ssn 000-45-6789 or 666-12-3456", []),
        ("iban DE89 3704 0044 0532 0130 00 OK", ["iban"]),
        ("iban GB82WEST12345698765432", ["iban"]),
        ("bad iban GB82WEST12345698765433", []),
        ("phone +1 (555) 123-4567", ["phone"]),
        ("phone 555-123-4567", ["phone"]),
        ("phone +44 20 7946 0958", ["phone"]),
        ("date 2024-01-15 and time 12:30:45", []),
        ("ip 192.168.1.10", ["ip"]),
        ("not ip 999.1.1.1 or 1.2.3", []),
        ("v6 2001:db8::ff00:42:8329 and ::1", ["ip", "ip"]),
        ("c++ std::vector and a::b", []),
        ("key sk-proj-abcdefghij0123456789XYZ", ["secret"]),
        ("aws AKIAIOSFODNN7EXAMPLE", ["secret"]),
        ("gh ghp_" + "a1" * 18, ["secret"]),
        ("-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----", ["secret"]),
        ("version 3.11 costs 12.50 for 3 items", []),
    ],
)
def test_detector_table(text: str, expected: list[str]) -> None:
    assert labels(text) == expected


def test_a_number_failing_luhn_is_not_a_card() -> None:
    # Over-redaction is preferred: its first groups still look like a phone number.
    assert "card" not in labels("not luhn 4111 1111 1111 1112")
    assert labels("ref 4111111111111112") == []


def test_redact_replaces_each_match_with_its_label() -> None:
    out, matches = ALL.redact("a@b.io and 4111-1111-1111-1111")
    assert out == "[REDACTED:email] and [REDACTED:card]"
    assert [m.label for m in matches] == ["email", "card"]


def test_overlaps_resolve_to_one_leftmost_longest_match() -> None:
    # A card number is also phone-shaped; it must be reported once, as a card.
    assert labels("4111111111111111") == ["card"]


def test_expand_aliases() -> None:
    assert expand(["ip"]) == ["ipv4", "ipv6"]
    assert expand(["all", "email"]) == list(BUILTIN_NAMES)


def test_checksums() -> None:
    assert luhn_ok("79927398713") and not luhn_ok("79927398710")
    assert iban_ok("GB82WEST12345698765432") and not iban_ok("GB82WEST12345698765433")


# -- properties ----------------------------------------------------------------------------------


@st.composite
def luhn_numbers(draw: st.DrawFn) -> str:
    body = draw(st.lists(st.integers(0, 9), min_size=12, max_size=18))
    total = 0
    for i, d in enumerate(reversed(body)):
        if i % 2 == 0:  # these positions double once the check digit is appended
            d *= 2
            if d > 9:
                d -= 9
        total += d
    check = (10 - total % 10) % 10
    return "".join(map(str, body)) + str(check)


@st.composite
def formatted(draw: st.DrawFn, number: str) -> str:
    sep = draw(st.sampled_from(["", " ", "-"]))
    if not sep:
        return number
    size = draw(st.sampled_from([4, 5, 6]))
    return sep.join(number[i : i + size] for i in range(0, len(number), size))


# Surrounding text: anything but ASCII digits (which would make the number longer).
PROSE = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="0123456789"), max_size=40)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), number=luhn_numbers(), before=PROSE, after=PROSE)
def test_every_luhn_valid_card_in_text_is_caught(
    data: st.DataObject, number: str, before: str, after: str
) -> None:
    assert luhn_ok(number)
    card = data.draw(formatted(number))
    text = f"{before} {card} {after}"
    out, _ = ALL.redact(text)
    assert card not in out
    assert out.count("[REDACTED:card]") == 1


NO_DIGITS_NO_AT = st.text(
    st.characters(blacklist_categories=("Cs", "Nd"), blacklist_characters="@"),
    max_size=200,
)


@settings(max_examples=500)
@given(text=NO_DIGITS_NO_AT)
def test_text_without_digits_or_at_is_untouched(text: str) -> None:
    out, matches = ALL.redact(text)
    assert out == text
    assert matches == []
