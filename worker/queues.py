"""Queue and task names: the one place they are spelled.

Import-light on purpose: the API, the task decorator, the Celery routing and
the tests all refer to these names, and none of them may pull in torch.
"""

from enum import StrEnum


class Queue(StrEnum):
    GPU = "gpu"  # model inference, one process per device
    CPU = "cpu"  # persistence, vector writes, orchestration, maintenance


class TaskName(StrEnum):
    EMBED_JOB = "tasks.embed.run_job"


TASK_QUEUES: dict[TaskName, Queue] = {
    TaskName.EMBED_JOB: Queue.GPU,
}


def task_routes() -> dict[str, dict[str, str]]:
    """Celery's ``task_routes``: every task goes to the queue named above."""
    return {name.value: {"queue": queue.value} for name, queue in TASK_QUEUES.items()}


def task_modules_for(queue: Queue) -> list[str]:
    """The modules that define the tasks routed to ``queue``, named by their tasks."""
    return sorted({name.rpartition(".")[0] for name, q in TASK_QUEUES.items() if q is queue})
