"""The UI API's request parameters and answers: reading the URL's query, and values made JSON-ready.

Query parameters arrive as the strings of the URL (``urllib.parse.parse_qs``); a missing or
malformed one raises :class:`BadRequest`, which the server answers with 400.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["BadRequest", "Query", "jsonable", "need", "one", "one_int", "ranged"]

Query = Mapping[str, Sequence[str]]
"""Parsed URL query: name -> its values (``urllib.parse.parse_qs``)."""


class BadRequest(ValueError):
    """A request parameter is missing or malformed (the server answers 400)."""


def one(q: Query, name: str, default: str | None = None) -> str | None:
    """The last value of parameter ``name`` (``default`` when absent)."""
    vals = q.get(name)
    return vals[-1] if vals else default


def one_int(q: Query, name: str, default: int | None = None) -> int | None:
    """Parameter ``name`` as an int (``default`` when absent or empty).

    Raises:
        BadRequest: it is not an integer.
    """
    raw = one(q, name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise BadRequest(f"parameter {name!r} must be an integer, got {raw!r}") from None


def ranged(q: Query, name: str, default: int, lo: int, hi: int) -> int:
    """Parameter ``name`` as an int in ``lo..hi`` (``default`` when absent).

    Raises:
        BadRequest: it is not an integer, or outside the range.
    """
    v = one_int(q, name, default)
    assert v is not None
    if not lo <= v <= hi:
        raise BadRequest(f"parameter {name!r} must be in {lo}..{hi}, got {v}")
    return v


def need(q: Query, name: str) -> str:
    """Parameter ``name``, which must be present and non-empty.

    Raises:
        BadRequest: it is missing or empty.
    """
    raw = one(q, name)
    if not raw:
        raise BadRequest(f"parameter {name!r} is required")
    return raw


def jsonable(v: Any) -> Any:
    """``v`` with NaN/inf as ``None``, tuples as lists and anything else JSON cannot hold as its ``str``."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, Mapping):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if isinstance(v, bytes):
        return f"<{len(v)} bytes>"
    return str(v)
