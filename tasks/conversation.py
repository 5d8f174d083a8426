"""The conversation pipeline's cpu steps: persist the messages first, store the memory last.

The API sends the pipeline as one chain (``services.pipeline``); the gpu
steps in between are ``tasks.summarize`` and ``tasks.embed``. Each step
passes ``{"kind": "conversation", "state": PipelineState}`` to the next.
"""

import logging
import uuid
from typing import Any

from celery import Task

from config import get_settings
from config.logs import log_context
from services.conversations import ConversationStore, PipelineState, pipeline_message
from services.jobs import JobStore
from services.memory import conversation_records
from tasks.base import JobRequest, convoq_task, fail_timed_out_job
from tasks.options import CPU_TASK_OPTIONS
from vectorstore import get_memory_store
from worker.queues import TaskName

log = logging.getLogger(__name__)


def _stop_chain(task: Task) -> None:
    task.request.chain = None


@convoq_task(
    TaskName.PERSIST_CONVERSATION,
    on_hard_timeout=fail_timed_out_job,
    Request=JobRequest,
    **CPU_TASK_OPTIONS,
)
def persist(task: Task, job_id: str) -> dict[str, Any] | None:
    """Start the job and store its messages; the rest of the chain gets the state."""
    settings = get_settings()
    jobs = JobStore(settings.database_url)
    job = jobs.start(
        uuid.UUID(job_id), max_attempts=settings.max_job_attempts + task.request.retries
    )
    if job is None:
        log.info("job is not runnable; delivery skipped", extra={"job_id": job_id})
        _stop_chain(task)
        return None
    with log_context(job_id=job_id, tenant=str(job.tenant_id)):
        log.info("job started", extra={"attempt": job.attempts, "job_type": job.type.value})
        try:
            state = ConversationStore(settings.database_url).persist(job, steps=job.progress_total)
        except CPU_TASK_OPTIONS["autoretry_for"]:
            raise
        except Exception as exc:
            log.exception("job failed")
            jobs.fail(job.id, "internal_error", f"{type(exc).__name__}: {exc}")
            _stop_chain(task)
            return None
        state.done = 1
        if not jobs.report_progress(job.id, state.done, state.steps):
            log.info("job canceled while running")
            _stop_chain(task)
            return None
        log.info(
            "messages stored", extra={"first_seq": state.first_seq, "last_seq": state.last_seq}
        )
        return pipeline_message(state)


@convoq_task(
    TaskName.STORE_CONVERSATION,
    on_hard_timeout=fail_timed_out_job,
    Request=JobRequest,
    **CPU_TASK_OPTIONS,
)
def store(task: Task, message: dict[str, Any]) -> None:
    """Write the summary row and upsert the vectors, then finish the job."""
    settings = get_settings()
    state = PipelineState.model_validate(message["state"])
    jobs = JobStore(settings.database_url)
    job = jobs.running(state.job_id)
    if job is None:
        log.info("job is not running; storing skipped", extra={"job_id": str(state.job_id)})
        return
    with log_context(job_id=str(job.id), tenant=str(job.tenant_id)):
        try:
            conversations = ConversationStore(settings.database_url)
            conversations.save_summary(state)
            records = []
            if state.vectors:
                records = conversation_records(state, conversations.new_messages(state))
                get_memory_store(settings).upsert(records)
        except CPU_TASK_OPTIONS["autoretry_for"]:
            raise
        except Exception as exc:
            log.exception("job failed")
            jobs.fail(job.id, "internal_error", f"{type(exc).__name__}: {exc}")
            return
        result = {
            "conversation_id": state.conversation_id,
            "messages": {"first_seq": state.first_seq, "last_seq": state.last_seq},
            "summary": state.summary,
            "indexed": len(records),
        }
        if jobs.succeed(job.id, result):
            log.info("job succeeded")
