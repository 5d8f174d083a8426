"""One model thread per process, and the order in which work reaches it.

Every model call of a gpu worker runs on the scheduler's thread, one at a
time: forward passes of the embedder, and calls handed over whole (a T5
``generate``). Callers (the batched tasks' threads, the interactive lane)
submit work and wait on a future; the thread forms each forward pass anew
from what waits at that moment:

1. **interactive texts first** (``POST /v1/embeddings``, search queries),
   oldest first, in passes of their own: a request that arrives while bulk
   work runs gets the next forward pass, never waits for a backlog to drain,
   and its pass is no longer than its own texts make it;
2. then **bulk texts, round-robin across tenants**, one text per tenant in
   turn, so a tenant's one-text job queued behind another tenant's thousands
   of texts shares the very next pass. Within a tenant, work runs oldest
   first, so its jobs finish one after another rather than all late.

A pass holds at most ``max_texts`` texts and ``max_tokens`` padded tokens
(texts x the longest, as text-embeddings-inference sizes batches). Each
request's texts are taken longest first, so a pass holds texts of similar
length. Work handed over whole (``call``) runs when its tenant's turn comes
and no interactive text waits.

A pass stuck past ``hard_limit`` seconds (native code that never returns)
ends the process after ``on_stuck`` has been told whose work was in it: its
supervisor starts a fresh one, and the messages of the work in flight are
delivered again.
"""

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from config import metrics
from inference.model_cpu import ModelCpuSampler

log = logging.getLogger(__name__)

WATCHDOG_INTERVAL = 1.0


class Encoder(Protocol):
    def token_counts(self, texts: Sequence[str]) -> list[int]: ...

    def encode(self, texts: Sequence[str], batch_size: int) -> np.ndarray: ...


@dataclass(eq=False)
class _EmbedWork:
    texts: Sequence[str]
    tenant: str
    interactive: bool
    tag: Any
    future: Future
    dimensions: int
    tokens: list[int] | None = None
    remaining: deque[int] = field(default_factory=deque)
    vectors: np.ndarray | None = None
    done: int = 0
    # When its first text entered a forward pass (time.monotonic()).
    started: float | None = None

    def prepare(self, tokens: list[int]) -> None:
        """Take its texts' token counts, and order them longest first."""
        self.tokens = tokens
        self.remaining = deque(sorted(range(len(self.texts)), key=lambda i: -tokens[i]))
        self.vectors = np.empty((len(self.texts), self.dimensions), dtype=np.float32)


def _prepare(works: Iterable[_EmbedWork], encoder: Encoder) -> None:
    """Count the tokens of every work not yet counted, in one tokenizer call (on the
    model thread: tokenizers are not thread-safe)."""
    unprepared = [work for work in works if work.tokens is None]
    if not unprepared:
        return
    counts = encoder.token_counts([text for work in unprepared for text in work.texts])
    start = 0
    for work in unprepared:
        work.prepare(counts[start : start + len(work.texts)])
        start += len(work.texts)


@dataclass(eq=False)
class _CallWork:
    fn: Callable[[], Any]
    tenant: str
    tag: Any
    future: Future
    operation: str
    texts: int


def _settle(future: Future, value: Any = None, exception: BaseException | None = None) -> None:
    """Complete a future unless its caller cancelled it meanwhile (from another thread)."""
    try:
        if exception is not None:
            future.set_exception(exception)
        else:
            future.set_result(value)
    except InvalidStateError:
        pass


class EmbedHandle:
    """A request's texts in the scheduler: its future, its progress, and a way to drop it."""

    def __init__(self, work: _EmbedWork, scheduler: "Scheduler") -> None:
        self._work = work
        self._scheduler = scheduler
        self.future: Future[np.ndarray] = work.future
        self.total = len(work.texts)

    @property
    def done(self) -> int:
        return self._work.done

    @property
    def started(self) -> float | None:
        """When its first text entered a forward pass (``time.monotonic()``), if it has."""
        return self._work.started

    @property
    def tokens(self) -> int:
        """Tokens the model read for these texts (special tokens in, truncated), once counted."""
        return sum(self._work.tokens or ())

    def cancel(self) -> None:
        """Run none of its remaining texts; its future is cancelled."""
        self._scheduler._cancel(self._work)


