"""The whole local stack for a benchmark: services, the gunicorn API and both worker pools
(``running_stack``), or ``make run``'s own supervised stack (``supervised_stack``).

Benchmarks use their own database (``convoq_bench``), Redis database (12) and
Milvus collection, so they never touch ``make run``'s data or the tests'.
"""

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
import requests

from config import Settings
from devstack.stack import ROOT, LocalStack
from devstack.supervise import program_pids
from services.tenants import authenticate, create_api_key
from tests.support import GPU_POOL, WorkerProcess, free_port, subprocess_env, wait_for
from vectorstore import get_memory_store

# Clients poll as a polite client does: soon at first, then backing off.
FIRST_POLL_SECONDS, MAX_POLL_SECONDS = 0.02, 0.5
# What clients ask to wait with Prefer: wait (and ?wait= after a 202).
WAIT_SECONDS = 60
LOG_DIR = ROOT / ".devstack" / "bench"


def bench_settings() -> Settings:
    """The benchmarks' own databases; without an encryption key configured, the key
    file make run would write, in the benchmarks' data directory, for every process."""
    if not os.environ.get("ENCRYPTION_KEYS") and not os.environ.get("ENCRYPTION_KEY_FILE"):
        key_file = LocalStack(Settings(), LOG_DIR).encryption_key_file()
        os.environ["ENCRYPTION_KEY_FILE"] = str(key_file)
    base = Settings()
    return base.model_copy(
        update={
            "database_url": base.database_url.rsplit("/", 1)[0] + "/convoq_bench",
            "redis_url": base.redis_url.rsplit("/", 1)[0] + "/12",
            "milvus_collection": "convoq_bench_memory",
        }
    )


@dataclass
class RunningStack:
    settings: Settings
    base_url: str
    headers: dict[str, str]
    tenant_id: str
    log_dir: Path
    # The processes, for benchmarks that measure them (their CPU, their metrics).
    api_pid: int | None = None
    gpu_worker: WorkerProcess | None = None
    cpu_worker: WorkerProcess | None = None
    # supervised_stack's data directory: program_pids(data_dir) names its processes.
    data_dir: Path | None = None


def _stack_env(settings: Settings, **overrides: str) -> dict[str, str]:
    return subprocess_env(
        {
            "DATABASE_URL": settings.database_url,
            "REDIS_URL": settings.redis_url,
            "MILVUS_URI": settings.milvus_uri,
            "MILVUS_COLLECTION": settings.milvus_collection,
        },
        **overrides,
    )


@contextmanager
def local_services(settings: Settings) -> Iterator[Path]:
    """The services, emptied: a fresh broker database and memory collection."""
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    with LocalStack(settings, LOG_DIR):
        redis.Redis.from_url(settings.redis_url).flushdb()
        memory = get_memory_store(settings)
        memory.drop_collection()
        memory.ensure_collection()
        yield LOG_DIR


@contextmanager
def running_stack(
    settings: Settings,
    log_dir: Path,
    *,
    cpu: bool = True,
    worker_env: Mapping[str, str] | None = None,
) -> Iterator[RunningStack]:
    """gunicorn, the solo gpu worker and (unless ``cpu=False``) the prefork cpu worker;
    ``worker_env`` is added to the workers' environment (``INFERENCE_BACKEND``, say)."""
    api = f"127.0.0.1:{free_port()}"
    env = _stack_env(settings, API_BIND=api)
    tenant, key = create_api_key(settings.database_url, "bench", actor="bench")
    api_log = (log_dir / "api.log").open("wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--config", "config/gunicorn.py", "api:create_app()"],
        cwd=ROOT, env=env, stdout=api_log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    env_of_workers = {**env, **(worker_env or {})}
    workers = [WorkerProcess(env_of_workers, log_dir, **GPU_POOL)]
    if cpu:
        workers.append(
            WorkerProcess(env_of_workers, log_dir, queue="cpu", pool="prefork", concurrency=2)
        )
    try:
        for worker in workers:
            worker.start()
        base = f"http://{api}"

        def up() -> bool:
            try:
                return requests.get(f"{base}/readyz", timeout=2).status_code == 200
            except requests.RequestException:
                return False

        wait_for(up, 60, "the API")
        yield RunningStack(
            settings,
            base,
            {"Authorization": f"Bearer {key}"},
            str(tenant.tenant_id),
            log_dir,
            api_pid=server.pid,
            gpu_worker=workers[0],
            cpu_worker=workers[1] if cpu else None,
        )
    finally:
        for worker in workers:
            worker.stop()
        server.terminate()
        server.wait()


