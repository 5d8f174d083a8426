"""The gpu pool's embedding task: every embedding request shares forward passes.

One batched task serves three kinds of request, so that all of them are
coalesced into the same forward passes:

- ``{"kind": "job", "job_id": ..}``: an embed job. Its vectors become its
  result, or go to the cpu pool to be indexed first when it asked for ``store``.
- ``{"kind": "query", "text": ..}``: a search query (``services.search.embed_query``),
  sent at high priority; its vector goes to the result backend for the API.
- ``{"kind": "conversation", "state": ..}``: the conversation pipeline's embed
  step; the vectors of the new messages and of the summary go down the chain.
"""

import logging
import uuid
from collections.abc import Sequence
from typing import Any

from celery import Task, states
from celery_batches import SimpleRequest

from config import get_settings
from services.conversations import ConversationStore, PipelineState, pipeline_message
from services.embedding import EmbeddedBatch, EmbedRequest, embed_requests, embedding_result
from services.models import load_embedder
from tasks.batch import continue_chain, requeue
from tasks.jobs_in_batch import JobsInBatch, job_batch_task, run_guarded, store_results
from worker.queues import TaskName

log = logging.getLogger(__name__)


@job_batch_task(TaskName.EMBED, flush_every=get_settings().batch_flush_every)
def embed(task: Task, requests: Sequence[SimpleRequest]) -> None:
    """Embed the texts of every request in the batch, in shared forward passes."""
    settings = get_settings()
    jobs = JobsInBatch.from_settings()
    conversations = ConversationStore(settings.database_url)
    embedder = load_embedder(settings)
    pipelines: dict[str, PipelineState] = {}

    def prepare_and_embed() -> EmbeddedBatch:
        wanted = {
            request.id: EmbedRequest(request.id, jobs.job_of(request).params["texts"])
            for request in jobs.start(requests, kind="job")
        }
        for request in requests:
            spec = request.args[0]
            if spec["kind"] == "query":
                wanted[request.id] = EmbedRequest(request.id, [spec["text"]])
            elif spec["kind"] == "conversation":
                state = PipelineState.model_validate(spec["state"])
                if jobs.still_running(state.job_id, state.done, state.steps):
                    pipelines[request.id] = state
                    texts = conversations.texts_to_embed(state)
                    wanted[request.id] = EmbedRequest(request.id, texts)
        return embed_requests(
            embedder,
            list(wanted.values()),
            max_texts=settings.embedding_batch_size,
            max_tokens=settings.embedding_batch_tokens,
            on_progress=jobs.progress_callback,
        )

    batch = run_guarded(task, jobs, requests, prepare_and_embed)
    if batch is None:
        return
    log.info(
        "embedding batch done",
        extra={
            "requests": len(requests),
            "texts": batch.texts,
            "forward_passes": batch.forward_passes,
        },
    )
    finished: dict[uuid.UUID, dict[str, Any]] = {}
    to_index: dict[str, dict[str, Any]] = {}
    for request in requests:
        vectors = batch.vectors.get(request.id)
        if vectors is None:
            continue
        kind = request.args[0]["kind"]
        try:
            if kind == "query":
                task.app.backend.store_result(request.id, vectors[0].tolist(), states.SUCCESS)
            elif kind == "conversation":
                state = pipelines[request.id]
                state.vectors = vectors.tolist()
                state.done += 1
                continue_chain(task.app, request, pipeline_message(state))
            else:
                job = jobs.job_of(request)
                result = embedding_result(embedder, vectors)
                if job.params.get("store"):
                    to_index[str(job.id)] = result
                else:
                    finished[job.id] = result
        except Exception:
            log.warning("could not deliver a result; queued again", exc_info=True)
            requeue(task.app, request)
    if to_index:
        _send_to_index(task, requests, to_index)
    store_results(task, jobs, requests, finished)


def _send_to_index(
    task: Task, requests: Sequence[SimpleRequest], results: dict[str, dict[str, Any]]
) -> None:
    """One message to the cpu pool for all the jobs of the batch that asked for ``store``."""
    try:
        task.app.send_task(TaskName.INDEX_EMBED_JOBS.value, args=[results])
    except Exception:
        log.warning("could not send the vectors to be indexed; queued again", exc_info=True)
        for request in requests:
            if request.args[0].get("job_id") in results:
                requeue(task.app, request)
