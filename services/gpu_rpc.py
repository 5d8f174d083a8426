"""Interactive requests to the gpu pool: pushed on its lane, answered over pub/sub.

``POST /v1/embeddings`` and ``POST /v1/search`` are waited for by a person or
a program, so they skip Celery and the queue of bulk jobs. The API pushes the
request on a Redis list (the gpu pool's interactive lane, ``lane_key``); any
gpu worker pops it, gives its texts one of the next forward passes, ahead of
bulk work (``inference.scheduler``), and publishes the answer on the channel
the API process listens on (``services.notify``). One push and one message
back: no result backend, no per-request subscription.

A request nobody answers before its deadline is a timeout (504 at the API).
A gpu worker drops requests whose deadline has passed, and the lane expires
when nobody pushes to it for a minute, so requests made while no gpu worker
runs do not pile up.
"""

import time
import uuid
from typing import Any
from urllib.parse import urlsplit

import redis

from services.notify import listener, notify_client
from worker.messages import (
    EmbeddingsReply,
    EmbeddingsRequest,
    ErrorReply,
    SearchReply,
    SearchRequest,
    read_reply,
)

LANE_IDLE_EXPIRY_SECONDS = 60


def lane_key(redis_url: str) -> str:
    database = urlsplit(redis_url).path.strip("/") or "0"
    return f"convoq:{database}:lane:gpu"


class GpuTimeout(Exception):
    """No gpu worker answered in time."""


class GpuUnavailable(Exception):
    """The request could not be sent (Redis is down)."""


class GpuRequestFailed(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def new_request_id() -> str:
    return uuid.uuid4().hex


def _ask(
    redis_url: str,
    request_type: type[EmbeddingsRequest] | type[SearchRequest],
    timeout: float,
    **fields: Any,
) -> object:
    """Push a request on the lane and wait for its answer, at most ``timeout`` seconds."""
    waiting = listener(redis_url)
    request = request_type(
        id=new_request_id(),
        reply_to=waiting.reply_channel,
        deadline=time.time() + timeout,
        **fields,
    )
    slot = waiting.expect_reply(request.id)
    try:
        try:
            with notify_client(redis_url).pipeline(transaction=False) as pipe:
                pipe.lpush(lane_key(redis_url), request.model_dump_json())
                pipe.expire(lane_key(redis_url), LANE_IDLE_EXPIRY_SECONDS)
                pipe.execute()
        except redis.RedisError as exc:
            raise GpuUnavailable(str(exc)) from exc
        if not slot.event.wait(timeout) or slot.payload is None:
            raise GpuTimeout(f"no gpu worker answered within {timeout:g}s")
    finally:
        waiting.forget_reply(request.id)
    reply = read_reply(slot.payload)
    if isinstance(reply, ErrorReply):
        raise GpuRequestFailed(reply.code, reply.message)
    return reply


def embed_texts(
    redis_url: str, texts: list[str], *, tenant: str, timeout: float
) -> EmbeddingsReply:
    """The texts' vectors from the gpu pool, as soon as one of its next passes ran them."""
    reply = _ask(redis_url, EmbeddingsRequest, timeout, tenant=tenant, texts=texts)
    assert isinstance(reply, EmbeddingsReply)
    return reply


def search(
    redis_url: str,
    query: str,
    *,
    tenant: str,
    top_k: int,
    user_id: str | None,
    conversation_id: str | None,
    memory_kind: str | None,
    timeout: float,
) -> SearchReply:
    """The query embedded ahead of bulk work, then the tenant's memory searched."""
    reply = _ask(
        redis_url,
        SearchRequest,
        timeout,
        tenant=tenant,
        query=query,
        top_k=top_k,
        user_id=user_id,
        conversation_id=conversation_id,
        memory_kind=memory_kind,
    )
    assert isinstance(reply, SearchReply)
    return reply
