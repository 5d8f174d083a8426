"""Engines and sessions: one engine per process and database URL.

A forked process must not reuse its parent's connections, so workers call
``dispose_engines()`` right after the fork and the child connects afresh.
"""

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import Session, sessionmaker

from config import get_settings

_factories: dict[str, sessionmaker[Session]] = {}


def application_name() -> str:
    """What ``pg_stat_activity`` shows for this process's connections."""
    program = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "python"
    return f"convoq {program}"[:63]


def get_engine(database_url: str) -> Engine:
    return _factory(database_url).kw["bind"]


def _factory(database_url: str) -> sessionmaker[Session]:
    factory = _factories.get(database_url)
    if factory is None:
        settings = get_settings()
        # A fixed pool and no overflow: a connection made for a burst and closed
        # after it costs PostgreSQL a fork and the client a handshake (measured:
        # thousands of sessions in a one-minute benchmark). Past the pool,
        # callers wait for a connection (the API's greenlets hold one briefly).
        engine = create_engine(
            database_url,
            pool_size=settings.database_pool_size,
            max_overflow=0,
            pool_timeout=settings.database_pool_timeout,
            connect_args={"connect_timeout": 5, "application_name": application_name()},
        )
        event.listen(engine.pool, "checkout", _ping_if_idle)
        event.listen(engine.pool, "checkin", _note_checkin)
        factory = _factories[database_url] = sessionmaker(engine, expire_on_commit=False)
    return factory


# A connection idle this long is checked before use. SQLAlchemy's pool_pre_ping
# checks every checkout: a round trip per transaction, a fifth of the API's
# database time per job under load, when connections are seconds old at most.
PING_AFTER_IDLE_SECONDS = 10.0


def _note_checkin(dbapi_connection: Any, record: Any) -> None:
    record.info["checked_in_at"] = time.monotonic()


def _ping_if_idle(dbapi_connection: Any, record: Any, proxy: Any) -> None:
    idle_since = record.info.get("checked_in_at")
    if idle_since is None or time.monotonic() - idle_since < PING_AFTER_IDLE_SECONDS:
        return
    try:
        dbapi_connection.execute("SELECT 1")
        dbapi_connection.rollback()
    except Exception as exc:
        # The pool drops this connection and checks out another (a new one).
        raise DisconnectionError(f"connection idle since a restart: {exc}") from exc


@contextmanager
def session_scope(database_url: str) -> Iterator[Session]:
    """A session whose work is committed on success and rolled back on error."""
    with _factory(database_url).begin() as session:
        yield session


@contextmanager
def transaction(database_url: str) -> Iterator[Connection]:
    """A connection in a transaction, committed on success and rolled back on error.

    For statements that need no ORM objects: cheaper than a session.
    """
    with get_engine(database_url).begin() as connection:
        yield connection


def dispose_engines() -> None:
    """Forget connections inherited across a fork without closing the parent's."""
    for factory in _factories.values():
        factory.kw["bind"].dispose(close=False)
