"""Job event streams (``GET /v1/jobs/<id>/events``) and webhooks (``callback_url``),
against a real cpu worker and a real HTTP receiver.

The jobs are conversation jobs without summary or embedding: the cpu pool runs
them alone (persist, then store), so no model is loaded.
"""

import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest
import redis
import requests
from standardwebhooks import Webhook

from api import create_app
from api.events import event_key, format_key, parse_key
from services import webhooks
from tests.api_server import api_server
from tests.support import PrivateDb, WorkerProcess, private_broker, queue_length, wait_for

pytestmark = pytest.mark.timeout(120)

LOCAL = "127.0.0.1"


def conversation(**extra) -> dict:
    return {
        "conversation_id": f"ev-{uuid.uuid4().hex[:10]}",
        "messages": [{"role": "user", "content": "hello there"}],
        "summarize": False,
        "embed": False,
        **extra,
    }


def submit(client, headers, **extra) -> dict:
    response = client.post("/v1/jobs/conversation", json=conversation(**extra), headers=headers)
    assert response.status_code == 202, response.get_json()
    return response.get_json()


def end(client, job_id: str) -> None:
    """End a job as a worker that fails it would (through the API's own JobStore)."""
    store = client.application.extensions["convoq.jobs"]
    assert store.fail_many([uuid.UUID(job_id)], "internal_error", "ended by the test")


class Events:
    """Reads server-sent events from a streamed test-client response."""

    def __init__(self, response) -> None:
        assert response.status_code == 200, response.get_data(as_text=True)
        assert response.mimetype == "text/event-stream"
        self._chunks = iter(response.response)
        self._buffer = ""
        self.response = response

    def __iter__(self) -> Iterator[dict]:
        while True:
            while "\n\n" not in self._buffer:
                chunk = next(self._chunks, None)
                if chunk is None:
                    return
                self._buffer += chunk.decode() if isinstance(chunk, bytes) else chunk
            block, self._buffer = self._buffer.split("\n\n", 1)
            fields = dict(
                line.split(": ", 1) for line in block.splitlines() if not line.startswith(":")
            )
            if "event" in fields:
                meta = {"event_id": fields["id"], "event": fields["event"]}
                yield {**json.loads(fields["data"]), **meta}

    def all(self) -> list[dict]:
        try:
            return list(self)
        finally:
            self.response.close()


def stream(client, headers, job_id: str, last: str | None = None):
    extra = {"Last-Event-ID": last} if last else {}
    return client.get(f"/v1/jobs/{job_id}/events", headers={**headers, **extra}, buffered=False)


def key(event_id: str) -> tuple[int, ...]:
    return tuple(int(part) for part in event_id.split("."))


# -- a receiver ------------------------------------------------------------------------


