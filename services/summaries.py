"""Summarising many texts at once, each with its own method and lengths."""

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass

from config import Settings, metrics
from inference.extractive import ExtractiveSummarizer
from inference.methods import Method
from inference.summary import Summary
from services.models import load_embedder, load_t5


@dataclass(frozen=True)
class SummaryRequest:
    text: str
    method: Method
    max_length: int
    min_length: int


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
            summarizer = ExtractiveSummarizer(
                load_embedder(settings), batch_size=settings.embedding_batch_size
            )
        texts = [requests[key].text for key in keys]
        with metrics.inference_call("summarize", len(texts)):
            results = summarizer.summarize_many(texts, max_length=max_length, min_length=min_length)
        summaries.update(zip(keys, results, strict=True))
    return summaries
