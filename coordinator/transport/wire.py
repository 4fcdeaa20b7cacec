"""Wire format: the two-frame envelope + msgpack payload, its versions and bounded decoding.

Every message is two ZeroMQ frames: ``[envelope, payload]``.

* envelope: msgpack array ``[PROTOCOL, kind, run_id, rank, incarnation, seq]``
* payload: a msgpack map whose schema depends on ``kind``

Decoding is bounded and takes plain data only (:mod:`~coordinator.transport.plain`).

Batches are columnar: for each metric key, the steps (little-endian int64) and values
(little-endian float64) of every point in the batch as two byte strings; for each text series
key, the steps the same way and the texts as a list of str. No pickle, no msgpack ext types;
every decoded value is type-checked before use.

Since protocol 3 a batch may also carry *blocks* (``"b"``): a dict logged at explicit steps, cut
from the rank's frame (:mod:`~coordinator.transport.frames`) as ``[keys, LE int64 steps (n),
LE float64 values (n x K, step-major)]``. ``decode_batch(..., blocks=True)`` hands each over as
one :class:`Block` (one steps array, one keys x steps values matrix), as it does a run of
consecutive metric chunks with byte-identical steps (what older ranks send for such a dict), so
the aggregator handles it without per-key work; with ``blocks=False`` both come out per key.

Since protocol 4 a block names its keys by a *key blob*, packed once per key tuple, which a
decoder that has seen it maps to the checked tuple (:mod:`~coordinator.transport.wireblocks`).
"""

from __future__ import annotations

from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from coordinator.core.columns import from_le, step_range, to_le
from coordinator.core.limits import MAX_FRAME_BYTES
from coordinator.core.values import FieldValue, check_field, check_key, check_text
from coordinator.errors import ProtocolError
from coordinator.transport.plain import PLAIN_SCALARS, check_plain, packb, packb_sliced, unpack
from coordinator.transport.wireblocks import (
    MAX_SHAPES,
    Block,
    BlockItem,
    KeyShapes,
    check_new_key,
    decode_blocks,
    key_blob,
)

__all__ = [
    "ACK",
    "BATCH",
    "BYE",
    "BYE_ACK",
    "ERROR",
    "HELLO",
    "PING",
    "PONG",
    "PROTOCOL",
    "QUERY",
    "QUERY_REPLY",
    "READABLE",
    "STATE",
    "STATE_REPLY",
    "WELCOME",
    "Batch",
    "Block",
    "BlockItem",
    "Envelope",
    "KeyShapes",
    "TextChunk",
    "decode_batch",
    "decode_envelope",
    "decode_map",
    "encode_batch",
    "encode_chunks",
    "encode_chunks_view",
    "encode_envelope",
    "encode_map",
    "key_blob",
    "kind_name",
]

PROTOCOL = 4
"""Wire protocol version; a peer with another version is refused with both versions named.

2: batches carry text series (``"x"``); ``QUERY values`` of a text series answers ``"texts"``.
3: batches carry blocks (``"b"``). An aggregator of version 2 would ignore them, so it refuses a
version-3 rank (its envelope check), never stores the batch without them.
4: a block's keys are a key blob (:func:`key_blob`); a version-3 aggregator refuses the rank.
"""

READABLE = (1, 2, 3, PROTOCOL)
"""Versions this side decodes: a version-1 message is a version-2 message without texts, a
version-2 one a version-3 one without blocks, a version-3 one a version-4 one whose blocks list
their keys, so a spool written before an upgrade still replays. Everything this side sends is
:data:`PROTOCOL`."""

# Client -> aggregator.
HELLO = 1
BATCH = 2
PING = 3
STATE = 4
QUERY = 5
BYE = 6
# Aggregator -> client.
WELCOME = 11
ACK = 12
PONG = 13
STATE_REPLY = 14
QUERY_REPLY = 15
BYE_ACK = 16
ERROR = 17

_KIND_NAMES = {
    HELLO: "HELLO",
    BATCH: "BATCH",
    PING: "PING",
    STATE: "STATE",
    QUERY: "QUERY",
    BYE: "BYE",
    WELCOME: "WELCOME",
    ACK: "ACK",
    PONG: "PONG",
    STATE_REPLY: "STATE_REPLY",
    QUERY_REPLY: "QUERY_REPLY",
    BYE_ACK: "BYE_ACK",
    ERROR: "ERROR",
}

