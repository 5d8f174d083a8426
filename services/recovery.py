"""Recovery from the job rows: no accepted job waits on a dead worker or a lost message.

The job row is the truth. Run every few seconds (``tasks.recovery``, by Celery
beat), ``recover`` publishes again:

- the running jobs of a worker that stopped beating (``worker.presence``):
  the row names the worker incarnation that started or resumed it, so they
  are known at once, without waiting for the broker's visibility timeout;
- the jobs no worker holds (queued, or released by a worker that could not
  publish their next message) with no live message left in the broker: a
  publish lost between the commit and the broker, or a message reserved by a
  worker that died before starting it. A message is live when it waits in a
  queue, is held by a live worker (it says which at each heartbeat), or was
  reserved too recently for its worker to have said so yet. Jobs whose
  message is live have their claim renewed, so a long backlog is looked at a
  slice at a time and a worker's reserved messages are never published again
  in a loop.

A job goes on from the step its row says it is at: its first task (and
``queued`` again), or a conversation job's next step by its progress. A
message of the dead worker delivered again after the visibility timeout, or a
duplicate from a race here, meets the lifecycle guard (``JobStore``): a
finished job is skipped, a result is stored once, and every write is an
upsert.

Each run looks at ``recovery_batch_size`` jobs of each kind at most, from two
partial indexes; scanning the broker for live messages reads the queues'
lists in Redis (in a script, chunk by chunk), only when some job needs it.
"""

import logging
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import redis
from celery import Celery
from kombu.transport.redis import Channel
from sqlalchemy import Row

from config import Settings
from config.logs import log_context
from models import JobStatus, JobType
from services.dispatch import FIRST_TASK, conversation_pipeline, publish
from services.jobs import JobStore
from worker import presence
from worker.broker import priority_lists
from worker.messages import JobMessage, StepMessage
from worker.queues import Queue, TaskName

log = logging.getLogger(__name__)

LOCK_KEY = "convoq:recovery:lock"

# Which of the wanted job ids appear in a live message. KEYS: kombu's unacked
# hash and its index, then the queues' lists. ARGV: the time after which a
# reserved message counts as live whoever holds it, the number of held
# delivery tags, the tags, then the wanted ids. A message names its job in its
# task id and in the repr of its arguments, so any UUID in it is matched.
_LIVE_JOBS = """
local cutoff = tonumber(ARGV[1])
local held_count = tonumber(ARGV[2])
local held, wanted, found = {}, {}, {}
for i = 3, 2 + held_count do held[ARGV[i]] = true end
for i = 3 + held_count, #ARGV do wanted[ARGV[i]] = true end
local uuid = '%x%x%x%x%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%x%x%x%x%x%x%x%x'
local function scan(raw)
    for id in string.gmatch(raw, uuid) do
        if wanted[id] then found[id] = true end
    end
end
for k = 3, #KEYS do
    local length = redis.call('LLEN', KEYS[k])
    for start = 0, length - 1, 500 do
        for _, raw in ipairs(redis.call('LRANGE', KEYS[k], start, start + 499)) do scan(raw) end
    end
end
local cursor = '0'
repeat
    local page = redis.call('HSCAN', KEYS[1], cursor, 'COUNT', 500)
    cursor = page[1]
    local entries = page[2]
    for i = 1, #entries, 2 do
        local tag = entries[i]
        local live = held[tag]
        if not live then
            local at = redis.call('ZSCORE', KEYS[2], tag)
            live = at and tonumber(at) > cutoff
        end
        if live then scan(entries[i + 1]) end
    end
until cursor == '0'
local out = {}
for id in pairs(found) do table.insert(out, id) end
return out
"""


@dataclass(frozen=True)
class Recovered:
    """What one run did."""

    put_back: int  # running jobs of dead workers, published again
    republished: int  # jobs with no live message, published again
    still_queued: int  # jobs no worker holds yet whose message is live


@dataclass(frozen=True)
class Resumption:
    """Where a job goes on from: the task, its message, and the job's status meanwhile."""

    task: TaskName
    message: JobMessage | StepMessage
    status: JobStatus


