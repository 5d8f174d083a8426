"""The cpu pool's in-node autoscaler (worker/autoscale.py) on a real prefork worker."""

import time

import psutil
import pytest
import redis

from api import create_app
from bench.workload import DONE_COUNTER, SLEEP_TASK
from tests.support import PrivateDb, WorkerProcess, private_broker, queue_length, wait_for

# A broker database of this test alone, so no other worker takes the burst.
IDLE_SECONDS = 3
BURST = 500
TASK_SECONDS = 0.2


@pytest.fixture
def broker_url(settings):
    with private_broker(settings.redis_url, PrivateDb.OWN_WORKERS) as url:
        yield url


def pool_processes(worker: WorkerProcess) -> int:
    return len(psutil.Process(worker.pid).children())


def test_pool_grows_with_the_queue_and_shrinks_after_the_idle_window(
    settings, broker_url, worker_env, worker_log_dir
):
    env = {**worker_env, "REDIS_URL": broker_url, "AUTOSCALE_IDLE_SECONDS": str(IDLE_SECONDS)}
    worker = WorkerProcess(
        env,
        worker_log_dir,
        queue="cpu",
        pool="prefork",
        extra_args=("--autoscale", "8,1", "--include", "bench.workload"),
    )
    with worker:
        assert pool_processes(worker) == 1
        broker = redis.Redis.from_url(broker_url)
        celery = create_app(settings.model_copy(update={"redis_url": broker_url})).extensions[
            "celery"
        ]
        with celery.producer_or_acquire() as producer:
            for _ in range(BURST):
                celery.send_task(SLEEP_TASK, args=[TASK_SECONDS], queue="cpu", producer=producer)
        published = time.monotonic()

        wait_for(lambda: pool_processes(worker) >= 4, 10, "the pool to grow to 4 processes")
        grown_after = time.monotonic() - published
        # One process would need BURST x TASK_SECONDS = 100 s.
        wait_for(lambda: int(broker.get(DONE_COUNTER) or 0) == BURST, 60, "the burst to drain")
        assert queue_length(broker, "cpu") == 0
        drained = time.monotonic()
        assert pool_processes(worker) > 1

        wait_for(lambda: pool_processes(worker) == 1, IDLE_SECONDS + 5, "the pool to shrink to 1")
        shrunk_after = time.monotonic() - drained
        assert shrunk_after >= IDLE_SECONDS - 1  # not before the idle window
        assert grown_after < 10
        log = worker.log()
        assert "Scaling up" in log
        assert "Scaling down" in log
        # Nothing held back: every message was acknowledged.
        assert broker.hlen("unacked") == 0
