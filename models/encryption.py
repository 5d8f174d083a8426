"""Text encrypted at rest (keys and cipher: ``config/encryption.py``).

``EncryptedText`` is the column type of ``messages.content`` and
``summaries.text``; ``EncryptedJSON`` that of ``jobs.params`` and
``jobs.result``, whose texts (the submitted texts and messages, a summary)
are sealed while their ids and options stay plain JSONB, for queries. Every
ORM and Core statement that binds or reads those mapped columns encrypts and
decrypts on its own, so callers (the workers, the API, export) see plain
values. Raw SQL (``text()``) and the database's own tools see only the stored
form.
"""

import json
from collections.abc import Collection
from typing import Any

from sqlalchemy import Dialect, Text, TypeDecorator
from sqlalchemy.dialects.postgresql import JSONB

from config import get_settings
from config.encryption import KeyRing, load_key_ring

_ring: KeyRing | None = None


def configure_encryption(ring: KeyRing | None) -> KeyRing | None:
    """Make ``ring`` the process's keys (``create_app`` does); returns the ones it replaces."""
    global _ring
    previous, _ring = _ring, ring
    return previous


def key_ring() -> KeyRing:
    """The process's keys: those ``create_app`` configured, else the environment's."""
    global _ring
    if _ring is None:
        _ring = load_key_ring(get_settings())
    return _ring


class EncryptedText(TypeDecorator[str]):
    """A ``Text`` column whose values are encrypted with the process's current key.

    ``purpose`` (the column, ``"messages.content"``) is authenticated with each value.
    """

    impl = Text
    cache_ok = True

    def __init__(self, purpose: str) -> None:
        super().__init__()
        self.purpose = purpose

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        return None if value is None else key_ring().encrypt(value, self.purpose)

    def process_result_value(self, value: Any, dialect: Dialect) -> str | None:
        return None if value is None else key_ring().decrypt(value, self.purpose)

    def copy(self, **kw: Any) -> "EncryptedText":
        return EncryptedText(self.purpose)


# The key of a JSON object under which its sealed keys are kept, encrypted together.
SEALED = "sealed"


def seal(value: Any, keys: Collection[str], purpose: str) -> Any:
    """``value`` with its ``keys`` moved into one encrypted ``"sealed"`` string."""
    if not isinstance(value, dict):
        return value
    secret = {key: value[key] for key in keys if key in value}
    if not secret:
        return value
    plain = {key: item for key, item in value.items() if key not in secret}
    return {**plain, SEALED: key_ring().encrypt(json.dumps(secret), purpose)}


def unseal(value: Any, purpose: str) -> Any:
    """What ``seal`` was given (a value without ``"sealed"`` reads as it is)."""
    if not isinstance(value, dict) or SEALED not in value:
        return value
    plain = {key: item for key, item in value.items() if key != SEALED}
    return {**plain, **json.loads(key_ring().decrypt(value[SEALED], purpose))}


class EncryptedJSON(TypeDecorator[Any]):
    """A ``JSONB`` column whose ``sealed_keys`` are encrypted (``seal``), the rest
    plain: ``params["user_id"].astext`` still filters, ``params["texts"]`` is sealed."""

    impl = JSONB
    cache_ok = True
    comparator_factory = JSONB.Comparator

    def __init__(self, purpose: str, sealed_keys: tuple[str, ...]) -> None:
        super().__init__()
        self.purpose = purpose
        self.sealed_keys = sealed_keys

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        return seal(value, self.sealed_keys, self.purpose)

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        return unseal(value, self.purpose)

    def copy(self, **kw: Any) -> "EncryptedJSON":
        return EncryptedJSON(self.purpose, self.sealed_keys)
