"""The baseline: a bare Celery app with one no-op task, on the same Redis.

Each task increments a counter so the benchmark knows when all have run.
"""

import os

import redis
from celery import Celery

BROKER_URL = os.environ["BENCH_BROKER_URL"]
COUNTER = "bench:noop:done"

app = Celery("noop", broker=BROKER_URL)
app.conf.update(task_serializer="json", accept_content=["json"], task_ignore_result=True)
_counter = redis.Redis.from_url(BROKER_URL)


@app.task(name="bench.noop")
def noop() -> None:
    _counter.incr(COUNTER)
