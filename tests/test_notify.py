"""Announcements of finished jobs: they wake waiting requests and carry small rows,
so a waited-for job is answered without reading it again, and exactly as a read
would have answered."""

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import event

from api import create_app
from models.db import get_engine
from tests.support import PrivateDb, private_broker, submit_embed


@pytest.fixture
def statements(settings):
    """The SQL statements this process sends while the test runs."""
    sent: list[str] = []

    def record(conn, cursor, statement, parameters, context, executemany):
        sent.append(statement)

    engine = get_engine(settings.database_url)
    event.listen(engine, "before_cursor_execute", record)
    yield sent
    event.remove(engine, "before_cursor_execute", record)


def job_reads(statements: list[str]) -> list[str]:
    return [s for s in statements if s.lstrip().upper().startswith("SELECT") and "FROM jobs" in s]


def waited(client, headers, path, body):
    response = client.post(path, json=body, headers={**headers, "Prefer": "wait=30"})
    assert response.status_code == 200, response.get_json()
    return response.get_json()


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/jobs/embed", {"texts": ["announced with its row"]}),
        ("/v1/jobs/embed", {"texts": ["stored, then announced"], "store": True}),
        ("/v1/jobs/summarize", {"text": "One sentence. Another one.", "method": "extractive"}),
    ],
)
def test_a_waited_job_is_answered_from_its_announcement_as_a_read_answers(
    client, headers, gpu_worker, cpu_worker, statements, path, body
):
    job = waited(client, headers, path, body)
    assert job_reads(statements) == [], "the finished row came with its announcement"
    assert job["status"] == "succeeded"
    again = client.get(f"/v1/jobs/{job['id']}", headers=headers).get_json()
    assert job == again


def test_a_big_job_is_announced_without_its_row_and_read(client, headers, gpu_worker, statements):
    texts = [f"text {i} of a job too big to carry" for i in range(64)]  # 96 KiB of vectors
    job = waited(client, headers, "/v1/jobs/embed", {"texts": texts})
    assert len(job_reads(statements)) == 1
    assert len(job["result"]["vectors"]) == 64
    assert job == client.get(f"/v1/jobs/{job['id']}", headers=headers).get_json()


def test_a_cancel_wakes_a_long_poll_with_the_canceled_row(headers, settings):
    with private_broker(settings.redis_url, PrivateDb.IDLE) as url:
        app = create_app(settings.model_copy(update={"redis_url": url}))
        job = submit_embed(app.test_client(), headers, ["never run"])
        with ThreadPoolExecutor(1) as pool:
            started = time.monotonic()
            polled = pool.submit(
                lambda: app.test_client().get(f"/v1/jobs/{job['id']}?wait=20", headers=headers)
            )
            time.sleep(0.5)
            canceled = app.test_client().post(f"/v1/jobs/{job['id']}/cancel", headers=headers)
            answer = polled.result(timeout=30)
            took = time.monotonic() - started
    assert took < 5, "woken by the cancel, not at the end of its wait"
    assert answer.get_json() == canceled.get_json()
    assert answer.get_json()["status"] == "canceled"
