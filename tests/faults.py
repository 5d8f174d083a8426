"""Fault injection for worker subprocesses, loaded with ``--include tests.faults``.

- A text containing ``HANG`` makes the model call (gpu) or the storing of a
  conversation's messages (cpu) hang the way stuck native code does: it never
  returns to Python, and the signals that carry soft time limits (SIGALRM in
  the solo pool, SIGUSR1 in prefork) are held off meanwhile.
- A message containing ``SLOW`` takes 5 seconds to store; a forward pass over
  a text containing ``SLOW_PASS`` takes a second more.
- A record containing ``STALL_AFTER_UPSERT`` stalls its worker right after
  its vectors were written to Milvus, before the job is marked done: the
  moment a crash would leave the work half finished.
"""

import signal
import time

from inference.embedder import Embedder
from services.conversations import ConversationStore
from vectorstore import MemoryStore

HANG = "__hang_in_native_code__"
SLOW = "__slow_to_store__"
SLOW_PASS = "__slow_forward_pass__"
STALL_AFTER_UPSERT = "__stall_after_upsert__"
SLOW_AFTER_UPSERT = "__slow_after_upsert__"


def _hang() -> None:
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM, signal.SIGUSR1})
    time.sleep(600)


_encode = Embedder.encode


def _encode_or_hang(self, texts, batch_size):
    if any(HANG in text for text in texts):
        _hang()
    if any(SLOW_PASS in text for text in texts):
        time.sleep(1)
    return _encode(self, texts, batch_size)


_persist = ConversationStore.persist


def _persist_with_faults(self, job, **kwargs):
    contents = [message["content"] for message in job.params["messages"]]
    if any(HANG in content for content in contents):
        _hang()
    if any(SLOW in content for content in contents):
        time.sleep(5)
    return _persist(self, job, **kwargs)


_upsert = MemoryStore.upsert


def _upsert_then_stall(self, records):
    records = list(records)
    written = _upsert(self, records)
    if any(STALL_AFTER_UPSERT in record.text for record in records):
        print("fault: stalled after upsert", flush=True)
        time.sleep(600)
    if any(SLOW_AFTER_UPSERT in record.text for record in records):
        print("fault: slow after upsert", flush=True)
        time.sleep(8)
    return written


Embedder.encode = _encode_or_hang
ConversationStore.persist = _persist_with_faults
MemoryStore.upsert = _upsert_then_stall
