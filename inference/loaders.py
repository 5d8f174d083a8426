"""This process's models, as the settings configure them (device, backend, export cache)."""

from collections.abc import Callable
from typing import Any

from config import Settings
from inference.backends.choice import BackendOptions
from inference.embedder import Embedder, get_embedder
from inference.per_process import PerProcess
from inference.scheduler import Scheduler
from inference.t5 import T5Summarizer, get_t5_summarizer


def backend_options(settings: Settings) -> BackendOptions:
    return BackendOptions(
        cache_dir=settings.export_cache_dir,
        onnx_intra_op_threads=settings.onnx_intra_op_threads,
        onnx_allow_spinning=settings.onnx_allow_spinning,
        openvino_threads=settings.openvino_threads,
        openvino_performance_hint=settings.openvino_performance_hint,
    )


def load_embedder(settings: Settings) -> Embedder:
    """This process's embedder."""
    return get_embedder(
        settings.embedding_model_path,
        settings.inference_device,
        settings.inference_backend,
        backend_options(settings),
    )


def load_t5(settings: Settings) -> T5Summarizer:
    """This process's T5 summarizer."""
    if settings.summarizer_model_path is None:
        raise RuntimeError("SUMMARIZER_MODEL_PATH is not set on this worker")
    return get_t5_summarizer(
        settings.summarizer_model_path,
        settings.inference_device,
        input_tokens=settings.summarizer_input_tokens,
        batch_size=settings.summary_batch_size,
        backend=settings.inference_backend,
        options=backend_options(settings),
    )


_schedulers: PerProcess[Scheduler] = PerProcess()


def load_scheduler(
    settings: Settings, on_stuck: Callable[[list[Any]], None] | None = None
) -> Scheduler:
    """This process's model thread, running this process's embedder (and T5 calls)."""
    embedder = load_embedder(settings)
    return _schedulers.get(
        (id(embedder), settings.embedding_batch_size, settings.embedding_batch_tokens),
        lambda: Scheduler(
            embedder,
            dimensions=embedder.info.dimensions,
            max_texts=settings.embedding_batch_size,
            max_tokens=settings.embedding_batch_tokens,
            hard_limit=settings.celery.task_time_limit,
            on_stuck=on_stuck,
            backend=embedder.info.backend,
        ),
    )
