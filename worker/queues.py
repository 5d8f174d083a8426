"""Queue and task names: the one place they are spelled.

Import-light on purpose: the API, the task decorator, the Celery routing and
the tests all refer to these names, and none of them may pull in torch.
"""

from enum import StrEnum


class Queue(StrEnum):
    GPU = "gpu"  # model inference, one process per device
    CPU = "cpu"  # persistence, vector writes, orchestration, maintenance


class TaskName(StrEnum):
    # gpu, batched across jobs: embed jobs and the conversation pipeline's embed
    # step share forward passes (with interactive requests, tasks/interactive.py).
    EMBED = "tasks.embed.embed"
    SUMMARIZE = "tasks.summarize.summarize"
    # cpu
    INDEX_EMBED_JOBS = "tasks.memory.index_embed_jobs"
    FORGET_RECORDS = "tasks.memory.forget_records"
    PERSIST_CONVERSATION = "tasks.conversation.persist"
    STORE_CONVERSATION = "tasks.conversation.store"
    DELIVER_WEBHOOK = "tasks.webhooks.deliver"
    ERASE = "tasks.erasure.erase"
    # cpu, periodic (worker/schedule.py)
    RECOVER_JOBS = "tasks.recovery.recover_jobs"
    RESEND_WEBHOOKS = "tasks.maintenance.resend_webhooks"
    PURGE_IDEMPOTENCY_KEYS = "tasks.maintenance.purge_idempotency_keys"
    PURGE_RETENTION = "tasks.maintenance.purge_retention"
    RESEND_ERASURES = "tasks.erasure.resend_erasures"


TASK_QUEUES: dict[TaskName, Queue] = {
    TaskName.EMBED: Queue.GPU,
    TaskName.SUMMARIZE: Queue.GPU,
    TaskName.INDEX_EMBED_JOBS: Queue.CPU,
    TaskName.FORGET_RECORDS: Queue.CPU,
    TaskName.PERSIST_CONVERSATION: Queue.CPU,
    TaskName.STORE_CONVERSATION: Queue.CPU,
    TaskName.DELIVER_WEBHOOK: Queue.CPU,
    TaskName.ERASE: Queue.CPU,
    TaskName.RECOVER_JOBS: Queue.CPU,
    TaskName.RESEND_WEBHOOKS: Queue.CPU,
    TaskName.PURGE_IDEMPOTENCY_KEYS: Queue.CPU,
    TaskName.PURGE_RETENTION: Queue.CPU,
    TaskName.RESEND_ERASURES: Queue.CPU,
}


def task_routes() -> dict[str, dict[str, str]]:
    """Celery's ``task_routes``: every task goes to the queue named above."""
    return {name.value: {"queue": queue.value} for name, queue in TASK_QUEUES.items()}


def task_modules_for(queue: Queue) -> list[str]:
    """The modules that define the tasks routed to ``queue``, named by their tasks."""
    return sorted({name.rpartition(".")[0] for name, q in TASK_QUEUES.items() if q is queue})
