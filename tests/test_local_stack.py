"""``make run``'s stack on a machine where nothing listens at the configured URLs.

It must start the embedded Redis, PostgreSQL and Milvus Lite, serve the full
path over HTTP, start again each process SIGKILLed (supervisord), and on
Ctrl-C stop every process it started.
"""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import psutil
import pytest
import redis
import requests
from pymilvus import MilvusClient

from api import create_app
from config import Settings
from devstack.services import Address, ServiceError, ensure_milvus
from devstack.supervise import RESTART_BOUND_SECONDS, program_pids, read_procfile
from tests.support import (
    ROOT,
    free_port,
    metric_value,
    subprocess_env,
    wait_for,
    waiting_task_ids,
)

KOMBU_BRPOP_TIMEOUT = 1  # seconds: kombu.transport.redis.Transport.brpop_timeout
# A restarted worker loads its models before it serves: slow on a busy machine.
SERVE_AGAIN_SECONDS = 90


def stack_processes(root_pid: int, markers: list[str]) -> list[psutil.Process]:
    """The stack's process tree, and every process whose command line names a marker
    (the embedded servers rename themselves and PostgreSQL is daemonised by pg_ctl)."""
    roots = []
    for process in psutil.process_iter():
        try:
            command = " ".join(process.cmdline())
            if process.pid == root_pid or any(marker in command for marker in markers):
                roots.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    found = {}
    for root in roots:
        try:
            for process in [root, *root.children(recursive=True)]:
                if process.status() != psutil.STATUS_ZOMBIE:
                    found[process.pid] = process
        except psutil.NoSuchProcess:
            continue
    return list(found.values())


def alive(processes: list[psutil.Process]) -> list[psutil.Process]:
    found = []
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
    return found


def kill_and_wait_for_restart(data_dir: Path, name: str) -> None:
    """SIGKILL program ``name``; return once supervisord has started it again and what
    it left running (gunicorn's workers, the prefork pool) is gone."""
    old = program_pids(data_dir)[name]
    children = psutil.Process(old).children(recursive=True)
    os.kill(old, signal.SIGKILL)
    killed = time.monotonic()

    def restarted() -> bool:
        return program_pids(data_dir).get(name) not in (None, old)

    wait_for(restarted, RESTART_BOUND_SECONDS + 5, f"{name} to be started again")
    assert time.monotonic() - killed < RESTART_BOUND_SECONDS, name
    wait_for(lambda: not alive(children), 5, f"the children {name} left to be killed")


def check_supervision(
    data_dir: Path, base: str, headers: dict, broker_url: str, log: Callable[[], str]
) -> None:
    """SIGKILL each worker, beat and gunicorn's master: each is started again, the log
    names what died, and a job submitted before the kill finishes."""
    settings = Settings().model_copy(update={"redis_url": broker_url})
    celery = create_app(settings).extensions["celery"]
    broker = redis.Redis.from_url(broker_url)
    embed = {"texts": ["kill -9"]}
    conversation = {
        "conversation_id": "supervised",
        "user_id": "alice",
        "messages": [{"role": "user", "content": "A worker died while this was queued."}],
    }
    for name, pool, path, body in (
        ("worker-gpu", "gpu", "/v1/jobs/embed", embed),
        ("worker-cpu", "cpu", "/v1/jobs/conversation", conversation),
        ("api", None, "/v1/jobs/embed", embed),
        ("beat", None, "/v1/jobs/embed", embed),
    ):
        if pool is not None:
            # The worker stops taking messages, so the job waits in the queue for the
            # restarted worker rather than in the killed one's hands (recovering those
            # is the recovery task's work, tested on its own).
            node = f"{pool}@{socket.gethostname()}"
            replies = celery.control.cancel_consumer(pool, destination=[node], reply=True)
            assert replies, f"{node} did not answer cancel_consumer"
            # A BRPOP issued before the cancel still takes a message until it times out.
            time.sleep(KOMBU_BRPOP_TIMEOUT + 0.5)
        response = requests.post(f"{base}{path}", json=body, headers=headers, timeout=10)
        assert response.status_code == 202, response.text
        job_url = base + response.headers["Location"]
        if pool is not None:
            # Beat's periodic tasks may wait in the cpu queue beside it.
            waiting = waiting_task_ids(broker, pool)
            assert response.json()["id"] in waiting, f"the job is not waiting in {pool}"
        kill_and_wait_for_restart(data_dir, name)
        wait_for(
            lambda name=name: f"exited: {name} (terminated by SIGKILL; not expected)" in log(),
            10,
            f"supervisord to log that {name} died",
        )

        def finished(job_url: str = job_url) -> dict | None:
            try:
                body = requests.get(job_url, headers=headers, timeout=5).json()
            except requests.RequestException:  # the API itself restarting
                return None
            return body if body["status"] in {"succeeded", "failed"} else None

        job = wait_for(
            finished, SERVE_AGAIN_SECONDS, f"the job to finish after {name} died", interval=0.5
        )
        assert job["status"] == "succeeded", (name, job["error"])
    assert requests.get(f"{base}/healthz", timeout=5).status_code == 200
    wait_for(lambda: log().count("beat: Starting") >= 2, 30, "beat to start again", interval=0.5)


