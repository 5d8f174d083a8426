"""Embedding many requests at once: texts in, unit-length vectors out.

Requests from many jobs share forward passes. Each request can report its
progress between passes and be dropped when its job is canceled meanwhile.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from config import metrics
from inference.batching import plan_forward_passes
from inference.embedder import Embedder

# (request key, texts done, texts in all) → False to drop the request.
ProgressCallback = Callable[[str, int, int], bool]


@dataclass(frozen=True)
class EmbedRequest:
    key: str
    texts: Sequence[str]


@dataclass(frozen=True)
class EmbeddedBatch:
    vectors: dict[str, np.ndarray]  # keyed like the requests; dropped ones missing
    forward_passes: int
    texts: int


def embed_requests(
    embedder: Embedder,
    requests: Sequence[EmbedRequest],
    *,
    max_texts: int,
    max_tokens: int,
    on_progress: ProgressCallback | None = None,
) -> EmbeddedBatch:
    """The vectors of every request, keyed like the requests.

    The texts of all requests are planned into forward passes together
    (``inference.batching``). After a pass that leaves a request part done,
    ``on_progress`` is called; a request it answers False for is dropped and
    missing from the answer.
    """
    owners = [r for r in requests for _ in r.texts]
    texts = [text for r in requests for text in r.texts]
    vectors = np.zeros((len(texts), embedder.info.dimensions), dtype=np.float32)
    done = dict.fromkeys((r.key for r in requests), 0)
    dropped: set[str] = set()
    passes = 0
    for indices in plan_forward_passes(
        embedder.token_counts(texts), max_texts=max_texts, max_tokens=max_tokens
    ):
        indices = [i for i in indices if owners[i].key not in dropped]
        if not indices:
            continue
        with metrics.inference_call("embed", len(indices)):
            vectors[indices] = embedder.encode([texts[i] for i in indices], batch_size=len(indices))
        passes += 1
        touched = {owners[i].key for i in indices}
        for i in indices:
            done[owners[i].key] += 1
        if on_progress is None:
            continue
        for request in requests:
            total = len(request.texts)
            part_done = request.key in touched and done[request.key] < total
            if part_done and not on_progress(request.key, done[request.key], total):
                dropped.add(request.key)
    answer: dict[str, np.ndarray] = {}
    start = 0
    for request in requests:
        end = start + len(request.texts)
        if request.key not in dropped:
            answer[request.key] = vectors[start:end]
        start = end
    return EmbeddedBatch(answer, passes, len(texts))


def embedding_result(embedder: Embedder, vectors: np.ndarray) -> dict[str, Any]:
    """What an embed job stores as its result."""
    info = embedder.info
    return {
        "model": info.model,
        "dimensions": info.dimensions,
        "backend": info.backend,
        "device": info.device,
        "count": len(vectors),
        "vectors": vectors.tolist(),
    }
