"""gunicorn settings for the API: ``gunicorn -c config/gunicorn.py 'api:create_app()'``."""

from config import get_settings

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
