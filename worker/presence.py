"""Which workers are alive, per pool, without asking them.

A broadcast ``inspect ping`` waits its whole timeout for workers that never
answer. Instead each worker's main process writes a heartbeat into a Redis
sorted set of its pool (member: its hostname, score: when it counts as gone),
and counting a pool's workers is one ``ZCOUNT``.
"""

import logging
import threading

import redis

log = logging.getLogger(__name__)

# A worker counts as gone after missing this many heartbeats.
MISSED_HEARTBEATS = 3


def pool_key(pool: str) -> str:
    return f"convoq:workers:{pool}"


def _redis_now(client: redis.Redis) -> float:
    # The server's clock, so workers on other machines agree on "now".
    seconds, microseconds = client.time()
    return seconds + microseconds / 1_000_000


def beat(client: redis.Redis, pool: str, hostname: str, interval: float) -> None:
    """Say ``hostname`` of ``pool`` is alive for the next ``MISSED_HEARTBEATS`` intervals."""
    now = _redis_now(client)
    with client.pipeline(transaction=False) as pipe:
        pipe.zadd(pool_key(pool), {hostname: now + interval * MISSED_HEARTBEATS})
        pipe.zremrangebyscore(pool_key(pool), "-inf", now)
        pipe.execute()


def leave(client: redis.Redis, pool: str, hostname: str) -> None:
    """Take ``hostname`` out of ``pool`` at once (a clean shutdown)."""
    client.zrem(pool_key(pool), hostname)


def workers(client: redis.Redis, pools: list[str]) -> dict[str, int]:
    """Workers alive in each pool."""
    now = _redis_now(client)
    with client.pipeline(transaction=False) as pipe:
        for pool in pools:
            pipe.zcount(pool_key(pool), f"({now}", "+inf")
        counts = pipe.execute()
    return dict(zip(pools, counts, strict=True))


class Heartbeat:
    """A daemon thread beating for one worker until ``stop()``."""

    def __init__(
        self, client: redis.Redis, pools: list[str], hostname: str, interval: float
    ) -> None:
        self.client = client
        self.pools = pools
        self.hostname = hostname
        self.interval = interval
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="convoq-heartbeat", daemon=True)

    def start(self) -> "Heartbeat":
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stopped.is_set():
            try:
                for pool in self.pools:
                    beat(self.client, pool, self.hostname, self.interval)
            except redis.RedisError as exc:
                log.warning("worker heartbeat failed", extra={"error": str(exc)})
            self._stopped.wait(self.interval)

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=self.interval)
        try:
            for pool in self.pools:
                leave(self.client, pool, self.hostname)
        except redis.RedisError as exc:
            log.warning("could not remove the worker's heartbeat", extra={"error": str(exc)})
