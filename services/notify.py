"""Notifications over Redis pub/sub: jobs that finished, and answers to interactive requests.

Whoever ends a job (a worker, or the API canceling it) publishes its id on
the finished-jobs channel once the row is committed, with the row itself when
it is small (``JobsFinished``). Each API process runs one ``Listener`` thread
subscribed to that channel and to a reply channel of its own; requests
waiting for a job (``Prefer: wait``, ``?wait=``) or for the gpu pool's answer
sleep on an event until the listener wakes them. Nothing polls the database:
a wait reads the row once before sleeping and, unless the announcement
carried it, once after.

A notification can be lost (Redis restarting, the publisher dying between
commit and publish): waiters then wake at their deadline and read the row,
so a lost notification costs time, never a wrong answer. After the listener
reconnects it wakes every job waiter to read its row again.

Jobs that start or make progress are announced too (``publish_changed``: their
ids, one message per batch), for the event streams of ``api.events``, which
watch a job with ``watch_changes`` and read its row when woken.

Pub/sub channels are server-wide, not per Redis database, so their names
carry the database number: tests, benchmarks and ``make run`` can share a
server without hearing each other.
"""

import base64
import logging
import os
import threading
import uuid
from collections.abc import Callable, Iterable
from functools import cache
from typing import Any
from urllib.parse import urlsplit

import redis

from worker.messages import (
    FinishedJob,
    JobsChanged,
    JobsFinished,
    MalformedMessage,
    read_changed,
    read_finished,
)

log = logging.getLogger(__name__)

RECONNECT_SECONDS = 1.0
RECONNECT_LOG_EVERY = 60
SUBSCRIBE_TIMEOUT = 5.0
HEALTH_CHECK_SECONDS = 15


def _database(redis_url: str) -> str:
    path = urlsplit(redis_url).path.strip("/")
    return path or "0"


def finished_channel(redis_url: str) -> str:
    return f"convoq:{_database(redis_url)}:jobs:finished"


def changed_channel(redis_url: str) -> str:
    return f"convoq:{_database(redis_url)}:jobs:changed"


# Connections a process publishes and pushes on at once; more wait for one (a
# gevent API process can have hundreds of requests pushing at the same time).
MAX_PUBLISH_CONNECTIONS = 32


@cache
def notify_client(redis_url: str) -> redis.Redis:
    """The client that publishes, one per process and URL, with short timeouts."""
    pool = redis.BlockingConnectionPool.from_url(
        redis_url,
        max_connections=MAX_PUBLISH_CONNECTIONS,
        timeout=2,
        socket_timeout=2,
        socket_connect_timeout=2,
    )
    return redis.Redis(connection_pool=pool)


# A row heavier than this (an embed job of more than a few texts) is not
# carried: its waiters read it from the database.
MAX_CARRIED_ROW_BYTES = 16 * 1024


def _carried(row: Any) -> dict[str, Any] | None:
    """The row for the announcement; None when its vectors are too big to carry (the
    change then returned them as NULL, with their size in ``vectors_bytes``)."""
    values = {name: getattr(row, name) for name in row._fields if name != "params"}
    vectors = values.get("vectors")
    size = values.pop("vectors_bytes", None)
    if size is None and vectors is not None:
        size = len(vectors)
    if size is not None and (size > MAX_CARRIED_ROW_BYTES or vectors is None):
        return None
    if vectors is not None:
        values["vectors"] = base64.b64encode(vectors).decode()
    return values


def publish_finished(redis_url: str, rows: Iterable[Any]) -> None:
    """Say these jobs reached a final status (after the commit). Never raises.

    ``rows`` are the jobs' rows as the change returned them (at least their
    ``id``); what they hold is carried along for the waiters.
    """
    jobs = [FinishedJob(id=row.id, row=_carried(row)) for row in rows]
    if not jobs:
        return
    message = JobsFinished(jobs=jobs).model_dump_json()
    if len(message) > MAX_CARRIED_ROW_BYTES * 4:
        message = JobsFinished(jobs=[FinishedJob(id=job.id) for job in jobs]).model_dump_json()
    try:
        notify_client(redis_url).publish(finished_channel(redis_url), message)
    except redis.RedisError as exc:
        log.warning("could not publish finished jobs", extra={"error": str(exc)})


