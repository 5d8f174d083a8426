"""Plain functions and classes behind the API and the tasks; no Celery or Flask here."""
