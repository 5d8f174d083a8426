"""Batched tasks: the gpu pool serves many messages in one call (celery-batches).

A batched task buffers the messages its worker has reserved and hands them
over as one list when ``flush_every`` are waiting or ``flush_interval``
seconds have passed. The gpu worker runs Celery's threads pool, so while one
batch waits for its forward passes the worker goes on receiving messages and
the next batch starts beside it; the model itself runs on one thread
(``inference.scheduler``), which interleaves the batches' texts fairly.

Messages are acknowledged only after the batch function returns, so a worker
killed mid-batch has every message of the batch delivered again. celery-batches
acknowledges every message even when the batch function raises, so the
function must settle each delivery itself: store its result, fail its job, or
``requeue`` it (``retry_later`` after a transient error: bounded, see
``tasks.retry``). Whatever still escapes is caught here and every delivery of the
batch is put back on the queue, at most ``MAX_BATCH_FAILURES`` times.

A delivery that cannot be put back (the broker is down) is not lost: its job
is released on its row (``on_unpublished``, one statement for the batch) and
the recovery sweep (``services.recovery``) publishes it again.
"""

import logging
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from time import perf_counter
from typing import Any

from celery import Celery, Task, shared_task
from celery.worker.request import Request
from celery_batches import Batches, SimpleRequest, apply_batches_task

from config import get_settings
from tasks.retry import backoff_delay
from worker.messages import (
    MalformedMessage,
    Message,
    StepMessage,
    job_ids_of,
    read_message,
    task_args,
)
from worker.queues import TASK_QUEUES, TaskName

log = logging.getLogger(__name__)

# A batch that fails in an unforeseen way is retried this many times, then
# its deliveries are dropped: a poison message must not loop for ever.
MAX_BATCH_FAILURES = 3


@dataclass(frozen=True)
class Delivery:
    """One message of a batch, read."""

    request: SimpleRequest
    message: Message

    @property
    def job_id(self) -> uuid.UUID:
        (job_id,) = job_ids_of(self.message)
        return job_id

    @property
    def retries(self) -> int:
        return int((self.request.request_dict or {}).get("retries") or 0)


class BulkAckBatches(Batches):
    """celery-batches, acknowledging a batch's messages together once it returns.

    celery-batches acknowledges each message on its own, one Redis round trip
    per message; here each channel acknowledges all of the batch's messages in
    one (``worker.transport.Channel.basic_ack_many``). Every task of ours acks
    late, so this happens after the batch function returned.
    """

    abstract = True

    def flush(self, requests: Sequence[Request]) -> object:
        requests = list(requests)
        serializable = ([SimpleRequest.from_request(r) for r in requests],)
        return self._pool.apply_async(
            apply_batches_task,
            (self, serializable, 0, None),
            callback=lambda _result: acknowledge(requests),
        )


def acknowledge(requests: Sequence[Request]) -> None:
    """Acknowledge the requests' messages, in one round trip per channel when it can."""
    by_channel: dict[int, list[Request]] = {}
    for request in requests:
        if not request.acknowledged:
            by_channel.setdefault(id(request.message.channel), []).append(request)
    for group in by_channel.values():
        channel = group[0].message.channel
        if not hasattr(channel, "basic_ack_many"):  # another transport: one by one
            for request in group:
                request.acknowledge()
            continue
        try:
            channel.basic_ack_many([r.message.delivery_tag for r in group])
        except Exception:
            # As celery-batches does for one message: the messages stay unacked
            # and come back after the visibility timeout; the job rows decide.
            log.critical("could not acknowledge a batch's messages", exc_info=True)
            continue
        for request in group:
            request.message._state = "ACK"
            request.acknowledged = True


GiveUp = Callable[[list[uuid.UUID], Exception], bool]


class Batch:
    """The deliveries of one batch, by job; what it sends next, and what it put back.

    ``give_up(job_ids, exc)`` fails jobs whose retries are spent and says whether
    it could (``JobFrame.give_up``).
    """

    def __init__(
        self, task: Task, deliveries: Sequence[Delivery], give_up: GiveUp | None = None
    ) -> None:
        self.task = task
        self.by_job = {d.job_id: d for d in deliveries}
        self.requeued: set[str] = set()
        # Jobs whose message could not be put back: left to the recovery sweep.
        self.unpublished: set[uuid.UUID] = set()
        self.give_up = give_up

    def retries_of(self, kind: type[Message]) -> dict[uuid.UUID, int]:
        """``{job id: retries}`` of the deliveries whose message is of ``kind``."""
        return {
            job_id: d.retries for job_id, d in self.by_job.items() if isinstance(d.message, kind)
        }

    def requeue(self, job_ids: Iterable[uuid.UUID] | None = None) -> None:
        """Put the jobs' deliveries (all, by default) back on the queue, with a backoff."""
        for job_id in self.by_job if job_ids is None else job_ids:
            delivery = self.by_job[job_id]
            if requeue(self.task.app, delivery):
                self.requeued.add(delivery.request.id)
            else:
                self.unpublished.add(job_id)

    def retry_later(self, exc: Exception) -> None:
        """After a transient error: put every delivery back with a backoff, except those
        whose retries are spent, whose jobs fail with ``dependency_unavailable``.
        Those are put back too when their failure cannot be recorded (the database
        is what is away), so that no job is left without a message."""
        max_retries = get_settings().retry.max_retries
        spent = [job_id for job_id, d in self.by_job.items() if d.retries >= max_retries]
        if spent and self.give_up is not None and self.give_up(spent, exc):
            self.requeue(job_id for job_id in self.by_job if job_id not in spent)
        else:
            self.requeue()

    def send_next(self, step: TaskName, job_ids: Iterable[uuid.UUID]) -> None:
        """Send each job's next step; one that cannot be sent runs this step again later."""
        for job_id in job_ids:
            try:
                self.task.app.send_task(step.value, args=task_args(StepMessage(job_id=job_id)))
            except Exception:
                log.warning("could not send the next step; queued again", exc_info=True)
                self.requeue([job_id])


