"""The Celery settings the issue names, as the running app sees them."""

import pytest
from kombu.exceptions import ContentDisallowed
from kombu.serialization import loads
from pydantic import ValidationError

from config import CelerySettings, Settings


def test_reliability_settings_reach_the_celery_app(app, settings):
    conf = app.extensions["celery"].conf
    assert conf.task_acks_late is True
    assert conf.task_reject_on_worker_lost is True
    assert conf.worker_prefetch_multiplier == 1
    assert 0 < conf.task_soft_time_limit < conf.task_time_limit
    assert conf.broker_transport_options["visibility_timeout"] > conf.task_time_limit
    assert conf.broker_transport_options["unacked_restore_throttle"] == 1
    assert conf.task_serializer == conf.result_serializer == "json"
    assert list(conf.accept_content) == ["json"]
    assert conf.worker_send_task_events is True
    assert conf.task_send_sent_event is False
    assert conf.task_ignore_result is True
    assert not conf.result_backend, "the job row is the result"
    assert conf.worker_max_memory_per_child > 0
    assert conf.broker_url == settings.redis_url


def test_celery_settings_are_overridable_from_the_environment(monkeypatch):
    monkeypatch.setenv("CELERY__TASK_TIME_LIMIT", "100")
    monkeypatch.setenv("CELERY__TASK_SOFT_TIME_LIMIT", "90")
    monkeypatch.setenv("CELERY__BROKER_VISIBILITY_TIMEOUT", "200")
    monkeypatch.setenv("MAX_TEXTS_PER_JOB", "10")
    settings = Settings()
    assert (settings.celery.task_soft_time_limit, settings.celery.task_time_limit) == (90, 100)
    assert (
        settings.celery.as_celery_config("redis://x")["broker_transport_options"][
            "visibility_timeout"
        ]
        == 200
    )
    assert settings.max_texts_per_job == 10


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"task_soft_time_limit": 60, "task_time_limit": 60}, "task_soft_time_limit"),
        ({"task_time_limit": 600, "broker_visibility_timeout": 600}, "broker_visibility_timeout"),
    ],
)
def test_inconsistent_limits_are_refused_at_start(values, message):
    with pytest.raises(ValidationError, match=message):
        CelerySettings(**values)


def test_pickle_cannot_be_configured():
    with pytest.raises(ValidationError):
        CelerySettings(task_serializer="pickle")


def test_a_message_in_another_format_is_refused(app):
    """The worker accepts JSON only: a pickled message is not deserialised."""
    with pytest.raises(ContentDisallowed):
        loads(b"\x80\x04N.", "application/x-python-serialize", "binary",
              accept=app.extensions["celery"].conf.accept_content)  # fmt: skip
