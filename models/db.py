"""Engines and sessions: one engine per process and database URL.

A forked process must not reuse its parent's connections, so workers call
``dispose_engines()`` right after the fork and the child connects afresh.
"""

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, Engine, create_engine
from sqlalchemy.orm import Session, sessionmaker

_factories: dict[str, sessionmaker[Session]] = {}


def get_engine(database_url: str) -> Engine:
    return _factory(database_url).kw["bind"]


def _factory(database_url: str) -> sessionmaker[Session]:
    factory = _factories.get(database_url)
    if factory is None:
        engine = create_engine(
            database_url,
            pool_pre_ping=True,
            pool_size=5,
            max_overflow=5,
            connect_args={"connect_timeout": 5},
        )
        factory = _factories[database_url] = sessionmaker(engine, expire_on_commit=False)
    return factory


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
