"""Sync wait: ``Prefer: wait=N`` on submits and ``?wait=N`` long polls, woken by
notifications, and the serving model that lets hundreds of them wait at once."""

import json
import socket
import subprocess
import sys
import threading
import time
import uuid

import pytest
import requests

from api import create_app
from api.waiting import MAX_WAIT_SECONDS, preferences, preferred_wait
from tests.api_server import api_server
from tests.support import ROOT, PrivateDb, private_broker, subprocess_env, wait_for

# A Redis database no worker consumes: jobs queued there stay queued.
CONCURRENT_WAITS = 500
HEALTH_PROBES = 200
MAX_WORKER_RSS_MIB = 150

EMBED = ("/v1/jobs/embed", {"texts": ["How do I reset my password?"]})
SUMMARIZE = ("/v1/jobs/summarize", {"text": "The invoice is due. It is Friday. Pay it."})
CONVERSATION = (
    "/v1/jobs/conversation",
    {"conversation_id": "wait-c1", "messages": [{"role": "user", "content": "hello"}]},
)


@pytest.fixture
def idle_broker(settings, stack):
    with private_broker(settings.redis_url, PrivateDb.IDLE) as url:
        yield url


@pytest.fixture
def idle_client(settings, idle_broker):
    """A client of an API whose jobs no worker runs."""
    return create_app(settings.model_copy(update={"redis_url": idle_broker})).test_client()


def timed(call):
    started = time.perf_counter()
    response = call()
    return response, time.perf_counter() - started


# -- the Prefer header ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "wait"),
    [
        (["wait=5"], 5),
        (["WAIT=5"], 5),
        (["wait = 5"], 5),
        (['wait="5"'], 5),
        (["respond-async, wait=7"], 7),
        (["respond-async,wait=7;foo=bar"], 7),
        (['handling=lenient; x="a,b;wait=1", wait=9'], 9),
        (["respond-async", "wait=3"], 3),
        (["wait=4, wait=8"], 4),
        ([" , ,wait=2,"], 2),
        (["wait=60"], 60),
        (["wait=61"], MAX_WAIT_SECONDS),
        (["wait=99999999999999999999999"], MAX_WAIT_SECONDS),
        (["wait=0"], None),
        (["wait=abc"], None),
        (["wait=1.5"], None),
        (["wait=-1"], None),
        (["wait=+1"], None),
        (["wait="], None),
        (["wait"], None),
        (["wait=\u0661"], None),  # an Arabic-Indic one: not an ASCII digit
        (['wait="5'], None),
        (["respond-async"], None),
        (["return=minimal"], None),
        ([""], None),
        ([], None),
    ],
)
def test_prefer_wait_is_parsed_as_rfc_7240_says(fields, wait):
    assert preferred_wait(fields) == wait


def test_preferences_keep_the_first_instance_and_drop_parameters():
    assert preferences(['Return=Minimal; a=b, return=representation, x="q \\" ,y"']) == {
        "return": "Minimal",
        "x": 'q " ,y',
    }


# -- Prefer: wait on submits ------------------------------------------------------------


def test_prefer_wait_returns_the_finished_job_in_one_request(client, headers, gpu_worker):
    response = client.post(
        "/v1/jobs/embed",
        json={"texts": ["How do I reset my password?", "The invoice is due on Friday."]},
        headers={**headers, "Prefer": "wait=30"},
    )
    assert response.status_code == 200, response.get_json()
    assert response.headers["Preference-Applied"] == "wait=30"
    assert response.headers["Vary"] == "Prefer"
    assert "Location" not in response.headers
    job = response.get_json()
    assert job["status"] == "succeeded"
    assert job["progress"] == {"done": 2, "total": 2}
    vectors = job["result"]["vectors"]
    assert [len(vector) for vector in vectors] == [384, 384]
    assert all(isinstance(value, float) for value in vectors[0])


def test_a_wait_over_60_is_clamped_to_60(client, headers, gpu_worker):
    response = client.post(
        SUMMARIZE[0], json=SUMMARIZE[1], headers={**headers, "Prefer": "respond-async, WAIT = 600"}
    )
    assert response.status_code == 200, response.get_json()
    assert response.headers["Preference-Applied"] == f"wait={MAX_WAIT_SECONDS}"
    assert response.get_json()["status"] == "succeeded"


@pytest.mark.parametrize(("path", "body"), [EMBED, SUMMARIZE, CONVERSATION])
def test_a_job_longer_than_the_wait_answers_202_at_the_wait(idle_client, headers, path, body):
    response, elapsed = timed(
        lambda: idle_client.post(path, json=body, headers={**headers, "Prefer": "wait=1"})
    )
    assert response.status_code == 202, response.get_json()
    assert 0.95 <= elapsed < 5, elapsed
    assert response.headers["Preference-Applied"] == "wait=1"
    assert response.headers["Vary"] == "Prefer"
    job = response.get_json()
    assert job["status"] == "queued"
    assert response.headers["Location"] == job["links"]["self"] == f"/v1/jobs/{job['id']}"


