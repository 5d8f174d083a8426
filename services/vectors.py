"""Vectors as bytes: float32, little-endian, one row after the other.

That is how jobs store them (``jobs.vectors``) and what ``encoding_format:
base64`` sends, as OpenAI's embeddings API does. Only the standard library
here: the API serves vectors without numpy.
"""

import base64
import sys
from array import array
from collections.abc import Sequence
from typing import Literal

EncodingFormat = Literal["float", "base64"]
FLOAT32_BYTES = 4


def _floats(raw: bytes) -> array:
    floats = array("f", raw)
    if sys.byteorder == "big":
        floats.byteswap()
    return floats


def pack(vectors: Sequence[Sequence[float]]) -> bytes:
    """Rows of floats as float32 little-endian bytes."""
    floats = array("f", (value for row in vectors for value in row))
    if sys.byteorder == "big":
        floats.byteswap()
    return floats.tobytes()


def count(raw: bytes, dimensions: int) -> int:
    return len(raw) // (dimensions * FLOAT32_BYTES)


def as_floats(raw: bytes, dimensions: int) -> list[list[float]]:
    values = _floats(raw).tolist()
    return [values[i : i + dimensions] for i in range(0, len(values), dimensions)]


def as_base64(raw: bytes, dimensions: int) -> list[str]:
    width = dimensions * FLOAT32_BYTES
    return [base64.b64encode(raw[i : i + width]).decode() for i in range(0, len(raw), width)]


def encode(raw: bytes, dimensions: int, encoding_format: EncodingFormat) -> list:
    """Each vector as a list of floats, or as base64 of its float32 bytes."""
    if encoding_format == "base64":
        return as_base64(raw, dimensions)
    return as_floats(raw, dimensions)


def decode_base64(text: str) -> list[float]:
    """One base64 vector back to floats (what a client does)."""
    return _floats(base64.b64decode(text)).tolist()