_CHECKED_BELOW = frozenset(("m", "b"))
"""Payload entries ``decode_batch`` type-checks item by item itself (not by the generic recursion)."""
_STR = frozenset((str,))
_MAX_ENVELOPE_BYTES = 512
_MAX_KEYS_PER_BATCH = 100_000
_MAX_FIELDS_PER_BATCH = 100_000
_INT64_MAX = 2**63 - 1


def kind_name(kind: int) -> str:
    """Readable name of a message kind (for logs and errors)."""
    return _KIND_NAMES.get(kind, f"kind-{kind}")


class Envelope(NamedTuple):
    """Routing header of every message.

    A named tuple: one is built for every message on both sides, and a frozen dataclass's
    ``__init__`` (one ``object.__setattr__`` per field) took 1.5 of the 4.5 µs a decode took.
    """

    protocol: int
    kind: int
    run_id: str
    rank: int
    incarnation: int
    seq: int


TextChunk = tuple[str, "array[int]", list[str]]
"""(key, steps, texts) of one text series in a batch."""

_MIN_BLOCK_KEYS = 2
"""A run of fewer chunks with equal steps stays per key."""


@dataclass(slots=True)
class Batch:
    """A decoded batch: columnar metric chunks, text chunks and field writes of one sender."""

    metrics: list[tuple[str, array[int], array[float]]]
    """(key, steps, values) per metric key."""
    fields: list[tuple[str, FieldValue]]
    """(path, (type tag, value)) in the order they were written."""
    ts: float
    """Wall-clock time (POSIX seconds) at which the sender cut the batch."""
    texts: list[TextChunk] = field(default_factory=list)
    """(key, steps, texts) per text series key."""
    blocks: list[Block] = field(default_factory=list)
    """Runs of metric chunks sharing their steps (``decode_batch(..., blocks=True)``; not in ``metrics``)."""

    @property
    def points(self) -> int:
        """Number of points (metric and text) in the batch."""
        n = sum(b.points for b in self.blocks)
        return n + sum(len(s) for _, s, _ in self.metrics) + sum(len(s) for _, s, _ in self.texts)


def encode_envelope(kind: int, run_id: str, rank: int, incarnation: int, seq: int) -> bytes:
    """Encode an envelope for ``kind`` (``seq`` is the batch number or a request id)."""
    return packb([PROTOCOL, kind, run_id, rank, incarnation, seq])


def decode_envelope(frame: bytes) -> Envelope:
    """Decode and type-check an envelope.

    Raises:
        ProtocolError: malformed; ``code="version"`` when the protocol differs.
    """
    obj = unpack(frame, _MAX_ENVELOPE_BYTES, check=False)  # every element's type is checked below
    if type(obj) is not list or len(obj) != 6:
        raise ProtocolError("envelope is not a 6-element array")
    proto, kind, run_id, rank, inc, seq = obj
    if type(proto) is not int:
        raise ProtocolError("envelope protocol is not an int")
    if proto not in READABLE:
        raise ProtocolError(
            f"protocol version mismatch: peer speaks {proto}, this side speaks {PROTOCOL}",
            code="version",
        )
    if type(kind) is not int or kind not in _KIND_NAMES:
        raise ProtocolError(f"unknown message kind {kind!r:.40}")
    if type(run_id) is not str or not 0 < len(run_id) <= 128:
        raise ProtocolError("envelope run id is not a short str")
    top = _INT64_MAX
    if not (type(rank) is type(inc) is type(seq) is int and 0 <= rank <= top and 0 <= inc <= top and 0 <= seq <= top):
        for name, v in (("rank", rank), ("incarnation", inc), ("seq", seq)):
            if type(v) is not int or not 0 <= v <= top:
                raise ProtocolError(f"envelope {name} is not a non-negative int64")
    return Envelope(proto, kind, run_id, rank, inc, seq)


def encode_map(payload: dict[str, Any]) -> bytes:
    """Encode a control payload (a msgpack map)."""
    return packb(payload)


def decode_map(frame: bytes, limit: int = MAX_FRAME_BYTES) -> dict[str, Any]:
    """Decode a control payload that must be a map with str keys."""
    obj = unpack(frame, limit)
    if type(obj) is not dict:
        raise ProtocolError("payload is not a map")
    return obj


def encode_batch(
    metrics: list[tuple[str, array[int], array[float]]],
    fields: list[tuple[str, FieldValue]],
    ts: float,
    texts: list[TextChunk] | None = None,
) -> bytes:
    """Encode a batch payload (the sender thread calls this, never the training thread)."""
    return encode_chunks([[k, to_le(s), to_le(v)] for k, s, v in metrics], fields, ts, texts)


