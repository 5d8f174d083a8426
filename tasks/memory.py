"""Indexing embed jobs that asked for ``store`` (cpu queue).

The gpu worker sends one message per batch, holding every such job of the
batch, so that their vectors go to Milvus in one upsert.
"""

import logging
import uuid
from typing import Any

from celery import Task

from config import get_settings
from config.logs import log_context
from services.jobs import JobStore
from services.memory import embed_job_records
from tasks.base import JobRequest, convoq_task, fail_timed_out_job
from tasks.options import CPU_TASK_OPTIONS
from vectorstore import get_memory_store
from worker.queues import TaskName

log = logging.getLogger(__name__)


@convoq_task(
    TaskName.INDEX_EMBED_JOBS,
    on_hard_timeout=fail_timed_out_job,
    Request=JobRequest,
    **CPU_TASK_OPTIONS,
)
def index_embed_jobs(task: Task, results: dict[str, dict[str, Any]]) -> None:
    """Upsert the vectors of the jobs (``{job id: result}``) into Milvus, then finish them."""
    settings = get_settings()
    jobs = JobStore(settings.database_url)
    running = jobs.running_many([uuid.UUID(job_id) for job_id in results])
    if len(running) < len(results):
        log.info(
            "jobs no longer running were not indexed",
            extra={"skipped": len(results) - len(running)},
        )
    records, finished = [], {}
    for job in running:
        result = results[str(job.id)]
        job_records = embed_job_records(job, job.params["texts"], result["vectors"])
        records.extend(job_records)
        stored = {"collection": settings.milvus_collection, "ids": [r.id for r in job_records]}
        finished[job.id] = {**result, "stored": stored}
    get_memory_store(settings).upsert(records)
    for job_id in jobs.succeed_many(finished):
        with log_context(job_id=str(job_id)):
            log.info("job succeeded", extra={"indexed": len(finished[job_id]["stored"]["ids"])})
