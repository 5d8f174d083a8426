"""Erasure: a user or a conversation forgotten in every store (the right to be forgotten).

``DELETE /v1/users/<id>`` or ``DELETE /v1/conversations/<id>`` writes an
``erasures`` row (``pending``) and an audit row in one transaction, and sends
``tasks.erasure.erase``. Each run of that task (``run``) goes through the
stores in an order that lets no job write the data back:

1. PostgreSQL, in one transaction: the target's queued and running jobs are
   canceled, then its conversations (with their messages and summaries) and
   every job whose parameters name the user or the conversation are deleted.
   Once this commits, no job of the target can start or write there again:
   every step of a job goes on only while its row says running (``JobStore``'s
   guarded updates), the persist step share-locks its job's row in the
   statement that creates the conversation (``ConversationStore.persist``),
   and a summary is stored only while its conversation exists.
2. Jobs that had started when they were canceled may be in the middle of a
   step, about to upsert to Milvus. Every step holds its message reserved
   and unacknowledged until it returns (``task_acks_late``). So the run waits
   (retrying with backoff) until no message a live worker has reserved names
   one of those jobs (``services.recovery.live_job_ids``): from then on,
   nothing more is written for them (a step delivered later finds the row
   gone). A worker that died mid-step writes nothing more either.
3. Milvus: every vector of the tenant with that user id (and, for a user, in
   any of their conversations), or with that conversation id, is counted,
   deleted, and counted again: the run goes on only once none is left.
4. Redis: search requests waiting on the gpu pool's lane whose filter names
   the user or the conversation are taken off it (and answered with no
   hits). Celery's messages carry only ids, and nothing else is cached.

Then the erasure has succeeded, with what each store gave up counted in
``removed``, and an audit row says so. Every stage is idempotent: a run
stopped anywhere is run again from the start (by its retry, or by
``tasks.erasure.resend_erasures`` for a message that was lost) and counts
only what is left. A second request while one is underway gets the same
erasure; one made after it finished is a new erasure, which finds nothing.
"""

