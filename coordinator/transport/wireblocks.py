"""Blocks on the wire: a dict's keys named by a key blob, and a block's checked decoding.

A block (``"b"`` of a batch, protocol 3) is the points of a dict logged at explicit steps, cut
from the rank's frame (:mod:`~coordinator.transport.frames`): ``[keys, LE int64 steps (n), LE
float64 values (n x K, step-major)]``. Since protocol 4 ``keys`` is a *key blob*: the msgpack array
of the keys packed once per key tuple into a msgpack bin (:func:`key_blob`). The aggregator maps
a blob it has seen to the checked key tuple (``shapes``), so a batch's hundred keys are neither
decoded, checked nor hashed again: that was half of decoding a paced rank's batch. A blob it has
not seen is decoded and checked as a list of keys, as a protocol-3 block's keys are.
:mod:`~coordinator.transport.wire` decodes the rest of the batch and re-exports these names.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from coordinator.core.columns import from_le, step_range
from coordinator.core.limits import MAX_FRAME_BYTES
from coordinator.core.values import check_key
from coordinator.errors import ProtocolError
from coordinator.transport.plain import check_plain, packb, unpack

__all__ = [
    "MAX_SHAPES",
    "Block",
    "BlockItem",
    "KeyShapes",
    "check_new_key",
    "decode_blocks",
    "key_blob",
]

_STR = frozenset((str,))

BlockItem = tuple[tuple[str, ...], bytes | memoryview, bytes | memoryview]
"""One block as encoded: (keys, LE int64 steps (n), LE float64 values (n x K, step-major)); a
long one's bytes are a view of the frame's arrays (:func:`~coordinator.core.columns.le_payload`)."""


@dataclass(slots=True)
class Block:
    """Metric chunks of one batch that share their steps (a dict logged at the same steps)."""

    keys: tuple[str, ...]
    steps: array[int]
    values: npt.NDArray[np.float64]
    """One row per key (in ``keys`` order), one column per step; read-only (a view of the frame's bytes)."""

    @property
    def points(self) -> int:
        """Number of points (keys x steps)."""
        return len(self.keys) * len(self.steps)


KeyShapes = dict[tuple[str, ...] | bytes, tuple[str, ...]]
"""Checked key tuples of blocks, each mapped to itself, and the key blobs that named them, each
mapped to its tuple (:func:`~coordinator.transport.wire.decode_batch`'s ``shapes``)."""
MAX_SHAPES = 4096
_KEY_BLOBS: dict[tuple[str, ...], bytes] = {}
"""The sender's side: key tuple -> its blob (:func:`key_blob`), up to :data:`MAX_SHAPES` tuples."""


def key_blob(keys: Sequence[str]) -> bytes:
    """The msgpack array of ``keys`` as bytes, packed once per key tuple (a block's keys on the wire).

    Thread-safe: the ranks' senders of a process share the cache (a race packs a tuple twice,
    to the same bytes). Past :data:`MAX_SHAPES` tuples a new one is packed every time.
    """
    t = keys if type(keys) is tuple else tuple(keys)
    blob = _KEY_BLOBS.get(t)
    if blob is None:
        blob = packb(list(t))
        if len(_KEY_BLOBS) < MAX_SHAPES:
            _KEY_BLOBS[t] = blob
    return blob


def check_new_key(key: str, new: list[str]) -> None:
    """Validate a metric key the ``checked`` set does not hold yet, and note it in ``new``.

    Raises:
        ProtocolError: not a valid key.
    """
    try:
        check_key(key)
    except (TypeError, ValueError) as e:
        raise ProtocolError(f"bad metric key: {e}") from e
    new.append(key)


def decode_blocks(
    b: object,
    checked: set[str],
    new: list[str],
    max_keys: int,
    shapes: KeyShapes,
    blobs: list[tuple[bytes, tuple[str, ...]]],
) -> list[Block]:
    """The blocks of a batch (``"b"``: ``[[keys, LE int64 steps (n), LE float64 values (n x K)], ...]``), checked.

    Each becomes a :class:`Block` (values transposed to keys x steps). ``keys`` is a key blob
    (protocol 4) or a list of str (3). Keys in ``checked`` are not validated again; newly
    validated ones are appended to ``new``, blobs not in ``shapes`` with their key tuple to
    ``blobs``. At most ``max_keys`` keys in all.
    """
    if type(b) is not list:
        raise ProtocolError("batch b (blocks) is not a list")
    out: list[Block] = []
    for item in b:
        if type(item) is not list or len(item) != 3:
            check_plain(item, 2)
            raise ProtocolError("block is not [keys, steps, values]")
        keys, sb, vb = item
        if type(sb) is not bytes or type(vb) is not bytes:
            check_plain(item, 2)
            raise ProtocolError("block has wrong types")
        known = shapes.get(keys) if type(keys) is bytes else None
        if known is None:
            blob = keys if type(keys) is bytes else None
            if blob is not None:
                keys = unpack(blob, MAX_FRAME_BYTES, check=False)
            if type(keys) is not list:
                check_plain(keys, 2)
                raise ProtocolError("block keys are not a list")
            if len(keys) > max_keys:
                raise ProtocolError("block has no keys, or the batch too many keys")
            known = _check_block_keys(keys, checked, new, shapes)
            if blob is not None:
                blobs.append((blob, known))
        k = len(known)
        max_keys -= k
        if max_keys < 0:
            raise ProtocolError("block has no keys, or the batch too many keys")
        n = len(sb) // 8
        if len(sb) % 8 or not n or len(vb) != 8 * n * k:
            raise ProtocolError(f"block of {known[0]!r}...: steps/values lengths do not match")
        steps = from_le("q", sb)
        if step_range(steps)[0] < 0:
            raise ProtocolError(f"block of {known[0]!r}...: negative step")
        values = np.frombuffer(vb, dtype="<f8").reshape(n, k).T  # step-major on the wire: keys x steps here
        out.append(Block(known, steps, np.ascontiguousarray(values, dtype=np.float64)))
    return out


def _check_block_keys(keys: list[Any], checked: set[str], new: list[str], shapes: KeyShapes) -> tuple[str, ...]:
    """A block's keys (a list off the wire) checked: str, valid, none repeated; their tuple (the known one if any)."""
    if not keys:
        raise ProtocolError("block has no keys, or the batch too many keys")
    if not _STR.issuperset(map(type, keys)):
        raise ProtocolError("block keys are not all str")
    known = shapes.get(tuple(keys))
    if known is not None:
        return known
    if not checked.issuperset(keys):
        for key in keys:
            if key not in checked:
                check_new_key(key, new)
    if len(set(keys)) != len(keys):
        raise ProtocolError(f"block of {keys[0]!r}...: a key repeated")
    return tuple(keys)
