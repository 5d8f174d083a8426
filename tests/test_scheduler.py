"""The model thread's scheduler, with the real MiniLM: passes sized by texts and tokens,
interactive texts first, tenants taking turns, cancel, and each request its own vectors."""

import threading
from collections.abc import Sequence

import numpy as np
import pytest

from inference.embedder import Embedder, get_embedder
from inference.scheduler import Scheduler

LONG = " ".join(f"word{i}" for i in range(200))


class Recording:
    """The real embedder, recording the texts of each forward pass; ``hold`` keeps the
    next pass from starting until ``release``, so work can pile up behind it."""

    def __init__(self, embedder: Embedder) -> None:
        self.embedder = embedder
        self.passes: list[list[str]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        return self.embedder.token_counts(texts)

    def encode(self, texts: Sequence[str], batch_size: int) -> np.ndarray:
        self.entered.set()
        self.gate.wait(30)
        self.passes.append(list(texts))
        return self.embedder.encode(texts, batch_size)

    def hold(self) -> None:
        self.gate.clear()
        self.entered.clear()

    def release(self) -> None:
        self.gate.set()


@pytest.fixture(scope="module")
def embedder():
    return get_embedder(None, "cpu", "torch")


@pytest.fixture
def recording(embedder):
    return Recording(embedder)


def make(recording, **limits) -> Scheduler:
    limits = {"max_texts": 8, "max_tokens": 4096, **limits}
    return Scheduler(recording, dimensions=recording.embedder.info.dimensions, **limits)


def test_passes_hold_at_most_the_texts_and_tokens_allowed(recording):
    scheduler = make(recording, max_texts=3, max_tokens=100)
    texts = ["a b", LONG, "one two three four", "x", LONG[:300], "short", "y", "z", "w"]
    try:
        vectors = scheduler.embed(texts, tenant="t").future.result(60)
    finally:
        scheduler.stop()
    counts = dict(zip(texts, recording.embedder.token_counts(texts), strict=True))
    assert sorted(t for p in recording.passes for t in p) == sorted(texts)
    for texts_of_pass in recording.passes:
        assert len(texts_of_pass) <= 3
        longest = max(counts[t] for t in texts_of_pass)
        assert len(texts_of_pass) == 1 or longest * len(texts_of_pass) <= 100
    assert recording.passes[0] == [LONG], "longest first: the long text gets a pass of its own"
    expected = recording.embedder.encode(texts, batch_size=16)
    assert np.min(np.sum(vectors * expected, axis=1)) >= 0.9999


def test_short_texts_fill_a_pass_up_to_max_texts(recording):
    scheduler = make(recording, max_texts=64, max_tokens=100_000)
    try:
        scheduler.embed([f"note {i}" for i in range(130)], tenant="t").future.result(60)
    finally:
        scheduler.stop()
    assert [len(p) for p in recording.passes] == [64, 64, 2]


def test_an_interactive_request_takes_the_next_pass(recording):
    scheduler = make(recording, max_texts=8)
    try:
        recording.hold()
        bulk = scheduler.embed([f"bulk text {i}" for i in range(64)], tenant="a")
        assert recording.entered.wait(10)  # the first bulk pass is running
        query = scheduler.embed(["where is my invoice?"], tenant="b", interactive=True)
        recording.release()
        query.future.result(30)
        bulk.future.result(60)
    finally:
        scheduler.stop()
    index = next(i for i, p in enumerate(recording.passes) if "where is my invoice?" in p)
    assert index == 1, recording.passes


def test_tenants_take_turns_in_every_pass(recording):
    scheduler = make(recording, max_texts=8)
    try:
        recording.hold()
        backlog = [
            scheduler.embed([f"tenant a job {j} text {i}" for i in range(32)], tenant="a")
            for j in range(4)
        ]
        assert recording.entered.wait(10)
        other = scheduler.embed(["tenant b's one text"], tenant="b")
        recording.release()
        other.future.result(30)
        for handle in backlog:
            handle.future.result(60)
    finally:
        scheduler.stop()
    index = next(i for i, p in enumerate(recording.passes) if "tenant b's one text" in p)
    assert index == 1, "tenant b waits for the pass that was running, not for a's backlog"
    # Within a tenant, jobs run oldest first: job 0's texts come before job 3's.
    order = [t for p in recording.passes for t in p if t.startswith("tenant a")]
    assert order.index("tenant a job 0 text 0") < order.index("tenant a job 3 text 0")


def test_a_cancelled_request_runs_no_more_passes(recording):
    scheduler = make(recording, max_texts=4)
    try:
        recording.hold()
        doomed = scheduler.embed([f"doomed {i}" for i in range(40)], tenant="a")
        assert recording.entered.wait(10)
        doomed.cancel()
        recording.release()
        survivor = scheduler.embed(["still served"], tenant="a")
        survivor.future.result(30)
    finally:
        scheduler.stop()
    assert doomed.future.cancelled()
    ran = [t for p in recording.passes for t in p if t.startswith("doomed")]
    assert len(ran) <= 4, "only the pass already running when it was cancelled"


def test_every_request_gets_its_own_vectors(recording):
    scheduler = make(recording, max_texts=5)
    requests = [
        [f"request {r} text {i} about topic {r * i % 7}" for i in range(r + 1)] for r in range(9)
    ]
    try:
        handles = [scheduler.embed(texts, tenant=f"t{r % 3}") for r, texts in enumerate(requests)]
        results = [handle.future.result(60) for handle in handles]
    finally:
        scheduler.stop()
    for texts, vectors in zip(requests, results, strict=True):
        expected = recording.embedder.encode(texts, batch_size=16)
        assert vectors.shape == expected.shape
        assert np.min(np.sum(vectors * expected, axis=1)) >= 0.9999
