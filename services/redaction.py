"""PII redaction: e-mail addresses, phone numbers, IBANs, card and AHV numbers become
typed placeholders (``<EMAIL>``, ``<PHONE>``, ``<IBAN>``, ``<CREDIT_CARD>``, ``<AHV>``).

For a tenant that asked for it (``tenants.redact_pii``) the API redacts the
texts of a job before the job row is written, so the original never reaches
PostgreSQL, the broker, the workers' logs, the model or Milvus.

Numbers are found by pattern and kept only when their check digits hold, with
python-stdnum's validators (IBAN mod 97 and per-country length, Luhn, the AHV
number's EAN-13 digit); phone numbers by Google's libphonenumber
(``phonenumbers``), which knows every country's numbering plan, so a date or
an order number is not taken for a phone number. Nothing here loads a model:
a short text costs microseconds, and one without a run of seven digits and
without an ``@`` is only looked at, not searched.
"""

import bisect
import re
from collections.abc import Callable, Iterator

import phonenumbers
from stdnum import iban, luhn
from stdnum.ch import ssn

EMAIL = "<EMAIL>"
PHONE = "<PHONE>"
IBAN = "<IBAN>"
CREDIT_CARD = "<CREDIT_CARD>"
AHV = "<AHV>"

# RFC 5322's dot-atom local part and a domain of DNS labels with a letter TLD.
_EMAIL = re.compile(
    r"(?<![\w.+-])[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}(?![\w-])"
)
# A country code, check digits, then groups of up to four characters, spaced or not.
_IBAN = re.compile(r"(?<![A-Za-z0-9])[A-Za-z]{2}\d{2}(?: ?[A-Za-z0-9]{1,4}){3,8}(?![A-Za-z0-9])")
_IBAN_GROUP = re.compile(r" ?[A-Za-z0-9]{1,4}")
# 756.xxxx.xxxx.xx, with dots, spaces or nothing between the groups.
_AHV = re.compile(r"(?<![\d.])756([. ]?)\d{4}\1\d{4}\1\d{2}(?![\d])")
# 13 to 19 digits, in groups separated by single spaces or hyphens. No card number
# starts with 0, and none follows a +: 0041 44 668 18 00 is a phone number.
_CARD = re.compile(r"(?<![\d+-])[1-9](?:[ -]?\d){12,18}(?![\d])")
# Seven digits or more, with at most two separators between two of them, and a
# leading + or (: where a phone number can be (the shortest are 7 digits long).
# Every IBAN, card and AHV number holds such a run too: a text without one is
# not searched for numbers at all.
_NUMBER_RUN = re.compile(r"[+(]?\d(?:[ \t./()-]{0,2}\d){6,}\)?")

Span = tuple[int, int, str]


class _Taken:
    """The spans found so far, sorted and never overlapping: what a text holds is
    looked up in log time (a text may hold thousands of e-mail addresses)."""

    def __init__(self) -> None:
        self.spans: list[Span] = []

    def _neighbours(self, start: int) -> tuple[Span | None, Span | None]:
        index = bisect.bisect_left(self.spans, (start,))
        before = self.spans[index - 1] if index > 0 else None
        after = self.spans[index] if index < len(self.spans) else None
        return before, after

    def overlaps(self, start: int, end: int) -> bool:
        before, after = self._neighbours(start)
        return (before is not None and before[1] > start) or (after is not None and after[0] < end)

    def covers(self, start: int, end: int) -> bool:
        before, _ = self._neighbours(start + 1)
        return before is not None and before[0] <= start and end <= before[1]

    def add(self, span: Span) -> None:
        bisect.insort(self.spans, span)


def _emails(text: str, region: str, taken: _Taken) -> Iterator[Span]:
    if "@" in text:
        for match in _EMAIL.finditer(text):
            yield match.start(), match.end(), EMAIL


def _ibans(text: str, region: str, taken: _Taken) -> Iterator[Span]:
    position = 0
    while match := _IBAN.search(text, position):
        # The longest run of groups that is a valid IBAN: the words after it are not
        # part of it, and the next search starts where it ends.
        start = match.start()
        ends = [start + 4 + group.end() for group in _IBAN_GROUP.finditer(match.group()[4:])]
        end = next((end for end in reversed(ends) if iban.is_valid(text[start:end])), None)
        if end is not None:
            yield start, end, IBAN
        position = end or start + 1


def _ahv_numbers(text: str, region: str, taken: _Taken) -> Iterator[Span]:
    for match in _AHV.finditer(text):
        if ssn.is_valid(match.group()):
            yield match.start(), match.end(), AHV


def _cards(text: str, region: str, taken: _Taken) -> Iterator[Span]:
    for match in _CARD.finditer(text):
        if luhn.is_valid(re.sub(r"[ -]", "", match.group())):
            yield match.start(), match.end(), CREDIT_CARD


def _phones(text: str, region: str, taken: _Taken) -> Iterator[Span]:
    # libphonenumber's matcher is slow (~0.1 ms for a phone number, ~0.3 ms for a
    # run of digits that is none): it is given only the runs of digits that could
    # hold a phone number and are not already taken, with the character on each
    # side (it refuses a number glued to a letter), never the whole text.
    for candidate in _NUMBER_RUN.finditer(text):
        if taken.covers(candidate.start(), candidate.end()):
            continue
        offset = max(candidate.start() - 1, 0)
        window = text[offset : candidate.end() + 1]
        for match in phonenumbers.PhoneNumberMatcher(window, region, phonenumbers.Leniency.VALID):
            yield offset + match.start, offset + match.end, PHONE


# In this order: a span found first wins over one that overlaps it, and the
# phone numbers, the slowest to find, are looked for last, outside the others.
_FINDERS: tuple[tuple[Callable[[str, str, _Taken], Iterator[Span]], bool], ...] = (
    (_emails, False),
    (_ibans, True),
    (_ahv_numbers, True),
    (_cards, True),
    (_phones, True),
)


def find_pii(text: str, region: str = "CH") -> list[Span]:
    """``(start, end, placeholder)`` of each piece of PII in ``text``, in order."""
    has_numbers = _NUMBER_RUN.search(text) is not None
    taken = _Taken()
    for finder, needs_digits in _FINDERS:
        if needs_digits and not has_numbers:
            continue
        for span in finder(text, region, taken):
            if not taken.overlaps(span[0], span[1]):
                taken.add(span)
    return taken.spans


def redact(text: str, region: str = "CH") -> str:
    """``text`` with each piece of PII replaced by its placeholder; unchanged without any."""
    spans = find_pii(text, region)
    if not spans:
        return text
    parts, last = [], 0
    for start, end, placeholder in spans:
        parts += [text[last:start], placeholder]
        last = end
    parts.append(text[last:])
    return "".join(parts)
