"""Sizing forward passes the way text-embeddings-inference does: by padded tokens.

A forward pass costs about ``texts x longest text`` tokens, because every text
is padded to the longest. Sorting by length first keeps short texts together,
so a pass of short texts can hold many of them and a long text does not drag
a crowd of short ones up to its length.
"""

from collections.abc import Sequence


def plan_forward_passes(
    token_counts: Sequence[int], *, max_texts: int, max_tokens: int
) -> list[list[int]]:
    """Indices of the texts for each forward pass, longest texts first.

    A pass holds at most ``max_texts`` texts and at most ``max_tokens`` padded
    tokens; a single text longer than the budget gets a pass of its own.
    """
    order = sorted(range(len(token_counts)), key=lambda i: token_counts[i], reverse=True)
    passes: list[list[int]] = []
    current: list[int] = []
    for index in order:
        # Sorted longest first, so the pass's first text sets its padded length.
        longest = token_counts[current[0]] if current else token_counts[index]
        if current and (len(current) >= max_texts or longest * (len(current) + 1) > max_tokens):
            passes.append(current)
            current = []
        current.append(index)
    if current:
        passes.append(current)
    return passes
