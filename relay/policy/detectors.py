"""Built-in PII and secret detectors, plus labelled custom regexes.

Rules of this module:
- A detector finds spans in a string; the ``Scanner`` merges the spans of all its detectors into
  non-overlapping matches (leftmost first, then longest, then detector priority) and rewrites them.
- Patterns use ASCII classes (``[0-9]``, not ``\\d``): the detectors look for ASCII-written numbers
  and keys. Checksums cut false positives: cards pass Luhn, IBANs pass mod-97, IPs parse.
- What each detector catches and misses is listed in docs/policies.md; keep the two in step.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

Span = tuple[int, int]


@dataclass(frozen=True, slots=True)
class Match:
    start: int
    end: int
    label: str


def has_digit(text: str) -> bool:
    # Ten substring searches in C beat one regex character-class scan by about 5x.
    return (
        "0" in text or "1" in text or "2" in text or "3" in text or "4" in text
        or "5" in text or "6" in text or "7" in text or "8" in text or "9" in text
    )  # fmt: skip


SECRET_PREFIXES = ("sk-", "AKIA", "ASIA", "ABIA", "ACCA", "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "xox", "AIza",
                   "eyJ", "-----BEGIN")  # fmt: skip


def has_secret_prefix(text: str) -> bool:
    return (
        "sk-" in text or "AKIA" in text or "ASIA" in text or "ABIA" in text or "ACCA" in text
        or "gh" in text and ("ghp_" in text or "gho_" in text or "ghu_" in text or "ghs_" in text or "ghr_" in text)
        or "xox" in text or "AIza" in text or "eyJ" in text or "-----BEGIN" in text
    )  # fmt: skip


NEEDS_DIGIT = "digit"
NEEDS_AT = "at"
NEEDS_SECRET = "secret"


class Detector:
    """Finds spans of one kind. ``needs`` names a cheap precondition checked once per text
    (``digit``, ``at``, ``secret``, or ``""`` for none), so prose skips most detectors."""

    needs = ""

    def __init__(self, label: str, priority: int) -> None:
        self.label = label
        self.priority = priority

    def spans(self, text: str) -> Iterator[Span]:
        raise NotImplementedError


class RegexDetector(Detector):
    """Every match of ``pattern`` that ``check`` accepts (all of them without ``check``).

    ``shift`` moves the reported start left: patterns begin with a character class (which the
    regex engine scans for quickly) and check the characters before it with a lookbehind.
    """

    def __init__(
        self,
        label: str,
        pattern: str | re.Pattern[str],
        priority: int,
        check: Callable[[str], bool] | None = None,
        *,
        needs: str = "",
        shift: int = 0,
    ) -> None:
        super().__init__(label, priority)
        self.pattern = re.compile(pattern) if isinstance(pattern, str) else pattern
        self.check = check
        self.needs = needs
        self.shift = shift

    def spans(self, text: str) -> Iterator[Span]:
        check = self.check
        shift = self.shift
        for m in self.pattern.finditer(text):
            a = m.start() - shift
            if m.end() > a and (check is None or check(text[a : m.end()])):
                yield (a, m.end())


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


# Runs of digit groups joined by single spaces or dashes; the first digit has no letter or digit
# before it (checked by the lookbehind after it, so the engine can scan for a digit first).
_DIGIT_RUN = re.compile(r"[0-9](?<![0-9A-Za-z][0-9])[0-9]*(?:[ -][0-9]+)*(?![0-9A-Za-z])")
_GROUP = re.compile(r"[0-9]+")


class GroupedDetector(Detector):
    """Finds the longest valid run of whole groups inside each candidate run, leftmost first.

    ``call 4111 1111 1111 1111 2 times``: every contiguous range of groups is a candidate, so the
    trailing ``2`` does not hide the card number.
    """

    needs = NEEDS_DIGIT
    MAX_GROUPS = 24

    def __init__(
        self,
        label: str,
        priority: int,
        run: re.Pattern[str],
        group: re.Pattern[str],
        ok: Callable[[str], bool],
        min_digits: int,
    ) -> None:
        super().__init__(label, priority)
        self.run = run
        self.group = group
        self.ok = ok
        self.min_digits = min_digits

    def spans(self, text: str) -> Iterator[Span]:
        for run in self.run.finditer(text):
            s = run.group()
            if len(s) < self.min_digits or _count_digits(s) < self.min_digits:
                continue  # most numbers in speech are short: skip them before any slicing
            base = run.start()
            groups = [(g.start() + base, g.end() + base) for g in self.group.finditer(run.group())]
            groups = groups[: self.MAX_GROUPS]
            i = 0
            while i < len(groups):
                found = None
                for j in range(len(groups) - 1, i - 1, -1):
                    if self.ok(text[groups[i][0] : groups[j][1]]):
                        found = j
                        break
                if found is None:
                    i += 1
                    continue
                yield (groups[i][0], groups[found][1])
                i = found + 1


def _count_digits(s: str) -> int:
    return len(s) - s.count(" ") - s.count("-") - s.count(".") - s.count("(") - s.count(")") - s.count("+")


def _card_ok(s: str) -> bool:
    digits = s.replace(" ", "").replace("-", "")
    return 13 <= len(digits) <= 19 and luhn_ok(digits)


def iban_ok(compact: str) -> bool:
    s = compact.upper()
    if not (15 <= len(s) <= 34) or not s[:2].isalpha() or not s[2:4].isdigit():
        return False
    moved = s[4:] + s[:4]
    try:
        number = int("".join(str(int(ch, 36)) for ch in moved))
    except ValueError:
        return False
    return number % 97 == 1


# Found from its two check digits: two letters (with no letter or digit before them) then two
# digits, then the rest in any grouping.
_IBAN_RUN = re.compile(r"[0-9](?<=(?<![0-9A-Za-z])[A-Za-z]{2}[0-9])[0-9][0-9A-Za-z]*(?: [0-9A-Za-z]{1,4})*")


class IbanDetector(Detector):
    """IBANs, compact or in groups of four, mod-97 checked; trailing words are trimmed off."""

    needs = NEEDS_DIGIT

    def spans(self, text: str) -> Iterator[Span]:
        for run in _IBAN_RUN.finditer(text):
            start = run.start() - 2
            parts = text[start : run.end()].split(" ")
            for j in range(len(parts), 0, -1):
                candidate = "".join(parts[:j])
                if len(candidate) < 15:
                    break
                if iban_ok(candidate):
                    yield (start, start + len(" ".join(parts[:j])))
                    break


_PHONE_RUN = re.compile(r"[+(0-9](?<![0-9A-Za-z+][+(0-9])[0-9 ().+-]*[0-9)](?![0-9A-Za-z])")
_PHONE_TOKEN = re.compile(r"[^ ]+")
_PHONE = re.compile(r"(?:\+[0-9]{1,3}[ .-]?)?(?:\([0-9]{1,4}\)[ .-]?)?[0-9]+(?:[ .-][0-9]+)*")


def _phone_ok(s: str) -> bool:
    digits = _count_digits(s)
    if not (8 <= digits <= 15 if s[0] == "+" else 10 <= digits <= 15):
        return False
    return _PHONE.fullmatch(s) is not None


def _ssn_ok(s: str) -> bool:
    area, group, serial = s[:3], s[4:6], s[7:]
    return area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"


def _ipv4_ok(s: str) -> bool:
    try:
        ipaddress.IPv4Address(s)
    except ValueError:
        return False
    return True


def _ipv6_ok(s: str) -> bool:
    if s.count(":") < 2 or not has_digit(s):
        return False  # "dead:beef::cafe" shapes in prose are words, not addresses
    try:
        ipaddress.IPv6Address(s)
    except ValueError:
        return False
    return True


SECRET_PATTERN = re.compile(
    r"sk-(?<![A-Za-z0-9_-]sk-)(?:proj-|svcacct-|admin-)?[A-Za-z0-9_-]{20,}"
    r"|A(?<![A-Za-z0-9]A)(?:KIA|SIA|BIA|CCA)[A-Z0-9]{16}(?![A-Za-z0-9])"
    r"|g(?<![A-Za-z0-9_]g)h[pousr]_[A-Za-z0-9]{36,}"
    r"|x(?<![A-Za-z0-9]x)ox[abposr]-[A-Za-z0-9-]{10,}"
    r"|A(?<![A-Za-z0-9_-]A)Iza[0-9A-Za-z_-]{35}"
    r"|e(?<![A-Za-z0-9_-]e)yJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"
    r"|-----BEGIN [A-Z ]*PRIVATE KEY-----(?:[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----|[\s\S]*)"
)

_EMAIL_LOCAL = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._%+-")
_EMAIL_DOMAIN = re.compile(r"[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}(?![A-Za-z0-9-])")


class EmailDetector(Detector):
    """``local@domain.tld``, found from each ``@`` (prose without one costs one substring search)."""

    needs = NEEDS_AT
    MAX_LOCAL = 64

    def spans(self, text: str) -> Iterator[Span]:
        at = text.find("@")
        last_end = 0
        while at >= 0:
            a = at
            floor = max(last_end, at - self.MAX_LOCAL)
            while a > floor and text[a - 1] in _EMAIL_LOCAL:
                a -= 1
            m = _EMAIL_DOMAIN.match(text, at + 1)
            if a < at and m is not None and (a == 0 or text[a - 1] not in _EMAIL_LOCAL):
                yield (a, m.end())
                last_end = m.end()
                at = text.find("@", m.end())
            else:
                at = text.find("@", at + 1)


class _Ipv6Detector(RegexDetector):
    def spans(self, text: str) -> Iterator[Span]:
        if text.count(":") < 2:
            return iter(())
        return super().spans(text)


def builtin(name: str) -> Detector:
    """A built-in detector by name (``email``, ``phone``, ``card``, ``ssn``, ``iban``, ``ipv4``,
    ``ipv6``, ``secret``)."""
    if name == "secret":
        return RegexDetector("secret", SECRET_PATTERN, 0, needs=NEEDS_SECRET)
    if name == "email":
        return EmailDetector("email", 2)
    if name == "iban":
        return IbanDetector("iban", 3)
    if name == "card":
        return GroupedDetector("card", 4, _DIGIT_RUN, _GROUP, _card_ok, 13)
    if name == "ssn":
        return RegexDetector(
            "ssn",
            r"[0-9](?<![0-9][0-9])[0-9]{2}([- ])[0-9]{2}\1[0-9]{4}(?![0-9])",
            5,
            _ssn_ok,
            needs=NEEDS_DIGIT,
        )
    if name == "ipv6":
        return _Ipv6Detector(
            "ip", r"[0-9A-Fa-f:](?<![0-9A-Za-z:][0-9A-Fa-f:])[0-9A-Fa-f:]{2,38}(?![0-9A-Za-z:])", 6, _ipv6_ok,
            needs=NEEDS_DIGIT,
        )  # fmt: skip
    if name == "ipv4":
        return RegexDetector(
            "ip", r"[0-9](?<![0-9.][0-9])[0-9]{0,2}(?:\.[0-9]{1,3}){3}(?![0-9]|\.[0-9])", 7, _ipv4_ok,
            needs=NEEDS_DIGIT,
        )  # fmt: skip
    if name == "phone":
        return GroupedDetector("phone", 8, _PHONE_RUN, _PHONE_TOKEN, _phone_ok, 8)
    raise KeyError(name)


BUILTIN_NAMES = ("email", "phone", "card", "ssn", "iban", "ipv4", "ipv6", "secret")
ALIASES = {"ip": ("ipv4", "ipv6"), "all": BUILTIN_NAMES}


def expand(names: Iterable[str]) -> list[str]:
    """Detector names with aliases (``ip``, ``all``) expanded, in first-seen order."""
    out: list[str] = []
    for n in names:
        for m in ALIASES.get(n, (n,)):
            if m not in out:
                out.append(m)
    return out


class Scanner:
    """A fixed set of detectors and one replacement template."""

    def __init__(self, detectors: list[Detector], replacement: str = "[REDACTED:{label}]") -> None:
        self.detectors = sorted(detectors, key=lambda d: d.priority)
        self.replacement = replacement

    def find(self, text: str) -> list[Match]:
        """Non-overlapping matches in text order."""
        found: list[tuple[int, int, int, str]] = []
        digit = at = secret = None
        for det in self.detectors:
            needs = det.needs
            if needs:
                if needs == NEEDS_DIGIT:
                    if digit is None:
                        digit = has_digit(text)
                    if not digit:
                        continue
                elif needs == NEEDS_AT:
                    if at is None:
                        at = "@" in text
                    if not at:
                        continue
                elif needs == NEEDS_SECRET:
                    if secret is None:
                        secret = has_secret_prefix(text)
                    if not secret:
                        continue
            for a, b in det.spans(text):
                found.append((a, -(b - a), det.priority, det.label))
        if not found:
            return []
        found.sort()
        out: list[Match] = []
        end = -1
        for a, neg_len, _, label in found:
            if a >= end:
                out.append(Match(a, a - neg_len, label))
                end = a - neg_len
        return out

    def replace(self, label: str) -> str:
        return self.replacement.replace("{label}", label)

    def redact(self, text: str) -> tuple[str, list[Match]]:
        """``text`` with every match replaced, and the matches (empty: text unchanged)."""
        matches = self.find(text)
        if not matches:
            return text, matches
        parts: list[str] = []
        pos = 0
        for m in matches:
            parts.append(text[pos : m.start])
            parts.append(self.replace(m.label))
            pos = m.end
        parts.append(text[pos:])
        return "".join(parts), matches
