"""Publishing jobs: each job's first task, or the step a job goes on from, carrying
only the job's id.

Many jobs are published in one broker round trip (kombu's publish batch: one
Redis pipeline). Later steps of a conversation job are sent by the step
before them (``tasks.conversation``); the recovery sweep (``services.recovery``)
publishes a job again from the step its row says it is at.
"""

from collections.abc import Sequence

from celery import Celery
from sqlalchemy import Row

from models import JobType
from worker.messages import JobMessage, StepMessage, task_args
from worker.queues import TaskName

FIRST_TASK = {
    JobType.EMBED: TaskName.EMBED,
    JobType.SUMMARIZE: TaskName.SUMMARIZE,
    JobType.CONVERSATION: TaskName.PERSIST_CONVERSATION,
}


def conversation_pipeline(summarize: bool, embed: bool) -> list[TaskName]:
    """The steps of a conversation job, in order: persist, [summarize], [embed], store."""
    steps = [TaskName.PERSIST_CONVERSATION]
    steps += [TaskName.SUMMARIZE] if summarize else []
    steps += [TaskName.EMBED] if embed else []
    steps.append(TaskName.STORE_CONVERSATION)
    return steps


def conversation_steps(summarize: bool, embed: bool) -> int:
    """Steps of the conversation pipeline: its progress total."""
    return len(conversation_pipeline(summarize, embed))


def publish_jobs(celery: Celery, jobs: Sequence[Row]) -> None:
    """Put each job's first task on its queue; the task id is the job's id (for revoke)."""
    publish(celery, [(FIRST_TASK[JobType(job.type)], JobMessage(job_id=job.id)) for job in jobs])


def publish(celery: Celery, messages: Sequence[tuple[TaskName, JobMessage | StepMessage]]) -> None:
    """Send each message to its task, in one round trip; the task id is the job's id."""
    with celery.producer_or_acquire() as producer, producer.batch():
        for task, message in messages:
            celery.send_task(
                task.value,
                args=task_args(message),
                task_id=str(message.job_id),
                producer=producer,
                ignore_result=True,
            )
