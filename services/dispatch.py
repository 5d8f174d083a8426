"""Publishing jobs: each job's first task, carrying only the job's id.

Many jobs are published in one broker round trip (kombu's publish batch: one
Redis pipeline). Later steps of a conversation job are sent by the step
before them (``tasks.conversation``), not here.
"""

from collections.abc import Sequence

from celery import Celery
from sqlalchemy import Row

from models import JobType
from worker.messages import JobMessage, task_args
from worker.queues import TaskName

FIRST_TASK = {
    JobType.EMBED: TaskName.EMBED,
    JobType.SUMMARIZE: TaskName.SUMMARIZE,
    JobType.CONVERSATION: TaskName.PERSIST_CONVERSATION,
}


def conversation_steps(summarize: bool, embed: bool) -> int:
    """Steps of the conversation pipeline: persist, [summarize], [embed], store."""
    return 2 + int(summarize) + int(embed)


def publish_jobs(celery: Celery, jobs: Sequence[Row]) -> None:
    """Put each job's first task on its queue; the task id is the job's id (for revoke)."""
    with celery.producer_or_acquire() as producer, producer.batch():
        for job in jobs:
            celery.send_task(
                FIRST_TASK[JobType(job.type)].value,
                args=task_args(JobMessage(job_id=job.id)),
                task_id=str(job.id),
                producer=producer,
                ignore_result=True,
            )
