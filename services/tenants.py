"""Tenants and API keys. Keys are random, shown once, and stored as SHA-256 digests."""

import hashlib
import secrets
import uuid
from dataclasses import dataclass

from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert

from models import ApiKey, AuditLog, Tenant
from models.db import session_scope, transaction
from services import audit

KEY_PREFIX = "cvq_"


@dataclass(frozen=True)
class Principal:
    """Who is calling: the tenant a key belongs to, and the key's public prefix."""

    tenant_id: uuid.UUID
    tenant_name: str
    key_prefix: str
    # Read with the key, in the same query: redaction costs no lookup of its own.
    redact_pii: bool = False


def hash_key(key: str) -> str:
    # Keys carry 256 random bits, so a fast digest is enough; no salt or KDF needed.
    return hashlib.sha256(key.encode()).hexdigest()


def create_api_key(database_url: str, tenant_name: str, *, actor: str) -> tuple[Principal, str]:
    """Create the tenant if it is new, and a key for it. Returns the key in clear, once."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    prefix = key[: len(KEY_PREFIX) + 8]
    with session_scope(database_url) as session:
        session.execute(insert(Tenant).values(name=tenant_name).on_conflict_do_nothing())
        tenant = session.scalars(select(Tenant).where(Tenant.name == tenant_name)).one()
        session.add(ApiKey(tenant_id=tenant.id, key_hash=hash_key(key), prefix=prefix))
        session.add(
            AuditLog(
                tenant_id=tenant.id,
                actor=actor,
                action="api_key.create",
                target_type="api_key",
                target_id=prefix,
            )
        )
        return Principal(tenant.id, tenant.name, prefix, tenant.redact_pii), key


class TenantNotFound(LookupError):
    pass


def set_redaction(database_url: str, tenant_name: str, enabled: bool, *, actor: str) -> None:
    """Turn PII redaction on or off for a tenant, recorded in the audit log. API
    processes see the change within their key cache's lifetime (api/auth.py, 10 s)."""
    with session_scope(database_url) as session:
        tenant = session.scalars(
            select(Tenant).where(Tenant.name == tenant_name).with_for_update()
        ).one_or_none()
        if tenant is None:
            raise TenantNotFound(tenant_name)
        tenant.redact_pii = enabled
        session.add(
            AuditLog(
                tenant_id=tenant.id,
                actor=actor,
                action="tenant.redact_pii",
                target_type="tenant",
                target_id=tenant.name,
                details={"enabled": enabled},
            )
        )


def authenticate(database_url: str, key: str) -> Principal | None:
    """The principal for a key, or None when the key is unknown or revoked."""
    with session_scope(database_url) as session:
        row = session.execute(
            select(Tenant.id, Tenant.name, ApiKey.prefix, Tenant.redact_pii)
            .join(ApiKey.tenant)
            .where(ApiKey.key_hash == hash_key(key), ApiKey.revoked_at.is_(None))
        ).one_or_none()
    return Principal(*row) if row is not None else None


def tenant_id_of(database_url: str, tenant_name: str) -> uuid.UUID | None:
    """The id of the tenant with this name, or None."""
    with session_scope(database_url) as session:
        return session.scalar(select(Tenant.id).where(Tenant.name == tenant_name))


class KeyNotFound(LookupError):
    """No key has that prefix (in that tenant)."""


class AmbiguousPrefix(LookupError):
    """Several keys share the prefix: name the tenant too."""


@dataclass(frozen=True)
class Revocation:
    tenant_name: str
    prefix: str
    already_revoked: bool


def revoke_api_key(
    database_url: str, prefix: str, *, tenant_name: str | None = None, actor: str
) -> Revocation:
    """Revoke the key with ``prefix`` (of ``tenant_name``, when given) and audit it.

    Revoking a revoked key changes nothing and writes no entry. The API's
    authentication cache (api/auth.py) may accept the key for up to its
    ``_CACHE_SECONDS`` more in a process that checked it just before.
    """
    with transaction(database_url) as connection:
        query = (
            select(ApiKey.id, ApiKey.tenant_id, ApiKey.revoked_at, Tenant.name)
            .join(Tenant, Tenant.id == ApiKey.tenant_id)
            .where(ApiKey.prefix == prefix)
            .with_for_update(of=ApiKey)
        )
        if tenant_name is not None:
            query = query.where(Tenant.name == tenant_name)
        keys = connection.execute(query).all()
        if not keys:
            raise KeyNotFound(prefix)
        if len(keys) > 1:
            raise AmbiguousPrefix(prefix)
        (key,) = keys
        if key.revoked_at is None:
            connection.execute(
                update(ApiKey).where(ApiKey.id == key.id).values(revoked_at=func.now())
            )
            audit.record(
                connection,
                tenant_id=key.tenant_id,
                actor=actor,
                action="api_key.revoke",
                target_type="api_key",
                target_id=prefix,
                details={"outcome": "revoked"},
            )
    return Revocation(key.name, prefix, already_revoked=key.revoked_at is not None)


def set_retention(database_url: str, tenant_name: str, days: int | None, *, actor: str) -> None:
    """Set how many days the tenant's data is kept: ``None`` follows RETENTION_DAYS,
    0 keeps it forever (``services.retention``). Audited as ``tenant.retention``."""
    with transaction(database_url) as connection:
        tenant_id = connection.execute(
            update(Tenant)
            .where(Tenant.name == tenant_name)
            .values(retention_days=days)
            .returning(Tenant.id)
        ).scalar_one_or_none()
        if tenant_id is None:
            raise TenantNotFound(tenant_name)
        audit.record(
            connection,
            tenant_id=tenant_id,
            actor=actor,
            action="tenant.retention",
            target_type="tenant",
            target_id=str(tenant_id),
            details={"retention_days": days},
        )