import copy
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import redis
from celery import Celery
from sqlalchemy import (
    Connection,
    Row,
    String,
    Uuid,
    any_,
    bindparam,
    delete,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as pg_insert

from models import (
    UNFINISHED_ERASURE_STATUSES,
    UNFINISHED_PREDICATE,
    AuditLog,
    Conversation,
    Erasure,
    ErasureStatus,
    ErasureTarget,
    Job,
    Message,
    Summary,
)
from models.db import transaction
from services.gpu_rpc import lane_key
from services.jobs import JobStore, cancel_where
from services.notify import publish_reply
from services.recovery import live_job_ids
from worker import presence
from worker.messages import (
    ErasureMessage,
    MalformedMessage,
    SearchReply,
    SearchRequest,
    read_interactive,
    task_args,
)
from worker.queues import Queue, TaskName

if TYPE_CHECKING:
    # Only the workers touch Milvus: the API, which imports this module, never loads pymilvus.
    from vectorstore import MemoryStore

log = logging.getLogger(__name__)

ERASURES = Erasure.__table__
JOBS = Job.__table__
CONVERSATIONS = Conversation.__table__

# What ``removed`` counts, by store; every count starts at 0.
REMOVED_KEYS = {
    "postgresql": ("conversations", "messages", "summaries", "jobs", "jobs_canceled"),
    "milvus": ("vectors",),
    "redis": ("search_requests",),
}
# Conversation ids per Milvus filter: an expression stays a few tens of kilobytes.
MILVUS_IDS_PER_FILTER = 500
# Jobs run at 6 and housekeeping at 0 (Redis serves 0 first): erasures in between.
ERASURE_PRIORITY = 3
# How long an error kept on the row may be.
MAX_ERROR_CHARS = 500

AUDIT_ACTIONS = {ErasureTarget.USER: "user.erase", ErasureTarget.CONVERSATION: "conversation.erase"}


class ErasureNotDone(Exception):
    """Something of the target may still be written or is still there: run again later."""


def no_removals() -> dict[str, dict[str, int]]:
    return {store: dict.fromkeys(keys, 0) for store, keys in REMOVED_KEYS.items()}


def _added(removed: dict[str, Any], store: str, counts: dict[str, int]) -> dict[str, Any]:
    total = copy.deepcopy(removed) or no_removals()
    section = total.setdefault(store, {})
    for key, count in counts.items():
        section[key] = section.get(key, 0) + count
    return total


def _audit(
    connection: Connection,
    erasure: Row,
    outcome: str,
    details: dict[str, Any] | None = None,
    *,
    actor: str | None = None,
) -> None:
    """An audit row for the erasure (by ``actor``, or the key that asked for it):
    ids and counts only, never erased text."""
    connection.execute(
        insert(AuditLog.__table__).values(
            tenant_id=erasure.tenant_id,
            actor=actor or erasure.actor,
            action=AUDIT_ACTIONS[ErasureTarget(erasure.target_type)],
            target_type=erasure.target_type,
            target_id=erasure.target_id,
            details={"outcome": outcome, "erasure_id": str(erasure.id), **(details or {})},
        )
    )


# -- requests (the API) --------------------------------------------------------


@dataclass(frozen=True)
class Requested:
    erasure: Row
    # False when an erasure of the target was already underway: this is that one.
    created: bool


def request_erasure(
    database_url: str,
    tenant_id: uuid.UUID,
    target: ErasureTarget,
    target_id: str,
    *,
    actor: str,
) -> Requested:
    """The target's unfinished erasure, made now if there is none, audited either way."""
    with transaction(database_url) as connection:
        while True:
            erasure = connection.execute(
                pg_insert(ERASURES)
                .values(
                    id=uuid.uuid4(),
                    tenant_id=tenant_id,
                    target_type=target.value,
                    target_id=target_id,
                    status=ErasureStatus.PENDING.value,
                    actor=actor,
                    attempts=0,
                    removed=no_removals(),
                )
                .on_conflict_do_nothing(
                    index_elements=["tenant_id", "target_type", "target_id"],
                    # Literal, as the index's predicate is: a prepared statement's
                    # parameters would not let PostgreSQL match it to the index.
                    index_where=UNFINISHED_PREDICATE,
                )
                .returning(*ERASURES.c)
            ).one_or_none()
            created = erasure is not None
            if erasure is None:
                erasure = connection.execute(
                    select(*ERASURES.c).where(
                        ERASURES.c.tenant_id == tenant_id,
                        ERASURES.c.target_type == target.value,
                        ERASURES.c.target_id == target_id,
                        ERASURES.c.status.in_(UNFINISHED_ERASURE_STATUSES),
                    )
                ).one_or_none()
            # None: the one in the way finished between the two statements.
            if erasure is not None:
                break
        _audit(connection, erasure, "requested", {"new": created}, actor=actor)
    return Requested(erasure, created)


def get_erasure(database_url: str, tenant_id: uuid.UUID, erasure_id: uuid.UUID) -> Row | None:
    with transaction(database_url) as connection:
        return connection.execute(
            select(*ERASURES.c).where(
                ERASURES.c.id == erasure_id, ERASURES.c.tenant_id == tenant_id
            )
        ).one_or_none()


def send(celery: Celery, erasure_ids: Sequence[uuid.UUID]) -> None:
    """Send each erasure's task, in one round trip, ahead of the jobs on the cpu queue:
    the target's queued jobs are canceled before their turn comes."""
    with celery.producer_or_acquire() as producer, producer.batch():
        for erasure_id in erasure_ids:
            celery.send_task(
                TaskName.ERASE.value,
                args=task_args(ErasureMessage(erasure_id=erasure_id)),
                producer=producer,
                ignore_result=True,
                priority=ERASURE_PRIORITY,
            )


# -- runs (the worker) ---------------------------------------------------------


@dataclass(frozen=True)
class Stores:
    """What a run works on: the stores, and what tells it whether a job's step is
    still underway somewhere (``live_job_ids`` on the broker, by default)."""

    database_url: str
    memory: "MemoryStore"
    redis: redis.Redis
    redis_url: str
    jobs: JobStore
    still_underway: Callable[[Sequence[uuid.UUID]], set[uuid.UUID]]
    # Told the ids of the jobs canceled, to revoke their tasks.
    revoke: Callable[[list[str]], None] = lambda task_ids: None


def broker_underway(client: redis.Redis, heartbeat_seconds: float) -> Callable:
    """``Stores.still_underway`` from the broker: the jobs named by a message a live
    worker has reserved. One still waiting in a queue is no matter: whoever gets it
    finds the job's row gone and skips it."""
    dead_after = heartbeat_seconds * presence.MISSED_HEARTBEATS

    def underway(job_ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
        if not job_ids:
            return set()
        live = presence.live_workers(client, [queue.value for queue in Queue])
        return live_job_ids(
            client,
            job_ids,
            held=presence.held_messages(client, live),
            reserved_after=time.time() - dead_after,
            waiting=False,
        )

    return underway


def run(stores: Stores, erasure_id: uuid.UUID) -> Row | None:
    """One run of an erasure: every stage, in order; the row once it has succeeded,
    or None when it had ended already (a message delivered twice).

    Raises ``ErasureNotDone`` while a canceled job's step is still underway or
    Milvus still holds vectors of the target, and the stores' own errors when
    one is away: the caller runs it again later.
    """
    erasure = _claim(stores.database_url, erasure_id)
    if erasure is None:
        return None
    erasure = _erase_rows(stores, erasure)
    underway = stores.still_underway(list(erasure.waiting_on))
    if underway:
        raise ErasureNotDone(f"{len(underway)} canceled job(s) still have a step underway")
    erasure = _erase_vectors(stores, erasure)
    erasure = _erase_requests(stores, erasure)
    return _succeed(stores.database_url, erasure)


def _claim(database_url: str, erasure_id: uuid.UUID) -> Row | None:
    with transaction(database_url) as connection:
        return connection.execute(
            update(ERASURES)
            .where(
                ERASURES.c.id == erasure_id,
                ERASURES.c.status.in_(UNFINISHED_ERASURE_STATUSES),
            )
            .values(
                status=ErasureStatus.RUNNING.value,
                attempts=ERASURES.c.attempts + 1,
                started_at=func.coalesce(ERASURES.c.started_at, func.now()),
                claimed_at=func.now(),
            )
            .returning(*ERASURES.c)
        ).one_or_none()


def _locked(connection: Connection, erasure_id: uuid.UUID) -> Row:
    """The erasure's row, locked: two runs of it add their counts one after the other."""
    return connection.execute(
        select(*ERASURES.c).where(ERASURES.c.id == erasure_id).with_for_update()
    ).one()


def _uuids(values: Iterable[uuid.UUID]) -> Any:
    return bindparam(None, list(values), type_=ARRAY(Uuid))


def _strings(values: Iterable[str]) -> Any:
    return bindparam(None, list(values), type_=ARRAY(String))


def _erase_rows(stores: Stores, erasure: Row) -> Row:
    """Stage 1: cancel the target's jobs, delete its conversations and jobs, one commit."""
    target = ErasureTarget(erasure.target_type)
    tenant_id = erasure.tenant_id
    params = JOBS.c.params
    with transaction(stores.database_url) as connection:
        erasure = _locked(connection, erasure.id)
        if target is ErasureTarget.USER:
            owned = select(CONVERSATIONS.c.external_id).where(
                CONVERSATIONS.c.tenant_id == tenant_id,
                CONVERSATIONS.c.user_id == erasure.target_id,
            )
            # First: a persist step underway holds its job's row, so this waits for it
            # to commit, and the conversations read next include what it stored.
            canceled = cancel_where(
                connection,
                tenant_id,
                or_(
                    params["user_id"].astext == erasure.target_id,
                    params["conversation_id"].astext.in_(owned),
                ),
            )
            whose = CONVERSATIONS.c.user_id == erasure.target_id
        else:
            canceled = cancel_where(
                connection, tenant_id, params["conversation_id"].astext == erasure.target_id
            )
            whose = CONVERSATIONS.c.external_id == erasure.target_id
        conversations = connection.execute(
            select(CONVERSATIONS.c.id, CONVERSATIONS.c.external_id)
            .where(CONVERSATIONS.c.tenant_id == tenant_id, whose)
            .with_for_update()
        ).all()
        pks = [row.id for row in conversations]
        counts = {"jobs_canceled": len(canceled)}
        for name, table in (("summaries", Summary.__table__), ("messages", Message.__table__)):
            counts[name] = connection.execute(
                delete(table).where(table.c.conversation_id == any_(_uuids(pks)))
            ).rowcount
        counts["conversations"] = connection.execute(
            delete(CONVERSATIONS).where(CONVERSATIONS.c.id == any_(_uuids(pks)))
        ).rowcount
        conversation_ids = sorted(
            set(erasure.conversation_ids) | {row.external_id for row in conversations}
        )
        if target is ErasureTarget.USER:
            named = or_(
                params["user_id"].astext == erasure.target_id,
                params["conversation_id"].astext == any_(_strings(conversation_ids)),
            )
        else:
            named = params["conversation_id"].astext == erasure.target_id
        counts["jobs"] = connection.execute(
            delete(JOBS).where(JOBS.c.tenant_id == tenant_id, named)
        ).rowcount
        started = {row.id for row in canceled if row.started_at is not None}
        erasure = connection.execute(
            update(ERASURES)
            .where(ERASURES.c.id == erasure.id)
            .values(
                removed=_added(erasure.removed, "postgresql", counts),
                conversation_ids=conversation_ids
                if target is ErasureTarget.USER
                else erasure.conversation_ids,
                waiting_on=sorted(set(erasure.waiting_on) | started),
            )
            .returning(*ERASURES.c)
        ).one()
    if canceled:
        stores.jobs.announce_canceled(canceled)
        stores.revoke([str(row.id) for row in canceled])
    if any(counts.values()):
        log.info("erasure: rows deleted", extra={"erasure_id": str(erasure.id), **counts})
    return erasure


def _milvus_filters(erasure: Row) -> list[dict[str, Any]]:
    if ErasureTarget(erasure.target_type) is ErasureTarget.CONVERSATION:
        return [{"conversation_id": erasure.target_id}]
    # A conversation's first vectors may predate its user (a job without user_id).
    ids = list(erasure.conversation_ids)
    return [{"user_id": erasure.target_id}] + [
        {"conversation_ids": ids[start : start + MILVUS_IDS_PER_FILTER]}
        for start in range(0, len(ids), MILVUS_IDS_PER_FILTER)
    ]


def _erase_vectors(stores: Stores, erasure: Row) -> Row:
    """Stage 3: count, delete and count again every vector of the target."""
    tenant = str(erasure.tenant_id)
    found = 0
    for selector in _milvus_filters(erasure):
        count = stores.memory.count(tenant, **selector)
        if count:
            stores.memory.delete(tenant, **selector)
            found += count
            if stores.memory.count(tenant, **selector):
                raise ErasureNotDone("Milvus still holds vectors of the target after a delete")
    return _add(stores.database_url, erasure, "milvus", {"vectors": found})


def _erase_requests(stores: Stores, erasure: Row) -> Row:
    """Stage 4: the target's search requests waiting on the gpu lane, taken off it."""
    key = lane_key(stores.redis_url)
    tenant = str(erasure.tenant_id)
    if ErasureTarget(erasure.target_type) is ErasureTarget.USER:
        conversations = set(erasure.conversation_ids)

        def names(request: SearchRequest) -> bool:
            return request.user_id == erasure.target_id or request.conversation_id in conversations
    else:

        def names(request: SearchRequest) -> bool:
            return request.conversation_id == erasure.target_id

    taken = 0
    for raw in stores.redis.lrange(key, 0, -1):
        try:
            request = read_interactive(raw)
        except MalformedMessage:
            continue
        if not isinstance(request, SearchRequest) or request.tenant != tenant:
            continue
        if names(request) and stores.redis.lrem(key, 1, raw):
            taken += 1
            # Nothing of the target is left to find: whoever waits gets that answer now.
            reply = SearchReply(id=request.id, hits=[]).model_dump_json().encode()
            publish_reply(stores.redis, request.reply_to, request.id, reply)
    return _add(stores.database_url, erasure, "redis", {"search_requests": taken})


def _add(database_url: str, erasure: Row, store: str, counts: dict[str, int]) -> Row:
    if not any(counts.values()):
        return erasure
    with transaction(database_url) as connection:
        current = _locked(connection, erasure.id)
        return connection.execute(
            update(ERASURES)
            .where(ERASURES.c.id == erasure.id)
            .values(removed=_added(current.removed, store, counts))
            .returning(*ERASURES.c)
        ).one()


def _succeed(database_url: str, erasure: Row) -> Row | None:
    """Stage 5: the erasure has succeeded; the ids it kept while underway are dropped."""
    with transaction(database_url) as connection:
        done = connection.execute(
            update(ERASURES)
            .where(
                ERASURES.c.id == erasure.id,
                ERASURES.c.status.in_(UNFINISHED_ERASURE_STATUSES),
            )
            .values(
                status=ErasureStatus.SUCCEEDED.value,
                finished_at=func.now(),
                conversation_ids=[],
                waiting_on=[],
                error=None,
            )
            .returning(*ERASURES.c)
        ).one_or_none()
        if done is not None:
            _audit(connection, done, "succeeded", {"removed": done.removed})
    return done


def note_retry(database_url: str, erasure_id: uuid.UUID, exc: BaseException) -> None:
    """Keep on the row why the run will be tried again (it stays underway)."""
    with transaction(database_url) as connection:
        connection.execute(
            update(ERASURES)
            .where(
                ERASURES.c.id == erasure_id,
                ERASURES.c.status.in_(UNFINISHED_ERASURE_STATUSES),
            )
            .values(error=describe(exc))
        )


def leave_for_sweep(database_url: str, erasure_id: uuid.UUID, exc: BaseException) -> None:
    """Retries spent: back to ``pending``; ``resend_erasures`` sends it again later."""
    with transaction(database_url) as connection:
        connection.execute(
            update(ERASURES)
            .where(ERASURES.c.id == erasure_id, ERASURES.c.status == ErasureStatus.RUNNING.value)
            .values(status=ErasureStatus.PENDING.value, error=describe(exc), claimed_at=func.now())
        )


def fail(database_url: str, erasure_id: uuid.UUID, exc: BaseException) -> None:
    """An error no retry will cure (a bug): the erasure failed, and the audit log says
    so. Asking again makes a new erasure."""
    with transaction(database_url) as connection:
        failed = connection.execute(
            update(ERASURES)
            .where(
                ERASURES.c.id == erasure_id,
                ERASURES.c.status.in_(UNFINISHED_ERASURE_STATUSES),
            )
            .values(status=ErasureStatus.FAILED.value, error=describe(exc), finished_at=func.now())
            .returning(*ERASURES.c)
        ).one_or_none()
        if failed is not None:
            _audit(connection, failed, "failed", {"removed": failed.removed})


def describe(exc: BaseException) -> str:
    """An error as kept on the row: its type and message, cut short."""
    return f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS]


def stalled_erasures(database_url: str, *, quiet_for: float, limit: int) -> list[uuid.UUID]:
    """Unfinished erasures no run has taken up for ``quiet_for`` seconds (their message
    was lost, or their retries ran out), claimed now so the next sweep skips them."""
    quiet = (
        select(ERASURES.c.id)
        .where(
            ERASURES.c.status.in_(UNFINISHED_ERASURE_STATUSES),
            ERASURES.c.claimed_at < func.now() - func.make_interval(0, 0, 0, 0, 0, 0, quiet_for),
        )
        .order_by(ERASURES.c.claimed_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    with transaction(database_url) as connection:
        rows = connection.execute(
            update(ERASURES)
            .where(ERASURES.c.id.in_(quiet.scalar_subquery()))
            .values(claimed_at=func.now())
            .returning(ERASURES.c.id)
        ).all()
    return [row.id for row in rows]
