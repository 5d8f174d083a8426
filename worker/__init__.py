"""The Celery app, its configuration, signals and worker entry points."""
