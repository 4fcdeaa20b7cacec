"""A chunk's ``steps`` blob: its steps as little-endian int64, or a run of consecutive steps as two.

Most chunks hold consecutive steps (a rank logs step n, n+1, ...; an emitted main-series block
covers a range), and their steps were half of every row's bytes: the WAL, its checkpoints and the
file carried them once per key. From schema 5 on (:mod:`coordinator.journal.schema`), a chunk of
three or more points whose steps are ``first, first + 1, ..., last`` stores only ``first`` and
``last`` (16 bytes). The blob's length tells the forms apart, given the chunk's point count: ``8 *
n`` bytes are the steps themselves, 16 bytes for ``n > 2`` a run (for ``n == 2`` both forms are
the same bytes). Writers call :func:`encode_steps` with the summary they compute anyway; every
reader of a chunk's steps goes through :func:`decode_steps`.
"""

from __future__ import annotations

import struct
from array import array
from typing import Any

from coordinator.core.columns import from_le, to_le
from coordinator.errors import SinkError
from coordinator.journal.summary import Summary

__all__ = ["RUN_BYTES", "decode_steps", "encode_steps"]

RUN_BYTES = 16
"""The size of a run's blob: its first and last step."""

_RUN = struct.Struct("<qq")


def encode_steps(steps: array[Any], summary: Summary) -> bytes:
    """The blob of ``steps``, given their chunk's summary (its step range and whether they increase)."""
    n = len(steps)
    lo, hi, ordered = summary[0], summary[1], summary[8]
    if n > 2 and ordered and lo is not None and hi is not None and hi - lo == n - 1:
        return _RUN.pack(lo, hi)
    return to_le(steps)


def decode_steps(blob: bytes, n: int) -> array[int]:
    """The steps of a chunk of ``n`` points from its blob (either form).

    Raises:
        SinkError: the blob fits neither form (a corrupt row).
    """
    if len(blob) == 8 * n:
        return from_le("q", blob)
    if len(blob) == RUN_BYTES and n > 2:
        first, last = _RUN.unpack(blob)
        if last - first == n - 1:
            return array("q", range(first, last + 1))
    raise SinkError(f"a chunk of {n} points has a steps blob of {len(blob)} bytes: neither its steps nor a run")
