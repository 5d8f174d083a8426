"""A slow task on the cpu queue, for sizing the pool: ``celery worker --include bench.workload``.

Each call sleeps, the way a task waiting on PostgreSQL or Milvus does, and
counts itself done in Redis so a caller knows when a burst has drained.
"""

import time
from functools import cache

import redis
from celery import shared_task

from config import get_settings
from worker.queues import Queue

SLEEP_TASK = "bench.workload.sleep"
DONE_COUNTER = "bench:workload:done"


@cache
def _counter() -> redis.Redis:
    return redis.Redis.from_url(get_settings().redis_url)


@shared_task(name=SLEEP_TASK, queue=Queue.CPU.value, ignore_result=True)
def sleep(seconds: float) -> None:
    time.sleep(seconds)
    _counter().incr(DONE_COUNTER)
