"""Bounded msgpack: packing with bin types, and unpacking only plain data (no ext types, no deep nesting).

Every frame a peer sends is untrusted: :func:`unpack` refuses a frame over its cap, anything
msgpack cannot decode, ext types (a Timestamp too) and nesting deeper than :data:`MAX_DEPTH`, as
:class:`~coordinator.errors.ProtocolError` with a ``code`` saying which. No pickle anywhere.
The wire format (:mod:`~coordinator.transport.wire`) builds its messages on these.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgpack

from coordinator.errors import ProtocolError
from coordinator.transport import pages

__all__ = ["MAX_DEPTH", "PLAIN_SCALARS", "SLICE_BYTES", "check_plain", "list_head", "packb", "packb_sliced", "unpack"]

PLAIN_SCALARS = (str, bytes, int, float, bool, type(None))
"""The scalar types a decoded frame may hold."""

MAX_DEPTH = 16
"""Deepest nesting of lists and maps a decoded frame may have."""


def packb(obj: object, size_hint: int = 0) -> bytes:
    """``obj`` as msgpack (bytes as bin, str as str).

    ``size_hint``: about how many bytes it will take. A payload of hundreds of KB (a full batch)
    is packed into a buffer of that size at once: msgpack otherwise starts small and doubles,
    copying it each time into fresh pages (a full batch 165 µs at the median, up to 0.4-0.9 ms
    cold, against 92 µs), on the sender thread, holding the GIL. The bytes are the same.
    """
    if size_hint > _PRESIZE_BYTES:
        data: bytes = msgpack.Packer(use_bin_type=True, buf_size=size_hint).pack(obj)
    else:
        data = msgpack.packb(obj, use_bin_type=True)
    return data


def packb_sliced(payload: dict[str, Any], size_hint: int, pause: Callable[[], None]) -> bytes | memoryview:
    """``payload`` as msgpack, as :func:`packb`; a large one copied into place in slices, ``pause`` between them.

    A full batch (~1 MiB) packed in one call copies each long column into the packer's buffer,
    fresh pages, in one C call holding the GIL: the sender's longest stretch (95-130 µs at the
    median, up to 0.4-0.5 ms: ``python -m benchmarks.cut``, docs/performance.md round 27). Here
    the payload's small parts are packed as before, each byte view (a long column,
    :func:`~coordinator.core.columns.le_payload`) gets its bin header, and the parts are copied
    into one uninitialised buffer (a map of :mod:`~coordinator.transport.pages`, never freed
    holding the GIL) :data:`SLICE_BYTES` at a time, calling ``pause`` (the sender's GIL
    slicer) after each. The bytes are :func:`packb`'s.

    Views are looked for where the wire puts them: as items of the lists in ``payload``'s list
    values (a chunk ``[key, steps, values]``); one anywhere else is packed with its neighbours,
    in one call. Returns bytes for a small payload, else a read-only view of the buffer.
    """
    if size_hint <= _PRESIZE_BYTES:
        return packb(payload)
    parts: list[bytes | memoryview] = [_HEADERS.pack_map_header(len(payload))]
    for key, value in payload.items():
        parts.append(packb(key))
        if type(value) is list:
            _list_parts(value, parts)
        else:
            parts.append(packb(value))
    view = pages.take(sum(map(len, parts))).data  # a pooled map's pages (the first time, they fault in slice by slice)
    at = room = 0  # room: bytes left to copy before the next pause
    for part in parts:
        n = len(part)
        lo = 0
        while lo < n:
            if not room:
                pause()
                room = SLICE_BYTES
            hi = min(n, lo + room)
            view[at + lo : at + hi] = part[lo:hi]
            room -= hi - lo
            lo = hi
        at += n
    return view.toreadonly()


SLICE_BYTES = 128 * 1024
"""Bytes :func:`packb_sliced` copies between two pauses (~20-60 µs into fresh pages on the development VM).