@pytest.mark.parametrize("prefer", ["wait=5.5", "wait=abc", "wait", "respond-async", "wait=0"])
def test_a_wait_that_cannot_be_read_is_ignored(idle_client, headers, prefer):
    response, elapsed = timed(
        lambda: idle_client.post(EMBED[0], json=EMBED[1], headers={**headers, "Prefer": prefer})
    )
    assert response.status_code == 202
    assert elapsed < 4, elapsed  # "wait=5.5" read as 5 would have held it 5 s
    assert "Preference-Applied" not in response.headers
    assert response.headers["Vary"] == "Prefer"


def test_without_prefer_a_submit_answers_at_once(idle_client, headers):
    response = idle_client.post(EMBED[0], json=EMBED[1], headers=headers)
    assert response.status_code == 202
    assert "Preference-Applied" not in response.headers
    assert response.headers["Vary"] == "Prefer"


# -- GET /v1/jobs/<id>?wait=N -----------------------------------------------------------


def submit(client, headers, path_body=EMBED):
    response = client.post(path_body[0], json=path_body[1], headers=headers)
    assert response.status_code == 202, response.get_json()
    return response.get_json()


def test_long_poll_answers_200_with_the_state_at_the_deadline(idle_client, headers):
    job = submit(idle_client, headers)
    response, elapsed = timed(
        lambda: idle_client.get(f"/v1/jobs/{job['id']}?wait=1", headers=headers)
    )
    assert response.status_code == 200
    assert 0.95 <= elapsed < 5, elapsed
    assert response.get_json()["status"] == "queued"
    assert "Preference-Applied" not in response.headers


def test_long_poll_is_woken_when_the_job_ends(idle_client, headers):
    """Canceled from another request: the notification wakes the poll at once."""
    job = submit(idle_client, headers)
    answers = []

    def poll():
        answers.append(
            timed(lambda: idle_client.get(f"/v1/jobs/{job['id']}?wait=30", headers=headers))
        )

    poller = threading.Thread(target=poll)
    poller.start()
    time.sleep(1)
    assert idle_client.post(f"/v1/jobs/{job['id']}/cancel", headers=headers).status_code == 200
    poller.join(35)
    (response, elapsed) = answers[0]
    assert response.status_code == 200
    assert response.get_json()["status"] == "canceled"
    assert elapsed < 10, elapsed


def test_long_poll_of_a_finished_job_answers_at_once(client, headers, gpu_worker):
    job = client.post(EMBED[0], json=EMBED[1], headers={**headers, "Prefer": "wait=30"}).get_json()
    assert job["status"] == "succeeded"
    response, elapsed = timed(lambda: client.get(f"/v1/jobs/{job['id']}?wait=30", headers=headers))
    assert response.status_code == 200
    assert response.get_json()["result"]["vectors"] == job["result"]["vectors"]
    assert elapsed < 5


def test_long_poll_of_an_unknown_job_is_404(idle_client, headers):
    for job_id in (uuid.uuid4(), "not-a-uuid"):
        response = idle_client.get(f"/v1/jobs/{job_id}?wait=1", headers=headers)
        assert response.status_code == 404
        assert response.get_json()["error"]["code"] in {"job_not_found", "not_found"}


def test_long_poll_of_another_tenants_job_is_404(idle_client, headers, make_tenant):
    job = submit(idle_client, headers)
    response = idle_client.get(f"/v1/jobs/{job['id']}?wait=1", headers=make_tenant())
    assert response.status_code == 404


@pytest.mark.parametrize("wait", ["0", "61", "-1", "abc", "1.5", "", "1e3"])
def test_long_poll_wait_out_of_range_is_422(idle_client, headers, wait):
    job = submit(idle_client, headers)
    response = idle_client.get(f"/v1/jobs/{job['id']}?wait={wait}", headers=headers)
    assert response.status_code == 422
    error = response.get_json()["error"]
    assert error["code"] == "validation_error"
    assert error["details"][0]["field"] == "wait"


# -- the serving model: hundreds of waits through the real gunicorn ------------------