@contextmanager
def supervised_stack(settings: Settings, data_dir: Path) -> Iterator[RunningStack]:
    """``make run``'s stack (``python -m devstack run``: supervisord running the
    Procfile, beat and Flower included) on the services ``local_services`` started,
    on free ports; its output goes to ``<data_dir>/devstack.log``."""
    data_dir.mkdir(parents=True, exist_ok=True)
    api = f"127.0.0.1:{free_port()}"
    env = _stack_env(
        settings,
        API_BIND=api,
        FLOWER_PORT=str(free_port()),
        WORKER_CPU_METRICS_PORT=str(free_port()),
        WORKER_GPU_METRICS_PORT=str(free_port()),
    )
    with (data_dir / "devstack.log").open("wb") as log:
        devstack = subprocess.Popen(
            [sys.executable, "-m", "devstack", "run", "--data-dir", str(data_dir)],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    base = f"http://{api}"

    def up() -> bool:
        if devstack.poll() is not None:
            raise RuntimeError(f"make run's stack exited; see {data_dir / 'devstack.log'}")
        try:
            return requests.get(f"{base}/readyz", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    try:
        wait_for(up, 180, "make run's stack", interval=0.5)
        key = (data_dir / "local-api-key").read_text().strip()
        principal = authenticate(settings.database_url, key)
        assert principal is not None
        yield RunningStack(
            settings,
            base,
            {"Authorization": f"Bearer {key}"},
            str(principal.tenant_id),
            data_dir,
            api_pid=program_pids(data_dir)["api"],
            data_dir=data_dir,
        )
    finally:
        # What Ctrl-C does: supervisord stops every program, then the servers stop.
        if devstack.poll() is None:
            os.killpg(devstack.pid, signal.SIGINT)
        try:
            devstack.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(devstack.pid, signal.SIGKILL)
            devstack.wait()


def run_clients(
    stack: RunningStack,
    path: str,
    body: Callable[[int], dict[str, Any]],
    jobs: int,
    clients: int,
    *,
    during: Callable[[], AbstractContextManager[Any]] | None = None,
) -> tuple[float, float]:
    """(jobs/s, p50 submit-to-succeeded seconds): ``clients`` threads, each submitting a job
    with ``Prefer: wait`` (long polls after a 202) before the next; a warm-up round is not
    counted. ``during`` wraps the timed part (a CPU meter, say)."""
    local = threading.local()

    def http() -> requests.Session:
        if not hasattr(local, "session"):
            local.session = requests.Session()
            local.session.headers.update(stack.headers)
        return local.session

    def one_job(i: int) -> float:
        started = time.perf_counter()
        response = http().post(
            f"{stack.base_url}{path}", json=body(i), headers={"Prefer": f"wait={WAIT_SECONDS}"}
        )
        response.raise_for_status()
        job = response.json()
        while job["status"] in {"queued", "running"}:
            job = http().get(f"{stack.base_url}{job['links']['self']}?wait={WAIT_SECONDS}").json()
        if job["status"] != "succeeded":
            raise RuntimeError(f"job ended {job['status']}: {job['error']}")
        return time.perf_counter() - started

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one_job, range(clients)))  # warm-up
        with during() if during is not None else nullcontext():
            started = time.perf_counter()
            latencies = sorted(pool.map(one_job, range(clients, clients + jobs)))
            elapsed = time.perf_counter() - started
    return jobs / elapsed, latencies[len(latencies) // 2]
