"""Summarising many texts at once, each with its own method and lengths."""

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass

from config import Settings, metrics
from inference.embedder import get_embedder
from inference.extractive import ExtractiveSummarizer
from inference.methods import Method
from inference.summary import Summary
from inference.t5 import T5Summarizer, get_t5_summarizer


@dataclass(frozen=True)
class SummaryRequest:
    text: str
    method: Method
    max_length: int
    min_length: int


def load_t5(settings: Settings) -> T5Summarizer:
    """This process's T5 summarizer, as the settings configure it."""
    if settings.summarizer_model_path is None:
        raise RuntimeError("SUMMARIZER_MODEL_PATH is not set on this worker")
    return get_t5_summarizer(
        settings.summarizer_model_path,
        settings.inference_device,
        input_tokens=settings.summarizer_input_tokens,
        batch_size=settings.summary_batch_size,
    )


def summarize_requests(
    requests: Mapping[str, SummaryRequest], settings: Settings
) -> dict[str, Summary]:
    """The summary of every request, keyed like the requests.

    Requests with the same method and lengths share batched model calls.
    """
    groups: dict[tuple[Method, int, int], list[str]] = defaultdict(list)
    for key, request in requests.items():
        groups[(request.method, request.max_length, request.min_length)].append(key)
    summaries: dict[str, Summary] = {}
    for (method, max_length, min_length), keys in groups.items():
        if method == "t5":
            summarizer = load_t5(settings)
        else:
            embedder = get_embedder(settings.embedding_model_path, settings.inference_device)
            summarizer = ExtractiveSummarizer(embedder, batch_size=settings.embedding_batch_size)
        texts = [requests[key].text for key in keys]
        with metrics.inference_call("summarize", len(texts)):
            results = summarizer.summarize_many(texts, max_length=max_length, min_length=min_length)
        summaries.update(zip(keys, results, strict=True))
    return summaries
