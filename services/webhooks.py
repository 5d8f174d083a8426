"""Webhooks (Standard Webhooks): a job's final state POSTed to its ``callback_url``.

When a job with a ``callback_url`` ends, ``JobStore`` hands its row to
``WebhookSender``, which sends one ``tasks.webhooks.deliver`` task per job (the
jobs without one cost nothing). The task calls ``deliver``: one signed POST,
recorded on the job as an attempt, retried with exponential backoff until a
2xx answer or ``webhook_max_attempts``.

The signature is the Standard Webhooks one (``webhook-id``,
``webhook-timestamp``, ``webhook-signature``), made with the tenant's secret
(``whsec_…``, created on first use); receivers verify it with
``standardwebhooks.Webhook(secret).verify(body, headers)``.

A callback URL is only http(s), and its host must not resolve to an address
outside the public internet (loopback, private, link-local, multicast,
reserved, cloud metadata) unless ``webhook_allowed_hosts`` names it. It is
checked at submit and again before each attempt, and the POST goes to the
address just checked (a name that resolves elsewhere by then, DNS rebinding,
gains nothing); redirects are not followed, proxies from the environment not
used.
"""

import base64
import ipaddress
import json
import logging
import secrets
import socket
import uuid
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests
from celery import Celery
from requests.adapters import HTTPAdapter
from sqlalchemy import Row, text
from standardwebhooks import Webhook

from models.db import transaction
from worker.messages import WebhookMessage, task_args
from worker.queues import TASK_QUEUES, TaskName

log = logging.getLogger(__name__)

SECRET_PREFIX = "whsec_"  # noqa: S105 - the format's prefix, not a secret
SECRET_BYTES = 32
MAX_URL_CHARS = 2048
# Addresses of cloud metadata services that a global-looking range holds.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(address) for address in ("100.100.100.200", "fd00:ec2::254")
)


class UnsafeCallbackUrl(ValueError):
    """A callback URL we refuse to call: its message says why."""


Resolve = Callable[[str, int], Collection[str]]


