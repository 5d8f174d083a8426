"""Celery tasks: thin wrappers that load ids and call plain functions in ``services``."""
