"""Bring the local stack's services up (or find them), migrate, and shut down what we started."""

import logging
import os
import secrets
import stat
from pathlib import Path
from types import TracebackType

from alembic import command
from alembic.config import Config

from config import Settings
from config.encryption import generate_key
from devstack.services import (
    EmbeddedService,
    ensure_database,
    ensure_milvus,
    ensure_postgres,
    ensure_redis,
)
from services.tenants import authenticate, create_api_key
from vectorstore import get_memory_store

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA_DIR = ROOT / ".devstack"
LOCAL_TENANT = "local"
FLOWER_USER = "convoq"
ENCRYPTION_KEY_FILE = "encryption-keys"


def migrate(database_url: str, revision: str = "head") -> None:
    """``alembic upgrade <revision>`` on ``database_url``."""
    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(ROOT / "migrations"))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    command.upgrade(config, revision)


class LocalStack:
    """Redis, PostgreSQL and Milvus at the configured URLs, embedded where nothing answers.

    Used as a context manager: the embedded servers it started are stopped on exit.
    """

    def __init__(self, settings: Settings, data_dir: Path = DEFAULT_DATA_DIR) -> None:
        self.settings = settings
        self.data_dir = data_dir
        self.started: list[EmbeddedService] = []

    def __enter__(self) -> "LocalStack":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        self.start_services()
        ensure_database(self.settings.database_url)
        migrate(self.settings.database_url)
        get_memory_store(self.settings).ensure_collection()

    def start_services(self) -> None:
        """Start the embedded servers where nothing answers; leave the databases alone."""
        starters = (
            lambda: ensure_redis(self.settings.redis_url, self.data_dir / "redis"),
            lambda: ensure_postgres(self.settings.database_url, self.data_dir / "postgres"),
            lambda: ensure_milvus(self.settings.milvus_uri, self.data_dir / "milvus"),
        )
        # Each server is recorded as soon as it is up, so a later failure still stops it.
        for start in starters:
            service = start()
            if service is not None:
                self.started.append(service)

    def stop(self) -> None:
        # Reverse order: the last service up is the first one down.
        while self.started:
            self.started.pop().stop()

    def _write_secret(self, name: str, value: str) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        path = self.data_dir / name
        path.write_text(value + "\n")
        os.chmod(path, stat.S_IRUSR | stat.S_IWUSR)

    def flower_credentials(self) -> str:
        """``user:password`` for Flower's basic auth, kept in the data directory."""
        path = self.data_dir / "flower-credentials"
        if path.exists():
            return path.read_text().strip()
        credentials = f"{FLOWER_USER}:{secrets.token_urlsafe(18)}"
        self._write_secret(path.name, credentials)
        return credentials

    def encryption_key_file(self) -> Path:
        """The local run's encryption key file, written on first use: message and summary
        text is encrypted with it, and cannot be read without it (keep it with the data)."""
        path = self.data_dir / ENCRYPTION_KEY_FILE
        if not path.exists():
            self._write_secret(path.name, f"local1:{generate_key()}")
            log.warning(
                "no encryption key configured: created %s; keep it with the data directory, "
                "the stored text cannot be read without it",
                path,
                extra={"path": str(path)},
            )
        return path

    def local_api_key(self) -> str:
        """The local tenant's key, kept in the data directory and created on first use."""
        key_file = self.data_dir / "local-api-key"
        if key_file.exists():
            key = key_file.read_text().strip()
            if authenticate(self.settings.database_url, key) is not None:
                return key
        _, key = create_api_key(self.settings.database_url, LOCAL_TENANT, actor="devstack")
        self._write_secret(key_file.name, key)
        return key
