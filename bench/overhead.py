"""Job-system overhead: tiny embed jobs through the whole path against raw Celery.

    python -m bench.overhead [--jobs 600] [--clients 16] [--tasks 3000]

In one run, on the same Redis and PostgreSQL:

1. raw Celery: ``--tasks`` no-op tasks from one publisher to a bare Celery
   worker (prefork, 2 processes), end to end;
2. raw ``model.encode`` of one short text at a time (batch 1), in process;
3. convoq: ``--clients`` concurrent HTTP clients, each submitting one-text
   embed jobs with ``Prefer: wait`` (one request per job), through HTTP → row
   → queue → gpu worker → row, against the real gunicorn API and the gpu
   worker (which batches across jobs).

It prints jobs/s, tasks/s and the ratios. It is a benchmark, not a test.
"""

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import redis

from bench.figures import record
from bench.stack import bench_settings, local_services, run_clients, running_stack
from devstack.stack import ROOT
from tests.support import subprocess_env, wait_for

TEXT = "How do I reset my password?"


def celery_noop(broker_url: str, tasks: int, log_dir: Path) -> float:
    """No-op tasks per second, first publish to last run."""
    env = subprocess_env({"BENCH_BROKER_URL": broker_url})
    log = (log_dir / "noop-worker.log").open("wb")
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "--app", "bench.noop_app", "worker", "--pool",
         "prefork", "--concurrency", "2", "--without-mingle", "--without-gossip",
         "--loglevel", "WARNING"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    os.environ["BENCH_BROKER_URL"] = broker_url
    from bench.noop_app import COUNTER, noop  # reads BENCH_BROKER_URL

    counter = redis.Redis.from_url(broker_url)
    try:
        counter.delete(COUNTER)
        noop.delay()
        wait_for(lambda: counter.get(COUNTER) == b"1", 60, "the no-op worker")
        counter.delete(COUNTER)
        started = time.perf_counter()
        for _ in range(tasks):
            noop.delay()
        wait_for(lambda: int(counter.get(COUNTER) or 0) >= tasks, 300, "the no-op tasks", 0.005)
        return tasks / (time.perf_counter() - started)
    finally:
        worker.terminate()
        worker.wait()


def raw_encode_batch_1(texts: int) -> float:
    """Texts per second through ``encode`` one text at a time (the model alone)."""
    from inference.embedder import get_embedder

    embedder = get_embedder(None)
    for _ in range(20):
        embedder.encode([TEXT], batch_size=1)
    started = time.perf_counter()
    for _ in range(texts):
        embedder.encode([TEXT], batch_size=1)
    return texts / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.overhead", description=__doc__)
    parser.add_argument("--jobs", type=int, default=600)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--tasks", type=int, default=3000)
    args = parser.parse_args()

    settings = bench_settings()
    with local_services(settings) as log_dir:
        noop = celery_noop(settings.redis_url, args.tasks, log_dir)
        encode = raw_encode_batch_1(500)
        with running_stack(settings, log_dir, cpu=False) as stack:
            jobs_per_second, p50 = run_clients(
                stack, "/v1/jobs/embed", lambda i: {"texts": [TEXT]}, args.jobs, args.clients
            )

    print(f"raw Celery no-op (prefork 2, 1 publisher): {noop:8.1f} tasks/s")
    print(f"raw encode, batch 1 (the model alone):     {encode:8.1f} texts/s")
    print(
        f"convoq one-text embed jobs, {args.clients} clients:  {jobs_per_second:8.1f} jobs/s"
        f"   (p50 submit→succeeded {p50 * 1000:.0f} ms)"
    )
    print(f"ratio jobs/s ÷ no-op tasks/s:              {jobs_per_second / noop:8.3f}")
    print(f"ratio jobs/s ÷ raw encode batch 1:         {jobs_per_second / encode:8.3f}")
    record("raw Celery no-op (prefork 2, 1 publisher)", noop, "tasks/s")
    record("raw encode, batch 1", encode, "texts/s")
    record(f"one-text embed jobs, {args.clients} clients", jobs_per_second, "jobs/s")
    record("one-text embed jobs: p50 submit→succeeded", p50 * 1000, "ms", digits=0)
    record("ratio jobs/s ÷ no-op tasks/s", jobs_per_second / noop, digits=3)
    record("ratio jobs/s ÷ raw encode batch 1", jobs_per_second / encode, digits=3)


if __name__ == "__main__":
    main()
