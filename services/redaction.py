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
a text costs microseconds, and one with fewer than seven digits and no ``@``
is not scanned at all.
"""

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
# 13 to 19 digits, in groups separated by single spaces or hyphens.
_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d])")
_DIGITS = re.compile(r"\d")
# Fewer digits than this in a whole text: no number of any kind here can be in it.
_MIN_DIGITS = 7

Span = tuple[int, int, str]


def _emails(text: str, region: str) -> Iterator[Span]:
    if "@" in text:
        for match in _EMAIL.finditer(text):
            yield match.start(), match.end(), EMAIL


def _ibans(text: str, region: str) -> Iterator[Span]:
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


def _ahv_numbers(text: str, region: str) -> Iterator[Span]:
    for match in _AHV.finditer(text):
        if ssn.is_valid(match.group()):
            yield match.start(), match.end(), AHV


def _cards(text: str, region: str) -> Iterator[Span]:
    for match in _CARD.finditer(text):
        if luhn.is_valid(re.sub(r"[ -]", "", match.group())):
            yield match.start(), match.end(), CREDIT_CARD


def _phones(text: str, region: str) -> Iterator[Span]:
    for match in phonenumbers.PhoneNumberMatcher(text, region, phonenumbers.Leniency.VALID):
        yield match.start, match.end, PHONE


# In this order: a span found first wins over one that overlaps it. Phone numbers
# come before card numbers: 0041 44 668 18 00 has 13 digits and may pass Luhn,
# while libphonenumber takes no card number (none starts with 0 or +) for a phone.
_FINDERS: tuple[tuple[Callable[[str, str], Iterator[Span]], bool], ...] = (
    (_emails, False),
    (_ibans, True),
    (_ahv_numbers, True),
    (_phones, True),
    (_cards, True),
)


def find_pii(text: str, region: str = "CH") -> list[Span]:
    """``(start, end, placeholder)`` of each piece of PII in ``text``, in order."""
    has_numbers = len(_DIGITS.findall(text)) >= _MIN_DIGITS
    spans: list[Span] = []
    for finder, needs_digits in _FINDERS:
        if needs_digits and not has_numbers:
            continue
        for span in finder(text, region):
            if not any(span[0] < end and start < span[1] for start, end, _ in spans):
                spans.append(span)
    return sorted(spans)


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
