"""Celery's ``--autoscale``, sized from the queue's depth (``worker_autoscaler``).

Celery's own autoscaler sizes the pool from the messages this worker has
reserved. With one message reserved per process (our prefetch rule), that
count never exceeds the pool's size and the pool never grows. This one adds
what still waits in the broker for the queues the worker consumes:

- it grows at once, on the next message or tick, to
  ``reserved + waiting`` processes, at most the maximum;
- it shrinks to that size, at least the minimum, once the pool has been larger
  than needed for ``AUTOSCALE_IDLE_SECONDS``, and busy processes are never
  stopped;
- the prefetch count follows the pool's size, so a node never holds more
  messages than it has processes to run them.
"""

import logging
from time import monotonic
from typing import Any

import redis
from celery.worker import state
from celery.worker.autoscale import Autoscaler

from config import get_settings
from worker import broker

log = logging.getLogger(__name__)


class QueueDepthAutoscaler(Autoscaler):
    def __init__(
        self,
        pool: Any,
        max_concurrency: int,
        min_concurrency: int = 0,
        worker: Any = None,
        keepalive: float | None = None,
        mutex: Any = None,
    ) -> None:
        settings = get_settings()
        # Celery calls maybe_scale every ``keepalive`` seconds: our tick.
        super().__init__(
            pool,
            max_concurrency,
            min_concurrency,
            worker=worker,
            keepalive=keepalive or settings.autoscale_interval,
            mutex=mutex,
        )
        self.idle_seconds = settings.autoscale_idle_seconds
        self._client = broker.broker_client(settings.redis_url)
        self._waiting = 0
        self._waiting_read_at = float("-inf")
        self._needed_at = monotonic()
        # Celery reserves for the maximum pool at start; we adjust to the real one.
        self._prefetch_processes = max_concurrency

    @property
    def queues(self) -> list[str]:
        if self.worker is None:
            return []
        return sorted(self.worker.app.amqp.queues.consume_from)

    def waiting_in_broker(self) -> int:
        """Messages in the broker for this worker's queues, read at most once per tick."""
        now = monotonic()
        if now - self._waiting_read_at >= self.keepalive:
            self._waiting_read_at = now
            try:
                self._waiting = sum(broker.waiting(self._client, self.queues).values())
            except redis.RedisError as exc:
                # Without the broker there is nothing new to run: size by what is reserved.
                log.warning("autoscaler could not read the queue depth", extra={"error": str(exc)})
                self._waiting = 0
        return self._waiting

    @property
    def qty(self) -> int:
        return len(state.reserved_requests) + self.waiting_in_broker()

    def _maybe_scale(self, req: Any = None) -> bool:
        processes = self.processes
        wanted = max(self.min_concurrency, min(self.qty, self.max_concurrency))
        now = monotonic()
        changed = False
        if wanted >= processes:
            self._needed_at = now
        if wanted > processes:
            self.scale_up(wanted - processes)
            changed = True
        elif wanted < processes and now - self._needed_at > self.idle_seconds:
            self._shrink(processes - wanted)
            self._needed_at = now
            changed = True
        self._follow_prefetch()
        return changed

    def _follow_prefetch(self) -> None:
        consumer = getattr(self.worker, "consumer", None)
        if consumer is None or getattr(consumer, "qos", None) is None:
            return  # not consuming yet
        processes = self.processes
        if processes != self._prefetch_processes:
            consumer._update_prefetch_count(processes - self._prefetch_processes)
            self._prefetch_processes = processes

    def _update_consumer_prefetch_count(self, new_max: int) -> None:
        # ``celery control autoscale`` changes the maximum; the prefetch count
        # follows the processes that exist (_follow_prefetch), not the maximum.
        pass

    def info(self) -> dict[str, Any]:
        return {**super().info(), "waiting": self._waiting, "idle_seconds": self.idle_seconds}
