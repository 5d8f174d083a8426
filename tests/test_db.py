"""The connection pool: connections idle for a while are checked before use, busy
ones are not (a round trip per transaction saved), and a dead one is replaced."""

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from models import db
from models.db import get_engine, transaction


@pytest.fixture
def engine(settings, stack):
    return get_engine(settings.database_url)


def backend_pid(settings) -> int:
    with transaction(settings.database_url) as connection:
        return connection.execute(text("SELECT pg_backend_pid()")).scalar_one()


def test_a_connection_killed_while_idle_is_replaced_before_use(settings, engine, monkeypatch):
    first = backend_pid(settings)
    with psycopg.connect(settings.database_url.replace("+psycopg", ""), autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", [first])
    monkeypatch.setattr(db, "PING_AFTER_IDLE_SECONDS", 0.0)
    second = backend_pid(settings)  # no error: the dead connection was dropped
    assert second != first


def test_a_recently_used_connection_is_not_pinged(settings, engine, monkeypatch):
    """No round trip before a recently used connection: one that died meanwhile fails
    the statement once (a transient error: tasks retry, the API answers 503), and the
    pool is replaced for the next one."""
    first = backend_pid(settings)
    with psycopg.connect(settings.database_url.replace("+psycopg", ""), autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", [first])
    monkeypatch.setattr(db, "PING_AFTER_IDLE_SECONDS", 3600.0)
    with pytest.raises(OperationalError):
        backend_pid(settings)
    assert backend_pid(settings) != first
