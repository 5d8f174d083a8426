"""``python -m devstack.milvus_lite_server``: ``milvus-lite server`` that stops cleanly.

Milvus Lite writes its data out only when the server sees KeyboardInterrupt;
SIGTERM kills it without flushing. A process started in the background also
inherits an ignored SIGINT, and Python then never raises KeyboardInterrupt.
So both signals are made to raise it here. Arguments are ``milvus-lite
server``'s own (``--data-dir``, ``--host``, ``--port``, ``--max-workers``).
"""

import signal
import sys
from types import FrameType

from milvus_lite.cmdline import main as milvus_lite_main


def _interrupt(signum: int, frame: FrameType | None) -> None:
    # Once: a second signal must not cut the flush short.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


def main() -> None:
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    sys.exit(milvus_lite_main(["server", *sys.argv[1:]]))


if __name__ == "__main__":
    main()
