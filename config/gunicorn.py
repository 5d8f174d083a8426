"""gunicorn settings for the API: ``gunicorn -c config/gunicorn.py 'api:create_app()'``."""

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

from config import get_settings, metrics  # noqa: E402

_settings = get_settings()

bind = _settings.api_bind
workers = _settings.api_workers
worker_class = "gthread"
threads = _settings.api_threads
# A request never waits on a job, so anything this slow is stuck.
timeout = 30
graceful_timeout = 10
accesslog = None

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


def on_starting(server: object) -> None:
    """Before the first worker forks: start the metrics of this run from empty."""
    metrics.reset_multiprocess_dir()


def child_exit(server: object, worker: object) -> None:
    metrics.mark_process_dead(worker.pid)


def on_exit(server: object) -> None:
    if _own_metrics_dir is not None:
        shutil.rmtree(_own_metrics_dir, ignore_errors=True)
