"""What the sync and async clients share: configuration, the retry rule, and turning
answers into models. Neither does any I/O here."""

import json
import os
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from convoq_client import _vectors
from convoq_client.errors import ConnectionFailed, ConvoqError, error_for
from convoq_client.models import Embeddings, Job, Queue

DEFAULT_URL = "http://127.0.0.1:8000"
RETRY_STATUSES = frozenset({429, 503})
MAX_WAIT_SECONDS = 60  # the API holds a request at most this long
MAX_RETRY_AFTER = 60.0


@dataclass
class Config:
    base_url: str
    api_key: str | None
    timeout: float
    max_retries: int
    backoff: float
    max_backoff: float

    @classmethod
    def resolve(
        cls,
        base_url: str | None,
        api_key: str | None,
        timeout: float,
        max_retries: int,
        backoff: float,
        max_backoff: float,
    ) -> "Config":
        """Arguments first, then ``CONVOQ_URL`` / ``CONVOQ_KEY``."""
        url = base_url or os.environ.get("CONVOQ_URL") or DEFAULT_URL
        key = api_key or os.environ.get("CONVOQ_KEY")
        return cls(url.rstrip("/"), key, timeout, max_retries, backoff, max_backoff)

    def headers(self) -> dict[str, str]:
        headers = {"User-Agent": "convoq-client/0.1", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def delay(self, attempt: int, response: httpx.Response | None) -> float:
        """Seconds before retry ``attempt`` (1-based): the server's ``Retry-After`` if it
        gave one, else exponential backoff with full jitter (so clients that failed
        together do not come back together)."""
        if response is not None:
            after = retry_after(response.headers.get("Retry-After"))
            if after is not None:
                return min(after, MAX_RETRY_AFTER)
        ceiling = min(self.max_backoff, self.backoff * 2 ** (attempt - 1))
        return random.uniform(0, ceiling)  # noqa: S311 - jitter, not cryptography


def retry_after(value: str | None) -> float | None:
    """``Retry-After`` as seconds: delta-seconds or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (moment - datetime.now(UTC)).total_seconds())


def retry_refused(response: httpx.Response, failures: int, config: Config) -> bool:
    """Whether a refused request is tried again: a 429 or 503 while retries are left."""
    return response.status_code in RETRY_STATUSES and failures < config.max_retries


def retryable(error: httpx.TransportError) -> bool:
    """Connection errors and timeouts are retried; a malformed URL or the like is not."""
    return isinstance(
        error, httpx.NetworkError | httpx.TimeoutException | httpx.RemoteProtocolError
    )


@dataclass
class Call:
    """One logical API call. A POST carries one ``Idempotency-Key`` for all its tries,
    so a retried submit is answered with the job the first try made."""

    method: str
    path: str
    parse: Callable[[Any], Any]
    json: Any = None
    params: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    idempotency_key: str | None = None
    timeout: float | None = None
    tries: int = 0  # set by the client as it sends

    def __post_init__(self) -> None:
        self.params = compact(self.params)
        if self.method == "POST":
            self.headers.setdefault("Idempotency-Key", self.idempotency_key or str(uuid.uuid4()))


def prefer_wait(wait: float | None) -> dict[str, str]:
    if wait is None:
        return {}
    return {"Prefer": f"wait={max(1, min(MAX_WAIT_SECONDS, round(wait)))}"}


def wait_timeout(base: float, wait: float | None) -> float:
    """A read timeout long enough for the server to hold the request ``wait`` seconds."""
    return base + (min(MAX_WAIT_SECONDS, wait) if wait else 0)


def body_of(response: httpx.Response) -> Any:
    if response.status_code == 204 or not response.content:
        return None
    try:
        return response.json()
    except ValueError:
        return response.text


def raise_for(response: httpx.Response) -> None:
    if response.status_code >= 400:
        raise error_for(response.status_code, body_of(response), dict(response.headers))


def connection_failed(error: Exception) -> ConvoqError:
    return ConnectionFailed(f"{type(error).__name__}: {error}", code="connection_failed")


def job(body: Any) -> Job:
    """A job, its vectors decoded."""
    result = body.get("result")
    if isinstance(result, dict) and isinstance(result.get("vectors"), list):
        body = {**body, "result": {**result, "vectors": _vectors.decode_many(result["vectors"])}}
    return Job.model_validate(body)


def jobs(body: Any) -> list[Job]:
    return [job(item) for item in body["jobs"]]


def compact(values: dict[str, Any]) -> dict[str, Any]:
    """Leave out what was not given, so the server's defaults apply."""
    return {key: value for key, value in values.items() if value is not None}


class SSEParser:
    """Server-sent events, line by line: ``feed`` gives back an event's fields when a
    blank line ends it. Only ``id``, ``event`` and ``data`` matter here."""

    def __init__(self) -> None:
        self.last_id: str | None = None
        self._event = ""
        self._data: list[str] = []

    def feed(self, line: str) -> tuple[str, Any] | None:
        line = line.rstrip("\r")
        if not line:
            if not self._data:
                self._event = ""
                return None
            event, data = self._event or "message", "\n".join(self._data)
            self._event, self._data = "", []
            return event, json.loads(data)
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            self.last_id = value
        return None


def embeddings(body: Any) -> Embeddings:
    data = [{**item, "embedding": _vectors.decode_one(item["embedding"])} for item in body["data"]]
    return Embeddings.model_validate({**body, "data": data})


def queues(body: Any) -> dict[str, Queue]:
    return {name: Queue.model_validate(queue) for name, queue in body["queues"].items()}


def canceled_by_an_earlier_try(call: Call, error: ConvoqError) -> bool:
    """A cancel retried after a lost answer finds the job canceled: its own first try did
    that, so the cancel succeeded."""
    return (
        call.tries > 1
        and error.status == 409
        and any(d.get("status") == "canceled" for d in error.details)
    )
