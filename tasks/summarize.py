"""The gpu pool's summarization task, batched across jobs.

Two kinds of request share ``generate`` calls:

- ``{"kind": "job", "job_id": ..}``: a summarize job; the summary is its result.
- ``{"kind": "conversation", "state": ..}``: the conversation pipeline's
  summarize step; the summary goes on down the chain.
"""

import logging
import uuid
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from celery import Task
from celery_batches import SimpleRequest

from config import get_settings
from inference.summary import Summary
from services.conversations import ConversationStore, PipelineState, pipeline_message
from services.summaries import SummaryRequest, summarize_requests
from tasks.batch import continue_chain, requeue
from tasks.jobs_in_batch import JobsInBatch, job_batch_task, run_guarded, store_results
from worker.queues import TaskName

log = logging.getLogger(__name__)


@job_batch_task(TaskName.SUMMARIZE, flush_every=get_settings().summary_batch_size)
def summarize(task: Task, requests: Sequence[SimpleRequest]) -> None:
    """Summarise the text of every request, texts of the same method and lengths together."""
    settings = get_settings()
    jobs = JobsInBatch.from_settings()
    conversations = ConversationStore(settings.database_url)
    pipelines: dict[str, PipelineState] = {}

    def prepare_and_summarize() -> dict[str, Summary]:
        wanted = {}
        for request in jobs.start(requests, kind="job"):
            params = jobs.job_of(request).params
            wanted[request.id] = SummaryRequest(
                params["text"], params["method"], params["max_length"], params["min_length"]
            )
        for request in requests:
            if request.args[0]["kind"] != "conversation":
                continue
            state = PipelineState.model_validate(request.args[0]["state"])
            if jobs.still_running(state.job_id, state.done, state.steps):
                pipelines[request.id] = state
                wanted[request.id] = SummaryRequest(
                    conversations.transcript(state),
                    state.method,
                    state.max_length,
                    state.min_length,
                )
        return summarize_requests(wanted, settings)

    summaries = run_guarded(task, jobs, requests, prepare_and_summarize)
    if summaries is None:
        return
    finished: dict[uuid.UUID, dict[str, Any]] = {}
    for request in requests:
        summary = summaries.get(request.id)
        if summary is None:
            continue
        if request.id in pipelines:
            state = pipelines[request.id]
            state.summary = asdict(summary)
            state.done += 1
            try:
                continue_chain(task.app, request, pipeline_message(state))
            except Exception:
                log.warning("could not send the next step; queued again", exc_info=True)
                requeue(task.app, request)
        else:
            finished[jobs.job_of(request).id] = asdict(summary)
    store_results(task, jobs, requests, finished)
