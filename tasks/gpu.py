"""What the gpu pool's batched tasks share: the model thread, and waiting on it.

A batch submits its jobs' work to this process's scheduler (the one model
thread) and waits: results are settled as soon as they are ready, progress is
written once a second for every job still underway (one statement), a job
canceled meanwhile has its remaining texts dropped, and work still running at
the soft time limit is dropped and its jobs fail.
"""

import logging
import time
import uuid
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from typing import Any

from celery import Task

from config import get_settings
from config.logs import log_context
from inference.loaders import load_scheduler
from inference.scheduler import EmbedHandle, Scheduler
from models import JobErrorCode
from services.jobs import JobStore
from tasks.batch import BatchWork, Delivery, batch_task
from tasks.frame import JobFrame, TimeLimitExceeded
from worker.queues import TaskName

log = logging.getLogger(__name__)

PROGRESS_SECONDS = 1.0


def _fail_stuck_jobs(tags: list[Any]) -> None:
    """The scheduler's ``on_stuck``: the jobs in a model call stuck past the hard limit."""
    flat = [item for tag in tags for item in (tag if isinstance(tag, list) else [tag])]
    job_ids = [item for item in flat if isinstance(item, uuid.UUID)]
    JobFrame.from_settings().stop_at_hard_limit(job_ids, get_settings().celery.task_time_limit)


def gpu_scheduler() -> Scheduler:
    """This process's model thread (started with the worker, ``worker.signals``)."""
    return load_scheduler(get_settings(), on_stuck=_fail_stuck_jobs)


def _give_up(deliveries: Sequence[Delivery]) -> None:
    """When a batch kept failing in an unforeseen way: fail the jobs, not loop for ever."""
    JobFrame.from_settings().fail(
        [d.job_id for d in deliveries],
        JobErrorCode.INTERNAL_ERROR,
        "the job failed repeatedly on the gpu worker",
    )


def _release(job_ids: set[uuid.UUID]) -> None:
    """Jobs whose message could not be put back (the broker is down): the recovery
    sweep publishes them again once it is back."""
    try:
        JobFrame.from_settings().release(job_ids)
    except Exception:
        # Still running on this live worker: the sweep's stale check finds them.
        log.critical("could not release jobs for recovery", exc_info=True)


def gpu_batch_task(name: TaskName, *, flush_every: int) -> Callable[[BatchWork], Task]:
    """A batched task of the gpu pool, whose messages work for jobs."""
    return batch_task(
        name,
        flush_every=flush_every,
        flush_interval=get_settings().batch_flush_interval,
        on_give_up=_give_up,
        on_unpublished=_release,
    )


def deadline() -> float:
    """When a batch starting now must stop: its soft time limit."""
    return time.monotonic() + get_settings().celery.task_soft_time_limit


def embedded(
    handles: Mapping[uuid.UUID, EmbedHandle],
    store: JobStore,
    *,
    count_texts: Collection[uuid.UUID] = (),
) -> Iterator[dict[uuid.UUID, Any]]:
    """``{job id: vectors or exception}`` of the jobs whose texts are done, as they finish.

    Once a second, the progress of the jobs in ``count_texts`` (whose progress
    is counted in texts) still underway is written in one statement; those no
    longer running (canceled) have their texts dropped. A job whose texts have
    been in forward passes for longer than the soft time limit is dropped and
    comes back as ``TimeLimitExceeded`` (time spent waiting for the model
    thread, behind other work, does not count).
    """
    pending = dict(handles)
    try:
        yield from _as_finished(pending, store, count_texts)
    finally:
        for handle in pending.values():  # the batch gave up on them: run no more of their texts
            handle.cancel()


def _as_finished(
    pending: dict[uuid.UUID, EmbedHandle], store: JobStore, count_texts: Collection[uuid.UUID]
) -> Iterator[dict[uuid.UUID, Any]]:
    limit = get_settings().celery.task_soft_time_limit
    next_progress = time.monotonic() + PROGRESS_SECONDS
    while pending:
        started = [h.started for h in pending.values() if h.started is not None]
        wake = min([next_progress, *(when + limit for when in started)])
        wait(
            [handle.future for handle in pending.values()],
            timeout=max(0.0, wake - time.monotonic()),
            return_when=FIRST_COMPLETED,
        )
        now = time.monotonic()
        outcomes: dict[uuid.UUID, Any] = {}
        for job_id, handle in list(pending.items()):
            if handle.future.done():
                outcomes[job_id] = _outcome(handle.future)
            elif handle.started is not None and now - handle.started >= limit:
                handle.cancel()
                outcomes[job_id] = TimeLimitExceeded()
            else:
                continue
            del pending[job_id]
        if outcomes:
            yield outcomes
        if pending and time.monotonic() >= next_progress:
            next_progress = time.monotonic() + PROGRESS_SECONDS
            _report_progress(pending, store, count_texts)


def _outcome(future: Future) -> Any:
    if future.cancelled():
        return None
    return future.exception() or future.result()


def _report_progress(
    pending: dict[uuid.UUID, EmbedHandle], store: JobStore, count_texts: Collection[uuid.UUID]
) -> None:
    underway = {
        job_id: (handle.done, handle.total)
        for job_id, handle in pending.items()
        if job_id in count_texts
    }
    still_running = store.report_progress(underway)
    for job_id in set(underway) - still_running:
        with log_context(job_id=str(job_id)):
            log.info("job canceled while running")
        pending.pop(job_id).cancel()
