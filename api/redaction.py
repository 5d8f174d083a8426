"""The caller's PII redaction: what the API applies to a tenant's texts before anything
is stored, queued or embedded (services/redaction.py says what is found)."""

from collections.abc import Callable
from functools import partial
from typing import Any

from flask import current_app

from api.auth import current_principal
from services.redaction import redact


def _unchanged(text: str) -> str:
    return text


def tenant_redactor() -> Callable[[str], str]:
    """``redact`` for a tenant that turned redaction on, else the identity. The flag
    came with the caller's key (``Principal.redact_pii``): no query of its own."""
    if not current_principal().redact_pii:
        return _unchanged
    return partial(redact, region=current_app.extensions["convoq.settings"].redaction_phone_region)


def redact_metadata(metadata: dict[str, Any], clean: Callable[[str], str]) -> dict[str, Any]:
    """A job's metadata with its string values redacted (it is stored with the vectors)."""
    if clean is _unchanged:
        return metadata
    return {key: clean(v) if isinstance(v, str) else v for key, v in metadata.items()}
