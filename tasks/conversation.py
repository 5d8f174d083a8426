"""The conversation pipeline's cpu steps: persist the messages first, store the memory last.

Each step sends the next one by name, with the job's id
(``worker.messages.StepMessage``); the gpu steps in between are
``tasks.summarize`` and ``tasks.embed``::

    persist ─► [summarize] ─► [embed] ─► store
"""

import logging

from celery import Task

from config import get_settings
from config.logs import log_context
from services import vectors
from services.conversations import ConversationStore
from services.dispatch import conversation_pipeline
from services.memory import conversation_records, summary_record_id
from tasks.base import job_task
from tasks.frame import JobFrame
from vectorstore import DIMENSION, MemoryKind, get_memory_store
from worker.messages import JobMessage, StepMessage, read_message, task_args
from worker.queues import TaskName

log = logging.getLogger(__name__)


def next_step(summarize: bool, embed: bool, *, after: TaskName) -> TaskName:
    """The step that follows ``after`` in a pipeline with these options."""
    order = conversation_pipeline(summarize, embed)
    return order[order.index(after) + 1]


@job_task(TaskName.PERSIST_CONVERSATION)
def persist(task: Task, message: dict) -> None:
    """Start the job and store its messages, then send the next step."""
    job_message = read_message([message])
    assert isinstance(job_message, JobMessage)
    frame = JobFrame.from_settings()
    job_id = job_message.job_id
    job = frame.start({job_id: task.request.retries}).get(job_id)
    if job is None:
        return
    with log_context(job_id=str(job_id), tenant=str(job.tenant_id)), frame.guard([job_id]):
        persisted = ConversationStore(get_settings().database_url).persist(job)
        if persisted is None:
            log.info("job canceled while running; nothing stored")
            return
        first, last = persisted
        log.info("messages stored", extra={"first_seq": first, "last_seq": last})
        if first > last:
            # Every message's id was stored already (a retried post): nothing new to
            # summarise or index.
            frame.succeed({job_id: _nothing_new(job.params["conversation_id"])}, {job_id: None})
            return
        if not frame.store.report_progress({job_id: (1, job.progress_total)}):
            log.info("job canceled while running")
            return
        step = next_step(
            job.params["summarize"], job.params["embed"], after=TaskName.PERSIST_CONVERSATION
        )
        try:
            task.app.send_task(step.value, args=task_args(StepMessage(job_id=job_id)))
        except Exception:
            log.warning("could not send the next step", exc_info=True)
            frame.release([job_id])


def _nothing_new(conversation_id: str) -> dict:
    return {
        "conversation_id": conversation_id,
        "messages": {"first_seq": None, "last_seq": None},
        "summary": None,
        "indexed": 0,
    }


@job_task(TaskName.STORE_CONVERSATION)
def store(task: Task, message: dict) -> None:
    """Index the new messages and the summary in Milvus, then finish the job."""
    step = read_message([message])
    assert isinstance(step, StepMessage)
    settings = get_settings()
    frame = JobFrame.from_settings()
    job = frame.resume([step.job_id], steps_left=1).get(step.job_id)
    if job is None:
        return
    with log_context(job_id=str(job.id), tenant=str(job.tenant_id)), frame.guard([job.id]):
        conversations = ConversationStore(settings.database_url)
        pipeline = conversations.jobs([job]).get(job.id)
        if pipeline is None:
            # Its conversation was erased since the job resumed: the erasure
            # canceled the job and deletes whatever it indexes for it.
            log.info("conversation erased while the job ran; nothing indexed")
            return
        summary = conversations.summaries([pipeline]).get(job.id)
        records = []
        memory = get_memory_store(settings)
        if pipeline.summarize and not conversations.is_latest_summary(pipeline):
            # A later job summarised the conversation further: its summary is the
            # one the index keeps.
            summary_to_index = None
        else:
            summary_to_index = summary
        if pipeline.embed and job.vectors:
            messages = conversations.new_messages([pipeline])[job.id]
            embedded = vectors.as_floats(job.vectors, DIMENSION)
            records = conversation_records(pipeline, messages, summary_to_index, embedded)
            memory.upsert(records)
        if summary_to_index is not None and not any(
            record.kind == MemoryKind.SUMMARY for record in records
        ):
            # The summary that replaced the indexed one was not embedded: the old
            # one's vector must not outlive it.
            memory.delete(
                str(job.tenant_id),
                ids=[summary_record_id(str(job.tenant_id), pipeline.conversation_id)],
            )
        result = {
            "conversation_id": pipeline.conversation_id,
            "messages": {"first_seq": pipeline.first_seq, "last_seq": pipeline.last_seq},
            "summary": summary,
            "indexed": len(records),
        }
        frame.succeed({job.id: result}, {job.id: None})