@dataclass
class _Pass:
    items: list[tuple[_EmbedWork, int]] = field(default_factory=list)
    longest: int = 0

    def fits(self, tokens: int, max_texts: int, max_tokens: int) -> bool:
        if not self.items:
            return True  # a text longer than the budget gets a pass of its own
        count = len(self.items) + 1
        return count <= max_texts and max(self.longest, tokens) * count <= max_tokens

    def add(self, work: _EmbedWork, index: int, tokens: int) -> None:
        self.items.append((work, index))
        self.longest = max(self.longest, tokens)


class Scheduler:
    def __init__(
        self,
        encoder: Encoder,
        *,
        dimensions: int,
        max_texts: int,
        max_tokens: int,
        hard_limit: float | None = None,
        on_stuck: Callable[[list[Any]], None] | None = None,
        backend: str = "torch",
    ) -> None:
        self.encoder = encoder
        self.dimensions = dimensions
        self.max_texts = max_texts
        self.max_tokens = max_tokens
        self.hard_limit = hard_limit
        self.on_stuck = on_stuck
        self._cond = threading.Condition()
        self._interactive: deque[_EmbedWork] = deque()
        self._bulk: dict[Hashable, deque[_EmbedWork | _CallWork]] = {}
        self._stopped = False
        self._running_since: float | None = None
        self._running_tags: list[Any] = []
        self._thread = threading.Thread(target=self._run, name="convoq-model", daemon=True)
        self._thread.start()
        self._cpu = ModelCpuSampler(self._thread, backend).start()
        if hard_limit:
            threading.Thread(target=self._watch, name="convoq-model-watchdog", daemon=True).start()

    # -- submitting ---------------------------------------------------------

    def embed(
        self, texts: Sequence[str], *, tenant: str, interactive: bool = False, tag: Any = None
    ) -> EmbedHandle:
        """Queue texts to embed; the handle's future gives their unit vectors, in order."""
        work = _EmbedWork(list(texts), tenant, interactive, tag, Future(), self.dimensions)
        if not work.texts:
            work.future.set_result(np.empty((0, self.dimensions), dtype=np.float32))
            return EmbedHandle(work, self)
        with self._cond:
            if interactive:
                self._interactive.append(work)
            else:
                self._bulk.setdefault(tenant, deque()).append(work)
            self._cond.notify()
        return EmbedHandle(work, self)

    def call(
        self,
        fn: Callable[[], Any],
        *,
        tenant: str,
        operation: str,
        texts: int,
        tag: Any = None,
    ) -> Future:
        """Run ``fn()`` on the model thread when the tenant's turn comes."""
        work = _CallWork(fn, tenant, tag, Future(), operation, texts)
        with self._cond:
            self._bulk.setdefault(tenant, deque()).append(work)
            self._cond.notify()
        return work.future

    def stop(self) -> None:
        self._cpu.stop()
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    def _cancel(self, work: _EmbedWork) -> None:
        self._cancel_queued(work)
        work.future.cancel()

    # -- the model thread ---------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopped and not (self._interactive or self._bulk):
                    self._cond.wait()
                if self._stopped:
                    return
                planned = self._plan()
            if isinstance(planned, _CallWork):
                self._run_call(planned)
            elif planned.items:
                self._run_pass(planned)

    def _plan(self) -> "_Pass | _CallWork":
        """The next pass (or whole call), taken out of the queues."""
        planned = _Pass()
        if self._interactive:
            # Interactive texts run in passes of their own: a short pass answers them
            # sooner than one filled up with bulk texts.
            _prepare(self._interactive, self.encoder)
            self._fill(planned, self._interactive)
            while self._interactive and not self._interactive[0].remaining:
                self._interactive.popleft()
            return planned
        call = self._next_call()
        if call is not None:
            return call
        _prepare(
            (
                work
                for queue in self._bulk.values()
                for work in queue
                if isinstance(work, _EmbedWork)
            ),
            self.encoder,
        )
        tenants = deque(self._bulk)
        while tenants and len(planned.items) < self.max_texts:
            tenant = tenants.popleft()
            queue = self._bulk[tenant]
            head = queue[0]
            if isinstance(head, _CallWork):
                continue  # a whole call waits for a pass of its own
            index = head.remaining[0]
            tokens = head.tokens[index]  # type: ignore[index]
            if not planned.fits(tokens, self.max_texts, self.max_tokens):
                continue
            planned.add(head, head.remaining.popleft(), tokens)
            if not head.remaining:
                queue.popleft()
            if queue:
                tenants.append(tenant)
            else:
                del self._bulk[tenant]
        self._rotate()
        return planned

    def _fill(self, planned: _Pass, queue: deque[_EmbedWork]) -> None:
        for work in queue:
            while work.remaining:
                tokens = work.tokens[work.remaining[0]]  # type: ignore[index]
                if not planned.fits(tokens, self.max_texts, self.max_tokens):
                    return
                planned.add(work, work.remaining.popleft(), tokens)

    def _next_call(self) -> _CallWork | None:
        """A call at the head of the first tenant's queue, if that is what comes next."""
        for tenant, queue in self._bulk.items():
            head = queue[0]
            if isinstance(head, _CallWork):
                queue.popleft()
                if not queue:
                    del self._bulk[tenant]
                self._rotate()
                return head
            return None
        return None

    def _rotate(self) -> None:
        """The tenant served first this time goes last next time."""
        if len(self._bulk) > 1:
            first = next(iter(self._bulk))
            self._bulk[first] = self._bulk.pop(first)

    def _run_pass(self, planned: _Pass) -> None:
        items = planned.items
        texts = [work.texts[index] for work, index in items]
        now = time.monotonic()
        for work, _ in items:
            if work.started is None:
                work.started = now
        self._running(list({id(w): w.tag for w, _ in items}.values()))
        try:
            with metrics.inference_call("embed", len(texts)):
                vectors = self.encoder.encode(texts, batch_size=len(texts))
        except Exception as exc:
            log.exception("forward pass failed")
            for work in {id(w): w for w, _ in items}.values():
                self._cancel_queued(work)
                _settle(work.future, exception=exc)
            return
        finally:
            self._running(None)
        for (work, index), vector in zip(items, vectors, strict=True):
            assert work.vectors is not None
            work.vectors[index] = vector
            work.done += 1
            if work.done == len(work.texts):
                _settle(work.future, work.vectors)

    def _cancel_queued(self, work: _EmbedWork) -> None:
        with self._cond:
            queue = self._interactive if work.interactive else self._bulk.get(work.tenant)
            if queue is not None and work in queue:
                queue.remove(work)
                if not queue and not work.interactive:
                    del self._bulk[work.tenant]

    def _run_call(self, work: _CallWork) -> None:
        if work.future.cancelled():
            return
        self._running([work.tag])
        try:
            with metrics.inference_call(work.operation, work.texts):
                value = work.fn()
        except BaseException as exc:
            _settle(work.future, exception=exc)
        else:
            _settle(work.future, value)
        finally:
            self._running(None)

    # -- the watchdog -------------------------------------------------------

    def _running(self, tags: list[Any] | None) -> None:
        self._running_tags = tags or []
        self._running_since = None if tags is None else time.monotonic()

    def _watch(self) -> None:
        assert self.hard_limit is not None
        while not self._stopped:
            time.sleep(WATCHDOG_INTERVAL)
            since = self._running_since
            if since is None or time.monotonic() - since <= self.hard_limit:
                continue
            log.critical(
                "a model call ran past the hard time limit; ending the worker process",
                extra={"seconds": self.hard_limit},
            )
            try:
                if self.on_stuck is not None:
                    self.on_stuck([tag for tag in self._running_tags if tag is not None])
            finally:
                os._exit(70)
