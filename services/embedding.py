"""The embedding job: texts in, unit-length vectors out."""

from collections.abc import Callable, Sequence
from typing import Any

from inference.embedder import Embedder


def embed_texts(
    texts: Sequence[str],
    embedder: Embedder,
    *,
    batch_size: int,
    report_progress: Callable[[int, int], None],
) -> dict[str, Any]:
    """Embed ``texts`` a batch at a time, reporting progress between batches.

    No report follows the last batch: storing the result completes the progress.
    """
    vectors: list[list[float]] = []
    for start in range(0, len(texts), batch_size):
        if start:
            report_progress(len(vectors), len(texts))
        batch = texts[start : start + batch_size]
        vectors.extend(embedder.encode(batch, batch_size=batch_size).tolist())
    info = embedder.info
    return {
        "model": info.model,
        "dimensions": info.dimensions,
        "backend": info.backend,
        "device": info.device,
        "count": len(vectors),
        "vectors": vectors,
    }
