"""The options every cpu task of a job shares: retried while PostgreSQL or Milvus is away."""

from typing import Any

from sqlalchemy.exc import InterfaceError, OperationalError

from vectorstore import TRANSIENT_MILVUS_ERRORS

CPU_TASK_OPTIONS: dict[str, Any] = {
    "autoretry_for": (OperationalError, InterfaceError, *TRANSIENT_MILVUS_ERRORS),
    "retry_backoff": 2,
    "retry_backoff_max": 60,
    "retry_jitter": True,
    "max_retries": None,
}
