"""The gpu pool's interactive lane: ``POST /v1/embeddings`` and search queries.

Each gpu worker runs one thread popping interactive requests off the lane
(``services.gpu_rpc``) and hands their texts to the model thread as
interactive work, which takes one of the next forward passes whatever bulk
work waits. Answers are published to the channel the asking API process
listens on, from a small pool of threads so that the model thread never waits
on Redis or Milvus: embeddings as base64 float32, searches as hits of the
tenant's memory.
"""

import base64
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import redis

from config import Settings
from inference.embedder import EmbedderInfo
from inference.scheduler import EmbedHandle, Scheduler
from services.gpu_rpc import lane_key
from services.notify import publish_reply
from vectorstore import MemoryStoreError, get_memory_store
from worker.messages import (
    EmbeddingsReply,
    EmbeddingsRequest,
    ErrorReply,
    MalformedMessage,
    SearchHitMessage,
    SearchReply,
    SearchRequest,
    read_interactive,
)

log = logging.getLogger(__name__)

# Requests popped in one round trip after the first, when a burst is waiting.
BURST = 63
POP_TIMEOUT_SECONDS = 1
REPLY_THREADS = 4


class InteractiveLane:
    def __init__(self, settings: Settings, scheduler: Scheduler, info: EmbedderInfo) -> None:
        self.settings = settings
        self.scheduler = scheduler
        self.info = info
        self.key = lane_key(settings.redis_url)
        self.client = redis.Redis.from_url(
            settings.redis_url, socket_timeout=POP_TIMEOUT_SECONDS + 5, socket_connect_timeout=5
        )
        self._answers = ThreadPoolExecutor(REPLY_THREADS, thread_name_prefix="convoq-answer")
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="convoq-lane", daemon=True)

    def start(self) -> "InteractiveLane":
        self._thread.start()
        log.info("interactive lane open", extra={"lane": self.key})
        return self

    def stop(self) -> None:
        self._stopped.set()

    def _run(self) -> None:
        while not self._stopped.is_set():
            try:
                popped = self.client.blpop([self.key], timeout=POP_TIMEOUT_SECONDS)
                if popped is None:
                    continue
                burst = [popped[1], *(self.client.lpop(self.key, BURST) or [])]
            except redis.RedisError as exc:
                log.warning("interactive lane unreachable", extra={"error": str(exc)})
                self._stopped.wait(1.0)
                continue
            for raw in burst:
                self._accept(raw)

    def _accept(self, raw: bytes) -> None:
        try:
            request = read_interactive(raw)
        except MalformedMessage as exc:
            log.error("malformed interactive request dropped", extra={"error": str(exc)[:500]})
            return
        if request.deadline < time.time():
            log.info("expired interactive request dropped", extra={"request_id": request.id})
            return
        texts = request.texts if isinstance(request, EmbeddingsRequest) else [request.query]
        handle = self.scheduler.embed(texts, tenant=request.tenant, interactive=True)
        handle.future.add_done_callback(
            lambda _: self._answers.submit(self._answer, request, handle)
        )

    def _answer(self, request: EmbeddingsRequest | SearchRequest, handle: EmbedHandle) -> None:
        try:
            vectors = handle.future.result()
            if isinstance(request, EmbeddingsRequest):
                reply = self._embeddings(request, handle, vectors)
            else:
                reply = self._search(request, vectors[0])
        except MemoryStoreError as exc:
            reply = ErrorReply(id=request.id, code="memory_unavailable", message=str(exc))
        except Exception as exc:
            log.exception("interactive request failed")
            reply = ErrorReply(
                id=request.id, code="inference_failed", message=f"{type(exc).__name__}: {exc}"
            )
        try:
            publish_reply(
                self.client, request.reply_to, request.id, reply.model_dump_json().encode()
            )
        except redis.RedisError as exc:
            log.warning("could not answer an interactive request", extra={"error": str(exc)})

    def _embeddings(
        self, request: EmbeddingsRequest, handle: EmbedHandle, vectors: np.ndarray
    ) -> EmbeddingsReply:
        raw = np.ascontiguousarray(vectors, dtype="<f4")
        return EmbeddingsReply(
            id=request.id,
            vectors=[base64.b64encode(row.tobytes()).decode() for row in raw],
            tokens=handle.tokens,
            model=self.info.model,
            dimensions=self.info.dimensions,
            backend=self.info.backend,
        )

    def _search(self, request: SearchRequest, vector: np.ndarray) -> SearchReply:
        hits = get_memory_store(self.settings).search(
            request.tenant,
            vector,
            top_k=request.top_k,
            user_id=request.user_id,
            conversation_id=request.conversation_id,
            kind=request.memory_kind,
        )
        return SearchReply(
            id=request.id,
            hits=[
                SearchHitMessage(
                    id=hit.id,
                    score=hit.score,
                    kind=hit.kind.value,
                    user_id=hit.user_id,
                    conversation_id=hit.conversation_id,
                    text=hit.text,
                )
                for hit in hits
            ],
        )
