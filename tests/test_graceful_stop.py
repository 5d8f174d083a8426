"""Scaling down does not kill busy tasks: the worker pods' own preStop hook, run for real.

The hook in ``deploy/k8s/worker-cpu.yaml`` cancels the consumer and waits for
the running task; then SIGTERM (what the kubelet sends next) stops the worker
warmly. The task finishes, and what was published meanwhile stays queued.
"""

import socket
import subprocess
import time
from pathlib import Path

import pytest
import redis
import yaml

from api import create_app
from bench.workload import DONE_COUNTER, SLEEP_TASK
from tests.support import ROOT, PrivateDb, WorkerProcess, private_broker, queue_length, wait_for

# A broker database of this test alone.
TASK_SECONDS = 6


def pre_stop_command(manifest: Path) -> list[str]:
    for document in yaml.safe_load_all(manifest.read_text()):
        if document and document["kind"] == "Deployment":
            container = document["spec"]["template"]["spec"]["containers"][0]
            return container["lifecycle"]["preStop"]["exec"]["command"]
    raise AssertionError(f"no Deployment in {manifest}")


@pytest.fixture
def broker_url(settings):
    with private_broker(settings.redis_url, PrivateDb.GRACEFUL) as url:
        yield url


def test_pre_stop_hook_lets_the_running_task_finish_and_takes_no_more(
    settings, broker_url, worker_env, worker_log_dir
):
    env = {**worker_env, "REDIS_URL": broker_url}
    worker = WorkerProcess(
        env, worker_log_dir, queue="cpu", pool="prefork", extra_args=("--include", "bench.workload")
    )
    # The hook names its node cpu@$(hostname), as the pod's worker is named.
    worker.hostname = f"cpu@{socket.gethostname()}"
    worker.command[worker.command.index("--hostname") + 1] = worker.hostname
    broker = redis.Redis.from_url(broker_url)
    celery = create_app(settings.model_copy(update={"redis_url": broker_url})).extensions["celery"]
    with worker:
        celery.send_task(SLEEP_TASK, args=[TASK_SECONDS], queue="cpu")
        wait_for(lambda: "bench.workload.sleep" in worker.log(), 10, "the task to start")
        started = time.monotonic()
        hook = subprocess.Popen(
            pre_stop_command(ROOT / "deploy" / "k8s" / "worker-cpu.yaml"),
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        wait_for(lambda: "cancel_consumer" in worker.log() or "Canceling" in worker.log(), 15,
                 "the consumer to be canceled")  # fmt: skip
        for _ in range(3):
            celery.send_task(SLEEP_TASK, args=[0], queue="cpu")
        output, _ = hook.communicate(timeout=120)
        assert hook.returncode == 0, output.decode()
        # The hook returned only once the running task was done.
        assert int(broker.get(DONE_COUNTER) or 0) == 1
        assert time.monotonic() - started < TASK_SECONDS + 30
        worker.stop()
        assert worker.process.returncode == 0, worker.log_tail()
    # Nothing taken after the cancel, nothing lost: three messages wait, none held.
    assert int(broker.get(DONE_COUNTER) or 0) == 1
    assert queue_length(broker, "cpu") == 3
    assert broker.hlen("unacked") == 0