def readme_session(base: str, headers: dict) -> None:
    """The README's curl session: a submit that waits, and a submit then a long poll."""
    texts = {"texts": ["How do I reset my password?", "The invoice is due on Friday."]}
    waited = requests.post(
        f"{base}/v1/jobs/embed", json=texts, headers={**headers, "Prefer": "wait=30"}, timeout=40
    )
    assert waited.status_code == 200, waited.text
    assert waited.json()["status"] == "succeeded"
    queued = requests.post(f"{base}/v1/jobs/embed", json=texts, headers=headers, timeout=10)
    assert queued.status_code == 202, queued.text
    job_id = queued.json()["id"]
    polled = requests.get(f"{base}/v1/jobs/{job_id}?wait=30", headers=headers, timeout=40).json()
    assert polled["status"] == "succeeded"
    assert polled["result"]["count"] == 2


@pytest.mark.timeout(600)
def test_local_stack_starts_embedded_servers_and_ctrl_c_stops_everything(tmp_path):
    redis_url = f"redis://127.0.0.1:{free_port()}/0"
    database_url = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/convoq"
    milvus_uri = f"http://127.0.0.1:{free_port()}"
    api = f"127.0.0.1:{free_port()}"
    flower = f"http://127.0.0.1:{free_port()}"
    worker_metrics = {pool: free_port() for pool in ("cpu", "gpu")}
    data_dir = tmp_path / "stack"
    services = ((redis_url, 6379), (database_url, 5432), (milvus_uri, 19530))
    for url, port in services:
        assert not Address.from_url(url, port).is_listening()
    env = subprocess_env(
        {},
        REDIS_URL=redis_url,
        DATABASE_URL=database_url,
        MILVUS_URI=milvus_uri,
        MILVUS_COLLECTION="convoq_memory",
        API_BIND=api,
        API_WORKERS="1",
        FLOWER_PORT=flower.rsplit(":", 1)[1],
        WORKER_CPU_METRICS_PORT=str(worker_metrics["cpu"]),
        WORKER_GPU_METRICS_PORT=str(worker_metrics["gpu"]),
    )
    env.pop("FLOWER_BASIC_AUTH", None)
    # No encryption key: make run writes one, and every process it starts reads it.
    env.pop("ENCRYPTION_KEYS", None)
    env.pop("ENCRYPTION_KEY_FILE", None)
    log_path = tmp_path / "stack.log"
    markers = [str(data_dir), redis_url.split("//")[1].split("/")[0]]
    with log_path.open("wb") as log:
        stack = subprocess.Popen(
            [sys.executable, "-m", "devstack", "run", "--data-dir", str(data_dir)],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        base = f"http://{api}"

        def ready() -> bool:
            assert stack.poll() is None, log_path.read_text()
            try:
                return requests.get(f"{base}/readyz", timeout=2).status_code == 200
            # A request sent while the API worker still boots waits in the listen queue.
            except (requests.ConnectionError, requests.Timeout):
                return False

        wait_for(ready, 180, "the local stack to be ready", interval=0.5)
        checks = requests.get(f"{base}/readyz", timeout=5).json()["checks"]
        assert checks == {"postgresql": "ok", "redis": "ok", "milvus": "ok"}
        milvus = MilvusClient(uri=milvus_uri, timeout=10, dedicated=True)
        assert milvus.has_collection("convoq_memory")
        milvus.close()
        key = (data_dir / "local-api-key").read_text().strip()
        assert f"CONVOQ_KEY={key}" in log_path.read_text()
        assert f"created {data_dir / 'encryption-keys'}" in log_path.read_text()
        headers = {"Authorization": f"Bearer {key}"}
        response = requests.post(
            f"{base}/v1/jobs/embed", json={"texts": ["hello world", "Grüezi"]}, headers=headers
        )
        assert response.status_code == 202, response.text
        job_url = base + response.headers["Location"]

        def finished() -> dict | None:
            body = requests.get(job_url, headers=headers, timeout=5).json()
            return body if body["status"] in {"succeeded", "failed"} else None

        job = wait_for(finished, 120, "the job to finish", interval=0.2)
        assert job["status"] == "succeeded", job["error"]
        vectors = np.array(job["result"]["vectors"])
        assert vectors.shape == (2, 384)
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3)

        # Flower, with the credentials make run generated and printed.
        credentials = (data_dir / "flower-credentials").read_text().strip()
        assert credentials in log_path.read_text()
        auth = tuple(credentials.split(":", 1))
        assert requests.get(f"{flower}/api/workers", timeout=10).status_code == 401
        assert requests.get(f"{flower}/api/workers", auth=auth, timeout=30).status_code == 200
        # Both pools' metrics, and the API's view of the pools.
        gpu_metrics = requests.get(f"http://127.0.0.1:{worker_metrics['gpu']}/metrics", timeout=5)
        done = {"type": "embed", "status": "succeeded"}
        assert metric_value(gpu_metrics.text, "convoq_jobs_finished_total", **done) == 1
        cpu_metrics = requests.get(f"http://127.0.0.1:{worker_metrics['cpu']}/metrics", timeout=5)
        assert cpu_metrics.status_code == 200
        api_metrics = requests.get(f"{base}/metrics", timeout=5).text
        assert metric_value(api_metrics, "convoq_jobs_submitted_total", type="embed") == 1
        for pool in ("cpu", "gpu"):
            assert metric_value(api_metrics, "convoq_workers", pool=pool) == 1

        assert set(program_pids(data_dir)) == {*read_procfile(), "reaper"}
        check_supervision(data_dir, base, headers, redis_url, log_path.read_text)
        readme_session(base, headers)

        started = stack_processes(stack.pid, markers)
        names = " ".join(" ".join(p.cmdline()) for p in started)
        for expected in (
            "redis-server",
            "postgres",
            "devstack.milvus_lite_server",
            "supervisord",
            "gunicorn",
            "--queues gpu",
            "--queues cpu",
            "flower",
            " beat ",
        ):
            assert expected in names

        os.killpg(stack.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
        stack.wait(timeout=90)
        # Exiting processes (PostgreSQL's backends after pg_ctl's stop) may take a moment.
        with contextlib.suppress(AssertionError):
            wait_for(lambda: not alive(started), 10, "every process to exit", interval=0.2)
        leftovers = alive(started)
        assert leftovers == [], [p.cmdline() for p in leftovers]
        assert stack_processes(stack.pid, markers) == []
        for url, port in services:
            assert not Address.from_url(url, port).is_listening()
        # Stopped by SIGINT, on which Milvus Lite writes its data out, not killed.
        assert "Shutting down" in (data_dir / "milvus" / "milvus.log").read_text()
        assert not Address.from_url(f"http://{api}", 80).is_listening()
    finally:
        # Taken while supervisord still links them: each program leads a group of its own.
        remaining = stack_processes(stack.pid, markers) if stack.poll() is None else []
        if stack.poll() is None:
            os.killpg(stack.pid, signal.SIGKILL)
        for process in remaining + stack_processes(stack.pid, markers):
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()


def test_no_embedded_milvus_for_a_remote_uri_that_does_not_answer(tmp_path):
    # 192.0.2.0/24 is reserved for documentation: nothing answers there.
    with pytest.raises(ServiceError, match="can only be started on this machine"):
        ensure_milvus("http://192.0.2.1:19530", tmp_path)
    assert list(tmp_path.iterdir()) == []
