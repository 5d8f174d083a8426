"""The gpu pool's summarization task: summarize jobs and the conversation pipeline's
summarize step, batched across jobs.

- ``JobMessage``: a summarize job; the summary is its result.
- ``StepMessage``: a conversation job's summarize step. The summary is saved
  as the conversation's summary up to the job's last message, and the next
  step (embed, or store) is sent.
"""

import logging
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, wait
from dataclasses import asdict
from time import monotonic

from celery import Task

from config import get_settings
from services.conversations import ConversationStore
from services.summaries import SummaryRequest, summarize_requests
from tasks.batch import Batch, Delivery
from tasks.frame import JobFrame, TimeLimitExceeded
from tasks.gpu import deadline, gpu_batch_task, gpu_scheduler
from worker.messages import JobMessage, StepMessage
from worker.queues import TaskName

log = logging.getLogger(__name__)


@gpu_batch_task(TaskName.SUMMARIZE, flush_every=get_settings().summary_batch_size)
def summarize(task: Task, deliveries: Sequence[Delivery]) -> Batch:
    """Summarise the text of every job, texts of the same method and lengths together."""
    settings = get_settings()
    frame = JobFrame.from_settings()
    batch = Batch(task, deliveries, give_up=frame.give_up)
    with frame.guard(batch.by_job, on_transient=batch.retry_later):
        jobs = frame.start(batch.retries_of(JobMessage))
        wanted = {
            job_id: SummaryRequest(
                job.params["text"],
                job.params["method"],
                job.params["max_length"],
                job.params["min_length"],
                str(job.tenant_id),
            )
            for job_id, job in jobs.items()
        }
        steps = frame.resume(batch.retries_of(StepMessage), done=1)
        conversations = ConversationStore(settings.database_url)
        pipelines = conversations.jobs(list(steps.values()))
        for job_id, transcript in conversations.transcripts(list(pipelines.values())).items():
            params = pipelines[job_id].params
            wanted[job_id] = SummaryRequest(
                transcript,
                params["method"],
                params["max_length"],
                params["min_length"],
                str(pipelines[job_id].tenant_id),
            )

        pending = summarize_requests(wanted, settings, gpu_scheduler())
        until = deadline()
        while pending:
            if monotonic() >= until:
                for future in pending.values():
                    future.cancel()
                raise TimeLimitExceeded
            wait(list(pending.values()), timeout=until - monotonic(), return_when=FIRST_COMPLETED)
            finished = {key: f for key, f in pending.items() if f.done()}
            for key in finished:
                del pending[key]
            failed = [key for key, f in finished.items() if f.exception() is not None]
            for key in failed:
                with frame.guard([key]):
                    raise finished[key].exception()
            summaries = {
                key: asdict(f.result()) for key, f in finished.items() if key not in failed
            }
            frame.succeed({key: s for key, s in summaries.items() if key in jobs})
            made = {key: (pipelines[key], s) for key, s in summaries.items() if key in pipelines}
            conversations.save_summaries(made)
            for job_id, (pipeline, _) in made.items():
                step = TaskName.EMBED if pipeline.embed else TaskName.STORE_CONVERSATION
                batch.send_next(step, [job_id])
    return batch
