"""What waits in the Redis broker, per queue: the lists and the unacknowledged messages.

Kombu keeps one Redis list per priority step (``cpu``, ``cpu\\x06\\x163``,
``cpu\\x06\\x166``, ``cpu\\x06\\x169``) and every message a worker has
reserved but not yet acknowledged in one hash (``unacked``), whatever its
queue. A queue's depth is both: a worker holding 128 messages for its next
batch is still that many messages of work.
"""

from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache

import redis
from kombu.transport.redis import PRIORITY_STEPS, Channel

# Seconds a depth read may take before the caller gives up on it.
BROKER_READ_TIMEOUT = 0.5

# Counts the unacknowledged messages per routing key inside Redis, so the
# messages themselves (up to megabytes each) never cross the network. Each
# hash value is kombu's JSON ``[message, exchange, routing_key]``.
_COUNT_UNACKED = """
local counts = {}
for _, entry in ipairs(redis.call('HVALS', KEYS[1])) do
    local routing_key = string.match(entry, '"([^"]*)"%s*%]%s*$')
    if routing_key then
        counts[routing_key] = (counts[routing_key] or 0) + 1
    end
end
local flat = {}
for routing_key, count in pairs(counts) do
    table.insert(flat, routing_key)
    table.insert(flat, count)
end
return flat
"""


@dataclass(frozen=True)
class QueueDepth:
    """Messages of one queue: waiting in the broker, and reserved by workers."""

    waiting: int
    unacked: int

    @property
    def total(self) -> int:
        return self.waiting + self.unacked


@cache
def broker_client(url: str) -> redis.Redis:
    """A Redis client for depth reads, with short timeouts; one per process and URL."""
    return redis.Redis.from_url(
        url,
        socket_timeout=BROKER_READ_TIMEOUT,
        socket_connect_timeout=BROKER_READ_TIMEOUT,
    )


def priority_lists(queue: str) -> list[str]:
    """The Redis lists kombu keeps for ``queue``, one per priority step."""
    return [f"{queue}{Channel.sep}{step}" if step else queue for step in PRIORITY_STEPS]


def waiting(client: redis.Redis, queues: Iterable[str]) -> dict[str, int]:
    """Messages waiting in each queue's lists, every priority included."""
    queues = list(queues)
    with client.pipeline(transaction=False) as pipe:
        for queue in queues:
            for key in priority_lists(queue):
                pipe.llen(key)
        lengths = pipe.execute()
    steps = len(PRIORITY_STEPS)
    return {queue: sum(lengths[i * steps : (i + 1) * steps]) for i, queue in enumerate(queues)}


def unacked(client: redis.Redis) -> dict[str, int]:
    """Messages reserved by workers and not yet acknowledged, per routing key."""
    flat = client.eval(_COUNT_UNACKED, 1, Channel.unacked_key)
    return {
        (key.decode() if isinstance(key, bytes) else key): int(count)
        for key, count in zip(flat[::2], flat[1::2], strict=True)
    }


def queue_depths(client: redis.Redis, queues: Iterable[str]) -> dict[str, QueueDepth]:
    """Waiting and unacknowledged messages of each queue (routed by its own name)."""
    queues = list(queues)
    waiting_by_queue = waiting(client, queues)
    unacked_by_queue = unacked(client)
    return {
        queue: QueueDepth(waiting=waiting_by_queue[queue], unacked=unacked_by_queue.get(queue, 0))
        for queue in queues
    }
