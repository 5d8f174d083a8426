"""A regex sentence splitter: no model, no download.

A sentence ends at ``.``, ``!``, ``?`` or ``…`` (with any closing quotes or
brackets) followed by whitespace, and at every line break, since chat messages
often end without punctuation. A full stop after a known abbreviation, an
initial or a dotted abbreviation (``Dr.``, ``J.``, ``e.g.``) ends nothing.
"""

import re

_CLOSERS = "\"'\u201d\u2019)]"  # quotes, curly quotes and brackets after a full stop
_OPENERS = "\"'\u201c\u2018(["
_END = re.compile(rf"[.!?…]+[{re.escape(_CLOSERS)}]*(?=\s|$)|\n")
_LAST_WORD = re.compile(r"(\S+)\Z")
_ABBREVIATIONS = frozenset(
    {
        "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "mt", "vs", "approx", "dept", "est",
        "fig", "no", "nos", "vol", "inc", "ltd", "co", "corp", "jan", "feb", "mar", "apr",
        "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec", "mon", "tue", "wed", "thu",
        "fri", "sat", "sun",
    }
)  # fmt: skip


def _is_abbreviation(text: str, stop: int) -> bool:
    word = _LAST_WORD.search(text, 0, stop)
    if word is None:
        return False
    token = word.group(1).lstrip(_OPENERS).lower()
    return (len(token) == 1 and token.isalpha()) or "." in token or token in _ABBREVIATIONS


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """``(start, end)`` character offsets of each sentence, stripped of surrounding whitespace."""
    spans = []
    start = 0
    for match in _END.finditer(text):
        if match.group() == "." and _is_abbreviation(text, match.start()):
            continue
        spans.append((start, match.end()))
        start = match.end()
    spans.append((start, len(text)))
    stripped = []
    for begin, end in spans:
        piece = text[begin:end]
        if piece.strip():
            lead = len(piece) - len(piece.lstrip())
            stripped.append((begin + lead, begin + len(piece.rstrip())))
    return stripped


def split_sentences(text: str) -> list[str]:
    return [text[start:end] for start, end in sentence_spans(text)]
