"""Builds the Celery app from ``Settings``; ``create_app()`` calls it."""

from celery import Celery, Task
from flask import Flask
from kombu import Exchange
from kombu import Queue as KombuQueue

from config import Settings
from worker.queues import Queue, task_routes
from worker.schedule import beat_schedule


def init_celery(flask_app: Flask, settings: Settings) -> Celery:
    """Create the Celery app, make it the default, and attach it to ``flask_app``."""

    class FlaskTask(Task):
        def __call__(self, *args: object, **kwargs: object) -> object:
            with flask_app.app_context():
                return self.run(*args, **kwargs)

    # Task modules are imported by the workers for the queues they consume
    # (worker/signals.py), never by the API: it publishes tasks by name.
    celery = Celery(flask_app.name, task_cls=FlaskTask)
    celery.conf.update(settings.celery.as_celery_config(settings.redis_url))
    celery.conf.update(
        task_queues=[
            KombuQueue(queue.value, Exchange(queue.value), routing_key=queue.value)
            for queue in Queue
        ],
        task_default_queue=Queue.CPU.value,
        task_routes=task_routes(),
        task_create_missing_queues=False,
        beat_schedule=beat_schedule(settings),
    )
    celery.set_default()
    flask_app.extensions["celery"] = celery
    return celery
