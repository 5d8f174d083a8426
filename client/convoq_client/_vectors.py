"""Vectors as numpy arrays when numpy is importable, as lists of floats otherwise.

With numpy the client asks for ``encoding_format: base64`` (a third of the bytes of
JSON floats, and no float parsing): each vector is base64 of float32 little-endian."""

import base64
import sys
from array import array
from typing import Any

try:
    import numpy as np
except ImportError:  # numpy is an optional extra
    np = None

ENCODING = "base64" if np is not None else "float"


def decode_one(value: Any) -> Any:
    """One vector, as the API sent it (base64 or floats), in the client's form."""
    if isinstance(value, str):
        raw = base64.b64decode(value)
        if np is not None:
            return np.frombuffer(raw, dtype="<f4").astype(np.float32)
        floats = array("f", raw)
        if sys.byteorder == "big":
            floats.byteswap()
        return floats.tolist()
    if np is not None:
        return np.asarray(value, dtype=np.float32)
    return list(value)


def decode_many(values: list[Any]) -> Any:
    """A job's vectors: one float32 array of shape (n, dimensions), or a list of lists."""
    rows = [decode_one(value) for value in values]
    if np is None:
        return rows
    return np.stack(rows) if rows else np.zeros((0, 0), dtype=np.float32)
