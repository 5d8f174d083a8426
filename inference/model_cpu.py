"""The model's own CPU time: its thread, and the threads its runtime runs on.

A forward pass runs on the scheduler's model thread and on the worker
threads of torch (OpenMP), ONNX Runtime or OpenVINO (TBB). Those runtime
threads are not Python threads, so a sampler reads every thread's CPU time
from ``/proc/self/task`` once a second and counts, towards
``convoq_inference_cpu_seconds_total``, the model thread and every thread
Python did not start. The process's other threads (Celery's, the batches
waiting on the model, the interactive lane) are left out, which a process-wide
clock around each pass would not do.
"""

import logging
import os
import threading

from config import metrics

log = logging.getLogger(__name__)

SAMPLE_SECONDS = 1.0
_TICKS = os.sysconf("SC_CLK_TCK")


def _thread_cpu(tid: int) -> float | None:
    try:
        with open(f"/proc/self/task/{tid}/stat", "rb") as stat:
            fields = stat.read().rpartition(b")")[2].split()
    except OSError:
        return None
    # Fields after the command: state is the 3rd of stat(5), utime and stime the 14th and 15th.
    return (int(fields[11]) + int(fields[12])) / _TICKS


def model_threads(model_thread: threading.Thread) -> set[int]:
    """The model thread and every thread of this process Python did not start."""
    python = {t.native_id for t in threading.enumerate() if t is not model_thread}
    try:
        tids = {int(name) for name in os.listdir("/proc/self/task")}
    except OSError:
        return set()
    return tids - python


class ModelCpuSampler:
    """Adds the model threads' CPU time to the inference counter, once a second."""

    def __init__(self, model_thread: threading.Thread, backend: str) -> None:
        self.model_thread = model_thread
        self.backend = backend
        self._seen: dict[int, float] = {}
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="convoq-model-cpu", daemon=True)

    def start(self) -> "ModelCpuSampler":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()

    def sample(self) -> float:
        """CPU seconds the model threads used since the last sample."""
        added = 0.0
        for tid in model_threads(self.model_thread):
            seconds = _thread_cpu(tid)
            if seconds is None:
                continue
            added += max(0.0, seconds - self._seen.get(tid, 0.0))
            self._seen[tid] = seconds
        return added

    def _run(self) -> None:
        self.sample()  # what the threads used before (loading the model) is not inference
        while not self._stopped.wait(SAMPLE_SECONDS):
            try:
                metrics.INFERENCE_CPU_SECONDS.labels(backend=self.backend).inc(self.sample())
            except Exception:
                log.warning("could not read the model's CPU time", exc_info=True)
