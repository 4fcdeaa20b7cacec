"""Metric columns: a key's points as an int64 step array and a float64 value array, and their byte layout."""

from __future__ import annotations

import sys
from array import array
from typing import Any, TypeAlias

__all__ = ["Column", "from_le", "to_le"]

Column: TypeAlias = "tuple[array[int], array[float]]"
"""(steps, values) of one key; step -1 means "the rank's next step for this key"."""

_LITTLE = sys.byteorder == "little"


def to_le(a: array[Any]) -> bytes:
    """The array's items as little-endian bytes (the wire and store layout)."""
    if _LITTLE:
        return a.tobytes()
    b = array(a.typecode, a)
    b.byteswap()
    return b.tobytes()


def from_le(typecode: str, data: bytes) -> array[Any]:
    """An array of ``typecode`` from little-endian bytes."""
    a = array(typecode)
    a.frombytes(data)
    if not _LITTLE:
        a.byteswap()
    return a