def finished_notifier(redis_url: str) -> Callable[[Iterable[Any]], None]:
    """``publish_finished`` bound to a URL: what ``JobStore`` is given."""
    return lambda rows: publish_finished(redis_url, rows)


def publish_changed(redis_url: str, job_ids: Iterable[uuid.UUID]) -> None:
    """Say these jobs started or made progress (after the commit). Never raises."""
    job_ids = list(job_ids)
    if not job_ids:
        return
    message = JobsChanged(job_ids=job_ids).model_dump_json()
    try:
        notify_client(redis_url).publish(changed_channel(redis_url), message)
    except redis.RedisError as exc:
        log.warning("could not publish job changes", extra={"error": str(exc)})


def changed_notifier(redis_url: str) -> Callable[[Iterable[uuid.UUID]], None]:
    """``publish_changed`` bound to a URL: what ``JobStore`` is given."""
    return lambda job_ids: publish_changed(redis_url, job_ids)


class ChangeWait:
    """One job an event stream follows: ``event`` is set at each of its changes (and
    when the listener reconnected); the stream clears it before reading the row."""

    def __init__(self, job_id: uuid.UUID) -> None:
        self.job_id = job_id
        self.event = threading.Event()


class JobWait:
    """Jobs one request waits for; ``event`` is set once all were announced finished
    (or the listener reconnected, when they must be read again). ``rows`` holds
    the rows the announcements carried, by job id."""

    def __init__(self, job_ids: Iterable[uuid.UUID]) -> None:
        self.job_ids = frozenset(job_ids)
        self.pending = set(self.job_ids)
        self.rows: dict[uuid.UUID, dict[str, Any]] = {}
        self.event = threading.Event()


class ReplySlot:
    def __init__(self) -> None:
        self.event = threading.Event()
        self.payload: bytes | None = None


