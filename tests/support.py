"""Helpers for tests that drive real processes: Celery workers, the local stack."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from enum import IntEnum
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import redis
from prometheus_client.parser import text_string_to_metric_families
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent
FINISHED = {"succeeded", "failed", "canceled"}
MAKE_RUN_MILVUS_URI = "http://127.0.0.1:19530"


class PrivateDb(IntEnum):
    """Redis databases beside the session's (``TEST_REDIS_URL``, 15) that one test uses
    at a time; each is emptied before and after (``private_broker``)."""

    IDLE = 10  # no worker consumes it: jobs published there stay queued
    OWN_WORKERS = 11  # only the workers the test starts itself consume it
    GRACEFUL = 8  # the graceful-stop test's worker
    RELIABILITY = 14  # the reliability tests' workers
    OUTAGE = 13  # the PostgreSQL outage test's worker


# The gpu pool as the Procfile runs it: batches wait for the model thread side by side.
GPU_POOL = {"queue": "gpu", "pool": "threads", "concurrency": 16}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def default_test_milvus_uri() -> str:
    """``make run``'s Milvus if it answers, else a free port for a Milvus Lite of our own."""
    with socket.socket() as sock:
        sock.settimeout(0.5)
        if sock.connect_ex(("127.0.0.1", urlsplit(MAKE_RUN_MILVUS_URI).port)) == 0:
            return MAKE_RUN_MILVUS_URI
    return f"http://127.0.0.1:{free_port()}"


def wait_for(
    predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def wait_for_http(
    process: subprocess.Popen, url: str, what: str, timeout: float, exited: Callable[[], str]
) -> None:
    """Wait until ``GET url`` answers 200; fail at once, saying ``exited()``, if the
    process serving it dies first."""
    import requests

    def up() -> bool:
        if process.poll() is not None:
            raise AssertionError(exited())
        try:
            return requests.get(url, timeout=2).status_code == 200
        except requests.RequestException:
            return False

    wait_for(up, timeout, what, interval=0.2)


def subprocess_env(base: Mapping[str, str], **overrides: str) -> dict[str, str]:
    env = {**os.environ, **base, **overrides}
    env["HF_HUB_OFFLINE"] = "1"
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


class WorkerProcess:
    """A real ``celery worker`` subprocess of this project, in its own session."""

    def __init__(
        self,
        env: Mapping[str, str],
        log_dir: Path,
        *,
        queue: str,
        pool: str,
        concurrency: int = 1,
        extra_args: tuple[str, ...] = (),
        hostname: str | None = None,
    ) -> None:
        # The same hostname as a killed worker's: a new incarnation under the old name.
        self.hostname = hostname or f"{queue}-{uuid.uuid4().hex[:8]}@{socket.gethostname()}"
        self.queue = queue
        self.log_path = log_dir / f"{self.hostname.split('@')[0]}.log"
        self.command = [
            sys.executable, "-m", "celery", "--app", "worker.celery_app:celery_app", "worker",
            "--queues", queue, "--pool", pool, "--concurrency", str(concurrency),
            "--hostname", self.hostname, "--without-mingle", "--without-gossip",
            "--loglevel", "INFO", *extra_args,
        ]  # fmt: skip
        self.metrics_port = free_port()
        self.env = {
            "WORKER_METRICS_PORT": str(self.metrics_port),
            "PROMETHEUS_MULTIPROC_DIR": str(log_dir / f"metrics-{self.hostname.split('@')[0]}"),
            **env,
        }
        self.process: subprocess.Popen | None = None

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def start(self, timeout: float = 90) -> "WorkerProcess":
        return self.launch().wait_ready(timeout)

    def launch(self) -> "WorkerProcess":
        """Start the process without waiting for it (``wait_ready``)."""
        log = self.log_path.open("ab")
        # Readiness is read past what an earlier run under this hostname logged.
        self._log_offset = log.tell()
        self.process = subprocess.Popen(
            self.command, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        return self

    def wait_ready(self, timeout: float = 90) -> "WorkerProcess":
        wait_for(self._ready, timeout, f"worker {self.hostname} to be ready", interval=0.2)
        return self

    def _ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(
                f"worker exited with {self.process.returncode}:\n{self.log_tail()}"
            )
        since_start = self.log_path.read_bytes()[self._log_offset :]
        return f"{self.hostname} ready.".encode() in since_start

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def kill(self) -> None:
        """kill -9 the worker and every process of its session."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self, timeout: float = 30) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def __enter__(self) -> "WorkerProcess":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def recreate_database(url: str) -> None:
    """Drop and create the URL's database: every test session starts empty."""
    parts = urlsplit(url.replace("+psycopg", ""))
    name = parts.path.lstrip("/")
    maintenance = parts._replace(path="/postgres").geturl()
    with psycopg.connect(maintenance, autocommit=True) as connection:
        connection.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def wait_for_job(
    client: Any,
    headers: dict[str, str],
    job_id: str,
    timeout: float = 60,
    statuses: set[str] = FINISHED,
) -> dict[str, Any]:
    def finished() -> dict[str, Any] | None:
        body = client.get(f"/v1/jobs/{job_id}", headers=headers).get_json()
        return body if body["status"] in statuses else None

    return wait_for(finished, timeout, f"job {job_id} to reach {sorted(statuses)}", interval=0.1)


def submit_embed(client: Any, headers: dict[str, str], texts: list[str], **extra: Any) -> dict:
    response = client.post("/v1/jobs/embed", json={"texts": texts, **extra}, headers=headers)
    assert response.status_code == 202, response.get_json()
    return response.get_json()


def _queue_lists(queue: str) -> list[str]:
    """A queue's Redis lists: its own and its priority lists (kombu's ``\\x06\\x16`` suffix)."""
    return [queue, *(f"{queue}\x06\x16{priority}" for priority in range(1, 10))]


def queue_length(broker: Any, queue: str) -> int:
    """Messages waiting in a queue, its priority lists included."""
    return sum(broker.llen(key) for key in _queue_lists(queue))


def waiting_task_ids(broker: Any, queue: str) -> set[str]:
    """The task ids of the messages waiting in a queue (a job's task id is its id)."""
    return {
        json.loads(raw)["headers"]["id"]
        for key in _queue_lists(queue)
        for raw in broker.lrange(key, 0, -1)
    }


def metric_value(exposition: str, name: str, **labels: str) -> float:
    """The sum of the samples named ``name`` whose labels include ``labels``, in a
    Prometheus text exposition; 0 when there are none (a counter not yet used)."""
    return sum(
        sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


@contextmanager
def private_broker(redis_url: str, db: int) -> Iterator[str]:
    """The URL of Redis database ``db`` beside ``redis_url``'s, for one test alone
    (no shared worker consumes there), emptied before and after."""
    url = redis_url.rsplit("/", 1)[0] + f"/{db}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    try:
        yield url
    finally:
        client.flushdb()


@contextmanager
def running_flower(
    worker_env: Mapping[str, str], credentials: tuple[str, str], log_path: Path
) -> Iterator[str]:
    """Flower as ``make run`` starts it, with basic auth; its URL once it answers."""
    port = free_port()
    env = {
        **worker_env,
        "FLOWER_BASIC_AUTH": ":".join(credentials),
        "FLOWER_ADDRESS": "127.0.0.1",
        "FLOWER_PORT": str(port),
    }
    # Flower's own metrics are single-process: the variable must be absent, not empty.
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "celery", "--app", "worker.celery_app:celery_app", "flower"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(process, f"{url}/healthcheck", "Flower to answer", 60, log_path.read_text)
        yield url
    finally:
        process.terminate()
        process.wait(10)
