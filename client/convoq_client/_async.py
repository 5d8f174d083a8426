"""``AsyncClient``: the asyncio client, method for method the same as ``Client``."""

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx

from convoq_client import _common as c
from convoq_client._vectors import ENCODING
from convoq_client.errors import Conflict, JobTimeout
from convoq_client.models import (
    AuditEntry,
    AuditPage,
    Conversation,
    Embeddings,
    Erasure,
    Job,
    JobPage,
    Queue,
    SearchHit,
)


class AsyncClient:
    """The convoq API. ``base_url`` and ``api_key`` default to ``CONVOQ_URL`` and
    ``CONVOQ_KEY``. 429, 503 and dropped connections are retried ``max_retries`` times,
    after ``Retry-After`` or exponential backoff with jitter."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        max_retries: int = 4,
        backoff: float = 0.5,
        max_backoff: float = 8.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.config = c.Config.resolve(
            base_url, api_key, timeout, max_retries, backoff, max_backoff
        )
        self._http = httpx.AsyncClient(
            base_url=self.config.base_url,
            headers=self.config.headers(),
            timeout=timeout,
            transport=transport,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _send(self, call: c.Call) -> Any:
        attempt = 0
        while True:
            attempt += 1
            call.tries = attempt
            response = None
            try:
                response = await self._http.request(
                    call.method,
                    call.path,
                    json=call.json,
                    params=call.params,
                    headers=call.headers,
                    timeout=call.timeout or self.config.timeout,
                )
            except httpx.TransportError as exc:
                if not c.retryable(exc) or attempt > self.config.max_retries:
                    raise c.connection_failed(exc) from exc
            else:
                if not c.retry_refused(response, attempt - 1, self.config):
                    c.raise_for(response)
                    return call.parse(c.body_of(response))
            await asyncio.sleep(self.config.delay(attempt, response))

    # -- jobs ---------------------------------------------------------------------

    async def embed(
        self,
        texts: list[str],
        *,
        store: bool = False,
        user_id: str | None = None,
        conversation_id: str | None = None,
        metadata: dict[str, Any] | None = None,
        callback_url: str | None = None,
        wait: float | None = None,
        idempotency_key: str | None = None,
    ) -> Job:
        """Submit an embed job; with ``wait``, the server holds the answer up to that many
        seconds (``Prefer: wait``) and the job comes back finished if it ended by then."""
        body = c.compact(
            {
                "texts": texts, "store": store, "user_id": user_id,
                "conversation_id": conversation_id, "metadata": metadata,
                "callback_url": callback_url, "encoding_format": ENCODING,
            }
        )  # fmt: skip
        return await self._submit("/v1/jobs/embed", body, wait, idempotency_key)

    async def summarize(
        self,
        text: str,
        *,
        max_length: int | None = None,
        min_length: int | None = None,
        method: str | None = None,
        callback_url: str | None = None,
        wait: float | None = None,
        idempotency_key: str | None = None,
    ) -> Job:
        body = c.compact(
            {
                "text": text, "max_length": max_length, "min_length": min_length,
                "method": method, "callback_url": callback_url,
            }
        )  # fmt: skip
        return await self._submit("/v1/jobs/summarize", body, wait, idempotency_key)

    async def conversation(
        self,
        conversation_id: str,
        messages: list[dict[str, Any]],
        *,
        user_id: str | None = None,
        summarize: bool | None = None,
        embed: bool | None = None,
        callback_url: str | None = None,
        wait: float | None = None,
        idempotency_key: str | None = None,
    ) -> Job:
        """Append ``messages`` (``{"role", "content"}``, optional ``id``) to a conversation,
        summarise it and index the new messages."""
        body = c.compact(
            {
                "conversation_id": conversation_id, "messages": messages, "user_id": user_id,
                "summarize": summarize, "embed": embed, "callback_url": callback_url,
            }
        )  # fmt: skip
        return await self._submit("/v1/jobs/conversation", body, wait, idempotency_key)

    async def submit_batch(
        self,
        jobs: list[dict[str, Any]],
        *,
        wait: float | None = None,
        idempotency_key: str | None = None,
    ) -> list[Job]:
        """Up to 100 jobs (each a dict with its ``type``) in one request, all or none."""
        return await self._send(
            c.Call(
                "POST", "/v1/jobs/batch", c.jobs, json={"jobs": jobs},
                headers=c.prefer_wait(wait), idempotency_key=idempotency_key,
                timeout=c.wait_timeout(self.config.timeout, wait),
            )
        )  # fmt: skip

    async def _submit(
        self, path: str, body: dict[str, Any], wait: float | None, key: str | None
    ) -> Job:
        return await self._send(
            c.Call(
                "POST", path, c.job, json=body, headers=c.prefer_wait(wait),
                idempotency_key=key, timeout=c.wait_timeout(self.config.timeout, wait),
            )
        )  # fmt: skip

    async def get_job(self, job_id: str) -> Job:
        return await self._send(
            c.Call("GET", f"/v1/jobs/{job_id}", c.job, params={"encoding_format": ENCODING})
        )

    async def wait(self, job_id: str, timeout: float | None = None) -> Job:
        """The job once it has ended, long-polling ``?wait=``; ``JobTimeout`` (carrying
        the job as last seen) after ``timeout`` seconds, if given."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = c.MAX_WAIT_SECONDS if deadline is None else deadline - time.monotonic()
            hold = max(1, min(c.MAX_WAIT_SECONDS, int(left)))
            params = {"wait": hold, "encoding_format": ENCODING}
            found = await self._send(
                c.Call(
                    "GET", f"/v1/jobs/{job_id}", c.job, params=params,
                    timeout=c.wait_timeout(self.config.timeout, hold),
                )
            )  # fmt: skip
            if found.done:
                return found
            if deadline is not None and time.monotonic() >= deadline:
                raise JobTimeout(found)

    async def jobs_page(
        self,
        *,
        status: str | None = None,
        type: str | None = None,
        cursor: str | None = None,
        limit: int | None = None,
    ) -> JobPage:
        params = {"status": status, "type": type, "cursor": cursor, "limit": limit}
        return await self._send(c.Call("GET", "/v1/jobs", JobPage.model_validate, params=params))

    async def list_jobs(
        self,
        *,
        status: str | None = None,
        type: str | None = None,
        page_size: int | None = None,
    ) -> AsyncIterator[Job]:
        """Every job, newest first (without results), fetching pages as it goes."""
        cursor = None
        while True:
            page = await self.jobs_page(status=status, type=type, cursor=cursor, limit=page_size)
            for item in page.jobs:
                yield item
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    async def cancel(self, job_id: str) -> Job:
        """Cancel a queued or running job; ``Conflict`` (``job_finished``) once it ended.
        Retried after a lost answer, it returns the job its first try canceled."""
        call = c.Call("POST", f"/v1/jobs/{job_id}/cancel", c.job)
        try:
            return await self._send(call)
        except Conflict as error:
            if c.canceled_by_an_earlier_try(call, error):
                return await self.get_job(job_id)
            raise

    async def delete_job(self, job_id: str) -> None:
        await self._send(c.Call("DELETE", f"/v1/jobs/{job_id}", lambda _: None))

    async def events(self, job_id: str, last_event_id: str | None = None) -> AsyncIterator[Job]:
        """The job at each change of status or progress, until it ends (server-sent events).
        It reconnects with ``Last-Event-ID`` when the server closes a long stream, and after
        a dropped connection, a 429 or a 503 with the same backoff as every other call."""
        parser = c.SSEParser()
        parser.last_id = last_event_id
        failures = 0
        while True:
            headers = {"Accept": "text/event-stream"}
            if parser.last_id:
                headers["Last-Event-ID"] = parser.last_id
            latest = refused = None
            try:
                async with self._http.stream(
                    "GET", f"/v1/jobs/{job_id}/events", headers=headers,
                    timeout=httpx.Timeout(self.config.timeout, read=None),
                ) as response:  # fmt: skip
                    if response.status_code == 204:
                        return
                    if response.status_code >= 400:
                        await response.aread()
                        if c.retry_refused(response, failures, self.config):
                            refused = response
                        else:
                            c.raise_for(response)
                    else:
                        async for line in response.aiter_lines():
                            event = parser.feed(line)
                            if event is not None:
                                failures = 0
                                latest = c.job(event[1])
                                yield latest
            except httpx.TransportError as exc:
                if not c.retryable(exc) or failures >= self.config.max_retries:
                    raise c.connection_failed(exc) from exc
                failures += 1
                await asyncio.sleep(self.config.delay(failures, None))
                continue
            if refused is not None:
                failures += 1
                await asyncio.sleep(self.config.delay(failures, refused))
            elif latest is not None and latest.done:
                return

    # -- memory -------------------------------------------------------------------

    async def search(
        self,
        query: str,
        *,
        top_k: int | None = None,
        user_id: str | None = None,
        conversation_id: str | None = None,
        kind: str | None = None,
    ) -> list[SearchHit]:
        where = c.compact({"user_id": user_id, "conversation_id": conversation_id, "kind": kind})
        body = c.compact({"query": query, "top_k": top_k, "filter": where})
        return await self._send(
            c.Call(
                "POST", "/v1/search",
                lambda b: [SearchHit.model_validate(hit) for hit in b["hits"]], json=body,
            )
        )  # fmt: skip

    async def get_conversation(
        self, conversation_id: str, *, after_seq: int | None = None, limit: int | None = None
    ) -> Conversation:
        return await self._send(
            c.Call(
                "GET", f"/v1/conversations/{conversation_id}", Conversation.model_validate,
                params={"after_seq": after_seq, "limit": limit},
            )
        )  # fmt: skip

    async def embeddings(
        self,
        input: str | list[str],
        *,
        model: str = "all-MiniLM-L6-v2",
        dimensions: int | None = None,
    ) -> Embeddings:
        """OpenAI's embeddings API, at once (no job); ``.vectors`` stacks them."""
        body = c.compact(
            {"input": input, "model": model, "dimensions": dimensions, "encoding_format": ENCODING}
        )
        return await self._send(c.Call("POST", "/v1/embeddings", c.embeddings, json=body))

    # -- data protection ------------------------------------------------------------

    async def erase_user(self, user_id: str) -> Erasure:
        """Erase everything of a user from every store; poll ``get_erasure`` for the end."""
        return await self._send(c.Call("DELETE", f"/v1/users/{user_id}", Erasure.model_validate))

    async def erase_conversation(self, conversation_id: str) -> Erasure:
        return await self._send(
            c.Call("DELETE", f"/v1/conversations/{conversation_id}", Erasure.model_validate)
        )

    async def get_erasure(self, erasure_id: str) -> Erasure:
        return await self._send(c.Call("GET", f"/v1/erasures/{erasure_id}", Erasure.model_validate))

    async def export_user(self, user_id: str) -> dict[str, Any]:
        """Everything stored for the user, as one JSON document."""
        return await self._send(c.Call("GET", f"/v1/users/{user_id}/export", dict, timeout=300))

    # -- operations -------------------------------------------------------------------

    async def queues(self) -> dict[str, Queue]:
        return await self._send(c.Call("GET", "/v1/queues", c.queues))

    async def audit_page(
        self,
        *,
        action: str | None = None,
        since: str | None = None,
        cursor: str | None = None,
        limit: int | None = None,
    ) -> AuditPage:
        params = {"action": action, "since": since, "cursor": cursor, "limit": limit}
        return await self._send(c.Call("GET", "/v1/audit", AuditPage.model_validate, params=params))

    async def audit(
        self, *, action: str | None = None, since: str | None = None
    ) -> AsyncIterator[AuditEntry]:
        """The tenant's audit log, newest first, every page."""
        cursor = None
        while True:
            page = await self.audit_page(action=action, since=since, cursor=cursor)
            for entry in page.entries:
                yield entry
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    async def webhook_secret(self) -> str:
        return await self._send(c.Call("GET", "/v1/webhooks/secret", lambda b: b["secret"]))
