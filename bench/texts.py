"""The texts every benchmark sends: about twenty words each, different for every index."""

WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "a",
    "lazy",
    "dog",
    "near",
    "the",
    "river",
    "bank",
    "at",
    "dawn",
]


def text(i: int) -> str:
    """About twenty words, different for every i."""
    return " ".join(WORDS[(i + k) % len(WORDS)] for k in range(18)) + f" number {i}"
