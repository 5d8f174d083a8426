"""``GET /metrics`` (no authentication) and the HTTP metrics of every request.

Besides what the processes recorded, the API's ``/metrics`` reads each pool's
queue depth and live workers from Redis at scrape time: KEDA's Prometheus
scaler and the dashboard scale and plot from these.
"""

import logging
from collections.abc import Iterator
from time import perf_counter

import redis
from flask import Flask, Response, current_app, g, request
from flask_openapi3 import APIBlueprint, Tag
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from config import Settings
from config.metrics import HTTP_REQUEST_SECONDS, HTTP_REQUESTS, exposition
from worker.broker import broker_client
from worker.scaling import pool_states

log = logging.getLogger(__name__)

metrics_api = APIBlueprint(
    "metrics", __name__, abp_tags=[Tag(name="health", description="Probes.")]
)

UNMATCHED_ROUTE = "<unmatched>"


class PoolCollector:
    """Queue depth, live workers and recommended replicas of each pool, read on scrape."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def collect(self) -> Iterator[Metric]:
        try:
            states = pool_states(broker_client(self.settings.redis_url), self.settings)
        except redis.RedisError as exc:
            # No samples rather than zeros: "empty" must not read as "nothing to do".
            log.warning("metrics could not read the queues", extra={"error": str(exc)})
            return
        depth = GaugeMetricFamily(
            "convoq_queue_depth",
            "Messages of a queue: waiting in the broker's lists (every priority) or "
            "reserved by a worker and not yet acknowledged.",
            labels=["queue", "state"],
        )
        workers = GaugeMetricFamily("convoq_workers", "Live workers per pool.", labels=["pool"])
        replicas = GaugeMetricFamily(
            "convoq_recommended_replicas",
            "Workers the scaling rule asks for: ceil(depth / target_per_worker), clamped.",
            labels=["pool"],
        )
        for pool, state in states.items():
            depth.add_metric([pool, "waiting"], state.depth.waiting)
            depth.add_metric([pool, "unacked"], state.depth.unacked)
            workers.add_metric([pool], state.workers)
            replicas.add_metric([pool], state.recommended_replicas)
        yield from (depth, workers, replicas)


@metrics_api.get(
    "/metrics",
    summary="Prometheus metrics",
    responses={
        200: {
            "description": "The Prometheus text exposition format (version 0.0.4).",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        }
    },
)
def metrics() -> Response:
    """Prometheus text exposition: HTTP, jobs, and each pool's queue depth."""
    body, content_type = exposition([PoolCollector(current_app.extensions["convoq.settings"])])
    return Response(body, content_type=content_type)


def _start_timer() -> None:
    g.request_started = perf_counter()


def _record_request(response: Response) -> Response:
    started = g.pop("request_started", None)
    if started is not None:
        route = request.url_rule.rule if request.url_rule is not None else UNMATCHED_ROUTE
        HTTP_REQUESTS.labels(request.method, route, str(response.status_code)).inc()
        HTTP_REQUEST_SECONDS.labels(request.method, route).observe(perf_counter() - started)
    return response


def init_metrics(app: Flask) -> None:
    """Time and count every request by its route template (never the raw path)."""
    app.before_request(_start_timer)
    app.after_request(_record_request)
