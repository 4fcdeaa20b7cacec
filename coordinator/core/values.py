"""Validation of keys, steps and field values at the API boundary (the caller's thread)."""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Mapping
from typing import Any

from coordinator.core.limits import MAX_FIELD_STR_BYTES, MAX_KEY_CHARS, MAX_TEXT_BYTES

__all__ = [
    "FIELD_TYPES",
    "FieldValue",
    "check_field",
    "check_key",
    "check_step",
    "check_text",
    "flatten_fields",
    "to_field_value",
    "to_metric_value",
]

FieldValue = tuple[str, Any]
"""A field value on the wire and in the store: (type tag, msgpack-safe payload)."""

FIELD_TYPES = ("bool", "int", "float", "str", "datetime", "list", "artifact")
"""``artifact`` payload: [file name, size in bytes, sha256 hex, copied into the run (bool), location]."""
_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
_FORBIDDEN_CHARS = frozenset("\x00\n\r\t")


def check_key(key: object, what: str = "key") -> str:
    """Return ``key`` if it is a valid ``/``-namespaced path, else raise.

    Raises:
        TypeError: ``key`` is not a ``str``.
        ValueError: empty, too long, empty or ``.``/``..`` components, control characters.
    """
    if type(key) is not str:
        raise TypeError(f"{what} must be a str, got {type(key).__name__}: {key!r:.80}")
    if not key:
        raise ValueError(f"{what} must not be empty")
    if len(key) > MAX_KEY_CHARS:
        raise ValueError(f"{what} is {len(key)} characters long; the limit is {MAX_KEY_CHARS}")
    if not key.isprintable() or _FORBIDDEN_CHARS.intersection(key):
        raise ValueError(f"{what} {key!r:.80} contains control characters")
    for part in key.split("/"):
        if part in ("", ".", ".."):
            raise ValueError(f"{what} {key!r:.80} has an empty, '.' or '..' component; use names like 'train/loss'")
    return key


def check_step(step: object) -> int:
    """Return ``step`` as a non-negative ``int``, else raise ``TypeError``/``ValueError``."""
    if isinstance(step, bool) or not isinstance(step, int):
        index = getattr(step, "__index__", None)
        if index is None or isinstance(step, bool):
            raise TypeError(f"step must be a non-negative int, got {type(step).__name__}: {step!r:.80}")
        step = index()
    assert isinstance(step, int)
    if step < 0 or step > _INT64_MAX:
        raise ValueError(f"step must be between 0 and 2**63-1, got {step}")
    return step


def to_metric_value(key: str, value: object) -> float:
    """Convert one metric value (number, bool, numpy scalar, 1-element tensor) to ``float``.

    Raises:
        TypeError: the value is not numeric (str, None, containers, multi-element arrays).
    """
    if isinstance(value, (str, bytes, bytearray)) or value is None:
        raise TypeError(
            f"metric {key!r} must be numeric (int, float, bool, numpy scalar, 0-d tensor), "
            f"got {type(value).__name__}: {value!r:.80}; log strings as fields: run[key] = value"
        )
    numel = getattr(value, "numel", None) or getattr(value, "size", None)
    if numel is not None:
        n = numel() if callable(numel) else numel
        if n != 1:
            raise TypeError(f"metric {key!r} must be a scalar, got {type(value).__name__} with {n} elements")
    item = getattr(value, "item", None)
    if item is not None:
        value = item()
    number: Any = value  # any object: float() is the check, what it refuses raises below
    try:
        return float(number)
    except OverflowError as e:
        raise ValueError(f"metric {key!r}: {value!r:.80} is too large for a float64") from e
    except (TypeError, ValueError) as e:
        raise TypeError(f"metric {key!r} must be numeric, got {type(value).__name__}: {value!r:.80}") from e


def check_text(key: str, value: object) -> str:
    """Return ``value`` if it may be one point of the text series ``key``, else raise.

    Raises:
        TypeError: ``value`` is not a ``str``.
        ValueError: longer than :data:`~coordinator.core.limits.MAX_TEXT_BYTES` in UTF-8, or not
            encodable as UTF-8 (a lone surrogate).
    """
    if type(value) is not str:
        raise TypeError(f"text series {key!r} takes str values, got {type(value).__name__}: {value!r:.80}")
    if len(value) > MAX_TEXT_BYTES // 4:  # below a quarter of the cap no string can exceed it: skip the encode
        try:
            size = len(value.encode("utf-8"))
        except UnicodeEncodeError as e:
            raise ValueError(f"text series {key!r}: the text is not valid UTF-8 ({e.reason})") from e
        if size > MAX_TEXT_BYTES:
            raise ValueError(
                f"text series {key!r}: a text of {size} bytes (UTF-8) exceeds {MAX_TEXT_BYTES}; "
                "upload large text as a file"
            )
    elif not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValueError(f"text series {key!r}: the text is not valid UTF-8 ({e.reason})") from e
    return value


