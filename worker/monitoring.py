"""A worker's metrics and heartbeat.

The worker's main process serves ``/metrics`` on ``WORKER_METRICS_PORT``,
merging the samples of its pool processes (prometheus-client multiprocess
mode), and beats in Redis so ``/v1/queues`` can count live workers without
asking them.
"""

import logging
from time import perf_counter
from typing import Any

from celery.signals import (
    task_postrun,
    task_prerun,
    worker_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutdown,
)
from prometheus_client import start_http_server

from config import get_settings, metrics
from worker.broker import broker_client
from worker.presence import Heartbeat, claim_identity, worker_identity

log = logging.getLogger(__name__)

_task_started: dict[str, float] = {}
_heartbeat: Heartbeat | None = None


@task_prerun.connect
def _on_task_start(task_id: str, **_: Any) -> None:
    _task_started[task_id] = perf_counter()


@task_postrun.connect
def _on_task_end(task_id: str, task: Any, **_: Any) -> None:
    started = _task_started.pop(task_id, None)
    if started is not None:
        metrics.TASK_SECONDS.labels(task=task.name).observe(perf_counter() - started)


@worker_init.connect
def _claim_identity(sender: Any, **_: Any) -> None:
    # In the main process, before the pool forks: its processes share the identity.
    log.info("worker identity", extra={"worker": claim_identity(sender.hostname)})


def _held_by(consumer: Any) -> Any:
    """The delivery tags of the messages the consumer has reserved and not yet acked."""

    def held() -> list[str]:
        task_consumer = getattr(consumer, "task_consumer", None)
        qos = getattr(getattr(task_consumer, "channel", None), "qos", None)
        if qos is None:
            return []
        for _attempt in range(3):  # the consumer's thread may change it meanwhile
            try:
                return [tag for tag in list(qos._delivered) if tag not in qos._dirty]
            except RuntimeError:
                continue
        return []

    return held


@worker_init.connect
def _reset_samples(sender: Any, **_: Any) -> None:
    # In the main process, before the pool forks: this run's samples start empty.
    metrics.reset_multiprocess_dir()
    if metrics.multiprocess_dir() is None and "prefork" in str(sender.pool_cls):
        log.warning(
            "PROMETHEUS_MULTIPROC_DIR is not set: the metrics of this worker's pool "
            "processes are not served"
        )


@worker_process_shutdown.connect
def _forget_process(pid: int, **_: Any) -> None:
    metrics.mark_process_dead(pid)


def _serve_metrics(host: str, port: int) -> None:
    if port == 0:
        return
    try:
        start_http_server(port, addr=host, registry=metrics.collecting_registry())
    except OSError as exc:
        # Another worker on this host has the port: run on, unscraped, and say so.
        log.error("worker metrics not served", extra={"port": port, "error": str(exc)})
        return
    log.info("worker metrics served", extra={"url": f"http://{host}:{port}/metrics"})


@worker_ready.connect
def _on_ready(sender: Any, **_: Any) -> None:
    global _heartbeat
    settings = get_settings()
    _serve_metrics(settings.worker_metrics_host, settings.worker_metrics_port)
    pools = sorted(sender.app.amqp.queues.consume_from)
    _heartbeat = Heartbeat(
        broker_client(settings.redis_url),
        pools,
        worker_identity() or claim_identity(sender.hostname),
        settings.worker_heartbeat_seconds,
        held=_held_by(sender),
    ).start()


@worker_shutdown.connect
def _on_shutdown(**_: Any) -> None:
    if _heartbeat is not None:
        _heartbeat.stop()
