"""Liveness and readiness probes (no authentication)."""

import logging
import socket
from urllib.parse import urlsplit

import redis
from flask import Response, current_app, jsonify
from flask_openapi3 import APIBlueprint, Tag
from sqlalchemy import text

from api.errors import ErrorResponse, error_response
from api.schemas import HealthOut
from models.db import get_engine

log = logging.getLogger(__name__)

health_api = APIBlueprint("health", __name__, abp_tags=[Tag(name="health", description="Probes.")])

PROBE_TIMEOUT_SECONDS = 2


@health_api.get("/healthz", summary="Liveness", responses={200: HealthOut})
def healthz() -> Response:
    """The process is up and serving requests."""
    return jsonify(status="ok")


def _check_postgresql() -> None:
    engine = get_engine(current_app.extensions["convoq.settings"].database_url)
    with engine.connect() as connection:
        connection.execute(text(f"SET LOCAL statement_timeout = {PROBE_TIMEOUT_SECONDS * 1000}"))
        connection.execute(text("SELECT 1"))


def _check_redis() -> None:
    client = redis.Redis.from_url(
        current_app.extensions["convoq.settings"].redis_url,
        socket_timeout=PROBE_TIMEOUT_SECONDS,
        socket_connect_timeout=PROBE_TIMEOUT_SECONDS,
    )
    try:
        client.ping()
    finally:
        client.close()


def _check_milvus() -> None:
    """Milvus accepts connections. The API holds no Milvus client (pymilvus would
    bring pandas and gRPC into every API process); the workers' calls have their
    own timeouts and retries."""
    uri = urlsplit(current_app.extensions["convoq.settings"].milvus_uri)
    if uri.hostname is None:
        raise ValueError(f"MILVUS_URI {uri.geturl()!r} names no server")
    port = uri.port or (443 if uri.scheme == "https" else 19530)
    socket.create_connection((uri.hostname, port), timeout=PROBE_TIMEOUT_SECONDS).close()


CHECKS = {"postgresql": _check_postgresql, "redis": _check_redis, "milvus": _check_milvus}


@health_api.get("/readyz", summary="Readiness", responses={200: HealthOut, 503: ErrorResponse})
def readyz() -> Response:
    """Every backing service answers; 503 names the ones that do not."""
    results: dict[str, str] = {}
    for name, check in CHECKS.items():
        try:
            check()
            results[name] = "ok"
        except Exception as exc:
            log.warning("readiness check failed", extra={"service": name, "error": str(exc)})
            results[name] = "down"
    down = [name for name, state in results.items() if state != "ok"]
    if down:
        return error_response(
            503,
            "not_ready",
            f"not ready: {', '.join(down)} {'is' if len(down) == 1 else 'are'} down",
            details=[{"service": name, "status": state} for name, state in results.items()],
        )
    return jsonify(status="ready", checks=results)
