"""Bounded msgpack: packing with bin types, and unpacking only plain data (no ext types, no deep nesting).

Every frame a peer sends is untrusted: :func:`unpack` refuses a frame over its cap, anything
msgpack cannot decode, ext types (a Timestamp too) and nesting deeper than :data:`MAX_DEPTH`, as
:class:`~coordinator.errors.ProtocolError` with a ``code`` saying which. No pickle anywhere.
The wire format (:mod:`~coordinator.transport.wire`) builds its messages on these.
"""

from __future__ import annotations

from typing import Any

import msgpack

from coordinator.errors import ProtocolError

__all__ = ["MAX_DEPTH", "PLAIN_SCALARS", "check_plain", "packb", "packb_view", "unpack"]

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


def packb_view(obj: object, size_hint: int) -> bytes | memoryview:
    """``obj`` as msgpack, as :func:`packb`; a large payload as a read-only view of its packer's buffer.

    ``Packer.pack`` copies its buffer out into a new ``bytes``: for a full batch (~1 MiB) a second
    megabyte of fresh pages written on the sender thread, holding the GIL. The view skips that
    copy (with :func:`~coordinator.core.columns.le_payload`, a cut of a full batch of one key
    took 521-549 µs against 943-1,034 at the median, its longest slice 368-389 µs against
    527-560: ``python -m benchmarks.cut``, docs/performance.md round 26). The view keeps the
    packer alive; ZeroMQ and the spool read it as bytes.
    """
    if size_hint <= _PRESIZE_BYTES:
        return packb(obj)
    packer = msgpack.Packer(use_bin_type=True, buf_size=size_hint, autoreset=False)
    packer.pack(obj)
    view: memoryview = packer.getbuffer()
    return view.toreadonly()


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