def to_field_value(path: str, value: object) -> FieldValue:
    """Convert one field value to its (type tag, payload) form.

    Accepted: ``bool``, ``int`` (64-bit), ``float``, ``str`` (up to 64 KiB), ``datetime``
    (stored as POSIX seconds), numpy scalars and 1-element tensors, and flat lists or tuples
    of ``bool``/``int``/``float``/``str``.

    Raises:
        TypeError: any other type (``None``, objects, nested lists).
        ValueError: an int outside 64 bits or an oversized string.
    """
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, int):
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise ValueError(f"field {path!r}: int {value} does not fit in 64 bits")
        return ("int", int(value))
    if isinstance(value, float):
        return ("float", float(value))
    if isinstance(value, str):
        if len(value.encode("utf-8", "surrogatepass")) > MAX_FIELD_STR_BYTES:
            raise ValueError(
                f"field {path!r}: string of {len(value)} characters exceeds "
                f"{MAX_FIELD_STR_BYTES} bytes; upload large text as a file"
            )
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValueError(f"field {path!r}: string is not valid UTF-8 ({e.reason})") from e
        return ("str", value)
    if isinstance(value, _dt.datetime):
        if value.tzinfo is None:
            value = value.astimezone()
        return ("datetime", value.timestamp())
    if isinstance(value, (list, tuple)):
        items: list[object] = []
        for i, v in enumerate(value):
            tag, payload = to_field_value(f"{path}[{i}]", v)
            if tag in ("list", "datetime"):
                raise TypeError(f"field {path!r}: lists may hold only bool, int, float and str")
            items.append(payload)
        return ("list", items)
    item = getattr(value, "item", None)
    if item is not None and callable(item):
        try:
            scalar = item()
        except (ValueError, RuntimeError) as e:
            raise TypeError(f"field {path!r}: {type(value).__name__} is not a scalar") from e
        if isinstance(scalar, (bool, int, float, str)):
            return to_field_value(path, scalar)
    raise TypeError(
        f"field {path!r}: unsupported type {type(value).__name__}; use bool, int, float, str, "
        "datetime, a flat list of those, or a dict of those (None is not stored)"
    )


_TAG_PY_TYPES: dict[str, type] = {"bool": bool, "int": int, "float": float, "str": str, "datetime": float}


def check_field(path: object, tag: object, val: object) -> tuple[str, FieldValue]:
    """A field as received from another process (``[path, type tag, value]``), checked against its tag.

    This is the receiving side of :func:`to_field_value`: it converts nothing, it only admits a
    value whose Python type matches its tag (ints within int64, artifact records of five items).

    Raises:
        TypeError, ValueError: a malformed path, an unknown tag, or a value of the wrong type.
    """
    if type(path) is not str:
        raise TypeError("field path is not a str")
    p = check_key(path, "field path")
    if type(tag) is not str or tag not in FIELD_TYPES:
        raise ValueError(f"unknown field type {tag!r:.40}")
    if tag == "artifact":
        ok = (
            type(val) is list
            and len(val) == 5
            and type(val[0]) is str
            and type(val[1]) is int
            and type(val[2]) is str
            and type(val[3]) is bool
            and type(val[4]) is str
        )
    elif tag == "list":
        ok = type(val) is list and all(
            type(x) in (bool, float, str) or (type(x) is int and _INT64_MIN <= x <= _INT64_MAX) for x in val
        )
    else:
        ok = type(val) is _TAG_PY_TYPES[tag]
    if ok and type(val) is int:
        ok = _INT64_MIN <= val <= _INT64_MAX
    if not ok:
        raise ValueError(f"field {p!r}: value does not match its type {tag}")
    return p, (tag, val)


def flatten_fields(path: str, value: object) -> list[tuple[str, FieldValue]]:
    """Validate ``value`` (a dict is flattened into sub-paths) and return (path, value) pairs.

    Nothing is returned unless every entry is valid, so a bad entry loses nothing else.
    """
    out: list[tuple[str, FieldValue]] = []

    def walk(prefix: str, v: object) -> None:
        if isinstance(v, Mapping):
            if not v:
                raise ValueError(f"field {prefix!r}: empty dicts are not stored")
            for k, sub in v.items():
                if type(k) is not str:
                    raise TypeError(f"field {prefix!r}: dict keys must be str, got {k!r:.80}")
                walk(check_key(f"{prefix}/{k}", "field path"), sub)
            return
        out.append((prefix, to_field_value(prefix, v)))

    walk(check_key(path, "field path"), value)
    return out


def is_finite(value: float) -> bool:
    """True when ``value`` is neither NaN nor infinite."""
    return math.isfinite(value)
