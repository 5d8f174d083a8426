"""Structured JSON logs that carry the job id and tenant of the work at hand."""

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from pythonjsonlogger.json import JsonFormatter

_job_id: ContextVar[str | None] = ContextVar("job_id", default=None)
_tenant: ContextVar[str | None] = ContextVar("tenant", default=None)


class _ContextFilter(logging.Filter):
    """Copies the current job id and tenant onto every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, var in (("job_id", _job_id), ("tenant", _tenant)):
            if getattr(record, name, None) is None and (value := var.get()) is not None:
                setattr(record, name, value)
        return True


@contextmanager
def log_context(*, job_id: str | None = None, tenant: str | None = None) -> Iterator[None]:
    """Tag every log line written inside the block with a job id and/or tenant."""
    tokens = []
    if job_id is not None:
        tokens.append((_job_id, _job_id.set(job_id)))
    if tenant is not None:
        tokens.append((_tenant, _tenant.set(tenant)))
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


def bind_tenant(tenant: str) -> None:
    """Tag the rest of the current context (one HTTP request) with a tenant."""
    _tenant.set(tenant)


def configure_logging(level: str = "INFO") -> None:
    """Send every logger's records to stderr as one JSON object per line."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter(
            "{asctime}{levelname}{name}{message}",
            style="{",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            timestamp=False,
        )
    )
    handler.addFilter(_ContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
