"""Job-system overhead: tiny embed jobs through the whole path against raw Celery.

    python -m bench.overhead [--jobs 600] [--clients 16] [--tasks 3000]

In one run, on the same Redis and PostgreSQL:

1. raw Celery: ``--tasks`` no-op tasks from one publisher to a bare Celery
   worker (prefork, 2 processes), end to end;
2. raw ``model.encode`` of one short text at a time (batch 1), in process;
3. convoq: ``--clients`` concurrent HTTP clients, each submitting one-text
   embed jobs and polling each to ``succeeded`` with backoff (20 ms doubling
   to 500 ms), through HTTP → row → queue → gpu worker → row, against the
   real gunicorn API and the solo gpu worker.

It prints jobs/s, tasks/s and the ratios. It is a benchmark, not a test.
"""

import argparse
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import redis
import requests

from config import Settings
from devstack.stack import ROOT, LocalStack
from services.tenants import create_api_key
from tests.support import WorkerProcess, free_port, subprocess_env, wait_for

TEXT = "How do I reset my password?"
# Clients poll as a polite client does: soon at first, then backing off.
FIRST_POLL_SECONDS, MAX_POLL_SECONDS = 0.02, 0.5


def bench_settings() -> Settings:
    base = Settings()
    return base.model_copy(
        update={
            "database_url": base.database_url.rsplit("/", 1)[0] + "/convoq_bench",
            "redis_url": base.redis_url.rsplit("/", 1)[0] + "/12",
        }
    )


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


def whole_path(settings: Settings, jobs: int, clients: int, log_dir: Path) -> tuple[float, float]:
    """(jobs/s, p50 submit-to-succeeded seconds) through gunicorn and the gpu worker."""
    api = f"127.0.0.1:{free_port()}"
    env = subprocess_env(
        {"DATABASE_URL": settings.database_url, "REDIS_URL": settings.redis_url, "API_BIND": api}
    )
    _, key = create_api_key(settings.database_url, "bench", actor="bench")
    session_local = threading.local()
    headers = {"Authorization": f"Bearer {key}"}
    base = f"http://{api}"

    def http() -> requests.Session:
        if not hasattr(session_local, "session"):
            session_local.session = requests.Session()
            session_local.session.headers.update(headers)
        return session_local.session

    def one_job(_: int) -> float:
        started = time.perf_counter()
        response = http().post(f"{base}/v1/jobs/embed", json={"texts": [TEXT]})
        response.raise_for_status()
        url = base + response.headers["Location"]
        delay = FIRST_POLL_SECONDS
        while True:
            time.sleep(delay)
            status = http().get(url).json()["status"]
            if status == "succeeded":
                return time.perf_counter() - started
            if status in {"failed", "canceled"}:
                raise RuntimeError(f"job ended {status}")
            delay = min(delay * 2, MAX_POLL_SECONDS)

    api_log = (log_dir / "api.log").open("wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--config", "config/gunicorn.py", "api:create_app()"],
        cwd=ROOT, env=env, stdout=api_log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        with WorkerProcess(env, log_dir, queue="gpu", pool="solo"):

            def up() -> bool:
                try:
                    return requests.get(f"{base}/readyz", timeout=1).status_code == 200
                except requests.ConnectionError:
                    return False

            wait_for(up, 60, "the API")
            with ThreadPoolExecutor(clients) as pool:
                list(pool.map(one_job, range(2 * clients)))  # warm-up
                started = time.perf_counter()
                latencies = sorted(pool.map(one_job, range(jobs)))
                elapsed = time.perf_counter() - started
    finally:
        server.terminate()
        server.wait()
    return jobs / elapsed, latencies[len(latencies) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.overhead", description=__doc__)
    parser.add_argument("--jobs", type=int, default=600)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--tasks", type=int, default=3000)
    args = parser.parse_args()

    settings = bench_settings()
    log_dir = ROOT / ".devstack" / "bench"
    log_dir.mkdir(parents=True, exist_ok=True)
    with LocalStack(settings, log_dir):
        redis.Redis.from_url(settings.redis_url).flushdb()
        noop = celery_noop(settings.redis_url, args.tasks, log_dir)
        encode = raw_encode_batch_1(500)
        jobs_per_second, p50 = whole_path(settings, args.jobs, args.clients, log_dir)

    print(f"raw Celery no-op (prefork 2, 1 publisher): {noop:8.1f} tasks/s")
    print(f"raw encode, batch 1 (the model alone):     {encode:8.1f} texts/s")
    print(
        f"convoq one-text embed jobs, {args.clients} clients:  {jobs_per_second:8.1f} jobs/s"
        f"   (p50 submit→succeeded {p50 * 1000:.0f} ms)"
    )
    print(f"ratio jobs/s ÷ no-op tasks/s:              {jobs_per_second / noop:8.3f}")
    print(f"ratio jobs/s ÷ raw encode batch 1:         {jobs_per_second / encode:8.3f}")


if __name__ == "__main__":
    main()
