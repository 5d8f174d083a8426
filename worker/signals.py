"""Worker process set-up: logging, per-process resources after fork, model warm-up,
and, in a gpu worker, the model thread and the interactive lane."""

import logging
from typing import Any

from celery import Celery, current_app
from celery.signals import (
    setup_logging,
    worker_init,
    worker_process_init,
    worker_ready,
    worker_shutdown,
)

from config import get_settings
from config.logs import configure_logging
from models.db import dispose_engines
from worker.queues import Queue, task_modules_for

log = logging.getLogger(__name__)


@setup_logging.connect
def _configure_logging(**_: Any) -> None:
    configure_logging(get_settings().log_level)


def _pool_name(pool_cls: Any) -> str:
    return pool_cls if isinstance(pool_cls, str) else pool_cls.__module__


def _consumes_gpu_queue(app: Celery) -> bool:
    return Queue.GPU.value in app.amqp.queues.consume_from


_lane: Any = None


def _warm_up_models() -> None:
    """Load the models, start the model thread and open the interactive lane."""
    global _lane
    # Imported here, not at the top: only gpu workers may import torch.
    from inference.loaders import load_embedder, load_t5
    from tasks.gpu import gpu_scheduler
    from tasks.interactive import InteractiveLane

    settings = get_settings()
    embedder = load_embedder(settings)
    if settings.summarizer_model_path is not None:
        load_t5(settings)
    _lane = InteractiveLane(settings, gpu_scheduler(), embedder.info).start()


def _ensure_memory_collection() -> None:
    from vectorstore import get_memory_store

    try:
        get_memory_store(get_settings()).ensure_collection()
    except Exception:
        log.exception("could not create the Milvus collection; indexing will retry")


@worker_init.connect
def _on_worker_init(sender: Any, **_: Any) -> None:
    """Import the tasks of the queues this worker consumes, and only those.

    The cpu pool then never imports torch, and the gpu pool never imports
    what only the cpu pool needs.
    """
    for queue in Queue:
        if queue.value in sender.app.amqp.queues.consume_from:
            for module in task_modules_for(queue):
                sender.app.loader.import_task_module(module)
    if Queue.CPU.value in sender.app.amqp.queues.consume_from:
        _ensure_memory_collection()
    if _consumes_gpu_queue(sender.app):
        # Batches form only from reserved messages (prefetch multiplier x
        # concurrency), so a gpu worker reserves many; others keep 1.
        sender.prefetch_multiplier = max(
            1, get_settings().gpu_prefetch_multiplier // max(1, sender.concurrency)
        )


@worker_process_init.connect
def _on_process_init(**_: Any) -> None:
    """In each prefork child: drop the parent's connections, then load models here."""
    dispose_engines()
    if _consumes_gpu_queue(current_app):
        _warm_up_models()


@worker_ready.connect
def _on_worker_ready(sender: Any, **_: Any) -> None:
    """A solo or threads pool runs tasks in this process: load the models before the first."""
    pool = _pool_name(type(sender.pool))
    if ("solo" in pool or "thread" in pool) and _consumes_gpu_queue(sender.app):
        _warm_up_models()
        log.info("models loaded; gpu worker ready")


@worker_shutdown.connect
def _on_worker_shutdown(**_: Any) -> None:
    if _lane is not None:
        _lane.stop()
