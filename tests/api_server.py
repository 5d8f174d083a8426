"""The real API for tests that need an HTTP server: gunicorn as ``make run`` starts it."""

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import requests
from prometheus_client.parser import text_string_to_metric_families

from config import Settings
from tests.support import ROOT, free_port, subprocess_env, wait_for_http


@dataclass
class ApiServer:
    base_url: str
    pid: int
    log_path: Path

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.base_url.removeprefix("http://").rsplit(":", 1)
        return host, int(port)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def worker_pids(self) -> list[int]:
        """The gunicorn worker processes (the master's children)."""
        children = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text().split()
        return [int(pid) for pid in children]

    def worker_rss_mib(self) -> dict[int, float]:
        """VmRSS of each worker, in MiB."""
        sizes = {}
        for pid in self.worker_pids():
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    sizes[pid] = int(line.split()[1]) / 1024
        return sizes

    def job_waits(self) -> float:
        """Requests waiting for jobs now, every worker together (``/metrics``)."""
        body = requests.get(f"{self.base_url}/metrics", timeout=10).text
        return sum(
            sample.value
            for family in text_string_to_metric_families(body)
            for sample in family.samples
            if sample.name == "convoq_http_job_waits"
        )


@contextmanager
def api_server(settings: Settings, log_dir: Path, **env: str) -> Iterator[ApiServer]:
    """gunicorn with ``config/gunicorn.py`` on a free port, for ``settings``' services;
    ``env`` overrides its environment (``API_WORKER_CLASS``, say)."""
    bind = f"127.0.0.1:{free_port()}"
    log_path = log_dir / f"api-{bind.rsplit(':', 1)[1]}.log"
    metrics_dir = log_dir / f"api-metrics-{bind.rsplit(':', 1)[1]}"
    metrics_dir.mkdir(parents=True, exist_ok=True)
    full_env = subprocess_env(
        {
            "DATABASE_URL": settings.database_url,
            "REDIS_URL": settings.redis_url,
            "MILVUS_URI": settings.milvus_uri,
            "MILVUS_COLLECTION": settings.milvus_collection,
            "API_BIND": bind,
            "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        },
        **env,
    )
    command = [
        sys.executable, "-m", "gunicorn", "--config", "config/gunicorn.py",
        "--no-control-socket", "api:create_app()",
    ]  # fmt: skip
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            command, cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    server = ApiServer(f"http://{bind}", process.pid, log_path)

    def exited() -> str:
        return f"gunicorn exited with {process.returncode}:\n{server.log()}"

    try:
        wait_for_http(process, f"{server.base_url}/healthz", "the API", 60, exited)
        yield server
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
