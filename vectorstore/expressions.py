"""Milvus filter expressions whose values are quoted here, never pasted in.

Milvus Lite 3.2.2 ignores ``filter_params`` (templating): its parser sees
``{tenant}`` and fails. So each value becomes a string literal with every
character that could end it or that the grammar rejects escaped; Milvus Lite
and the Milvus server read these escapes the same way.
"""

from collections.abc import Iterable

from vectorstore.records import MemoryKind

_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"})


def quote(value: str) -> str:
    """A Milvus string literal that reads back as exactly ``value``."""
    if not isinstance(value, str):
        raise TypeError(f"filter values are strings, not {type(value).__name__}")
    value.encode()  # a lone surrogate raises UnicodeEncodeError, a ValueError
    return '"' + value.translate(_ESCAPES) + '"'


def _nonempty(name: str, value: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string")
    return value


def scope(
    tenant: str,
    *,
    user_id: str | None = None,
    conversation_id: str | None = None,
    conversation_ids: Iterable[str] | None = None,
    kind: MemoryKind | str | None = None,
    ids: Iterable[str] | None = None,
) -> str:
    """The expression selecting a tenant's rows, narrowed by the filters given."""
    clauses = [f"tenant == {quote(_nonempty('tenant', tenant))}"]
    if user_id is not None:
        clauses.append(f"user_id == {quote(_nonempty('user_id', user_id))}")
    if conversation_id is not None:
        conversation = _nonempty("conversation_id", conversation_id)
        clauses.append(f"conversation_id == {quote(conversation)}")
    if conversation_ids is not None:
        listed = ", ".join(quote(_nonempty("conversation_id", c)) for c in conversation_ids)
        clauses.append(f"conversation_id in [{listed}]")
    if kind is not None:
        clauses.append(f"kind == {quote(MemoryKind(kind).value)}")
    if ids is not None:
        clauses.append(f"id in [{', '.join(quote(_nonempty('id', i)) for i in ids)}]")
    return " and ".join(clauses)