def encode_chunks(
    chunks: list[list[Any]],
    fields: list[tuple[str, FieldValue]],
    ts: float,
    texts: list[TextChunk] | None = None,
    blocks: list[BlockItem] | None = None,
) -> bytes:
    """Encode a batch payload whose metric chunks are already ``[key, LE int64 steps, LE float64 values]``.

    The same payload as :func:`encode_batch`; the sender's cut builds the chunks in its one pass
    over the keys. ``blocks``: ``(keys, LE int64 steps (n), LE float64 values (n x K, step-major))``
    each (:meth:`.Frame.block`), sent as ``"b"`` with the keys as their :func:`key_blob`.
    """
    return packb(*_chunks_payload(chunks, fields, ts, texts, blocks))


def encode_chunks_view(
    chunks: list[list[Any]],
    fields: list[tuple[str, FieldValue]],
    ts: float,
    texts: list[TextChunk] | None = None,
    blocks: list[BlockItem] | None = None,
    pause: Callable[[], None] | None = None,
) -> bytes | memoryview:
    """:func:`encode_chunks`' payload; a large one copied into place in slices, ``pause`` between them,
    and returned as a read-only view (:func:`~coordinator.transport.plain.packb_sliced`)."""
    payload, size = _chunks_payload(chunks, fields, ts, texts, blocks)
    return packb_sliced(payload, size, pause if pause is not None else _no_pause)


def _no_pause() -> None:
    """:func:`encode_chunks_view`'s default ``pause``: nobody to let go first."""


def _chunks_payload(
    chunks: list[list[Any]],
    fields: list[tuple[str, FieldValue]],
    ts: float,
    texts: list[TextChunk] | None,
    blocks: list[BlockItem] | None,
) -> tuple[dict[str, Any], int]:
    """The batch payload's map, and about how many bytes it packs into."""
    payload: dict[str, Any] = {"m": chunks, "f": [[p, tag, val] for p, (tag, val) in fields], "t": ts}
    if texts:
        payload["x"] = [[k, to_le(s), t] for k, s, t in texts]
    size = sum(len(c[1]) + len(c[2]) for c in chunks)
    if blocks:
        payload["b"] = [[key_blob(k), sb, vb] for k, sb, vb in blocks]
        size += sum(len(b[1]) + len(b[2]) for b in blocks)
    return payload, size + 64 * (len(chunks) + len(fields)) + 4096


