"""Sentence-transformers models (MiniLM) exported whole: token ids in, unit vectors out.

The graph is the model's own module pipeline (transformer, pooling, any dense
or normalize modules) followed by L2 normalisation, so a backend returns what
``encode(..., normalize_embeddings=True)`` does. Texts are tokenized as
sentence-transformers tokenizes them, with the tokenizer saved in the export.
"""

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from sentence_transformers import SentenceTransformer
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from inference.backends.cache import Entry
from inference.backends.choice import Backend, BackendOptions
from inference.backends.fidelity import SENTENCES, check_embeddings
from inference.backends.graph import Graph
from inference.backends.runtimes import cached_export, export_graph, open_graph

log = logging.getLogger(__name__)

# Bump when the exported graph or what the manifest records changes.
EXPORT_FORMAT = "sentence-embedding-1"
TOKENIZER_DIR = "tokenizer"


class SentenceEmbeddingGraph(torch.nn.Module):
    def __init__(self, model: SentenceTransformer, inputs: Sequence[str]) -> None:
        super().__init__()
        self.model = model
        self.inputs = list(inputs)

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        features = dict(zip(self.inputs, tensors, strict=True))
        embedding = self.model(features)["sentence_embedding"]
        return torch.nn.functional.normalize(embedding, p=2, dim=1)


def tokenize(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_seq_length: int
) -> dict[str, np.ndarray]:
    """What sentence-transformers feeds its transformer module for ``texts``."""
    encoded = tokenizer(
        list(texts),
        padding=True,
        truncation="longest_first",
        max_length=max_seq_length,
        return_tensors="np",
    )
    return {name: np.asarray(value, dtype=np.int64) for name, value in encoded.items()}


class ExportedSentenceEncoder:
    """An exported sentence-transformers model, run by one backend."""

    def __init__(self, entry: Entry, backend: Backend, options: BackendOptions) -> None:
        self.tokenizer = AutoTokenizer.from_pretrained(
            entry.path / TOKENIZER_DIR, local_files_only=True
        )
        self.max_seq_length: int = entry.meta["max_seq_length"]
        self.dimensions: int = entry.meta["dimensions"]
        self.min_cosine: float = entry.meta["min_cosine"]
        self._inputs: list[str] = entry.meta["inputs"]
        self._session = open_graph(backend, entry.path, "model", options)

    def encode(self, texts: Sequence[str], batch_size: int) -> np.ndarray:
        """Unit-length float32 vectors; like ``encode``, longest texts batched together."""
        vectors = np.empty((len(texts), self.dimensions), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            features = tokenize(self.tokenizer, [texts[i] for i in batch], self.max_seq_length)
            (output,) = self._session.run({name: features[name] for name in self._inputs})
            vectors[batch] = output
        return vectors


def load_exported_encoder(
    model_path: Path, backend: Backend, options: BackendOptions, name: str
) -> ExportedSentenceEncoder:
    """The export of ``model_path`` for ``backend``: from the cache, else exported and checked.

    ``name`` prefixes the cache entry's directory, for people reading the cache.
    """
    started = time.perf_counter()
    entry = cached_export(
        options,
        name,
        backend,
        model_path,
        EXPORT_FORMAT,
        lambda directory: export_sentence_model(model_path, backend, directory, options),
    )
    encoder = ExportedSentenceEncoder(entry, backend, options)
    log.info(
        "exported embedding model loaded",
        extra={
            "backend": backend,
            "entry": str(entry.path),
            "min_cosine": encoder.min_cosine,
            "seconds": round(time.perf_counter() - started, 3),
        },
    )
    return encoder


def export_sentence_model(
    model_path: Path, backend: Backend, directory: Path, options: BackendOptions
) -> dict[str, object]:
    """Exports the model into ``directory``, checks it against torch, and returns its metadata."""
    started = time.perf_counter()
    model = SentenceTransformer(str(model_path), device="cpu", local_files_only=True).eval()
    max_seq_length = model.get_max_seq_length()
    dimensions = model.get_embedding_dimension()
    if max_seq_length is None or dimensions is None:
        raise ValueError(f"{model_path.name}: no max_seq_length or embedding dimension")
    model.tokenizer.save_pretrained(directory / TOKENIZER_DIR)
    # Two texts of different lengths: the trace sees padding.
    example = tokenize(model.tokenizer, ["a short one", SENTENCES[8]], max_seq_length)
    inputs = list(example)
    export_graph(
        Graph(
            name="model",
            module=SentenceEmbeddingGraph(model, inputs),
            example=tuple(torch.from_numpy(example[name]) for name in inputs),
            inputs=inputs,
            outputs=["embedding"],
            dynamic_axes={
                **{name: {0: "batch", 1: "tokens"} for name in inputs},
                "embedding": {0: "batch"},
            },
        ),
        backend,
        directory,
    )
    meta: dict[str, object] = {
        "model": model_path.name,
        "backend": backend,
        "inputs": inputs,
        "max_seq_length": max_seq_length,
        "dimensions": dimensions,
        "min_cosine": 0.0,
    }
    candidate = ExportedSentenceEncoder(Entry(directory, meta), backend, options)
    reference = model.encode(
        list(SENTENCES), normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
    )
    meta["min_cosine"] = check_embeddings(
        backend, reference, candidate.encode(SENTENCES, batch_size=4)
    )
    log.info(
        "embedding model exported",
        extra={
            "backend": backend,
            "model": model_path.name,
            "min_cosine": meta["min_cosine"],
            "seconds": round(time.perf_counter() - started, 3),
        },
    )
    return meta
