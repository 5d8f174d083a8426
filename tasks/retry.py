"""What a task retries on, and for how long: exponential backoff with jitter, bounded.

A transient error (PostgreSQL, Redis or Milvus away) puts the task's message
back with a delay; once ``RetrySettings.max_retries`` are spent the job fails
with ``dependency_unavailable`` (``JobFrame.give_up``).
"""

import random
from collections.abc import Callable

from kombu.exceptions import OperationalError as BrokerError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from config.settings import RetrySettings
from vectorstore import TRANSIENT_MILVUS_ERRORS

# Failures that go away on their own: a database restart or a dropped
# connection, Redis restarting, Milvus busy or restarting.
TRANSIENT_ERRORS: tuple[type[Exception], ...] = (
    OperationalError,
    InterfaceError,
    PoolTimeoutError,
    RedisConnectionError,
    RedisTimeoutError,
    BrokerError,
    *TRANSIENT_MILVUS_ERRORS,
)

# 2**64 seconds is past any sensible backoff_max: larger exponents only overflow.
_MAX_EXPONENT = 64


def backoff_delay(
    retries: int, policy: RetrySettings, *, rand: Callable[[], float] = random.random
) -> float | None:
    """Seconds to wait before the next try of a task retried ``retries`` times so far,
    or None once ``policy.max_retries`` are spent.

    ``backoff * 2**retries``, capped at ``backoff_max``, less up to half of it
    at random: jobs that failed together do not all come back together, and
    the total wait never falls below half the exponential one.
    """
    if retries >= policy.max_retries:
        return None
    delay = min(policy.backoff_max, policy.backoff * 2.0 ** min(retries, _MAX_EXPONENT))
    return delay * (1.0 - 0.5 * rand())


def retry_window(policy: RetrySettings) -> tuple[float, float]:
    """The least and the most time a task waits in all, over every retry it is allowed."""
    longest = [backoff_delay(n, policy, rand=lambda: 0.0) or 0.0 for n in range(policy.max_retries)]
    return sum(longest) / 2, sum(longest)