# ``work(task, deliveries)`` settles the deliveries with a ``Batch`` and returns it.
BatchWork = Callable[[Task, Sequence[Delivery]], Batch]


def batch_task(
    name: TaskName,
    *,
    flush_every: int,
    flush_interval: float,
    on_give_up: Callable[[Sequence[Delivery]], None],
    on_unpublished: Callable[[set[uuid.UUID]], None],
) -> Callable[[BatchWork], Task]:
    """Declare a batched task. ``work(task, deliveries)`` settles every delivery and
    returns its ``Batch`` (what it put back on the queue, what it could not);
    ``on_give_up`` is called with deliveries dropped after repeated unforeseen
    failures, ``on_unpublished`` with the jobs whose message could not be put back."""

    def decorator(work: BatchWork) -> Task:
        def run(task: Task, requests: Sequence[SimpleRequest]) -> None:
            deliveries = [d for r in requests if (d := _read(r)) is not None]
            _announce_received(task, deliveries)
            started = perf_counter()
            batch = Batch(task, deliveries)
            given_up: list[Delivery] = []
            try:
                batch = work(task, deliveries)
            except Exception:
                log.exception("batch failed; its requests are queued again")
                given_up = [d for d in deliveries if d.retries >= MAX_BATCH_FAILURES]
                batch.requeue(d.job_id for d in deliveries if d not in given_up)
                if given_up:
                    on_give_up(given_up)
            if batch.unpublished:
                on_unpublished(batch.unpublished)
            _announce(task, deliveries, batch.requeued, given_up, perf_counter() - started)

        run.__name__, run.__qualname__, run.__doc__ = work.__name__, work.__qualname__, work.__doc__
        run.__module__ = work.__module__
        return shared_task(
            name=name.value,
            base=BulkAckBatches,
            bind=True,
            queue=TASK_QUEUES[name].value,
            ignore_result=True,
            flush_every=flush_every,
            flush_interval=flush_interval,
        )(run)

    return decorator


def _read(request: SimpleRequest) -> Delivery | None:
    """The request's message; anything that is not one of ours is dropped."""
    try:
        return Delivery(request, read_message(request.args))
    except MalformedMessage as exc:
        log.error(
            "malformed request dropped",
            extra={"task_id": request.id, "task": request.name, "error": str(exc)[:500]},
        )
        return None


def _send_events(task: Task, deliveries: Sequence[Delivery], event: Callable[..., None]) -> None:
    """Send task events for the deliveries, in one Redis round trip, as a worker sends
    them for ordinary tasks: Flower shows batched requests from them."""
    if not deliveries or not task.app.conf.worker_send_task_events:
        return
    try:
        with (
            task.app.events.default_dispatcher(hostname=deliveries[0].request.hostname) as events,
            events.producer.batch(),
        ):
            for delivery in deliveries:
                event(events, delivery)
    except Exception:
        log.warning("could not send the batch's task events", exc_info=True)


def _announce_received(task: Task, deliveries: Sequence[Delivery]) -> None:
    def received(events: Any, delivery: Delivery) -> None:
        request = delivery.request
        events.send(
            "task-received",
            uuid=request.id,
            name=request.name,
            args=repr(request.args),
            kwargs=repr(request.kwargs),
            retries=delivery.retries,
            eta=None,
            expires=None,
            root_id=request.id,
            parent_id=None,
        )

    _send_events(task, deliveries, received)


def _announce(
    task: Task,
    deliveries: Sequence[Delivery],
    requeued: set[str],
    given_up: Sequence[Delivery],
    runtime: float,
) -> None:
    """Each request's outcome, as a task event."""
    dropped = {d.request.id for d in given_up}

    def outcome(events: Any, delivery: Delivery) -> None:
        request_id = delivery.request.id
        if request_id in dropped:
            events.send("task-failed", uuid=request_id, exception="batch kept failing")
        elif request_id in requeued:
            events.send("task-retried", uuid=request_id, exception="queued again")
        else:
            events.send("task-succeeded", uuid=request_id, result="", runtime=runtime)

    _send_events(task, deliveries, outcome)


def requeue(app: Celery, delivery: Delivery) -> bool:
    """Publish the message again after a backoff, as ``Task.retry`` would; False
    when the broker could not take it.

    It keeps its task id, arguments and priority, and counts the retry in
    its headers. Past the retries allowed it waits the longest backoff.
    """
    request = delivery.request
    policy = get_settings().retry
    delay = backoff_delay(delivery.retries, policy)
    if delay is None:
        delay = policy.backoff_max
    retries = delivery.retries + 1
    log.info(
        "request queued again",
        extra={"task_id": request.id, "retry": retries, "delay": round(delay, 2)},
    )
    try:
        app.send_task(
            request.name,
            args=request.args,
            task_id=request.id,
            countdown=delay,
            retries=retries,
            priority=(request.delivery_info or {}).get("priority"),
        )
    except Exception:
        log.warning("could not queue a request again", exc_info=True)
        return False
    return True