def resolve_host(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (IPv4 and IPv6)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


def refused_address(address: str) -> bool:
    """An address outside the public internet, or a cloud metadata service."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not ip.is_global or ip.is_multicast or ip.is_reserved or ip in METADATA_ADDRESSES


def check_callback_url(
    url: str, allowed_hosts: Collection[str], resolve: Resolve = resolve_host
) -> list[str]:
    """The public addresses ``url``'s host resolves to, or [] for a host that
    ``allowed_hosts`` names; ``UnsafeCallbackUrl`` unless it is http(s) to one of them."""
    if len(url) > MAX_URL_CHARS:
        raise UnsafeCallbackUrl(f"must be at most {MAX_URL_CHARS} characters")
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise UnsafeCallbackUrl(f"is not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise UnsafeCallbackUrl("must be an http or https URL")
    host = (parts.hostname or "").lower()
    if not host:
        raise UnsafeCallbackUrl("names no host")
    if host in allowed_hosts:
        return []
    try:
        addresses = resolve(host, port)
    except (OSError, UnicodeError) as exc:
        raise UnsafeCallbackUrl(f"host {host!r} does not resolve ({exc})") from None
    refused = [address for address in addresses if refused_address(address)]
    if refused or not addresses:
        raise UnsafeCallbackUrl(
            f"host {host!r} resolves to {', '.join(refused) or 'nothing'}, not a public "
            "address (WEBHOOK_ALLOWED_HOSTS can allow it)"
        )
    return list(addresses)


# -- secrets ------------------------------------------------------------------------


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def tenant_secret(database_url: str, tenant_id: uuid.UUID) -> str:
    """The tenant's signing secret, made now if it has none."""
    return _store_secret(database_url, tenant_id, keep_existing=True)


def rotate_secret(database_url: str, tenant_id: uuid.UUID) -> str:
    """A new secret for the tenant; webhooks from now on are signed with it."""
    return _store_secret(database_url, tenant_id, keep_existing=False)


def _store_secret(database_url: str, tenant_id: uuid.UUID, *, keep_existing: bool) -> str:
    with transaction(database_url) as connection:
        return connection.execute(
            text(
                "UPDATE tenants SET webhook_secret = CASE WHEN :keep "
                "THEN coalesce(webhook_secret, :secret) ELSE :secret END "
                "WHERE id = :id RETURNING webhook_secret"
            ),
            {"id": tenant_id, "secret": new_secret(), "keep": keep_existing},
        ).scalar_one()


# -- sending ------------------------------------------------------------------------


class WebhookSender:
    """Given the finished rows that have a callback_url: one delivery task each, in one
    broker round trip. Never raises (the job has ended either way)."""

    def __init__(self, celery: Celery) -> None:
        self.celery = celery

    def __call__(self, rows: Sequence[Row]) -> None:
        name = TaskName.DELIVER_WEBHOOK
        try:
            with self.celery.producer_or_acquire() as producer, producer.batch():
                for row in rows:
                    self.celery.send_task(
                        name.value,
                        args=task_args(WebhookMessage(job_id=row.id)),
                        queue=TASK_QUEUES[name].value,
                        producer=producer,
                        ignore_result=True,
                    )
        except Exception:
            log.exception("could not queue webhook deliveries", extra={"jobs": len(rows)})


@dataclass(frozen=True)
class Attempt:
    """One POST: its answer's status code or the error that stopped it."""

    number: int
    at: datetime
    status_code: int | None = None
    error: str | None = None
    # The URL failed its check: no later attempt will do better.
    refused: bool = False

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300

    def as_json(self) -> dict[str, Any]:
        return {
            "attempt": self.number,
            "at": self.at.isoformat(),
            "status_code": self.status_code,
            "error": self.error,
        }


def signed_request(
    secret: str, message_id: str, body: str, when: datetime | None = None
) -> dict[str, str]:
    """The Standard Webhooks headers for ``body``."""
    when = when or datetime.now(UTC)
    return {
        "content-type": "application/json",
        "webhook-id": message_id,
        "webhook-timestamp": str(int(when.timestamp())),
        "webhook-signature": Webhook(secret).sign(message_id, when, body),
    }


def payload(job: dict[str, Any]) -> str:
    """The body: the event's type, when it happened, and the job as GET returns it."""
    return json.dumps(
        {"type": f"job.{job['status']}", "timestamp": job["finished_at"], "data": job},
        separators=(",", ":"),
    )


def message_id(job_id: uuid.UUID) -> str:
    """The same for every attempt, so receivers can drop duplicates."""
    return f"msg_{job_id.hex}"


class _PinnedAdapter(HTTPAdapter):
    """Connects where the URL says (an address) but speaks TLS to ``hostname``: SNI and
    certificate checks for the name, the connection to the address that was checked."""

    def __init__(self, hostname: str) -> None:
        self._hostname = hostname
        super().__init__(max_retries=0)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["server_hostname"] = self._hostname
        kwargs["assert_hostname"] = self._hostname
        super().init_poolmanager(*args, **kwargs)


def pinned_url(url: str, address: str) -> tuple[str, str]:
    """``url`` with its host replaced by ``address``, and the ``Host`` header it needs."""
    parts = urlsplit(url)
    host_header = parts.netloc.rpartition("@")[2]
    ip_host = f"[{address}]" if ":" in address else address
    netloc = ip_host if parts.port is None else f"{ip_host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc)), host_header


def post_once(
    url: str,
    secret: str,
    job_id: uuid.UUID,
    body: str,
    *,
    number: int,
    allowed_hosts: Collection[str],
    timeout: float,
    resolve: Resolve = resolve_host,
) -> Attempt:
    """One attempt: the URL checked again (its host may resolve elsewhere now), then one
    signed POST to the address just checked, never redirected."""
    at = datetime.now(UTC)
    headers = signed_request(secret, message_id(job_id), body, at)
    try:
        addresses = check_callback_url(url, allowed_hosts, resolve)
        parts = urlsplit(url)
        auth = (parts.username or "", parts.password or "") if parts.username else None
        with requests.Session() as session:
            session.trust_env = False  # no proxy from the environment: straight there
            target = url
            if addresses:
                target, headers["Host"] = pinned_url(url, addresses[0])
                session.mount(f"{parts.scheme}://", _PinnedAdapter(parts.hostname or ""))
            response = session.post(
                target,
                data=body.encode(),
                headers=headers,
                auth=auth,
                timeout=timeout,
                allow_redirects=False,
            )
            response.close()
    except UnsafeCallbackUrl as exc:
        return Attempt(number, at, error=f"refused: {exc}", refused=True)
    except requests.RequestException as exc:
        return Attempt(number, at, error=f"{type(exc).__name__}: {exc}"[:500])
    return Attempt(number, at, status_code=response.status_code)


def record_attempt(database_url: str, job_id: uuid.UUID, attempt: Attempt, status: str) -> None:
    """Append the attempt to the job's and set its webhook status, in one statement."""
    with transaction(database_url) as connection:
        connection.execute(
            text(
                "UPDATE jobs SET webhook_status = :status, webhook_attempts = "
                "coalesce(webhook_attempts, '[]'::jsonb) || CAST(:attempt AS jsonb) "
                "WHERE id = :id"
            ),
            {"id": job_id, "status": status, "attempt": json.dumps([attempt.as_json()])},
        )


_STALLED = text(
    "SELECT id FROM jobs WHERE callback_url IS NOT NULL "
    "AND (webhook_status IS NULL OR webhook_status = 'retrying') "
    "AND status IN ('succeeded', 'failed', 'canceled') "
    "AND greatest(finished_at, (webhook_attempts -> -1 ->> 'at')::timestamptz) "
    "< now() - make_interval(secs => :quiet_for) "
    "ORDER BY finished_at LIMIT :limit"
)


def stalled_deliveries(database_url: str, *, quiet_for: float, limit: int) -> list[Row]:
    """Finished jobs whose webhook is neither delivered nor given up and saw no attempt
    for ``quiet_for`` seconds: their delivery task was lost (the broker down when the
    job ended, or a worker killed while a retry waited in it)."""
    with transaction(database_url) as connection:
        return connection.execute(_STALLED, {"quiet_for": quiet_for, "limit": limit}).all()


def backoff_seconds(attempts_made: int, base: float, most: float) -> float:
    """Wait before the next attempt: base, 2 base, 4 base, … at most ``most``."""
    return min(most, base * 2 ** (attempts_made - 1))
