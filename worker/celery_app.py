"""The Celery app: ``celery -A worker.celery_app:celery_app worker -Q gpu``.

It calls the same factory as the API, so both processes share one configuration.
"""

from api import create_app
from worker import monitoring, signals  # noqa: F401  (connect the worker's signal handlers)

flask_app = create_app()
celery_app = flask_app.extensions["celery"]
