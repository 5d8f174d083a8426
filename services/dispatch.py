"""Publishing a job's work: the task, or the chain of tasks, each job type runs."""

from celery import Celery, chain

from models import Job, JobType
from worker.queues import TaskName


def conversation_steps(summarize: bool, embed: bool) -> int:
    """Steps of the conversation chain: persist, [summarize], [embed], store."""
    return 2 + int(summarize) + int(embed)


def publish_job(celery: Celery, job: Job) -> None:
    """Put the job's first task on its queue; its id is the job's id (for revoke)."""
    job_id = str(job.id)
    if job.type is JobType.EMBED:
        celery.send_task(
            TaskName.EMBED.value, args=[{"kind": "job", "job_id": job_id}], task_id=job_id
        )
    elif job.type is JobType.SUMMARIZE:
        celery.send_task(
            TaskName.SUMMARIZE.value, args=[{"kind": "job", "job_id": job_id}], task_id=job_id
        )
    else:
        steps = [
            celery.signature(TaskName.PERSIST_CONVERSATION.value, args=[job_id], immutable=True)
        ]
        if job.params["summarize"]:
            steps.append(celery.signature(TaskName.SUMMARIZE.value))
        if job.params["embed"]:
            steps.append(celery.signature(TaskName.EMBED.value))
        steps.append(celery.signature(TaskName.STORE_CONVERSATION.value))
        chain(*steps).apply_async()
