"""Batched tasks: the gpu pool serves many requests in one forward pass.

A batched task buffers the messages its worker has reserved (celery-batches)
and hands them over as one list when ``flush_every`` are waiting or
``flush_interval`` seconds have passed. Messages are acknowledged only after
the batch function returns, so a worker killed mid-batch has every message
of the batch delivered again.

celery-batches acknowledges every message even when the batch function
raises, so the function given here must settle each request itself: store
its result, fail its job, or ``requeue`` it. Whatever still escapes is caught
below and every request of the batch is put back on the queue.
"""

import logging
import random
from collections.abc import Callable, Collection, Sequence
from contextvars import ContextVar
from functools import partial
from time import perf_counter
from typing import Any

from celery import Celery, Task, shared_task, signature
from celery.worker.request import Request
from celery_batches import Batches, SimpleRequest

from worker.queues import TASK_QUEUES, TaskName
from worker.timelimits import time_limits

log = logging.getLogger(__name__)


class ChainingBatches(Batches):
    """Batches whose requests keep their canvas (chain, callbacks) for ``continue_chain``.

    A request's chain travels in the message body, and a worker's request
    copies it into ``request_dict`` only when it traces the task itself,
    which a batch never does; so it is copied here, from the same payload
    celery-batches reads the arguments from.
    """

    abstract = True

    def flush(self, requests: Collection[Request]) -> Any:
        for request in requests:
            _, _, embed = request._payload
            request.request_dict.update(embed or {})
        return super().flush(requests)


BatchWork = Callable[[Task, Sequence[SimpleRequest]], None]
HardTimeoutHandler = Callable[[Sequence[SimpleRequest], float], None]

MAX_REQUEUE_DELAY = 60.0
# A batch that fails in an unforeseen way is retried this many times, then
# its requests are dropped: a poison message must not loop for ever.
MAX_BATCH_FAILURES = 3
KINDS = frozenset({"job", "query", "conversation"})
# The ids ``requeue`` published again during the batch being run.
_REQUEUED: ContextVar[set[str] | None] = ContextVar("requeued", default=None)


def batch_task(
    name: TaskName,
    *,
    flush_every: int,
    flush_interval: float,
    on_hard_timeout: HardTimeoutHandler | None = None,
    on_give_up: Callable[[Sequence[SimpleRequest]], None] | None = None,
) -> Callable[[BatchWork], Task]:
    """Declare a batched task; ``work(task, requests)`` settles every request.

    ``on_hard_timeout(requests, seconds)`` runs before a solo worker ends at
    the hard time limit; ``on_give_up(requests)`` when requests are dropped
    after repeated unforeseen failures.
    """

    def decorator(work: BatchWork) -> Task:
        def run(task: Task, requests: Sequence[SimpleRequest]) -> None:
            requests = [r for r in requests if _well_formed(r)]
            conf = task.app.conf
            hard = conf.task_time_limit
            handler = partial(on_hard_timeout or _ignore, requests, hard)
            requeued: set[str] = set()
            exhausted: list[SimpleRequest] = []
            token = _REQUEUED.set(requeued)
            started = perf_counter()
            with time_limits(conf.task_soft_time_limit, hard, on_hard_timeout=handler):
                try:
                    work(task, requests)
                except Exception:
                    log.exception("batch failed; its requests are queued again")
                    exhausted = [r for r in requests if retries_of(r) >= MAX_BATCH_FAILURES]
                    for request in requests:
                        if request not in exhausted:
                            requeue(task.app, request)
                    if exhausted and on_give_up is not None:
                        on_give_up(exhausted)
                finally:
                    _REQUEUED.reset(token)
            _announce(task, requests, requeued, exhausted, perf_counter() - started)

        run.__name__, run.__qualname__, run.__doc__ = work.__name__, work.__qualname__, work.__doc__
        run.__module__ = work.__module__
        return shared_task(
            name=name.value,
            base=ChainingBatches,
            bind=True,
            queue=TASK_QUEUES[name].value,
            ignore_result=True,
            flush_every=flush_every,
            flush_interval=flush_interval,
        )(run)

    return decorator


def _announce(
    task: Task,
    requests: Sequence[SimpleRequest],
    requeued: set[str],
    given_up: Sequence[SimpleRequest],
    runtime: float,
) -> None:
    """Send each request's outcome as a task event, as the worker does for an
    ordinary task, so Flower shows batched requests finishing."""
    if not requests or not task.app.conf.worker_send_task_events:
        return
    dropped = {r.id for r in given_up}
    try:
        with task.app.events.default_dispatcher(hostname=requests[0].hostname) as events:
            for request in requests:
                if request.id in dropped:
                    events.send("task-failed", uuid=request.id, exception="batch kept failing")
                elif request.id in requeued:
                    events.send("task-retried", uuid=request.id, exception="queued again")
                else:
                    events.send("task-succeeded", uuid=request.id, result="", runtime=runtime)
    except Exception:
        log.warning("could not send the batch's task events", exc_info=True)


def _well_formed(request: SimpleRequest) -> bool:
    """Every batched request carries one dict naming its kind; anything else is dropped."""
    args = request.args
    if len(args) == 1 and isinstance(args[0], dict) and args[0].get("kind") in KINDS:
        return True
    log.error("malformed request dropped", extra={"task_id": request.id, "task": request.name})
    return False


def _ignore(requests: Sequence[SimpleRequest], seconds: float) -> None:
    pass


def requeue(app: Celery, request: SimpleRequest) -> None:
    """Publish the request again after a backoff, as ``Task.retry`` would.

    It keeps its task id, arguments, priority and the rest of its chain, and
    counts the retry in its headers.
    """
    requeued = _REQUEUED.get()
    if requeued is not None:
        requeued.add(request.id)
    headers = request.request_dict or {}
    retries = int(headers.get("retries") or 0) + 1
    delay = min(MAX_REQUEUE_DELAY, 2.0**retries) * random.uniform(0.5, 1.0)  # noqa: S311
    app.send_task(
        request.name,
        args=request.args,
        kwargs=request.kwargs,
        task_id=request.id,
        countdown=delay,
        retries=retries,
        chain=headers.get("chain"),
        root_id=headers.get("root_id"),
        parent_id=headers.get("parent_id"),
        priority=(request.delivery_info or {}).get("priority"),
    )


def retries_of(request: SimpleRequest) -> int:
    return int((request.request_dict or {}).get("retries") or 0)


def continue_chain(app: Celery, request: SimpleRequest, value: Any) -> None:
    """Send the next task of the request's chain with ``value``, as Celery's
    tracer does for an ordinary task (celery-batches does not)."""
    headers = request.request_dict or {}
    chain = list(headers.get("chain") or [])
    if not chain:
        return
    next_task = signature(chain.pop(), app=app)
    next_task.apply_async(
        (value,),
        chain=chain or None,
        parent_id=request.id,
        root_id=headers.get("root_id") or request.id,
    )
