"""What a row of the memory collection holds, and how its id and snippet are made."""

import hashlib
import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

DIMENSION = 384
# VARCHAR lengths are in bytes on a Milvus server (Milvus Lite counts characters,
# which is never more), so values are measured and truncated as UTF-8.
ID_MAX_BYTES = 128
TENANT_MAX_BYTES = 128
# PostgreSQL keeps user and conversation ids as varchar(255): up to 4 bytes each.
REF_MAX_BYTES = 1024
KIND_MAX_BYTES = 16
SNIPPET_MAX_BYTES = 2048


class MemoryKind(StrEnum):
    MESSAGE = "message"
    SUMMARY = "summary"
    TEXT = "text"


def memory_id(tenant_id: str, source: str, position: int) -> str:
    """The row id of the ``position``-th item of ``source`` for a tenant.

    ``source`` names where the text came from, for example
    ``"conversation:<conversation id>:message"`` (position: the message's
    sequence number), ``"conversation:<conversation id>:summary"`` (position 0)
    or ``"job:<job uuid>"`` (position: the text's index in the embed job). The
    same inputs always give the same id, so a redelivered task overwrites its
    rows instead of adding new ones.
    """
    key = json.dumps([tenant_id, source, position], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(key.encode()).hexdigest()


def truncate_utf8(text: str, max_bytes: int) -> str:
    """The longest prefix of ``text`` that fits in ``max_bytes`` of UTF-8."""
    encoded = text.encode()
    if len(encoded) <= max_bytes:
        return text
    # Dropping the bytes of a character cut in two leaves a valid prefix.
    return encoded[:max_bytes].decode(errors="ignore")


@dataclass(frozen=True)
class MemoryRecord:
    """One vector and what it remembers. ``text`` is cut to a snippet on upsert;
    the full text stays in PostgreSQL."""

    id: str
    tenant: str
    kind: MemoryKind
    text: str
    vector: Any  # DIMENSION floats: a sequence or a numpy array
    user_id: str | None = None
    conversation_id: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SearchHit:
    id: str
    score: float  # cosine similarity: 1 is the same direction
    kind: MemoryKind
    user_id: str | None
    conversation_id: str | None
    text: str
    metadata: dict[str, Any]
