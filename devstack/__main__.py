"""``python -m devstack run``: the whole local stack in the foreground (``make run``).

Starts Redis, PostgreSQL and Milvus Lite where nothing answers at their URLs,
migrates the database, creates the Milvus collection, prints a local API key,
then runs the ``Procfile`` under honcho. Ctrl-C stops the processes, then the
embedded servers.
"""

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import FrameType

from config import get_settings
from config.logs import configure_logging
from devstack.services import ServiceError
from devstack.stack import DEFAULT_DATA_DIR, ROOT, LocalStack
from vectorstore import MemoryStoreError


def _banner(api_url: str, key: str, milvus: str) -> str:
    return f"""
convoq is starting.  API: {api_url}   docs: {api_url}/docs   memory: {milvus}

  export CONVOQ_KEY={key}
  curl -s -X POST {api_url}/v1/jobs/embed -H "Authorization: Bearer $CONVOQ_KEY" \\
       -H 'Content-Type: application/json' -d '{{"texts": ["hello world"]}}'

Ctrl-C stops everything.
"""


def run(data_dir: Path) -> int:
    settings = get_settings()
    configure_logging(settings.log_level)
    try:
        stack = LocalStack(settings, data_dir).__enter__()
    except (ServiceError, MemoryStoreError) as exc:
        print(f"convoq: {exc}", file=sys.stderr)
        return 1
    try:
        milvus = f"{settings.milvus_uri} ({settings.milvus_collection})"
        print(_banner(f"http://{settings.api_bind}", stack.local_api_key(), milvus), flush=True)
        env = dict(os.environ)
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        honcho = subprocess.Popen(
            [sys.executable, "-m", "honcho", "start", "--procfile", str(ROOT / "Procfile")],
            cwd=ROOT,
            env=env,
        )

        def forward(signum: int, frame: FrameType | None) -> None:
            # Ctrl-C reaches honcho directly (same process group); SIGTERM does not.
            if signum == signal.SIGTERM and honcho.poll() is None:
                honcho.send_signal(signal.SIGTERM)

        signal.signal(signal.SIGINT, forward)
        signal.signal(signal.SIGTERM, forward)
        return honcho.wait()
    finally:
        stack.stop()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m devstack")
    parser.add_argument("command", choices=["run"])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    args = parser.parse_args()
    sys.exit(run(args.data_dir))


if __name__ == "__main__":
    main()
