"""Indexing embed jobs that asked for ``store``, and forgetting records (cpu queue).

The gpu worker stores their vectors on their rows and sends one message for
all the jobs of a batch that finish together, so their vectors go to Milvus in
one upsert; then they are finished, in one statement.
"""

import logging

from celery import Task, shared_task

from config import get_settings
from services import vectors
from services.embedding import embedding_result
from services.memory import embed_job_record_ids, embed_job_records
from tasks.base import job_task
from tasks.frame import JobFrame
from tasks.retry import TRANSIENT_ERRORS, backoff_delay
from vectorstore import get_memory_store
from worker.messages import ForgetMessage, IndexMessage, read_message
from worker.queues import TASK_QUEUES, TaskName

log = logging.getLogger(__name__)


@job_task(TaskName.INDEX_EMBED_JOBS)
def index_embed_jobs(task: Task, message: dict) -> None:
    """Upsert the vectors of the jobs into Milvus, then finish them."""
    index = read_message([message])
    assert isinstance(index, IndexMessage)
    settings = get_settings()
    frame = JobFrame.from_settings()
    running = [job for job in frame.resume(index.job_ids).values() if job.vectors]
    if len(running) < len(index.job_ids):
        log.info(
            "jobs no longer running were not indexed",
            extra={"skipped": len(index.job_ids) - len(running)},
        )
    with frame.guard([job.id for job in running]):
        records, results = [], {}
        for job in running:
            job_records = embed_job_records(job, vectors.as_floats(job.vectors, index.dimensions))
            records.extend(job_records)
            results[job.id] = {
                **embedding_result(index, vectors.count(job.vectors, index.dimensions)),
                "stored": {
                    "collection": settings.milvus_collection,
                    "ids": [record.id for record in job_records],
                },
            }
        get_memory_store(settings).upsert(records)
        frame.succeed(results)


@shared_task(
    name=TaskName.FORGET_RECORDS.value,
    queue=TASK_QUEUES[TaskName.FORGET_RECORDS].value,
    bind=True,
    ignore_result=True,
    max_retries=None,
)
def forget_records(task: Task, message: dict) -> None:
    """Delete the records of a deleted embed job; retried until Milvus confirms."""
    forget = read_message([message])
    assert isinstance(forget, ForgetMessage)
    ids = embed_job_record_ids(forget.tenant_id, forget.job_id, forget.texts)
    try:
        deleted = get_memory_store(get_settings()).delete(str(forget.tenant_id), ids=ids)
    except TRANSIENT_ERRORS as exc:
        policy = get_settings().retry
        delay = backoff_delay(task.request.retries, policy) or policy.backoff_max
        raise task.retry(exc=exc, countdown=delay) from exc
    log.info("records forgotten", extra={"records": deleted})
