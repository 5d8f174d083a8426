"""What an export must reproduce before it is used: torch's answers on fixed inputs.

Embeddings: the smallest cosine between the backend's vector and torch's over
``SENTENCES`` must be at least ``FP32_MIN_COSINE`` for an fp32 backend. T5: the
greedy summaries of ``SUMMARY_TEXTS`` must be torch's, token for token. An int8
export is never held to these (its figure is logged and recorded instead) and
is used only when asked for by name.
"""

from collections.abc import Sequence

import numpy as np

from inference.backends.choice import Backend

FP32_MIN_COSINE = 0.9999
APPROXIMATE: frozenset[Backend] = frozenset({"onnx-int8"})

SENTENCES = (
    "How do I reset my password?",
    "The invoice for October is attached.",
    "Grüezi! Wann fährt der nächste Zug nach Bern?",
    "a",
    "",
    "   leading and trailing spaces   ",
    "Tabs\tand\nnew lines\n\nin one text",
    "日本語のテキストと絵文字 🙂 together with English words.",
    "The customer could not log in after changing the password on Monday, so the agent "
    "checked the email address and sent a fresh reset link, which expired before it was "
    "opened; a second link worked and the customer thanked the agent.",
    # Longer than MiniLM's 256-token window: truncation must match too.
    " ".join(f"word{i} is followed by another word" for i in range(80)),
)

SUMMARY_TEXTS = (
    "The customer could not log in after changing the password on Monday.",
    "The agent checked the email address and sent a fresh reset link. That link expired "
    "before it was opened, so the agent sent another one.",
    "Then the customer noticed the March invoice had been charged twice. The agent "
    "refunded the duplicate charge and promised a confirmation email.",
    "They briefly chatted about the weather.",
)
# (max_new_tokens, min_new_tokens): free stopping, and a forced minimum.
SUMMARY_LENGTHS = ((24, 0), (16, 8))


class FidelityError(RuntimeError):
    """An export whose answers differ from torch's more than its backend allows."""


def min_cosine(reference: np.ndarray, candidate: np.ndarray) -> float:
    reference = reference / np.linalg.norm(reference, axis=1, keepdims=True)
    candidate = candidate / np.linalg.norm(candidate, axis=1, keepdims=True)
    return float(np.min(np.sum(reference * candidate, axis=1)))


def check_embeddings(backend: Backend, reference: np.ndarray, candidate: np.ndarray) -> float:
    """The min cosine of ``candidate`` to ``reference``; raises below the fp32 threshold."""
    if reference.shape != candidate.shape:
        raise FidelityError(f"{backend}: shape {candidate.shape}, torch {reference.shape}")
    figure = min_cosine(reference, candidate)
    if backend not in APPROXIMATE and not figure >= FP32_MIN_COSINE:
        raise FidelityError(
            f"{backend}: min cosine to torch {figure:.6f} on the check sentences, "
            f"below {FP32_MIN_COSINE}"
        )
    return figure


def check_tokens(
    backend: Backend, reference: Sequence[Sequence[int]], candidate: Sequence[Sequence[int]]
) -> float:
    """The share of outputs equal to torch's; raises unless all are, for fp32 backends."""
    same = sum(list(a) == list(b) for a, b in zip(reference, candidate, strict=True))
    share = same / len(reference)
    if backend not in APPROXIMATE and share < 1:
        raise FidelityError(
            f"{backend}: {len(reference) - same} of {len(reference)} greedy outputs differ "
            "from torch's"
        )
    return share
