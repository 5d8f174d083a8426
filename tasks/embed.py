"""Embedding tasks (gpu queue)."""

from typing import Any

from config import get_settings
from inference.embedder import get_embedder
from models import Job
from services.embedding import embed_texts
from services.jobs import ProgressReporter
from tasks.base import job_task
from worker.queues import TaskName


@job_task(TaskName.EMBED_JOB)
def embed_job(job: Job, progress: ProgressReporter) -> dict[str, Any]:
    """Embed the job's texts with all-MiniLM-L6-v2."""
    settings = get_settings()
    embedder = get_embedder(settings.embedding_model_path, settings.inference_device)
    return embed_texts(
        job.params["texts"],
        embedder,
        batch_size=settings.embedding_batch_size,
        report_progress=progress,
    )
