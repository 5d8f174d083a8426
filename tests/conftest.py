"""Fixtures over real services: PostgreSQL, Redis, Milvus and Celery worker subprocesses.

The tests use their own database (``convoq_test``), Redis database (15) and
Milvus collection (``convoq_test_memory``), so they never touch the data of a
running ``make run``. Where nothing answers at those URLs, the embedded servers
are started, as ``make run`` does; without ``TEST_MILVUS_URI``, ``make run``'s
Milvus is used if it is up, else a Milvus Lite of this session's own on a free
port (a shared one would vanish when the session that started it ends).
"""

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from config.encryption import generate_key
from tests.support import default_test_milvus_uri

os.environ.setdefault(
    "TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/convoq_test"
)
os.environ.setdefault("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
os.environ.setdefault("TEST_MILVUS_URI", default_test_milvus_uri())
os.environ.setdefault(
    "TEST_MILVUS_COLLECTION", os.environ.get("MILVUS_COLLECTION", "convoq_test_memory")
)
os.environ["DATABASE_URL"] = os.environ["TEST_DATABASE_URL"]
os.environ["REDIS_URL"] = os.environ["TEST_REDIS_URL"]
os.environ["MILVUS_URI"] = os.environ["TEST_MILVUS_URI"]
os.environ["MILVUS_COLLECTION"] = os.environ["TEST_MILVUS_COLLECTION"]
os.environ["HF_HUB_OFFLINE"] = "1"
# Every convoq process refuses to start without an encryption key: one for the
# session, which the workers and API servers it starts inherit (subprocess_env).
os.environ.setdefault("TEST_ENCRYPTION_KEYS", f"test1:{generate_key()}")
os.environ["ENCRYPTION_KEYS"] = os.environ["TEST_ENCRYPTION_KEYS"]
os.environ.pop("ENCRYPTION_KEY_FILE", None)

from api import create_app
from config import Settings
from devstack.stack import LocalStack, migrate
from services.tenants import create_api_key
from tests.support import GPU_POOL, PrivateDb, WorkerProcess, recreate_database, subprocess_env
from vectorstore import MemoryStore, get_memory_store

pytest_plugins = ["tests.tiny_t5"]


@pytest.fixture(scope="session")
def settings() -> Settings:
    settings = Settings()
    session_db = int(settings.redis_url.rsplit("/", 1)[1] or 0)
    assert session_db not in set(PrivateDb), "TEST_REDIS_URL must not use a PrivateDb database"
    # The session starts by dropping its collection: never one that holds real data.
    assert "test" in settings.milvus_collection, "MILVUS_COLLECTION must name a test collection"
    return settings


@pytest.fixture(scope="session")
def stack(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with LocalStack(settings, tmp_path_factory.mktemp("devstack")) as local:
        # __enter__ started the services and migrated; start each session empty.
        recreate_database(settings.database_url)
        migrate(settings.database_url)
        redis.Redis.from_url(settings.redis_url).flushdb()
        memory = get_memory_store(settings)
        memory.drop_collection()
        memory.ensure_collection()
        yield local


@pytest.fixture(scope="session")
def memory_store(stack: LocalStack, settings: Settings) -> MemoryStore:
    """The session's test collection, created empty at the start of the session."""
    return get_memory_store(settings)


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
def worker_env(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return subprocess_env(
        {
            "DATABASE_URL": settings.database_url,
            "REDIS_URL": settings.redis_url,
            "MILVUS_URI": settings.milvus_uri,
            "MILVUS_COLLECTION": settings.milvus_collection,
            # The session's model exports: made by the first worker, loaded by the next.
            "EXPORT_CACHE_DIR": str(tmp_path_factory.mktemp("exports")),
        }
    )


@pytest.fixture(scope="session")
def app_with_t5(stack: LocalStack, settings: Settings, tiny_t5_path: Path) -> Any:
    """An API whose SUMMARIZER_MODEL_PATH names the tests' tiny T5, as the gpu worker's does."""
    return create_app(settings.model_copy(update={"summarizer_model_path": tiny_t5_path}))


@pytest.fixture(scope="session")
def gpu_worker(
    stack: LocalStack,
    worker_env: dict[str, str],
    tiny_t5_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[WorkerProcess]:
    """The shared gpu worker: ``--pool solo``, as in the Procfile, with the tiny T5."""
    env = {**worker_env, "SUMMARIZER_MODEL_PATH": str(tiny_t5_path)}
    with WorkerProcess(env, tmp_path_factory.mktemp("workers"), **GPU_POOL) as worker:
        yield worker


@pytest.fixture(scope="session")
def cpu_worker(
    stack: LocalStack, worker_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    """The shared cpu worker: prefork with two processes, as in the Procfile."""
    with WorkerProcess(
        worker_env, tmp_path_factory.mktemp("workers"), queue="cpu", pool="prefork", concurrency=2
    ) as worker:
        yield worker


@pytest.fixture
def worker_log_dir(tmp_path: Path) -> Path:
    return tmp_path