Smaller slices shorten the sender's stretches further, but each pause past the budget yields
the GIL to a training thread logging flat out, which then keeps it for the switch interval
(5 ms): at 64 KiB a rank logging flat out reached 10-15% fewer durable points/s
(``python -m benchmarks.throughput``, docs/performance.md round 27)."""

_HEADERS = msgpack.Packer(use_bin_type=True)


def list_head(items: list[Any], last_bytes: int) -> bytes:
    """The msgpack of the list ``items + [b]`` up to ``b``'s bytes, for a ``b`` of ``last_bytes`` bytes.

    ``list_head(items, len(b)) + b == packb(items + [b])``: a writer can send the head and ``b``
    itself (a payload of a megabyte) without packing a copy of it.
    """
    return b"".join([_HEADERS.pack_array_header(len(items) + 1), *map(packb, items), _bin_header(last_bytes)])


def _list_parts(items: list[Any], parts: list[bytes | memoryview]) -> None:
    """``items`` as msgpack parts: runs of lists without a view packed together, views as bin header and view."""
    parts.append(_HEADERS.pack_array_header(len(items)))
    run = 0
    for i, item in enumerate(items):
        if type(item) is list and memoryview in map(type, item):
            if run < i:
                parts.append(_array_items(items[run:i]))
            parts.append(_HEADERS.pack_array_header(len(item)))
            for x in item:
                if type(x) is memoryview:
                    parts.append(_bin_header(x.nbytes))
                    parts.append(x.cast("B") if x.format != "B" or x.ndim != 1 else x)
                else:
                    parts.append(packb(x))
            run = i + 1
    if run < len(items):
        parts.append(_array_items(items[run:]))


def _array_items(items: list[Any]) -> memoryview:
    """The packed items of a list, without the list's header."""
    packed = memoryview(packb(items))
    n = len(items)
    return packed[1 if n < 16 else 3 if n < 0x10000 else 5 :]


def _bin_header(n: int) -> bytes:
    """The msgpack bin header of ``n`` bytes (the shortest, as the packer writes it)."""
    if n < 0x100:
        return b"\xc4" + n.to_bytes(1, "big")
    if n < 0x10000:
        return b"\xc5" + n.to_bytes(2, "big")
    return b"\xc6" + n.to_bytes(4, "big")


_PRESIZE_BYTES = 128 * 1024
"""Payloads estimated larger than this are packed into a buffer of their size."""


def unpack(data: bytes, limit: int, *, check: bool = True) -> Any:
    """Decode a frame of at most ``limit`` bytes; with ``check``, refuse anything but plain data.

    Raises:
        ProtocolError: oversize (``code="oversize"``), undecodable, an ext type (``"ext"``), too
            deep (``"deep"``), a map key that is not a str.
    """
    if len(data) > limit:
        raise ProtocolError(f"frame of {len(data)} bytes exceeds the {limit}-byte cap", code="oversize")
    try:
        obj = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            ext_hook=_reject_ext,
            use_list=True,
        )
    except ProtocolError:
        raise
    except Exception as e:  # msgpack raises many types for bad input; all mean "not our frame"
        raise ProtocolError(f"undecodable msgpack: {type(e).__name__}: {e}") from e
    if check:
        check_plain(obj, 0)
    return obj


def check_plain(obj: Any, depth: int) -> None:
    """Reject anything but plain msgpack data: str-keyed maps, lists, scalars (no Timestamp)."""
    t = type(obj)
    if t in PLAIN_SCALARS:
        return
    if depth >= MAX_DEPTH:
        raise ProtocolError(f"nesting deeper than {MAX_DEPTH}", code="deep")
    if t is list:
        for x in obj:
            if type(x) not in PLAIN_SCALARS:
                check_plain(x, depth + 1)
    elif t is dict:
        for k, v in obj.items():
            if type(k) is not str:
                raise ProtocolError(f"map key of type {type(k).__name__}; only str keys are allowed")
            if type(v) not in PLAIN_SCALARS:
                check_plain(v, depth + 1)
    else:
        raise ProtocolError(f"{t.__name__} values are not allowed", code="ext")


def _reject_ext(code: int, data: bytes) -> object:
    raise ProtocolError(f"msgpack ext type {code} is not allowed", code="ext")
