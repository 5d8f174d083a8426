"""Summarising many texts at once, each with its own method and lengths, on the model thread."""

from collections import defaultdict
from collections.abc import Hashable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from config import Settings
from inference.extractive import ExtractiveSummarizer
from inference.loaders import load_embedder, load_t5
from inference.scheduler import Scheduler
from inference.summary import Summarizer, Summary
from services.methods import Method


@dataclass(frozen=True)
class SummaryRequest:
    text: str
    method: Method
    max_length: int
    min_length: int
    tenant: str


def _summarizer(method: Method, settings: Settings) -> Summarizer:
    if method == "t5":
        return load_t5(settings)
    return ExtractiveSummarizer(load_embedder(settings), batch_size=settings.embedding_batch_size)


def summarize_requests(
    requests: Mapping[Hashable, SummaryRequest], settings: Settings, scheduler: Scheduler
) -> dict[Hashable, Future[Summary]]:
    """A future summary for every request, keyed like the requests.

    Requests of one tenant with the same method and lengths share model
    calls of up to ``summary_batch_size`` texts, each run on the model thread
    when the tenant's turn comes.
    """
    groups: dict[tuple[str, Method, int, int], list[Hashable]] = defaultdict(list)
    for key, request in requests.items():
        groups[(request.tenant, request.method, request.max_length, request.min_length)].append(key)
    summaries: dict[Hashable, Future[Summary]] = {}
    size = settings.summary_batch_size
    for (tenant, method, max_length, min_length), keys in groups.items():
        for start in range(0, len(keys), size):
            chunk = keys[start : start + size]
            texts = [requests[key].text for key in chunk]
            call = scheduler.call(
                _summarize(method, settings, texts, max_length, min_length),
                tenant=tenant,
                operation="summarize",
                texts=len(texts),
                tag=chunk,
            )
            for position, key in enumerate(chunk):
                summaries[key] = _pick(call, position)
    return summaries


def _summarize(
    method: Method, settings: Settings, texts: list[str], max_length: int, min_length: int
) -> Any:
    def run() -> list[Summary]:
        return _summarizer(method, settings).summarize_many(
            texts, max_length=max_length, min_length=min_length
        )

    return run


def _pick(call: Future, position: int) -> Future[Summary]:
    """A future of one summary out of a call's list."""
    one: Future[Summary] = Future()

    def done(finished: Future) -> None:
        if finished.cancelled():
            one.cancel()
        elif finished.exception() is not None:
            one.set_exception(finished.exception())
        else:
            one.set_result(finished.result()[position])

    call.add_done_callback(done)
    return one
