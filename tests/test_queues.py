"""Queues and routing: one set of names, which the Procfile and the tasks agree on."""

import shlex
from pathlib import Path

from celery import Celery

from tests.support import GPU_POOL
from worker.queues import TASK_QUEUES, Queue, TaskName, task_modules_for

PROCFILE = Path(__file__).resolve().parent.parent / "Procfile"


def procfile_workers() -> dict[str, list[str]]:
    workers = {}
    for line in PROCFILE.read_text().splitlines():
        name, _, command = line.partition(":")
        args = shlex.split(command)
        while "=" in args[0]:  # leading VARIABLE=value assignments
            args.pop(0)
        if "worker" in args and "celery" in args[0]:
            workers[name.strip()] = args
    return workers


def option(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def test_procfile_queues_are_the_declared_queues():
    consumed = [option(args, "--queues").split(",") for args in procfile_workers().values()]
    assert sorted(q for queues in consumed for q in queues) == sorted(q.value for q in Queue)


def test_gpu_pool_is_threads_and_cpu_pool_is_prefork():
    workers = procfile_workers()
    gpu = next(a for a in workers.values() if option(a, "--queues") == Queue.GPU)
    cpu = next(a for a in workers.values() if option(a, "--queues") == Queue.CPU)
    # The tests run the gpu pool as make run does.
    assert option(gpu, "--pool") == GPU_POOL["pool"] == "threads"
    assert int(option(gpu, "--concurrency")) == GPU_POOL["concurrency"]
    assert option(cpu, "--pool") == "prefork"
    assert "--task-events" in gpu
    assert "--task-events" in cpu


def test_every_task_is_routed_and_registered_under_its_name(app):
    celery: Celery = app.extensions["celery"]
    assert set(TASK_QUEUES) == set(TaskName)
    for queue in Queue:
        for module in task_modules_for(queue):
            celery.loader.import_task_module(module)
    for name, queue in TASK_QUEUES.items():
        task = celery.tasks[name.value]
        assert task.queue == queue.value
        assert task.ignore_result is True
        assert celery.amqp.router.route({}, name.value)["queue"].name == queue.value
