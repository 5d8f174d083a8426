"""The Python client (``client/``) against the real gunicorn API and the shared workers:
every method, sync and async, the error mapping, retries (a connection dropped after
the request reached the API; a real 429 with ``Retry-After``) and page iteration."""

import asyncio
import json
import time
import uuid

import httpx
import numpy as np
import pytest
from convoq_client import (
    AsyncClient,
    Client,
    Conflict,
    ConnectionFailed,
    NotFound,
    Unauthorized,
    ValidationError,
)

from services.tenants import create_api_key
from tests.api_server import api_server
from tests.support import free_port

SLOW_TENANT = f"client-slow-{uuid.uuid4().hex[:8]}"
DIMENSIONS = 384
MESSAGES = [
    {"id": "m1", "role": "user", "content": "My parcel to Bern has not arrived yet."},
    {"id": "m2", "role": "assistant", "content": "Sorry! The parcel left Zurich on Monday."},
]


@pytest.fixture(scope="module")
def slow_key(settings, stack):
    """A tenant limited to 2 requests a second by the API's RATE_LIMIT_TENANTS."""
    return create_api_key(settings.database_url, SLOW_TENANT, actor="test")[1]


@pytest.fixture(scope="module")
def api(settings, stack, gpu_worker, cpu_worker, slow_key, tmp_path_factory):
    limits = json.dumps({SLOW_TENANT: "2/second"})
    with api_server(settings, tmp_path_factory.mktemp("api"), RATE_LIMIT_TENANTS=limits) as server:
        yield server


def key_of(make_tenant) -> str:
    return make_tenant()["Authorization"].split()[1]


