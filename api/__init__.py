"""The HTTP API. No torch here: jobs are published to the workers by task name."""

from flask_openapi3 import Info, OpenAPI

from api.audit import audit_api
from api.cli import (
    backup_command,
    check_memory_command,
    create_key_command,
    reencrypt_command,
    restore_command,
    revoke_key_command,
    set_redaction_command,
    set_retention_command,
)
from api.content import StrictJSONProvider
from api.conversations import conversations_api
from api.embeddings import embeddings_api
from api.erasures import erasures_api
from api.errors import ErrorResponse, register_error_handlers, validation_error_response
from api.events import events_api
from api.export import export_api
from api.health import health_api
from api.jobs import jobs_api
from api.limits import init_rate_limits
from api.metrics import init_metrics, metrics_api
from api.queues import queues_api
from api.search import search_api
from api.webhooks import webhooks_api
from config import Settings, get_settings
from config.encryption import load_key_ring
from config.logs import configure_logging
from models.db import application_name
from models.encryption import configure_encryption
from services.jobs import JobStore
from services.notify import finished_notifier
from services.webhooks import WebhookSender
from worker.factory import init_celery

__version__ = "0.1.0"

BEARER_SCHEME = {"type": "http", "scheme": "bearer", "description": "An API key from `create-key`."}


class ConvoqOpenAPI(OpenAPI):
    def generate_spec_json(self) -> None:
        """flask-openapi3 adds a 422 to every operation that lacks one, as a list of
        errors: ours is one error object, answered only where something is validated."""
        super().generate_spec_json()
        added = {"type": "array"}
        error = {"$ref": "#/components/schemas/ErrorResponse"}
        for path_item in self.spec_json["paths"].values():
            for operation in path_item.values():
                response = operation["responses"].get("422", {})
                schema = response.get("content", {}).get("application/json", {}).get("schema", {})
                if schema.get("type") != added["type"]:
                    continue
                if operation.get("parameters") or operation.get("requestBody"):
                    response["content"]["application/json"]["schema"] = error
                else:
                    del operation["responses"]["422"]


def create_app(settings: Settings | None = None) -> OpenAPI:
    """Build the Flask app (and its Celery app) from ``settings`` or the environment."""
    settings = settings or get_settings()
    configure_logging(settings.log_level)
    # Before anything else: a process that would store text in clear does not start.
    configure_encryption(load_key_ring(settings, application_name()))
    app = ConvoqOpenAPI(
        __name__,
        info=Info(
            title="convoq",
            version=__version__,
            description="Jobs for conversation memory built from local models.",
        ),
        security_schemes={"bearer": BEARER_SCHEME},
        doc_prefix="",
        doc_url="/openapi.json",
        validation_error_status=422,
        validation_error_model=ErrorResponse,
        validation_error_callback=validation_error_response,
    )
    app.json = StrictJSONProvider(app)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    # Swagger UI would otherwise have the browser send /openapi.json's address
    # to validator.swagger.io for a badge: nothing leaves for the docs page.
    app.config["SWAGGER_CONFIG"] = {"validatorUrl": "none"}
    app.extensions["convoq.settings"] = settings
    app.extensions["convoq.version"] = __version__
    init_celery(app, settings)
    # Cancels are announced like every other end, waking requests that wait on them,
    # and sent to their callback_url.
    app.extensions["convoq.jobs"] = JobStore(
        settings.database_url,
        notify=finished_notifier(settings.redis_url),
        deliver=WebhookSender(app.extensions["celery"]),
    )
    register_error_handlers(app)
    init_rate_limits(app, settings)
    init_metrics(app)
    app.register_api(jobs_api)
    app.register_api(events_api)
    app.register_api(webhooks_api)
    app.register_api(conversations_api)
    app.register_api(export_api)
    app.register_api(audit_api)
    app.register_api(erasures_api)
    app.register_api(search_api)
    app.register_api(embeddings_api)
    app.register_api(queues_api)
    app.register_api(health_api)
    app.register_api(metrics_api)
    app.add_url_rule("/docs", "docs", app.view_functions["swagger.swagger"])
    app.cli.add_command(create_key_command)
    app.cli.add_command(check_memory_command)
    app.cli.add_command(set_redaction_command)
    app.cli.add_command(reencrypt_command)
    app.cli.add_command(revoke_key_command)
    app.cli.add_command(set_retention_command)
    app.cli.add_command(backup_command)
    app.cli.add_command(restore_command)
    return app