def resumption(job: Row) -> Resumption:
    """The message that makes the job go on from where its row says it is.

    A conversation job's progress counts its finished steps (``tasks.conversation``
    and the gpu steps set it as they start), so it names the step to run.
    """
    job_type = JobType(job.type)
    if job_type is JobType.CONVERSATION:
        steps = conversation_pipeline(job.params["summarize"], job.params["embed"])
        step = steps[min(max(job.progress_done, 0), len(steps) - 1)]
        if step is not TaskName.PERSIST_CONVERSATION:
            return Resumption(step, StepMessage(job_id=job.id), JobStatus.RUNNING)
    return Resumption(FIRST_TASK[job_type], JobMessage(job_id=job.id), JobStatus.QUEUED)


def live_job_ids(
    client: redis.Redis,
    job_ids: Iterable[uuid.UUID],
    *,
    held: Iterable[str],
    reserved_after: float,
    waiting: bool = True,
) -> set[uuid.UUID]:
    """Those of ``job_ids`` that a live message names: waiting in a queue (unless not
    ``waiting``), reserved by a worker that holds it (``held`` delivery tags), or
    reserved after ``reserved_after``."""
    wanted = [str(job_id) for job_id in job_ids]
    if not wanted:
        return set()
    held = list(held)
    keys = [Channel.unacked_key, Channel.unacked_index_key]
    if waiting:
        keys += [key for queue in Queue for key in priority_lists(queue.value)]
    found = client.eval(_LIVE_JOBS, len(keys), *keys, reserved_after, len(held), *held, *wanted)
    return {uuid.UUID(raw.decode() if isinstance(raw, bytes) else raw) for raw in found}


def recover(store: JobStore, celery: Celery, client: redis.Redis, settings: Settings) -> Recovered:
    """One run of the sweep; nothing when another run holds the lock."""
    if not client.set(LOCK_KEY, "1", nx=True, ex=max(1, round(settings.recovery_interval_seconds))):
        log.info("recovery already running elsewhere")
        return Recovered(0, 0, 0)
    try:
        return _recover(store, celery, client, settings)
    finally:
        client.delete(LOCK_KEY)


def _recover(store: JobStore, celery: Celery, client: redis.Redis, settings: Settings) -> Recovered:
    dead_after = settings.worker_heartbeat_seconds * presence.MISSED_HEARTBEATS
    limit = settings.recovery_batch_size
    live = presence.live_workers(client, [queue.value for queue in Queue])
    put_back = _publish_again(
        store, celery, store.orphaned(live, grace=dead_after, limit=limit), "worker stopped"
    )
    unclaimed = store.unclaimed(
        after=settings.recovery_unclaimed_after_seconds,
        stale_after=settings.recovery_stale_after_seconds,
        limit=limit,
    )
    if not unclaimed:
        return Recovered(put_back, 0, 0)
    found = live_job_ids(
        client,
        [job.id for job in unclaimed],
        held=presence.held_messages(client, live),
        reserved_after=time.time() - dead_after,
    )
    waiting = [job for job in unclaimed if job.id in found]
    store.reclaim(waiting, {job.id: JobStatus(job.status) for job in waiting})
    lost = [job for job in unclaimed if job.id not in found]
    republished = _publish_again(store, celery, lost, "no live message")
    return Recovered(put_back, republished, len(waiting))


def _publish_again(store: JobStore, celery: Celery, jobs: Sequence[Row], reason: str) -> int:
    """Take the jobs back from their worker and publish each from its step; how many."""
    plans = {job.id: resumption(job) for job in jobs}
    taken = store.reclaim(jobs, {job_id: plan.status for job_id, plan in plans.items()})
    if not taken:
        return 0
    # A publish that fails leaves the jobs unclaimed: the next run finds them again.
    publish(celery, [(plans[job_id].task, plans[job_id].message) for job_id in taken])
    for job in jobs:
        if job.id in taken:
            with log_context(job_id=str(job.id)):
                log.warning(
                    "job published again",
                    extra={"reason": reason, "worker": job.worker, "task": plans[job.id].task},
                )
    return len(taken)
