"""``python -m devstack run``: the whole local stack in the foreground (``make run``).

``python -m devstack backup [DIR]`` and ``restore DIR [--force]`` (``make backup``,
``make restore``) back up and restore the local stack's PostgreSQL and Milvus,
starting them from the data directory for the time it takes when ``make run``
is not running (services/backup.py).

Starts Redis, PostgreSQL and Milvus Lite where nothing answers at their URLs,
migrates the database, creates the Milvus collection, prints a local API key
and Flower's credentials (``FLOWER_BASIC_AUTH``, generated when unset), writes
an encryption key file when neither ``ENCRYPTION_KEYS`` nor
``ENCRYPTION_KEY_FILE`` is set (and logs its path), then
runs the ``Procfile`` under supervisord (devstack/supervise.py), which starts
again any process that dies. Ctrl-C or SIGTERM stops the processes, then the
embedded servers.
"""

import argparse
import contextlib
import fcntl
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import FrameType

from api import __version__
from config import get_settings
from config.logs import configure_logging
from devstack.services import ServiceError, ensure_database
from devstack.stack import DEFAULT_DATA_DIR, ROOT, LocalStack
from devstack.supervise import write_config
from services import backup
from vectorstore import MemoryStoreError

# What the Procfile's processes read, and their defaults for the local run.
LOCAL_RUN_DEFAULTS = {
    "FLOWER_ADDRESS": "127.0.0.1",
    "FLOWER_PORT": "5555",
    "WORKER_CPU_METRICS_PORT": "9101",
    "WORKER_GPU_METRICS_PORT": "9102",
}


def _banner(api_url: str, key: str, milvus: str, env: dict[str, str], flower_auth: str) -> str:
    flower = f"http://{env['FLOWER_ADDRESS']}:{env['FLOWER_PORT']}"
    metrics = "  ".join(
        f"{pool}: http://127.0.0.1:{env[f'WORKER_{pool.upper()}_METRICS_PORT']}/metrics"
        for pool in ("cpu", "gpu")
    )
    return f"""
convoq is starting.  API: {api_url}   docs: {api_url}/docs   memory: {milvus}
  Flower: {flower}  (user:password {flower_auth})
  metrics: api: {api_url}/metrics  {metrics}

  export CONVOQ_KEY={key}
  curl -s -X POST {api_url}/v1/jobs/embed -H "Authorization: Bearer $CONVOQ_KEY" \\
       -H 'Content-Type: application/json' -d '{{"texts": ["hello world"]}}'

A process that dies is started again (supervisord logs "exited: NAME ...").
Ctrl-C stops everything.
"""


def _append_to_stdout() -> None:
    """Make writes to our stdout append when it is a file (``make run > log``).

    supervisord writes its log lines through this descriptor and the processes'
    output through its own opening of /dev/stdout: without O_APPEND on both,
    each would write over the other's lines.
    """
    flags = fcntl.fcntl(sys.stdout.fileno(), fcntl.F_GETFL)
    with contextlib.suppress(OSError):  # a terminal or a pipe: nothing to do
        fcntl.fcntl(sys.stdout.fileno(), fcntl.F_SETFL, flags | os.O_APPEND)


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
        env = dict(os.environ)
        # The password is printed only when generated here, never one set by the user.
        flower_auth = "from FLOWER_BASIC_AUTH"
        if "FLOWER_BASIC_AUTH" not in env:
            flower_auth = env["FLOWER_BASIC_AUTH"] = stack.flower_credentials()
        # Production refuses to start without a key; the local run makes one.
        if not env.get("ENCRYPTION_KEYS", "").strip() and not env.get("ENCRYPTION_KEY_FILE"):
            env["ENCRYPTION_KEY_FILE"] = str(stack.encryption_key_file().resolve())
        env.setdefault("CONVOQ_METRICS_DIR", str(data_dir.resolve() / "metrics"))
        env["CONVOQ_DATA_DIR"] = str(data_dir.resolve())
        for name, value in LOCAL_RUN_DEFAULTS.items():
            env.setdefault(name, value)
        api_url = f"http://{settings.api_bind}"
        banner = _banner(api_url, stack.local_api_key(), milvus, env, flower_auth)
        print(banner, flush=True)
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        config = write_config(data_dir)
        _append_to_stdout()
        sys.stdout.flush()
        supervisord = subprocess.Popen(
            [sys.executable, "-m", "supervisor.supervisord", "--configuration", str(config)],
            cwd=ROOT,
            env=env,
        )

        def forward(signum: int, frame: FrameType | None) -> None:
            # Ctrl-C reaches supervisord directly (same process group); SIGTERM does not.
            if signum == signal.SIGTERM and supervisord.poll() is None:
                supervisord.send_signal(signal.SIGTERM)

        signal.signal(signal.SIGINT, forward)
        signal.signal(signal.SIGTERM, forward)
        return supervisord.wait()
    finally:
        stack.stop()


def backup_or_restore(command: str, directory: Path | None, data_dir: Path, force: bool) -> int:
    """Back up or restore the local stack, with its servers up for the time it takes."""
    settings = get_settings()
    configure_logging(settings.log_level)
    stack = LocalStack(settings, data_dir)
    try:
        stack.start_services()
        if command == "backup":
            target = backup.run_backup(
                settings, directory, root=ROOT / "backups", keep=None, version=__version__
            )
            print(target)
        else:
            assert directory is not None
            ensure_database(settings.database_url)
            backup.run_restore(settings, directory, force=force)
    except (ServiceError, *backup.FAILURES) as exc:
        print(f"convoq: {exc}", file=sys.stderr)
        return 1
    finally:
        stack.stop()
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m devstack")
    parser.add_argument("command", choices=["run", "backup", "restore"])
    parser.add_argument(
        "directory",
        nargs="?",
        type=Path,
        help="backup: a new directory (default backups/convoq-<UTC time>); restore: the backup",
    )
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument(
        "--force", action="store_true", help="restore: replace the data the stores hold"
    )
    args = parser.parse_args()
    if args.command == "run":
        if args.directory is not None or args.force:
            parser.error("run takes no directory and no --force")
        sys.exit(run(args.data_dir))
    if args.command == "restore" and args.directory is None:
        parser.error("restore needs the backup's directory")
    if args.command == "backup" and args.force:
        parser.error("--force is for restore")
    sys.exit(backup_or_restore(args.command, args.directory, args.data_dir, args.force))


if __name__ == "__main__":
    main()
