"""gunicorn settings for the API: ``gunicorn -c config/gunicorn.py 'api:create_app()'``.

The workers are gevent workers (``API_WORKER_CLASS``): a request waiting for a
job (``Prefer: wait``, ``?wait=``, up to 60 s) holds a greenlet, not a thread,
so hundreds of them wait side by side while other requests are answered.
gunicorn's gevent worker monkey-patches the standard library in each worker
right after the fork, before it imports the app (``api``). Everything the app
uses to wait on the network is therefore imported patched: redis-py and
kombu's sockets, psycopg (which picks a gevent-friendly wait when it sees
``select`` patched, at its import), and ``services.notify``'s listener thread
and events, which become a greenlet and gevent events.

So this file, which the master imports before forking, must import nothing
that chooses how to block at import time: no psycopg, SQLAlchemy, redis or
kombu, and not ``api``. (``tests/test_light_api.py`` checks it.) What it does
import, pydantic and prometheus-client, creates thread locks only around code
that never yields to another greenlet, which are safe unpatched.
"""

import os
import shutil
import tempfile

# gunicorn forks its workers: without a shared sample directory /metrics would
# show whichever worker answered. Set before prometheus-client is imported.
_own_metrics_dir = None
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    _own_metrics_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(
        prefix="convoq-api-metrics-"
    )

from gunicorn import glogging  # noqa: E402

from config import get_settings, metrics  # noqa: E402
from config.encryption import EncryptionError, load_key_ring  # noqa: E402

_settings = get_settings()

bind = _settings.api_bind
workers = _settings.api_workers
worker_class = _settings.api_worker_class
# gevent: requests served at once per worker process (each waiting one holds a
# greenlet of ~10 KB and a socket). gthread: threads per process.
worker_connections = _settings.api_worker_connections
threads = _settings.api_threads
# The worker's heartbeat to the master, not a per-request limit: a long poll
# (at most 60 s) waits on an event while the worker keeps beating.
timeout = 30
# On a stop, requests still waiting for jobs are cut after this; their clients
# poll again (the job is not lost).
graceful_timeout = 10
accesslog = None
# gunicorn's most (the default is 4094): a list query with every filter and a
# long cursor fits, and what is wrong in it gets the API's own 422.
limit_request_line = 8190
# gunicorn 27's control socket lives at one path per user (~/.gunicorn): every
# gunicorn of the machine would share it. Nothing here uses it.
control_socket_disable = True

logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "{asctime}{levelname}{name}{message}",
            "style": "{",
            "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
        }
    },
    "handlers": {
        "stderr": {
            "class": "logging.StreamHandler",
            "formatter": "json",
            "stream": "ext://sys.stderr",
        }
    },
    "root": {"handlers": ["stderr"], "level": _settings.log_level},
    "loggers": {
        "gunicorn.error": {"handlers": ["stderr"], "level": _settings.log_level, "propagate": False}
    },
}


class Logger(glogging.Logger):
    """gunicorn's logger, but no access lines unless ``accesslog`` asks for them.

    gunicorn builds every request's access-log fields whenever a logging
    config is given (ours makes its own logs JSON), only for the logger to drop
    them: 3% of the API's CPU per job.
    """

    def _compute_access_log_enabled(self) -> bool:
        return bool(self.cfg.accesslog)


logger_class = Logger


def on_starting(server: object) -> None:
    """Before the first worker forks: refuse to start without an encryption key (one
    clear line, not a traceback per worker), and start the metrics from empty."""
    try:
        load_key_ring(_settings, "the convoq API (gunicorn)")
    except EncryptionError as exc:
        raise SystemExit(f"Error: {exc}") from None
    metrics.reset_multiprocess_dir()


def child_exit(server: object, worker: object) -> None:
    metrics.mark_process_dead(worker.pid)


def on_exit(server: object) -> None:
    if _own_metrics_dir is not None:
        shutil.rmtree(_own_metrics_dir, ignore_errors=True)