class Recorder(httpx.BaseTransport):
    """Passes requests through to the real transport, recording each and its status;
    ``drop_first`` raises a dropped connection *after* the first POST reached the API
    (the fault injection: the client never sees the answer)."""

    def __init__(self, drop_first: bool = False) -> None:
        self.inner = httpx.HTTPTransport()
        self.drop_first = drop_first
        self.seen: list[tuple[str, str, int, str | None]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        response.read()
        key = request.headers.get("Idempotency-Key")
        self.seen.append((request.method, request.url.path, response.status_code, key))
        if self.drop_first and request.method == "POST":
            self.drop_first = False
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.")
        return response


def test_sync_client_every_method(api, make_tenant):
    user, conversation = f"u-{uuid.uuid4().hex[:8]}", f"c-{uuid.uuid4().hex[:8]}"
    with Client(api.base_url, key_of(make_tenant), timeout=60) as convoq:
        embedded = convoq.embed(["How do I reset my password?", "Grüezi"], wait=30)
        assert embedded.status == "succeeded", embedded
        assert isinstance(embedded.vectors, np.ndarray)
        assert embedded.vectors.shape == (2, DIMENSIONS)
        assert embedded.vectors.dtype == np.float32
        assert np.allclose(np.linalg.norm(embedded.vectors, axis=1), 1, atol=1e-3)
        assert np.array_equal(convoq.get_job(embedded.id).vectors, embedded.vectors)

        summary = convoq.summarize(
            "The parcel left Zurich on Monday. It reached Bern on Tuesday. " * 3,
            method="extractive", max_length=40, min_length=5, wait=30,
        )  # fmt: skip
        assert summary.status == "succeeded"
        assert summary.result["text"]

        queued = convoq.conversation(conversation, MESSAGES, user_id=user)
        assert queued.type == "conversation"
        events = list(convoq.events(queued.id))
        assert events[-1].status == "succeeded"
        assert events[-1].id == queued.id
        assert [e.status for e in events].count("succeeded") == 1
        assert convoq.wait(queued.id, timeout=30).status == "succeeded"

        stored = convoq.get_conversation(conversation)
        assert [m.content for m in stored.messages] == [m["content"] for m in MESSAGES]
        assert stored.user_id == user
        hits = convoq.search("parcel Bern", top_k=5, conversation_id=conversation)
        assert hits
        assert all(hit.conversation_id == conversation for hit in hits)

        batch = convoq.submit_batch(
            [{"type": "embed", "texts": [f"text {i}"]} for i in range(3)], wait=30
        )
        assert [job.status for job in batch] == ["succeeded"] * 3
        assert all(job.vectors.shape == (1, DIMENSIONS) for job in batch)

        # Six jobs in pages of two: the generator follows next_cursor through all three.
        listed = [job.id for job in convoq.list_jobs(page_size=2)]
        made = {embedded.id, summary.id, queued.id, *(job.id for job in batch)}
        assert len(listed) == len(made)
        assert set(listed) == made
        assert convoq.jobs_page(limit=2).next_cursor is not None
        assert {job.id for job in convoq.list_jobs(type="embed")} == {
            embedded.id, *(job.id for job in batch)
        }  # fmt: skip

        with pytest.raises(Conflict) as finished:
            convoq.cancel(embedded.id)
        assert finished.value.status == 409
        assert finished.value.code == "job_finished"
        victim = convoq.submit_batch(
            [{"type": "embed", "texts": ["filler " * 50] * 64} for _ in range(4)]
        )[-1]
        try:
            assert convoq.cancel(victim.id).status == "canceled"
        except Conflict:  # the worker was quicker: it must have ended, then
            assert convoq.get_job(victim.id).done
        convoq.delete_job(victim.id)
        with pytest.raises(NotFound) as gone:
            convoq.get_job(victim.id)
        assert gone.value.status == 404
        assert gone.value.code

        openai_like = convoq.embeddings(["a", "b", "c"])
        assert openai_like.vectors.shape == (3, DIMENSIONS)
        assert openai_like.usage.total_tokens > 0

        queues = convoq.queues()
        assert {"gpu", "cpu"} <= set(queues)
        assert queues["gpu"].workers >= 1

        exported = convoq.export_user(user)
        assert conversation in json.dumps(exported)
        assert any(entry.action == "user.export" for entry in convoq.audit())
        assert convoq.webhook_secret().startswith("whsec_")

        erasure = convoq.erase_conversation(conversation)
        assert erasure.target == "conversation"
        assert erasure.target_id == conversation
        deadline = time.monotonic() + 60
        while (erasure := convoq.get_erasure(erasure.id)).status != "succeeded":
            assert erasure.status != "failed", erasure
            assert time.monotonic() < deadline, erasure
            time.sleep(0.2)
        with pytest.raises(NotFound):
            convoq.get_conversation(conversation)
        assert convoq.erase_user(user).target == "user"


def test_async_client_every_method(api, make_tenant):
    user, conversation = f"u-{uuid.uuid4().hex[:8]}", f"c-{uuid.uuid4().hex[:8]}"

    async def main() -> None:
        async with AsyncClient(api.base_url, key_of(make_tenant), timeout=60) as convoq:
            embedded, summary, queued = await asyncio.gather(
                convoq.embed(["one", "two"], store=True, user_id=user, wait=30),
                convoq.summarize("Bern is the capital. Zurich is larger.", method="extractive"),
                convoq.conversation(conversation, MESSAGES, user_id=user),
            )
            assert embedded.status == "succeeded"
            assert embedded.vectors.shape == (2, DIMENSIONS)
            assert (await convoq.get_job(embedded.id)).id == embedded.id
            assert (await convoq.wait(summary.id, timeout=30)).status == "succeeded"
            statuses = [job.status async for job in convoq.events(queued.id)]
            assert statuses[-1] == "succeeded"
            batch = await convoq.submit_batch([{"type": "embed", "texts": ["x"]}] * 2)
            listed = [job.id async for job in convoq.list_jobs(page_size=2)]
            assert set(listed) == {embedded.id, summary.id, queued.id, *(j.id for j in batch)}
            page = await convoq.jobs_page(limit=1)
            assert len(page.jobs) == 1
            assert page.next_cursor

            last = batch[-1]
            try:
                assert (await convoq.cancel(last.id)).status == "canceled"
            except Conflict:
                assert (await convoq.get_job(last.id)).done
            await convoq.delete_job(last.id)
            with pytest.raises(NotFound):
                await convoq.get_job(last.id)

            assert (await convoq.get_conversation(conversation)).messages[0].seq >= 1
            hits = await convoq.search("parcel", top_k=3, user_id=user)
            assert hits
            assert all(hit.user_id == user for hit in hits)
            assert (await convoq.embeddings("hello")).vectors.shape == (1, DIMENSIONS)
            assert (await convoq.queues())["cpu"].workers >= 1
            assert "conversations" in json.dumps(await convoq.export_user(user))
            assert [e.action async for e in convoq.audit(action="user.export")]
            assert (await convoq.webhook_secret()).startswith("whsec_")
            erasure = await convoq.erase_conversation(conversation)
            assert (await convoq.get_erasure(erasure.id)).id == erasure.id
            assert (await convoq.erase_user(user)).target_id == user

    asyncio.run(main())


def test_errors_carry_the_api_code(api, make_tenant):
    with Client(api.base_url, "cvq_not-a-key") as stranger, pytest.raises(Unauthorized) as denied:
        stranger.queues()
    assert denied.value.status == 401
    assert denied.value.code
    with Client(api.base_url, key_of(make_tenant)) as convoq:
        with pytest.raises(NotFound) as missing:
            convoq.get_job(str(uuid.uuid4()))
        assert missing.value.status == 404
        assert missing.value.message
        with pytest.raises(ValidationError) as invalid:
            convoq.embed([])
        assert invalid.value.status == 422
        assert invalid.value.code
        assert any("texts" in str(detail) for detail in invalid.value.details)

    async def async_missing() -> None:
        async with AsyncClient(api.base_url, key_of(make_tenant)) as convoq:
            with pytest.raises(NotFound):
                await convoq.get_erasure(str(uuid.uuid4()))

    asyncio.run(async_missing())

    nowhere = f"http://127.0.0.1:{free_port()}"
    with Client(nowhere, "k", max_retries=2, backoff=0.01) as lost, pytest.raises(ConnectionFailed):
        lost.queues()


def test_retried_post_after_dropped_connection_makes_one_job(api, make_tenant):
    transport = Recorder(drop_first=True)
    with Client(api.base_url, key_of(make_tenant), transport=transport, backoff=0.05) as convoq:
        job = convoq.embed(["sent once, answered twice"])
        posts = [seen for seen in transport.seen if seen[0] == "POST"]
        assert [status for _, _, status, _ in posts] == [202, 200]  # then the replay
        assert posts[0][3]
        assert posts[0][3] == posts[1][3]
        assert [listed.id for listed in convoq.list_jobs()] == [job.id]


def test_retried_cancel_after_dropped_answer_returns_the_canceled_job(api, make_tenant):
    key = key_of(make_tenant)
    with Client(api.base_url, key, timeout=60) as plain:
        victim = plain.submit_batch(
            [{"type": "embed", "texts": ["backlog " * 50] * 64} for _ in range(4)]
        )[-1]
    transport = Recorder(drop_first=True)
    with Client(api.base_url, key, transport=transport, backoff=0.05) as convoq:
        try:
            canceled = convoq.cancel(victim.id)
        except Conflict as finished:
            canceled = finished
        if isinstance(canceled, Conflict):  # the workers were quicker than the first try
            assert canceled.details[0]["status"] == "succeeded"
            return
        assert canceled.status == "canceled"
        assert canceled.id == victim.id
        cancels = [status for method, path, status, _ in transport.seen if path.endswith("cancel")]
        assert cancels == [200, 409]  # the first try canceled it; its answer was lost

        with pytest.raises(Conflict):  # not retried: a cancel of an ended job still fails
            convoq.cancel(victim.id)


class FlakyEvents(httpx.BaseTransport):
    """Fault injection for the event stream: its first request never connects, its second
    is refused with 503 and ``Retry-After: 0``; then requests go through to the API."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.stream_requests = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/events"):
            self.stream_requests += 1
            if self.stream_requests == 1:
                raise httpx.ConnectError("connection refused", request=request)
            if self.stream_requests == 2:
                body = {"error": {"code": "unavailable", "message": "restarting"}}
                return httpx.Response(503, json=body, headers={"Retry-After": "0"})
        return self.inner.handle_request(request)


class AsyncFlakyEvents(httpx.AsyncBaseTransport):
    def __init__(self) -> None:
        self.sync = FlakyEvents()
        self.inner = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/events") and self.sync.stream_requests < 2:
            return self.sync.handle_request(request)
        return await self.inner.handle_async_request(request)


def test_event_stream_reconnects_after_refusals(api, make_tenant):
    key = key_of(make_tenant)
    flaky = FlakyEvents()
    with Client(api.base_url, key, transport=flaky, backoff=0.01, timeout=60) as convoq:
        job = convoq.embed(["streamed after two failed connects"])
        events = list(convoq.events(job.id))
    assert flaky.stream_requests >= 3
    assert events[-1].status == "succeeded"
    assert events[-1].id == job.id

    async def streamed() -> list:
        flaky = AsyncFlakyEvents()
        async with AsyncClient(
            api.base_url, key, transport=flaky, backoff=0.01, timeout=60
        ) as convoq:
            job = await convoq.embed(["async, streamed after two failed connects"])
            return [event async for event in convoq.events(job.id)], flaky.sync.stream_requests

    async_events, requests = asyncio.run(streamed())
    assert requests >= 2
    assert async_events[-1].status == "succeeded"

    no_retries = Client(api.base_url, key, transport=FlakyEvents(), max_retries=0)
    with no_retries, pytest.raises(ConnectionFailed):  # the error, not a hang
        list(no_retries.events(job.id))


def test_retries_a_real_429_after_retry_after(api, slow_key):
    # Five quick requests at 2 a second fall in at most two windows: one must be refused.
    transport = Recorder()
    with Client(api.base_url, slow_key, transport=transport, backoff=0.05) as convoq:
        started = time.monotonic()
        for _ in range(5):
            assert "gpu" in convoq.queues()
        elapsed = time.monotonic() - started
    statuses = [status for _, _, status, _ in transport.seen]
    assert 429 in statuses, statuses
    assert statuses.count(200) == 5
    # Retry-After is at least 1 s; the backoff alone (0.05 s) would have come back sooner.
    assert elapsed >= 1.0, statuses
