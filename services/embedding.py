"""What an embed job's result says; its vectors are stored beside it, as bytes."""

from typing import Any, Protocol


class ModelInfo(Protocol):
    model: str
    dimensions: int
    backend: str
    device: str


def embedding_result(info: ModelInfo, count: int) -> dict[str, Any]:
    """The result of an embed job of ``count`` texts (its ``vectors`` are served
    from the job row, ``services.vectors``)."""
    return {
        "model": info.model,
        "dimensions": info.dimensions,
        "backend": info.backend,
        "device": info.device,
        "count": count,
    }
