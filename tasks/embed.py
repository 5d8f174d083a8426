"""The gpu pool's embedding task: embed jobs and the conversation pipeline's embed step.

Both share the model thread's forward passes with each other and with the
interactive requests (``tasks.interactive``):

- ``JobMessage``: an embed job. Its vectors are its result, stored on its row;
  when it asked for ``store``, the cpu pool indexes them first (one message
  for all such jobs that finish together) and finishes it.
- ``StepMessage``: a conversation job's embed step: its new messages and its
  summary. The vectors wait on the job row for the store step, sent next.
"""

import logging
import uuid
from collections.abc import Sequence
from contextlib import closing
from typing import Any

import numpy as np
from celery import Task

from config import get_settings
from inference.embedder import EmbedderInfo
from inference.loaders import load_embedder
from services.conversations import ConversationStore
from services.embedding import embedding_result
from tasks.batch import Batch, Delivery
from tasks.frame import JobFrame
from tasks.gpu import embedded, gpu_batch_task, gpu_scheduler
from worker.messages import IndexMessage, JobMessage, StepMessage, task_args
from worker.queues import TaskName

log = logging.getLogger(__name__)


@gpu_batch_task(TaskName.EMBED, flush_every=get_settings().batch_flush_every)
def embed(task: Task, deliveries: Sequence[Delivery]) -> Batch:
    """Embed the texts of every job of the batch, in shared forward passes."""
    settings = get_settings()
    frame = JobFrame.from_settings()
    batch = Batch(task, deliveries, give_up=frame.give_up)
    with frame.guard(batch.by_job, on_transient=batch.retry_later):
        jobs = frame.start(batch.retries_of(JobMessage))
        texts: dict[uuid.UUID, list[str]] = {
            job_id: job.params["texts"] for job_id, job in jobs.items()
        }
        steps = frame.resume(batch.retries_of(StepMessage), steps_left=2)
        conversations = ConversationStore(settings.database_url)
        pipelines = conversations.jobs(list(steps.values()))
        summaries = conversations.summaries(list(pipelines.values()))
        for job_id, messages in conversations.new_messages(list(pipelines.values())).items():
            summary = summaries.get(job_id)
            texts[job_id] = messages + ([summary["text"]] if summary and summary["text"] else [])

        scheduler = gpu_scheduler()
        tenants = {job_id: row.tenant_id for job_id, row in (jobs | steps).items()}
        handles = {
            job_id: scheduler.embed(job_texts, tenant=str(tenants[job_id]), tag=job_id)
            for job_id, job_texts in texts.items()
        }
        info = load_embedder(settings).info
        finishing = embedded(handles, frame.store, count_texts=set(jobs))
        with closing(finishing):  # on the way out, texts still waiting are dropped
            for outcomes in finishing:
                vectors = {i: v for i, v in outcomes.items() if isinstance(v, np.ndarray)}
                failed = [i for i, v in outcomes.items() if isinstance(v, BaseException)]
                for job_id in failed:
                    with frame.guard([job_id]):
                        raise outcomes[job_id]
                done_jobs = {i: vectors[i] for i in vectors if i in jobs}
                _settle_jobs(batch, frame, done_jobs, jobs, info)
                done_steps = {i: _packed(vectors[i]) for i in vectors if i in steps}
                batch.send_next(TaskName.STORE_CONVERSATION, frame.store.store_vectors(done_steps))
    return batch


def _packed(vectors: np.ndarray) -> bytes:
    return np.ascontiguousarray(vectors, dtype="<f4").tobytes()


def _settle_jobs(
    batch: Batch,
    frame: JobFrame,
    vectors: dict[uuid.UUID, np.ndarray],
    jobs: dict[uuid.UUID, Any],
    info: EmbedderInfo,
) -> None:
    """Finish the embed jobs now; those with ``store`` go to the cpu pool to be indexed."""
    finished = {job_id: v for job_id, v in vectors.items() if not jobs[job_id].params.get("store")}
    frame.succeed(
        {job_id: embedding_result(info, len(v)) for job_id, v in finished.items()},
        {job_id: _packed(v) for job_id, v in finished.items()},
    )
    to_index = {job_id: v for job_id, v in vectors.items() if job_id not in finished}
    if not to_index:
        return
    stored = frame.store.store_vectors({job_id: _packed(v) for job_id, v in to_index.items()})
    if not stored:
        return
    message = IndexMessage(
        job_ids=sorted(stored),
        model=info.model,
        dimensions=info.dimensions,
        backend=info.backend,
        device=info.device,
    )
    try:
        batch.task.app.send_task(TaskName.INDEX_EMBED_JOBS.value, args=task_args(message))
    except Exception:
        log.warning("could not send the vectors to be indexed; queued again", exc_info=True)
        batch.requeue(stored)
