"""In-node scaling: a burst drained by the autoscaled cpu pool against a fixed pool.

    python -m bench.autoscale [--tasks 1000] [--seconds 0.05] [--max 8] [--idle 5]

In one run, on the same Redis, a real cpu worker drains ``--tasks`` tasks that
each sleep ``--seconds`` (the way a task waiting on PostgreSQL or Milvus does):

1. a fixed pool of the minimum size (``--concurrency 1``);
2. the autoscaled pool (``--autoscale MAX,1``, worker/autoscale.py) with an
   idle window of ``--idle`` seconds.

It prints both drain times and their ratio, and for the autoscaled pool the
time from the first publish to the maximum pool and from the drained queue
back to one process. It is a benchmark, not a test.
"""

import argparse
import time
from dataclasses import dataclass

import psutil
import redis

from api import create_app
from bench.figures import record
from bench.stack import bench_settings, local_services
from bench.workload import DONE_COUNTER, SLEEP_TASK
from config import Settings
from tests.support import WorkerProcess, subprocess_env, wait_for


@dataclass
class Drain:
    seconds: float
    grown_after: float | None = None
    shrunk_after: float | None = None


def pool_processes(worker: WorkerProcess) -> int:
    return len(psutil.Process(worker.pid).children())


def drain(settings: Settings, worker: WorkerProcess, args: argparse.Namespace) -> Drain:
    broker = redis.Redis.from_url(settings.redis_url)
    broker.delete(DONE_COUNTER)
    celery = create_app(settings).extensions["celery"]
    started = time.monotonic()
    with celery.producer_or_acquire() as producer:
        for _ in range(args.tasks):
            celery.send_task(SLEEP_TASK, args=[args.seconds], queue="cpu", producer=producer)
    result = Drain(seconds=0.0)
    while int(broker.get(DONE_COUNTER) or 0) < args.tasks:
        if result.grown_after is None and pool_processes(worker) >= args.max:
            result.grown_after = time.monotonic() - started
        time.sleep(0.02)
    drained = time.monotonic()
    result.seconds = drained - started
    if pool_processes(worker) > 1:
        wait_for(lambda: pool_processes(worker) == 1, args.idle + 30, "the pool to shrink")
        result.shrunk_after = time.monotonic() - drained
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=0.05)
    parser.add_argument("--max", type=int, default=8)
    parser.add_argument("--idle", type=float, default=5.0)
    args = parser.parse_args()
    settings = bench_settings()
    with local_services(settings) as log_dir:
        env = subprocess_env(
            {
                "DATABASE_URL": settings.database_url,
                "REDIS_URL": settings.redis_url,
                "MILVUS_URI": settings.milvus_uri,
                "MILVUS_COLLECTION": settings.milvus_collection,
                "AUTOSCALE_IDLE_SECONDS": str(args.idle),
            }
        )
        include = ("--include", "bench.workload")
        fixed_worker = WorkerProcess(env, log_dir, queue="cpu", pool="prefork", extra_args=include)
        with fixed_worker:
            fixed = drain(settings, fixed_worker, args)
        autoscale = ("--autoscale", f"{args.max},1", *include)
        scaled_worker = WorkerProcess(
            env, log_dir, queue="cpu", pool="prefork", extra_args=autoscale
        )
        with scaled_worker:
            scaled = drain(settings, scaled_worker, args)

    print(f"burst: {args.tasks} tasks of {args.seconds * 1000:.0f} ms on the cpu queue")
    print(f"fixed pool of 1 process: drained in {fixed.seconds:.1f} s")
    print(f"autoscaled pool ({args.max},1):  drained in {scaled.seconds:.1f} s")
    print(f"ratio fixed / autoscaled drain time: {fixed.seconds / scaled.seconds:.2f}")
    grown = "never" if scaled.grown_after is None else f"{scaled.grown_after:.1f} s"
    print(f"grew to {args.max} processes: {grown} after the first publish")
    shrunk = "n/a" if scaled.shrunk_after is None else f"{scaled.shrunk_after:.1f} s"
    print(f"shrank to 1 process: {shrunk} after the queue drained (idle window {args.idle:g} s)")
    record(f"{args.tasks} tasks: drain, fixed pool of 1", fixed.seconds, "s")
    record(f"{args.tasks} tasks: drain, autoscaled ({args.max},1)", scaled.seconds, "s")
    record("ratio fixed ÷ autoscaled drain time", fixed.seconds / scaled.seconds, digits=2)
    if scaled.grown_after is not None:
        record(f"grew to {args.max} processes after the first publish", scaled.grown_after, "s")
    if scaled.shrunk_after is not None:
        record("shrank to 1 process after the queue drained", scaled.shrunk_after, "s")


if __name__ == "__main__":
    main()