def decode_batch(
    frame: bytes, checked: set[str] | None = None, *, blocks: bool = False, shapes: KeyShapes | None = None
) -> Batch:
    """Decode and validate a batch payload.

    Args:
        frame: the payload frame.
        checked: keys already validated (the aggregator's set): their ``check_key`` is skipped,
            and the keys of a batch that decodes are added to it. A key's validity depends on
            the string alone, so one set serves every sender; it only holds keys of decoded
            (hence ingested) batches, so it stays as large as the run's keys.
        blocks: decode runs of consecutive chunks with equal steps bytes into :attr:`Batch.blocks`
            (the rest stays in :attr:`Batch.metrics`); the points are the same.
        shapes: the key tuples of earlier blocks (the aggregator's): a ``"b"`` block with the same
            keys is not checked key by key again and carries that tuple (the same object: later
            lookups of its keys hash nothing). Grown like ``checked``, up to 4,096 tuples.

    Raises:
        ProtocolError: anything malformed; nothing of a bad batch is used (nor added to ``checked``).
    """
    if checked is None:
        checked = set()
    new: list[str] = []
    obj = unpack(frame, MAX_FRAME_BYTES, check=False)
    if type(obj) is not dict:
        raise ProtocolError("payload is not a map")
    for name, v in obj.items():
        # What check_plain checks, but not the metric chunks: each is type-checked below, an
        # exact [str, bytes, bytes] (per key, that recursion was a fifth of decoding a batch).
        if type(name) is not str:
            raise ProtocolError(f"map key of type {type(name).__name__}; only str keys are allowed")
        if type(v) not in PLAIN_SCALARS and (name not in _CHECKED_BELOW or type(v) is not list):
            check_plain(v, 1)
    m, f, ts = obj.get("m"), obj.get("f"), obj.get("t")
    if type(m) is not list or type(f) is not list or type(ts) is not float:
        raise ProtocolError("batch lacks m (list), f (list) or t (float)")
    if len(m) > _MAX_KEYS_PER_BATCH or len(f) > _MAX_FIELDS_PER_BATCH:
        raise ProtocolError("batch has too many keys or fields")
    seen: KeyShapes = {} if shapes is None else shapes
    blobs: list[tuple[bytes, tuple[str, ...]]] = []
    framed = decode_blocks(obj.get("b", []), checked, new, _MAX_KEYS_PER_BATCH - len(m), seen, blobs)
    metrics: list[tuple[str, array[int], array[float]]] = []
    runs: list[tuple[bytes, list[str], list[bytes]]] = []
    """(steps bytes, keys, values bytes) of consecutive chunks with equal steps."""
    for item in m:
        if type(item) is not list or len(item) != 3:
            check_plain(item, 2)  # a non-plain value is refused as such (code "ext")
            raise ProtocolError("metric chunk is not [key, steps, values]")
        key, sb, vb = item
        if type(key) is not str or type(sb) is not bytes or type(vb) is not bytes:
            check_plain(item, 2)
            raise ProtocolError("metric chunk has wrong types")
        if key not in checked:
            check_new_key(key, new)
        if len(sb) % 8 or len(sb) != len(vb) or not sb:
            raise ProtocolError(f"metric {key!r}: steps/values lengths do not match")
        if runs and runs[-1][0] == sb:  # the same steps as the previous chunk: checked already
            runs[-1][1].append(key)
            runs[-1][2].append(vb)
        else:
            runs.append((sb, [key], [vb]))
    out_blocks: list[Block] = []
    for sb, keys, vbs in runs:
        steps = from_le("q", sb)
        if step_range(steps)[0] < 0:
            raise ProtocolError(f"metric {keys[0]!r}: negative step")
        if blocks and len(keys) >= _MIN_BLOCK_KEYS:
            values = np.frombuffer(b"".join(vbs), dtype="<f8").reshape(len(keys), len(steps))
            out_blocks.append(Block(tuple(keys), steps, values.astype(np.float64, copy=False)))
            continue
        metrics.append((keys[0], steps, from_le("d", vbs[0])))
        for key, vb in zip(keys[1:], vbs[1:], strict=True):
            metrics.append((key, array("q", steps), from_le("d", vb)))
    for blk in framed:
        if blocks and len(blk.keys) >= _MIN_BLOCK_KEYS:
            out_blocks.append(blk)
        else:  # per key: row j of the keys x steps matrix
            for key, row in zip(blk.keys, blk.values, strict=True):
                metrics.append((key, array("q", blk.steps), from_le("d", row.astype("<f8").tobytes())))
    texts = _decode_texts(obj.get("x", []), checked, new)
    fields: list[tuple[str, FieldValue]] = []
    for item in f:
        if type(item) is not list or len(item) != 3:
            raise ProtocolError("field is not [path, type, value]")
        try:
            fields.append(check_field(*item))
        except (TypeError, ValueError) as e:
            raise ProtocolError(f"bad field: {e}") from e
    checked.update(new)
    if shapes is not None and len(shapes) < MAX_SHAPES:
        shapes.update((blk.keys, blk.keys) for blk in framed if blk.keys not in shapes)
        shapes.update(blobs)
    return Batch(metrics, fields, ts, texts, out_blocks)


def _decode_texts(x: object, checked: set[str], new: list[str]) -> list[TextChunk]:
    """The text chunks of a batch (``"x"``: ``[[key, LE int64 steps, [str, ...]], ...]``), checked.

    Keys in ``checked`` are not validated again; newly validated ones are appended to ``new``.
    """
    if type(x) is not list or len(x) > _MAX_KEYS_PER_BATCH:
        raise ProtocolError("batch x (text series) is not a list of at most 100,000 keys")
    out: list[TextChunk] = []
    for item in x:
        if type(item) is not list or len(item) != 3:
            raise ProtocolError("text chunk is not [key, steps, texts]")
        key, sb, tl = item
        if type(key) is not str or type(sb) is not bytes or type(tl) is not list:
            raise ProtocolError("text chunk has wrong types")
        try:
            if key not in checked:
                check_key(key)
                new.append(key)
            for t in tl:
                check_text(key, t)
        except (TypeError, ValueError) as e:
            raise ProtocolError(f"bad text chunk: {e}") from e
        if len(sb) % 8 or len(sb) != 8 * len(tl) or not sb:
            raise ProtocolError(f"text series {key!r}: steps/texts lengths do not match")
        steps = from_le("q", sb)
        if step_range(steps)[0] < 0:
            raise ProtocolError(f"text series {key!r}: negative step")
        out.append((key, steps, tl))
    return out
