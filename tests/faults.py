"""Fault injection for worker subprocesses, loaded with ``--include tests.faults``.

A text containing ``HANG`` makes the model call hang the way stuck native code
does: it never returns to Python, and the signals that carry soft time limits
(SIGALRM in the solo pool, SIGUSR1 in prefork) are held off meanwhile.
"""

import signal
import time

from inference.embedder import Embedder

HANG = "__hang_in_native_code__"

_encode = Embedder.encode


def _encode_or_hang(self, texts, batch_size):
    if any(HANG in text for text in texts):
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM, signal.SIGUSR1})
        time.sleep(600)
    return _encode(self, texts, batch_size)


Embedder.encode = _encode_or_hang
