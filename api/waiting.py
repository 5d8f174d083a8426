"""Waiting for jobs to end: ``Prefer: wait=N`` on submits, ``GET /v1/jobs/<id>?wait=N``.

A request that waits is woken by ``services.notify`` when its jobs reach a
final status; it never polls the database. The order makes it race-free:

1. register a watch on the jobs (the listener now records their ends);
2. read the rows once (a job that ended before 1. is seen here);
3. sleep on the watch's events until every job ended or the deadline passed;
4. read the rows once more.

For a submit, step 1 happens between the commit and the publish
(``JobWatch`` is opened in the publish hook), so no worker can end a job
before it is watched, and the rows the INSERT returned are step 2.

A notification can be lost (Redis restarting); the listener then wakes every
waiter to read its rows again, and a waiter whose jobs are still running
watches them anew. Either way a lost notification costs time, never a wrong
answer: at the deadline the rows are read.
"""

import base64
import re
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from types import SimpleNamespace
from typing import Any, Self

from sqlalchemy import Row

from config.metrics import JOB_WAITS
from models import FINISHED_STATUSES, JobStatus
from services import notify

# RFC 7240 leaves the limit to the server; Replicate's API uses 60 s as well.
MAX_WAIT_SECONDS = 60

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_DELTA_SECONDS = re.compile(r"[0-9]+")


def _split_outside_quotes(text: str, separator: str) -> list[str]:
    """``text`` cut at each ``separator`` that is not inside a quoted-string."""
    parts, current, quoted, escaped = [], [], False, False
    for char in text:
        if escaped:
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == separator and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return parts


def _unquote(word: str) -> str | None:
    """A token as is, a quoted-string without its quotes and escapes; None if neither."""
    if len(word) >= 2 and word[0] == word[-1] == '"':
        return re.sub(r"\\(.)", r"\1", word[1:-1])
    return word if _TOKEN.fullmatch(word) else None


def preferences(header_values: Iterable[str]) -> dict[str, str]:
    """The preferences of ``Prefer`` header fields (RFC 7240 section 2), by lower-case name.

    Several fields and comma-separated lists are read in order, and the
    first instance of a preference wins. Whitespace around ``=``, ``;`` and
    ``,`` is allowed, names are case-insensitive, values may be quoted, and
    parameters after ``;`` are dropped. A preference that cannot be parsed is
    ignored, as the RFC lets a server ignore any preference; one without a
    value maps to ``""``.
    """
    found: dict[str, str] = {}
    for header in header_values:
        for element in _split_outside_quotes(header, ","):
            preference = _split_outside_quotes(element, ";")[0].strip()
            if not preference:
                continue
            name, has_value, raw = preference.partition("=")
            name = name.strip().lower()
            value = _unquote(raw.strip()) if has_value else ""
            if _TOKEN.fullmatch(name) and value is not None:
                found.setdefault(name, value)
    return found


def preferred_wait(header_values: Iterable[str]) -> int | None:
    """Seconds a ``Prefer: wait=N`` asks for, at most ``MAX_WAIT_SECONDS``.

    None when there is no wait preference, when its value is not delta-seconds
    (digits), or when it is 0: the request then answers at once.
    """
    value = preferences(header_values).get("wait")
    if value is None or not _DELTA_SECONDS.fullmatch(value):
        return None
    seconds = min(int(value), MAX_WAIT_SECONDS)
    return seconds or None


def is_final(job: Row) -> bool:
    return JobStatus(job.status) in FINISHED_STATUSES


Read = Callable[[Sequence[uuid.UUID]], Sequence[Row]]


class JobWatch:
    """Watches on some jobs, registered before their rows are read; a context manager
    that unregisters them (also when the request fails)."""

    def __init__(self, redis_url: str, job_ids: Iterable[uuid.UUID], *, kind: str) -> None:
        """``kind``: what waits (``submit``, ``poll``), for the waiting-requests gauge."""
        self._kind = kind
        self._listener = notify.listener(redis_url)
        self._waits: dict[uuid.UUID, notify.JobWait] = {}
        self._watch(job_ids)

    def _watch(self, job_ids: Iterable[uuid.UUID]) -> None:
        # One JobWait per job: a job that had already ended when its row was
        # read is never announced again, and must not hold the others' wake-up.
        for job_id in job_ids:
            old = self._waits.pop(job_id, None)
            self._waits[job_id] = self._listener.watch_jobs([job_id])
            if old is not None:
                self._listener.unwatch(old)

    def close(self) -> None:
        for wait in self._waits.values():
            self._listener.unwatch(wait)
        self._waits.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _sleep(self, job_ids: Iterable[uuid.UUID], deadline: float) -> bool:
        """Until each of the jobs was announced (True) or the deadline passed (False)."""
        for job_id in job_ids:
            if not self._waits[job_id].event.wait(max(0.0, deadline - time.monotonic())):
                return False
        return True

    def wait(self, jobs: Sequence[Row], seconds: float, read: Read) -> list[Row]:
        """The jobs' rows once all are final or ``seconds`` have passed.

        ``jobs`` are their rows read after this watch was registered; ``read``
        reads rows by id (in that order).
        """
        deadline = time.monotonic() + seconds
        rows = list(jobs)
        gauge = JOB_WAITS.labels(kind=self._kind)
        gauge.inc()
        try:
            while True:
                waiting = [job.id for job in rows if not is_final(job)]
                if not waiting:
                    return rows
                woken = self._sleep(waiting, deadline)
                if woken:
                    rows = self._carried(rows)
                    if all(is_final(job) for job in rows):
                        return rows  # the announcements carried the rows: no read
                rows = _merge(rows, read([job.id for job in rows]))
                if not woken or all(is_final(job) for job in rows):
                    return rows
                # Woken before every job ended: the listener reconnected and may
                # have missed announcements. Watch the rest anew, then read again.
                self._watch(job.id for job in rows if not is_final(job))
                rows = _merge(rows, read([job.id for job in rows]))
        finally:
            gauge.dec()

    def _carried(self, rows: Sequence[Any]) -> list[Any]:
        """``rows``, each replaced by the row its announcement carried, if it carried one."""
        out = []
        for row in rows:
            wait = self._waits.get(row.id)
            carried = wait.rows.get(row.id) if wait is not None else None
            out.append(row if carried is None else _announced_row(row, carried))
        return out


def _announced_row(before: Any, carried: dict[str, Any]) -> SimpleNamespace:
    """The row an announcement carried (every column but ``params``, which the
    request already has), with the types the database gives."""
    values = {"vectors": None, **before._asdict(), **carried}
    for name in ("created_at", "started_at", "finished_at"):
        if isinstance(values.get(name), str):
            values[name] = datetime.fromisoformat(values[name])
    if isinstance(values.get("vectors"), str):
        values["vectors"] = base64.b64decode(values["vectors"])
    values["id"] = before.id
    return SimpleNamespace(**values, _asdict=lambda: values)


def _merge(before: Sequence[Row], after: Sequence[Row]) -> list[Row]:
    """``after`` in the order of ``before``, keeping a row that could not be read again."""
    fresh = {job.id: job for job in after}
    return [fresh.get(job.id, job) for job in before]
