"""Which workers are alive, per pool, without asking them, and what they hold.

A broadcast ``inspect ping`` waits its whole timeout for workers that never
answer. Instead each worker's main process writes a heartbeat into a Redis
sorted set of its pool (member: its identity, score: when it counts as gone),
and counting a pool's workers is one ``ZCOUNT``.

The identity is made once per worker start (``claim_identity``): a worker
killed and started again under the same Celery hostname is another
incarnation, and the jobs the dead one held must not look held by the new
one. The same identity is written on the job rows a worker starts
(``JobStore.start_many``), so the recovery sweep (``services.recovery``) can
tell which running jobs lost their worker.

With each heartbeat a worker also writes the delivery tags of the messages it
has reserved and not yet acknowledged (``held_key``): the sweep counts those
messages as live, and every other unacknowledged message that has waited past
the heartbeat's expiry as lost with its dead worker.
"""

import logging
import threading
import uuid
from collections.abc import Callable, Iterable

import redis

log = logging.getLogger(__name__)

# A worker counts as gone after missing this many heartbeats.
MISSED_HEARTBEATS = 3


_identity: str | None = None


def claim_identity(hostname: str) -> str:
    """Make this worker's identity (in its main process, before its pool forks)."""
    global _identity
    _identity = f"{hostname}#{uuid.uuid4().hex[:12]}"
    return _identity


def worker_identity() -> str | None:
    """This worker incarnation's identity; None outside a worker."""
    return _identity


def pool_key(pool: str) -> str:
    return f"convoq:workers:{pool}"


def held_key(identity: str) -> str:
    return f"convoq:held:{identity}"


def _redis_now(client: redis.Redis) -> float:
    # The server's clock, so workers on other machines agree on "now".
    seconds, microseconds = client.time()
    return seconds + microseconds / 1_000_000


def beat(
    client: redis.Redis,
    pools: Iterable[str],
    identity: str,
    interval: float,
    held: Iterable[str] = (),
) -> None:
    """Say ``identity`` (of each of ``pools``) is alive for the next ``MISSED_HEARTBEATS``
    intervals, holding the messages whose delivery tags are ``held``."""
    now = _redis_now(client)
    expiry = interval * MISSED_HEARTBEATS
    held = list(held)
    with client.pipeline(transaction=True) as pipe:
        for pool in pools:
            pipe.zadd(pool_key(pool), {identity: now + expiry})
            pipe.zremrangebyscore(pool_key(pool), "-inf", now)
        pipe.delete(held_key(identity))
        if held:
            pipe.sadd(held_key(identity), *held)
            pipe.expire(held_key(identity), max(1, round(expiry)))
        pipe.execute()


def leave(client: redis.Redis, pools: Iterable[str], identity: str) -> None:
    """Take ``identity`` out of ``pools`` at once (a clean shutdown)."""
    with client.pipeline(transaction=False) as pipe:
        for pool in pools:
            pipe.zrem(pool_key(pool), identity)
        pipe.delete(held_key(identity))
        pipe.execute()


def live_workers(client: redis.Redis, pools: Iterable[str]) -> set[str]:
    """The identities of the workers alive in any of ``pools``."""
    now = _redis_now(client)
    with client.pipeline(transaction=False) as pipe:
        for pool in pools:
            pipe.zrangebyscore(pool_key(pool), f"({now}", "+inf")
        members = pipe.execute()
    return {m.decode() if isinstance(m, bytes) else m for found in members for m in found}


def held_messages(client: redis.Redis, identities: Iterable[str]) -> set[str]:
    """The delivery tags of the messages these workers said they hold."""
    keys = [held_key(identity) for identity in identities]
    if not keys:
        return set()
    return {m.decode() if isinstance(m, bytes) else m for m in client.sunion(keys)}


def workers(client: redis.Redis, pools: list[str]) -> dict[str, int]:
    """Workers alive in each pool."""
    now = _redis_now(client)
    with client.pipeline(transaction=False) as pipe:
        for pool in pools:
            pipe.zcount(pool_key(pool), f"({now}", "+inf")
        counts = pipe.execute()
    return dict(zip(pools, counts, strict=True))


class Heartbeat:
    """A daemon thread beating for one worker until ``stop()``; ``held()`` gives the
    delivery tags of the messages it holds at each beat."""

    def __init__(
        self,
        client: redis.Redis,
        pools: list[str],
        identity: str,
        interval: float,
        held: Callable[[], Iterable[str]] = tuple,
    ) -> None:
        self.client = client
        self.pools = pools
        self.identity = identity
        self.interval = interval
        self.held = held
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="convoq-heartbeat", daemon=True)

    def start(self) -> "Heartbeat":
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stopped.is_set():
            try:
                beat(self.client, self.pools, self.identity, self.interval, self.held())
            except redis.RedisError as exc:
                log.warning("worker heartbeat failed", extra={"error": str(exc)})
            self._stopped.wait(self.interval)

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=self.interval)
        try:
            leave(self.client, self.pools, self.identity)
        except redis.RedisError as exc:
            log.warning("could not remove the worker's heartbeat", extra={"error": str(exc)})
