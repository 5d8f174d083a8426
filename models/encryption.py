"""Message and summary text encrypted at rest (keys and cipher: ``config/encryption.py``).

``EncryptedText`` is the column type of ``messages.content`` and
``summaries.text``: every ORM and Core statement that binds or reads those
mapped columns encrypts and decrypts on its own, so callers (the workers, the
API, export) see plain ``str``. Raw SQL (``text()``) and the database's own
tools see only the stored form.
"""

from typing import Any

from sqlalchemy import Dialect, Text, TypeDecorator

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