class Listener:
    """One subscriber per process: finished jobs and this process's replies."""

    def __init__(self, redis_url: str) -> None:
        self.redis_url = redis_url
        self.reply_channel = (
            f"convoq:{_database(redis_url)}:replies:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        )
        self._finished = finished_channel(redis_url)
        self._changed = changed_channel(redis_url)
        self._lock = threading.Lock()
        self._job_waits: dict[uuid.UUID, set[JobWait]] = {}
        self._change_waits: dict[uuid.UUID, set[ChangeWait]] = {}
        self._replies: dict[str, ReplySlot] = {}
        self._subscribed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="convoq-listener", daemon=True)
        self._thread.start()

    # -- waiting for jobs --------------------------------------------------

    def watch_jobs(self, job_ids: Iterable[uuid.UUID]) -> JobWait:
        """Start listening for these jobs; call before reading their rows."""
        self._subscribed.wait(SUBSCRIBE_TIMEOUT)
        wait = JobWait(job_ids)
        with self._lock:
            for job_id in wait.pending:
                self._job_waits.setdefault(job_id, set()).add(wait)
        return wait

    def unwatch(self, wait: JobWait) -> None:
        with self._lock:
            for job_id in wait.job_ids:
                waits = self._job_waits.get(job_id)
                if waits is not None:
                    waits.discard(wait)
                    if not waits:
                        del self._job_waits[job_id]

    # -- following a job's changes -----------------------------------------

    def watch_changes(self, job_id: uuid.UUID) -> ChangeWait:
        """Start following this job; call before reading its row."""
        self._subscribed.wait(SUBSCRIBE_TIMEOUT)
        wait = ChangeWait(job_id)
        with self._lock:
            self._change_waits.setdefault(job_id, set()).add(wait)
        return wait

    def unwatch_changes(self, wait: ChangeWait) -> None:
        with self._lock:
            waits = self._change_waits.get(wait.job_id)
            if waits is not None:
                waits.discard(wait)
                if not waits:
                    del self._change_waits[wait.job_id]

    # -- waiting for replies -----------------------------------------------

    def expect_reply(self, request_id: str) -> ReplySlot:
        self._subscribed.wait(SUBSCRIBE_TIMEOUT)
        slot = ReplySlot()
        with self._lock:
            self._replies[request_id] = slot
        return slot

    def forget_reply(self, request_id: str) -> None:
        with self._lock:
            self._replies.pop(request_id, None)

    # -- the thread --------------------------------------------------------

    def _run(self) -> None:
        # Pings on a quiet connection, so a dead one is noticed and replaced.
        client = redis.Redis.from_url(
            self.redis_url,
            socket_connect_timeout=2,
            socket_keepalive=True,
            health_check_interval=HEALTH_CHECK_SECONDS,
        )
        failures = 0
        while True:
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(self._finished, self._changed, self.reply_channel)
                self._subscribed.set()
                failures = 0
                self._wake_all_job_waits()  # what was announced while away is read again
                while True:
                    message = pubsub.get_message(timeout=HEALTH_CHECK_SECONDS)
                    if message is not None:
                        self._dispatch(message["channel"], message["data"])
            except redis.RedisError as exc:
                self._subscribed.clear()
                if failures % RECONNECT_LOG_EVERY == 0:  # once a minute while Redis is away
                    log.warning("notification listener reconnecting", extra={"error": str(exc)})
                failures += 1
                threading.Event().wait(RECONNECT_SECONDS)
            finally:
                pubsub.close()

    def _dispatch(self, channel: bytes, data: bytes) -> None:
        name = channel.decode()
        if name in (self._finished, self._changed):
            try:
                if name == self._finished:
                    jobs = read_finished(data).jobs
                    self._announce_finished(jobs)
                    self._announce_changed([job.id for job in jobs])
                else:
                    self._announce_changed(read_changed(data).job_ids)
            except MalformedMessage as exc:
                log.error("malformed announcement dropped", extra={"error": str(exc)[:500]})
            return
        request_id, _, payload = data.partition(b"\n")
        with self._lock:
            slot = self._replies.pop(request_id.decode(), None)
        if slot is not None:
            slot.payload = payload
            slot.event.set()

    def _announce_finished(self, jobs: list[FinishedJob]) -> None:
        with self._lock:
            for job in jobs:
                for wait in self._job_waits.pop(job.id, ()):
                    wait.pending.discard(job.id)
                    if job.row is not None:
                        wait.rows[job.id] = job.row
                    if not wait.pending:
                        wait.event.set()

    def _announce_changed(self, job_ids: list[uuid.UUID]) -> None:
        with self._lock:
            for job_id in job_ids:
                for wait in self._change_waits.get(job_id, ()):
                    wait.event.set()

    def _wake_all_job_waits(self) -> None:
        with self._lock:
            waits: set[JobWait | ChangeWait] = {
                wait for waits in self._job_waits.values() for wait in waits
            }
            waits |= {wait for waits in self._change_waits.values() for wait in waits}
        for wait in waits:
            wait.event.set()


_listeners: dict[tuple[int, str], Listener] = {}
_listeners_lock = threading.Lock()


def listener(redis_url: str) -> Listener:
    """This process's listener for ``redis_url``, started on first use (after any fork)."""
    key = (os.getpid(), redis_url)
    found = _listeners.get(key)
    if found is None:
        with _listeners_lock:
            found = _listeners.get(key)
            if found is None:
                found = _listeners[key] = Listener(redis_url)
    return found


def publish_reply(client: redis.Redis, channel: str, request_id: str, payload: bytes) -> None:
    """Answer an interactive request on the channel its sender listens on."""
    client.publish(channel, request_id.encode() + b"\n" + payload)