# What a gevent worker does: patch, then import the app. 50 greenlets long-poll one
# job; meanwhile /healthz is served, then a cancel wakes them all.
GEVENT_PROBE = """
from gevent import monkey

monkey.patch_all()

import json, os, time
import gevent
import psycopg.waiting
from api import create_app

client = create_app().test_client()
auth = {"Authorization": "Bearer " + os.environ["CONVOQ_TEST_KEY"]}
job = client.post("/v1/jobs/embed", json={"texts": ["a"]}, headers=auth).get_json()
url = "/v1/jobs/" + job["id"]

def poll():
    started = time.monotonic()
    status = client.get(url + "?wait=30", headers=auth).get_json()["status"]
    return status, time.monotonic() - started

polls = [gevent.spawn(poll) for _ in range(50)]
gevent.sleep(1.5)
started = time.monotonic()
health = client.get("/healthz").status_code
health_seconds = time.monotonic() - started
cancel = client.post(url + "/cancel", headers=auth).status_code
gevent.joinall(polls, timeout=25)
print(json.dumps({
    "wait_function": psycopg.waiting.wait.__name__,
    "threading_patched": monkey.is_module_patched("threading"),
    "polls": [p.value for p in polls],
    "health": [health, health_seconds],
    "cancel": cancel,
}))
"""


@pytest.mark.timeout(120)
def test_waits_work_under_gevent_monkey_patching(settings, idle_broker, make_tenant):
    """psycopg waits cooperatively, and services.notify's listener (a greenlet once
    patched) wakes the greenlets that wait on its events."""
    key = make_tenant()["Authorization"].split()[1]
    env = subprocess_env(
        {"DATABASE_URL": settings.database_url, "REDIS_URL": idle_broker, "CONVOQ_TEST_KEY": key}
    )
    done = subprocess.run(
        [sys.executable, "-c", GEVENT_PROBE], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=90,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["threading_patched"]
    assert report["wait_function"] != "wait_c", "psycopg would block the whole worker"
    assert report["health"][0] == 200
    assert report["health"][1] < 1
    assert report["cancel"] == 200
    assert len(report["polls"]) == 50
    assert {status for status, _ in report["polls"]} == {"canceled"}
    assert max(seconds for _, seconds in report["polls"]) < 15


def raw_get(address, path: str, key: str) -> socket.socket:
    """Send a GET and leave its answer unread (one connection per request)."""
    connection = socket.create_connection(address, timeout=10)
    connection.sendall(
        f"GET {path} HTTP/1.1\r\nHost: test\r\nAuthorization: {key}\r\n"
        "Connection: close\r\n\r\n".encode()
    )
    return connection


def read_answer(connection: socket.socket, deadline: float) -> tuple[int, dict]:
    data = b""
    with connection:
        while time.monotonic() < deadline:
            connection.settimeout(max(0.1, deadline - time.monotonic()))
            chunk = connection.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)


@pytest.mark.timeout(240)
def test_500_waiting_requests_leave_other_requests_fast(
    settings, idle_broker, make_tenant, tmp_path
):
    """500 long polls at once on gevent workers; /healthz stays under 100 ms at p95, and
    each worker stays under 150 MB."""
    headers = make_tenant()
    with api_server(settings.model_copy(update={"redis_url": idle_broker}), tmp_path) as api:
        http = requests.Session()
        batch = http.post(
            f"{api.base_url}/v1/jobs/batch",
            json={"jobs": [{"type": "embed", "texts": [f"text {i}"]} for i in range(100)]},
            headers=headers,
            timeout=30,
        )
        assert batch.status_code == 202, batch.text
        job_ids = [job["id"] for job in batch.json()["jobs"]]

        started = time.monotonic()
        waits = [
            raw_get(api.address, f"/v1/jobs/{job_ids[i % 100]}?wait=20", headers["Authorization"])
            for i in range(CONCURRENT_WAITS)
        ]
        wait_for(
            lambda: api.job_waits() >= CONCURRENT_WAITS, 60, "500 requests waiting", interval=0.2
        )
        latencies = []
        for _ in range(HEALTH_PROBES):
            probe_started = time.perf_counter()
            assert http.get(f"{api.base_url}/healthz", timeout=10).status_code == 200
            latencies.append(time.perf_counter() - probe_started)
        still_waiting = api.job_waits()
        latencies.sort()
        p95 = latencies[int(len(latencies) * 0.95) - 1]
        assert still_waiting >= CONCURRENT_WAITS, "the waits ended before the probes did"
        assert p95 < 0.1, f"/healthz p95 {p95 * 1000:.1f} ms with {CONCURRENT_WAITS} waiting"

        answers = [read_answer(connection, started + 90) for connection in waits]
        held = time.monotonic() - started
        assert [status for status, _ in answers] == [200] * CONCURRENT_WAITS
        assert {body["status"] for _, body in answers} == {"queued"}
        assert held >= 19, "the long polls answered before their wait"

        rss = api.worker_rss_mib()
        assert len(rss) == settings.api_workers
        assert max(rss.values()) < MAX_WORKER_RSS_MIB, rss
