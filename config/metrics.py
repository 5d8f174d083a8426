"""Prometheus metrics of the API and the workers, defined once (prometheus-client).

Processes that fork (gunicorn's workers, the cpu pool's children) run in
prometheus-client's multiprocess mode: with ``PROMETHEUS_MULTIPROC_DIR`` set,
each process writes its samples to files there, and whichever process serves
``/metrics`` merges them. Each service needs a directory of its own, emptied
when the service starts (``reset_multiprocess_dir``).
"""

import os
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from time import perf_counter

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.registry import Collector

MULTIPROC_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"

# From a 5 ms HTTP answer to a 10-minute job.
SECONDS_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
)  # fmt: skip
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)

HTTP_REQUESTS = Counter(
    "convoq_http_requests_total",
    "HTTP requests answered, by route template and status.",
    ["method", "route", "status"],
)
HTTP_REQUEST_SECONDS = Histogram(
    "convoq_http_request_duration_seconds",
    "Time to answer an HTTP request.",
    ["method", "route"],
    buckets=SECONDS_BUCKETS,
)
JOB_WAITS = Gauge(
    "convoq_http_job_waits",
    "HTTP requests waiting now for jobs to end: submits with Prefer: wait, and long polls.",
    ["kind"],
    multiprocess_mode="livesum",
)
JOBS_SUBMITTED = Counter(
    "convoq_jobs_submitted_total", "Jobs accepted (a row written), by type.", ["type"]
)
JOBS_FINISHED = Counter(
    "convoq_jobs_finished_total",
    "Jobs that reached a final status (succeeded, failed, canceled), by type.",
    ["type", "status"],
)
JOB_LATENCY = Histogram(
    "convoq_job_latency_seconds",
    "Time from a job's submission to its final status.",
    ["type", "status"],
    buckets=SECONDS_BUCKETS,
)
JOB_QUEUE_WAIT = Histogram(
    "convoq_job_queue_wait_seconds",
    "Time from a job's submission to its first start on a worker.",
    ["type"],
    buckets=SECONDS_BUCKETS,
)
TASK_SECONDS = Histogram(
    "convoq_task_duration_seconds",
    "Time a worker spends in one task call (one batch, for batched tasks).",
    ["task"],
    buckets=SECONDS_BUCKETS,
)
INFERENCE_BATCH_SIZE = Histogram(
    "convoq_inference_batch_size",
    "Texts in one model call.",
    ["operation"],
    buckets=BATCH_SIZE_BUCKETS,
)
INFERENCE_CPU_SECONDS = Counter(
    "convoq_inference_cpu_seconds",
    "CPU time of the model: its thread and its runtime's threads (inference/model_cpu.py).",
    ["backend"],
)
INFERENCE_SECONDS = Histogram(
    "convoq_inference_seconds",
    "Time of one model call.",
    ["operation"],
    buckets=SECONDS_BUCKETS,
)


def observe_finished(
    job_type: str, status: str, created_at: datetime, finished_at: datetime
) -> None:
    """Count one job reaching ``status``; call it once per transition."""
    JOBS_FINISHED.labels(type=job_type, status=status).inc()
    JOB_LATENCY.labels(type=job_type, status=status).observe(
        max(0.0, (finished_at - created_at).total_seconds())
    )


@contextmanager
def inference_call(operation: str, texts: int) -> Iterator[None]:
    """Time one model call over ``texts`` texts."""
    start = perf_counter()
    yield
    INFERENCE_SECONDS.labels(operation=operation).observe(perf_counter() - start)
    INFERENCE_BATCH_SIZE.labels(operation=operation).observe(texts)


def multiprocess_dir() -> Path | None:
    value = os.environ.get(MULTIPROC_DIR_VARIABLE)
    return Path(value) if value else None


if multiprocess_dir() is not None:
    # Samples are written on first use; a process started outside its
    # service's start-up (a shell, a one-off command) must find the directory.
    multiprocess_dir().mkdir(parents=True, exist_ok=True)


def reset_multiprocess_dir() -> None:
    """Empty this service's sample directory: call once, before its processes start."""
    directory = multiprocess_dir()
    if directory is None:
        return
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)


def mark_process_dead(pid: int) -> None:
    """Drop the live-gauge samples of a process that has exited."""
    if multiprocess_dir() is not None:
        multiprocess.mark_process_dead(pid)


def collecting_registry() -> CollectorRegistry:
    """What ``/metrics`` serves: every process's samples in multiprocess mode, else this one's."""
    if multiprocess_dir() is None:
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return registry


def exposition(extra: Iterable[Collector] = ()) -> tuple[bytes, str]:
    """The text exposition of every metric, plus ``extra`` collectors read now."""
    body = generate_latest(collecting_registry())
    extra = list(extra)
    if extra:
        registry = CollectorRegistry(auto_describe=False)
        for collector in extra:
            registry.register(collector)
        body += generate_latest(registry)
    return body, CONTENT_TYPE_LATEST
