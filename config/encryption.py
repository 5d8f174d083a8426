"""Encryption keys for text at rest, read from the environment, and the cipher.

Message and summary text is stored as AES-256-GCM ciphertext
(``models/encryption.py`` applies it to the columns) in this form::

    v1:<kid>:<base64url(nonce[12] || ciphertext and tag[16])>

``kid`` names the key that encrypted the value. Keys come from
``ENCRYPTION_KEYS="kid2:<key>,kid1:<key>"`` or the same text in the file
``ENCRYPTION_KEY_FILE``; a key is 32 random bytes in base64 (``openssl rand
-base64 32``; a Fernet key is one too). The first key encrypts; every key
listed decrypts. Rotation: put a new key first and restart the processes, then
``flask --app api reencrypt`` moves the older rows to it; drop an old key once
that says none is left under it.

AES-GCM rather than Fernet: authenticated as well, three times as fast
(``bench/privacy.py``: ~3 µs against ~10 µs per 100-character value) and 28
bytes of overhead instead of 57 (before base64). Nonces are random (96 bits),
so one key should encrypt well under 2**32 values: rotate long before that.

A value that is not in the stored form is a row written before encryption was
turned on and reads as it is (a legacy row). The version, the ``kid`` and the
column's purpose are authenticated with the text, so a ciphertext neither
moves to another column nor claims another key unnoticed.

No SQLAlchemy here: gunicorn's master checks the keys before forking
(``config/gunicorn.py``), and it must import nothing that blocks.
"""

import base64
import binascii
import os
import re
import secrets
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from config.settings import Settings

VERSION = "v1"
KEY_BYTES = 32
NONCE_BYTES = 12
KID_PATTERN = r"[A-Za-z0-9_-]{1,32}"
# The stored form: a value that does not match it is plaintext from before encryption.
STORED_FORM = re.compile(rf"{VERSION}:({KID_PATTERN}):([A-Za-z0-9_-]{{38,}})")
HOW_TO_CONFIGURE = (
    "set ENCRYPTION_KEYS=<kid>:<key> (the first key encrypts, every key listed decrypts; "
    "comma-separated) or ENCRYPTION_KEY_FILE=<path of a file holding the same>. "
    "A key is 32 random bytes in base64: openssl rand -base64 32"
)


class EncryptionError(RuntimeError):
    """The keys are missing or unreadable, or a stored value cannot be decrypted."""


class EncryptionNotConfigured(EncryptionError):
    def __init__(self, process: str = "convoq") -> None:
        super().__init__(
            f"{process} will not start: no encryption key is configured. Message and "
            f"summary text is encrypted at rest; {HOW_TO_CONFIGURE}"
        )


class UnknownKeyId(EncryptionError):
    def __init__(self, kid: str) -> None:
        self.kid = kid
        super().__init__(
            f"a stored value was encrypted with the key {kid!r}, which is not among the "
            f"configured keys: add it back to ENCRYPTION_KEYS (after the current one)"
        )


def generate_key() -> str:
    """A new key: 32 random bytes in url-safe base64 (standard base64 is read too)."""
    return base64.urlsafe_b64encode(secrets.token_bytes(KEY_BYTES)).decode()


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class KeyRing:
    """The configured keys by id; ``current`` encrypts."""

    current: str
    keys: dict[str, AESGCM]

    @classmethod
    def parse(cls, spec: str) -> "KeyRing":
        """``kid:key`` entries separated by commas or new lines, the current key first."""
        entries = [entry.strip() for entry in re.split(r"[,\n]", spec) if entry.strip()]
        if not entries:
            raise EncryptionNotConfigured()
        keys: dict[str, AESGCM] = {}
        for entry in entries:
            kid, sep, encoded = entry.partition(":")
            if not sep or not re.fullmatch(KID_PATTERN, kid):
                raise EncryptionError(
                    f"encryption key entry {kid[:32]!r}...: not '<kid>:<key>' with a kid of "
                    f"1 to 32 letters, digits, '_' or '-'; {HOW_TO_CONFIGURE}"
                )
            if kid in keys:
                raise EncryptionError(f"encryption key id {kid!r} is listed twice")
            try:
                raw = _b64decode(encoded.strip())
            except (binascii.Error, ValueError):
                raw = b""
            if len(raw) != KEY_BYTES:
                raise EncryptionError(
                    f"encryption key {kid!r} is not {KEY_BYTES} bytes in base64; {HOW_TO_CONFIGURE}"
                )
            keys[kid] = AESGCM(raw)
        return cls(current=entries[0].partition(":")[0], keys=keys)

    @property
    def kids(self) -> list[str]:
        return list(self.keys)

    def encrypt(self, plaintext: str, purpose: str) -> str:
        nonce = os.urandom(NONCE_BYTES)
        header = f"{VERSION}:{self.current}:"
        sealed = self.keys[self.current].encrypt(
            nonce, plaintext.encode(), (header + purpose).encode()
        )
        return header + base64.urlsafe_b64encode(nonce + sealed).decode().rstrip("=")

    def decrypt(self, stored: str, purpose: str) -> str:
        """The plaintext of a stored value; a legacy (plaintext) value as it is."""
        match = STORED_FORM.fullmatch(stored)
        if match is None:
            return stored
        kid, token = match.groups()
        key = self.keys.get(kid)
        if key is None:
            raise UnknownKeyId(kid)
        try:
            raw = _b64decode(token)
            plaintext = key.decrypt(
                raw[:NONCE_BYTES], raw[NONCE_BYTES:], f"{VERSION}:{kid}:{purpose}".encode()
            )
        except (InvalidTag, binascii.Error, ValueError) as exc:
            raise EncryptionError(
                f"a stored value under key {kid!r} does not decrypt: altered, or the key "
                f"{kid!r} configured is not the one that encrypted it"
            ) from exc
        return plaintext.decode()


def kid_of(stored: str | None) -> str | None:
    """The key id a stored value was encrypted with; None for a legacy plaintext value."""
    match = STORED_FORM.fullmatch(stored) if stored is not None else None
    return match.group(1) if match else None


def load_key_ring(settings: Settings, process: str = "convoq") -> KeyRing:
    """The keys of ENCRYPTION_KEYS, else of ENCRYPTION_KEY_FILE; an error naming
    ``process`` and saying what to set when neither holds one."""
    spec = settings.encryption_keys.get_secret_value() if settings.encryption_keys else ""
    if not spec.strip() and settings.encryption_key_file is not None:
        try:
            spec = settings.encryption_key_file.read_text(encoding="utf-8")
        except OSError as exc:
            raise EncryptionError(
                f"{process} will not start: ENCRYPTION_KEY_FILE "
                f"{str(settings.encryption_key_file)!r} cannot be read ({exc.strerror})"
            ) from exc
    if not spec.strip():
        raise EncryptionNotConfigured(process)
    try:
        return KeyRing.parse(spec)
    except EncryptionError as exc:
        raise EncryptionError(f"{process} will not start: {exc}") from None
