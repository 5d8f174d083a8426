"""``Idempotency-Key``: a key claims its jobs in the transaction that inserts them.

The key's row is inserted before the jobs, in the same transaction: a second
request with the key waits on the primary key until the first commits, then
finds the key taken, so two concurrent requests make one set of jobs. A key
past its expiry is taken over as if it were new.
"""

import hashlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import Connection, text

from models.db import transaction

# Key and fingerprint in; true back when the key is now this request's.
_CLAIM = text(
    """
    INSERT INTO idempotency_keys (tenant_id, key, fingerprint, job_ids, expires_at)
    VALUES (:tenant_id, :key, :fingerprint, CAST(:job_ids AS uuid[]),
        now() + make_interval(secs => :seconds))
    ON CONFLICT (tenant_id, key) DO UPDATE SET fingerprint = EXCLUDED.fingerprint,
        job_ids = EXCLUDED.job_ids, created_at = now(), expires_at = EXCLUDED.expires_at
    WHERE idempotency_keys.expires_at <= now()
    RETURNING true
    """
)
_EXISTING = text(
    "SELECT fingerprint, job_ids FROM idempotency_keys WHERE tenant_id = :tenant_id AND key = :key"
)
_RELEASE = text(
    "DELETE FROM idempotency_keys WHERE tenant_id = :tenant_id AND key = :key "
    "AND job_ids = CAST(:job_ids AS uuid[])"
)
_PURGE = text("DELETE FROM idempotency_keys WHERE expires_at <= now()")


@dataclass(frozen=True)
class IdempotencyKey:
    """The key a request sent, what it asked for, and how long the key holds."""

    key: str
    fingerprint: str
    seconds: int


class KeyReused(Exception):
    """The key already made jobs: ``job_ids`` when the request is the same, else a conflict."""

    def __init__(self, key: str, job_ids: Sequence[uuid.UUID], same_request: bool) -> None:
        super().__init__(f"Idempotency-Key {key!r} was already used")
        self.key = key
        self.job_ids = list(job_ids)
        self.same_request = same_request


def fingerprint(route: str, body: Any) -> str:
    """SHA-256 of the route and the parsed body: spacing and key order do not count."""
    digest = hashlib.sha256(route.encode())
    digest.update(b"\n")
    digest.update(orjson.dumps(body, option=orjson.OPT_SORT_KEYS))
    return digest.hexdigest()


def claim(
    connection: Connection,
    tenant_id: uuid.UUID,
    idempotency: IdempotencyKey,
    job_ids: Sequence[uuid.UUID],
) -> None:
    """Take the key for ``job_ids`` in the caller's transaction, or raise ``KeyReused``."""
    values = {
        "tenant_id": tenant_id,
        "key": idempotency.key,
        "fingerprint": idempotency.fingerprint,
        "job_ids": list(job_ids),
        "seconds": idempotency.seconds,
    }
    # Twice: a key purged between the two statements is free again.
    for _ in range(2):
        if connection.execute(_CLAIM, values).scalar() is not None:
            return
        existing = connection.execute(
            _EXISTING, {"tenant_id": tenant_id, "key": idempotency.key}
        ).one_or_none()
        if existing is not None:
            raise KeyReused(
                idempotency.key, existing.job_ids, existing.fingerprint == idempotency.fingerprint
            )
    raise KeyReused(idempotency.key, [], False)


def release(
    database_url: str, tenant_id: uuid.UUID, key: str, job_ids: Sequence[uuid.UUID]
) -> None:
    """Free a key whose jobs could not be queued, so the client's retry submits anew."""
    with transaction(database_url) as connection:
        connection.execute(_RELEASE, {"tenant_id": tenant_id, "key": key, "job_ids": list(job_ids)})


def purge_expired_idempotency_keys(database_url: str) -> int:
    """Delete the keys past their expiry (a periodic task); how many were deleted."""
    with transaction(database_url) as connection:
        return connection.execute(_PURGE).rowcount
