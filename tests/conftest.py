"""Fixtures over real services: PostgreSQL, Redis and Celery worker subprocesses.

The tests use their own database (``convoq_test``) and Redis database (15), so
they never touch the data of a running ``make run``. Where nothing answers at
those URLs, the embedded servers are started, as ``make run`` does.
"""

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

os.environ.setdefault(
    "TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/convoq_test"
)
os.environ.setdefault("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
os.environ["DATABASE_URL"] = os.environ["TEST_DATABASE_URL"]
os.environ["REDIS_URL"] = os.environ["TEST_REDIS_URL"]
os.environ["HF_HUB_OFFLINE"] = "1"

from api import create_app
from config import Settings
from devstack.stack import LocalStack, migrate
from services.tenants import create_api_key
from tests.support import WorkerProcess, recreate_database, subprocess_env


@pytest.fixture(scope="session")
def settings() -> Settings:
    return Settings()


@pytest.fixture(scope="session")
def stack(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with LocalStack(settings, tmp_path_factory.mktemp("devstack")) as local:
        # __enter__ started the services and migrated; start each session empty.
        recreate_database(settings.database_url)
        migrate(settings.database_url)
        redis.Redis.from_url(settings.redis_url).flushdb()
        yield local


@pytest.fixture(scope="session")
def app(stack: LocalStack, settings: Settings) -> Any:
    return create_app(settings)


@pytest.fixture
def client(app: Any) -> Any:
    return app.test_client()


@pytest.fixture(scope="session")
def make_tenant(stack: LocalStack, settings: Settings) -> Callable[[], dict[str, str]]:
    """Creates a new tenant and returns the headers that authenticate as it."""

    def make() -> dict[str, str]:
        _, key = create_api_key(settings.database_url, f"t-{uuid.uuid4().hex[:12]}", actor="test")
        return {"Authorization": f"Bearer {key}"}

    return make


@pytest.fixture
def headers(make_tenant: Callable[[], dict[str, str]]) -> dict[str, str]:
    return make_tenant()


@pytest.fixture(scope="session")
def worker_env(settings: Settings) -> dict[str, str]:
    return subprocess_env({"DATABASE_URL": settings.database_url, "REDIS_URL": settings.redis_url})


@pytest.fixture(scope="session")
def gpu_worker(
    stack: LocalStack, worker_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    """The shared gpu worker: ``--pool solo``, as in the Procfile."""
    with WorkerProcess(
        worker_env, tmp_path_factory.mktemp("workers"), queue="gpu", pool="solo"
    ) as worker:
        yield worker


@pytest.fixture
def worker_log_dir(tmp_path: Path) -> Path:
    return tmp_path