class Receiver:
    """An HTTP server in a thread that records each POST and answers the next status."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = list(statuses)
        self.requests: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append((dict(self.headers), body))
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer((LOCAL, 0), Handler)
        self.url = f"http://{LOCAL}:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# -- fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def own(settings, stack, worker_env, tmp_path_factory):
    """An API and a cpu worker of their own (private broker), the worker started on
    first ``start()``; webhooks to 127.0.0.1 allowed, retried after 0.2 s, 0.4 s."""
    with private_broker(settings.redis_url, PrivateDb.OWN_WORKERS) as url:
        app = create_app(
            settings.model_copy(update={"redis_url": url, "webhook_allowed_hosts": [LOCAL]})
        )
        env = {
            **worker_env,
            "REDIS_URL": url,
            "WEBHOOK_ALLOWED_HOSTS": LOCAL,
            "WEBHOOK_BACKOFF_SECONDS": "0.2",
            "WEBHOOK_MAX_ATTEMPTS": "3",
        }
        worker = WorkerProcess(
            env, tmp_path_factory.mktemp("events"), queue="cpu", pool="prefork", concurrency=1
        )

        class Own:
            client = app.test_client()

            @staticmethod
            def start() -> None:
                if worker.process is None:
                    worker.start()

        try:
            yield Own
        finally:
            worker.stop()


@pytest.fixture
def idle(settings, stack):
    """An API whose jobs no worker runs (they stay queued)."""
    with private_broker(settings.redis_url, PrivateDb.IDLE) as url:
        yield (
            url,
            create_app(
                settings.model_copy(update={"redis_url": url, "webhook_allowed_hosts": [LOCAL]})
            ).test_client(),
        )


# -- event streams ----------------------------------------------------------------------


def test_events_follow_the_job_in_order_and_end_with_it(own, headers):
    job = submit(own.client, headers)
    events = Events(stream(own.client, headers, job["id"]))
    seen = iter(events)
    first = next(seen)
    assert (first["event"], first["event_id"], first["status"]) == ("queued", "0.2.0", "queued")
    own.start()
    rest = list(seen)
    events.response.close()
    names = [event["event"] for event in rest]
    # Events are the row's states as the stream reads them: one that lasted less
    # than a read (running, on a loaded machine) may be passed over, never reordered.
    assert names[-1] == "succeeded", names
    assert names[:-1] == sorted(names[:-1], key=lambda name: name != "running"), names
    assert set(names[:-1]) <= {"running", "progress"}, names
    assert names.count("running") <= 1, names
    ids = [first["event_id"], *(event["event_id"] for event in rest)]
    assert [key(i) for i in ids] == sorted({key(i) for i in ids}), ids  # strictly increasing
    assert [event["progress"]["done"] for event in rest] == sorted(
        event["progress"]["done"] for event in rest
    )
    final = rest[-1]
    body = own.client.get(f"/v1/jobs/{job['id']}", headers=headers).get_json()
    assert {k: v for k, v in final.items() if k not in ("event_id", "event")} == body
    assert final["result"]["conversation_id"] == body["result"]["conversation_id"]

    # Reconnecting after an earlier event gets only the row's state now: the final one.
    after_first = Events(stream(own.client, headers, job["id"], last=first["event_id"])).all()
    assert [event["event_id"] for event in after_first] == [final["event_id"]]
    # After the final event there is nothing more: 204 stops an EventSource.
    assert stream(own.client, headers, job["id"], last=final["event_id"]).status_code == 204


def test_a_finished_jobs_stream_answers_at_once(own, headers):
    own.start()
    job = submit(own.client, headers)
    wait_for(
        lambda: (
            own.client.get(f"/v1/jobs/{job['id']}", headers=headers).get_json()["status"]
            == "succeeded"
        ),
        30,
        "the job to succeed",
    )
    started = time.monotonic()
    events = Events(stream(own.client, headers, job["id"])).all()
    assert time.monotonic() - started < 5
    assert [event["event"] for event in events] == ["succeeded"]
    assert events[0]["progress"] == {"done": 2, "total": 2}


def test_reconnecting_to_a_queued_job_sends_only_its_next_change(idle, headers):
    _, client = idle
    job = submit(client, headers)
    response = stream(client, headers, job["id"], last="0.2.0")

    def end_soon() -> None:
        time.sleep(0.5)
        end(client, job["id"])

    threading.Thread(target=end_soon, daemon=True).start()
    started = time.monotonic()
    events = Events(response).all()
    assert [(event["event"], event["status"]) for event in events] == [("failed", "failed")]
    assert events[0]["error"]["code"] == "internal_error"
    assert key(events[0]["event_id"]) > key("0.2.0")
    assert time.monotonic() - started < 10  # woken by the announcement, not a keepalive


def test_another_tenants_job_and_an_unknown_one_are_404(idle, headers, make_tenant):
    _, client = idle
    job = submit(client, headers)
    for job_id, who in ((job["id"], make_tenant()), (str(uuid.uuid4()), headers), ("x", headers)):
        response = client.get(f"/v1/jobs/{job_id}/events", headers=who)
        assert response.status_code == 404
        # A malformed id matches no job route at all.
        expected = "not_found" if job_id == "x" else "job_not_found"
        assert response.get_json()["error"]["code"] == expected


def test_200_open_streams_do_not_slow_healthz(settings, idle, headers, tmp_path):
    url, client = idle
    job = submit(client, headers)
    with api_server(settings.model_copy(update={"redis_url": url}), tmp_path) as api:
        sockets = []
        try:
            for _ in range(200):
                sock = socket.create_connection(api.address, timeout=10)
                sock.sendall(
                    f"GET /v1/jobs/{job['id']}/events HTTP/1.1\r\nHost: x\r\n"
                    f"Authorization: {headers['Authorization']}\r\n\r\n".encode()
                )
                sockets.append(sock)
            for sock in sockets[:: len(sockets) // 10]:
                assert b"event: queued" in _read_until(sock, b"event: queued")
            slowest = 0.0
            for _ in range(20):
                started = time.monotonic()
                assert requests.get(f"{api.base_url}/healthz", timeout=10).status_code == 200
                slowest = max(slowest, time.monotonic() - started)
            assert slowest < 1.0, slowest
        finally:
            for sock in sockets:
                sock.close()


def _read_until(sock: socket.socket, marker: bytes) -> bytes:
    data = b""
    while marker not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


# -- webhooks ----------------------------------------------------------------------------


def test_webhook_is_signed_retried_and_every_attempt_recorded(own, headers):
    own.start()
    receiver = Receiver([500, 500, 200])
    try:
        job = submit(own.client, headers, callback_url=receiver.url)
        assert job["webhook"] == {"url": receiver.url, "status": "pending", "attempts": []}

        def delivered() -> dict | None:
            body = own.client.get(f"/v1/jobs/{job['id']}", headers=headers).get_json()
            return body if body["webhook"]["status"] == "delivered" else None

        final = wait_for(delivered, 60, "the webhook to be delivered", interval=0.2)
    finally:
        receiver.close()
    attempts = final["webhook"]["attempts"]
    assert [(a["attempt"], a["status_code"], a["error"]) for a in attempts] == [
        (1, 500, None),
        (2, 500, None),
        (3, 200, None),
    ]
    assert len(receiver.requests) == 3
    secret = own.client.get("/v1/webhooks/secret", headers=headers).get_json()["secret"]
    assert secret.startswith("whsec_")
    ids = set()
    for sent_headers, body in receiver.requests:
        payload = Webhook(secret).verify(body, sent_headers)
        assert payload["type"] == "job.succeeded"
        assert payload["data"]["id"] == job["id"]
        assert payload["data"]["status"] == "succeeded"
        ids.add(sent_headers["webhook-id"])
    assert len(ids) == 1  # the same message, attempted three times
    forged = {**receiver.requests[0][0], "webhook-signature": "v1,AAAA"}
    with pytest.raises(Exception, match="signature"):
        Webhook(secret).verify(receiver.requests[0][1], forged)


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.1/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://localhost/hook",
        "http://[::1]:8080/hook",
        "http://192.168.1.20/hook",
        "https://[::ffff:127.0.0.1]/hook",
        "http://0.0.0.0/hook",
    ],
)
def test_a_private_callback_url_is_refused_naming_the_field(idle, headers, url):
    _, client = idle
    response = client.post(
        "/v1/jobs/conversation", json=conversation(callback_url=url), headers=headers
    )
    assert response.status_code == 422, response.get_json()
    assert response.get_json()["error"]["details"][0]["field"] == "callback_url"
    batch = client.post(
        "/v1/jobs/batch",
        json={"jobs": [{"type": "summarize", "text": "Hi.", "callback_url": url}]},
        headers=headers,
    )
    assert batch.status_code == 422
    assert batch.get_json()["error"]["details"][0]["field"] == "jobs.0.callback_url"


@pytest.mark.parametrize("url", ["ftp://example.com/hook", "file:///etc/passwd", "hook"])
def test_a_callback_url_that_is_not_http_is_refused(idle, headers, url):
    _, client = idle
    response = client.post(
        "/v1/jobs/embed", json={"texts": ["a"], "callback_url": url}, headers=headers
    )
    assert response.status_code == 422
    assert "callback_url" in response.get_json()["error"]["details"][0]["field"]


def test_an_allow_listed_host_is_accepted(idle, headers):
    _, client = idle
    job = submit(client, headers, callback_url=f"http://{LOCAL}:9/hook")
    assert job["webhook"]["url"] == f"http://{LOCAL}:9/hook"


def test_the_secret_is_made_once_and_rotated(idle, headers, make_tenant):
    _, client = idle
    first = client.get("/v1/webhooks/secret", headers=headers).get_json()["secret"]
    assert client.get("/v1/webhooks/secret", headers=headers).get_json()["secret"] == first
    rotated = client.post("/v1/webhooks/secret/rotate", headers=headers).get_json()["secret"]
    assert rotated != first
    assert rotated.startswith("whsec_")
    assert client.get("/v1/webhooks/secret", headers=headers).get_json()["secret"] == rotated
    other = client.get("/v1/webhooks/secret", headers=make_tenant()).get_json()["secret"]
    assert other not in (first, rotated)
    Webhook(rotated)  # a secret the library reads


def test_delivery_connects_to_the_address_it_checked(monkeypatch):
    """DNS rebinding: the POST goes to the address the check saw, whatever the name
    resolves to afterwards (here: nothing, ``.invalid`` never resolves)."""
    monkeypatch.setattr(webhooks, "refused_address", lambda address: False)
    receiver = Receiver([204])
    port = receiver.url.rsplit(":", 1)[1].split("/")[0]
    try:
        attempt = webhooks.post_once(
            f"http://hooks.invalid:{port}/hook",
            webhooks.new_secret(),
            uuid.uuid4(),
            "{}",
            number=1,
            allowed_hosts=[],
            timeout=5,
            resolve=lambda host, port: [LOCAL],
        )
    finally:
        receiver.close()
    assert (attempt.status_code, attempt.error) == (204, None)
    sent = {name.lower(): value for name, value in receiver.requests[0][0].items()}
    assert sent["host"] == f"hooks.invalid:{port}"


def test_a_host_that_resolves_privately_at_delivery_is_not_called():
    attempt = webhooks.post_once(
        "https://hooks.example.com/hook",
        webhooks.new_secret(),
        uuid.uuid4(),
        "{}",
        number=2,
        allowed_hosts=[],
        timeout=5,
        resolve=lambda host, port: ["93.184.215.14", "10.0.0.7"],
    )
    assert attempt.refused
    assert attempt.status_code is None
    assert "10.0.0.7" in attempt.error


def test_only_jobs_with_a_callback_url_queue_a_delivery_when_they_end(idle, headers):
    url, client = idle
    broker = redis.Redis.from_url(url)
    plain = submit(client, headers)
    end(client, plain["id"])
    assert queue_length(broker, "cpu") == 1  # its persist task only
    hooked = submit(client, headers, callback_url=f"http://{LOCAL}:9/hook")
    end(client, hooked["id"])
    failed = client.get(f"/v1/jobs/{hooked['id']}", headers=headers).get_json()
    assert (failed["status"], failed["webhook"]["status"]) == ("failed", "pending")
    assert queue_length(broker, "cpu") == 3  # two persist tasks and one delivery


def _row(status: str, attempts: int, done: int = 0) -> SimpleNamespace:
    return SimpleNamespace(status=status, attempts=attempts, progress_done=done)


def test_event_ids_grow_along_a_jobs_life_a_requeue_included():
    life = [
        _row("queued", 0),
        _row("running", 1, 0),
        _row("running", 1, 1),
        _row("queued", 1, 1),  # put back by the recovery sweep after its worker died
        _row("running", 2, 0),
        _row("running", 2, 1),
        _row("succeeded", 2, 2),
    ]
    keys = [event_key(row) for row in life]
    assert keys == sorted(set(keys)), keys
    assert parse_key(format_key(keys[-1])) == keys[-1]
    assert event_key(_row("canceled", 0)) > event_key(_row("queued", 0))
    assert event_key(_row("canceled", 1, 1)) > event_key(_row("queued", 1, 1))
    for garbage in (None, "", "1.2", "a.b.c", "1.2.3.4", "-1.2.3", "\u0661.2.3"):
        assert parse_key(garbage) is None


def test_an_unreadable_last_event_id_gets_the_current_state(idle, headers):
    _, client = idle
    job = submit(client, headers)
    response = stream(client, headers, job["id"], last="not-one-of-ours")
    end(client, job["id"])
    events = Events(response).all()
    assert [event["event"] for event in events] in (["queued", "failed"], ["failed"])


def test_a_stalled_delivery_is_found_and_sent_again(settings, idle, headers):
    url, client = idle
    ended = submit(client, headers, callback_url=f"http://{LOCAL}:9/hook")
    still_queued = submit(client, headers, callback_url=f"http://{LOCAL}:9/hook")
    end(client, ended["id"])

    def stalled(quiet_for: float) -> set[str]:
        found = webhooks.stalled_deliveries(settings.database_url, quiet_for=quiet_for, limit=50)
        return {str(row.id) for row in found}

    assert ended["id"] in stalled(0), "a finished job with no attempt is stalled"
    assert still_queued["id"] not in stalled(0), "a job still running has nothing to deliver"
    assert ended["id"] not in stalled(3600), "a delivery that may still come is left alone"

    broker = redis.Redis.from_url(url)
    before = queue_length(broker, "cpu")
    app = client.application.extensions["celery"]
    webhooks.WebhookSender(app)(
        webhooks.stalled_deliveries(settings.database_url, quiet_for=0, limit=50)
    )
    assert queue_length(broker, "cpu") > before, "the stalled delivery was queued again"

    attempt = webhooks.Attempt(number=1, at=datetime.now(UTC), status_code=200)
    webhooks.record_attempt(settings.database_url, uuid.UUID(ended["id"]), attempt, "delivered")
    assert ended["id"] not in stalled(0), "a delivered webhook is done"
