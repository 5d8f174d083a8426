"""Soft and hard time limits for pools where Celery cannot enforce them.

Celery enforces ``task_soft_time_limit`` and ``task_time_limit`` only in the
prefork pool. The gpu pool runs ``--pool solo``, so there the limits are
enforced here: the soft limit raises ``SoftTimeLimitExceeded`` in the task
through ``SIGALRM``; the hard limit, for a task stuck in native code that
never returns to Python, runs ``on_hard_timeout`` and then ends the process
so its supervisor starts a fresh one.
"""

import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

from celery.exceptions import SoftTimeLimitExceeded

log = logging.getLogger(__name__)

_enforced_here = False


def enforce_in_this_process() -> None:
    """Called by a worker whose pool runs tasks in its main thread (solo)."""
    global _enforced_here
    _enforced_here = True


def _raise_soft_limit(signum: int, frame: FrameType | None) -> None:
    raise SoftTimeLimitExceeded()


@contextmanager
def time_limits(
    soft: float | None, hard: float | None, on_hard_timeout: Callable[[], None]
) -> Iterator[None]:
    """Apply the limits around a task body, when this process enforces them."""
    if not _enforced_here or threading.current_thread() is not threading.main_thread():
        yield
        return
    watchdog = None
    if hard:
        watchdog = threading.Timer(hard, _hard_timeout, args=(hard, on_hard_timeout))
        watchdog.daemon = True
        watchdog.start()
    previous = signal.signal(signal.SIGALRM, _raise_soft_limit)
    if soft:
        signal.setitimer(signal.ITIMER_REAL, soft)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if watchdog is not None:
            watchdog.cancel()


def _hard_timeout(seconds: float, on_hard_timeout: Callable[[], None]) -> None:
    log.critical("hard time limit of %ss exceeded; ending the worker process", seconds)
    try:
        on_hard_timeout()
    finally:
        os._exit(70)
