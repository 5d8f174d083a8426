"""The scaling rule, and the state of every pool it is applied to.

``GET /v1/queues``, the API's ``/metrics`` and the KEDA ScaledObjects in
``deploy/k8s`` all follow the same rule: ``ceil(depth / target_per_worker)``
replicas, clamped to the pool's minimum and maximum.
"""

import math
from dataclasses import dataclass

import redis

from config import Settings
from config.settings import PoolScaling
from worker import broker, presence
from worker.queues import Queue


def recommended_replicas(depth: int, rule: PoolScaling) -> int:
    """Workers a pool should run for ``depth`` messages."""
    wanted = math.ceil(depth / rule.target_per_worker)
    return max(rule.min_replicas, min(rule.max_replicas, wanted))


@dataclass(frozen=True)
class PoolState:
    """One pool (its queue has the same name): depth, live workers, and the rule's answer."""

    depth: broker.QueueDepth
    workers: int
    rule: PoolScaling

    @property
    def recommended_replicas(self) -> int:
        return recommended_replicas(self.depth.total, self.rule)


def pool_states(client: redis.Redis, settings: Settings) -> dict[str, PoolState]:
    """Every pool's state, read from Redis in three round trips."""
    pools = [queue.value for queue in Queue]
    depths = broker.queue_depths(client, pools)
    alive = presence.workers(client, pools)
    return {
        pool: PoolState(
            depth=depths[pool], workers=alive[pool], rule=getattr(settings.scaling, pool)
        )
        for pool in pools
    }
