"""``init_run``'s former tuning keywords: still accepted, with a warning naming the Settings field to use."""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from typing import Any

__all__ = ["DEPRECATED_KEYWORDS", "settings_from_keywords"]

DEPRECATED_KEYWORDS: tuple[str, ...] = (
    "rank",
    "world_size",
    "dir",
    "default_policy",
    "max_buffer_points",
    "flush_interval_s",
    "close_timeout_s",
    "group_timeout_s",
    "liveness_timeout_s",
    "stop_grace_s",
    "rendezvous_timeout_s",
    "backpressure",
    "spool_dir",
    "max_spool_bytes",
    "handle_sigterm",
    "transport",
    "insecure_tcp",
    "forward_timeout_s",
)
"""Keywords ``init_run`` took before ``settings=``; each is the :class:`Settings` field of the same name."""

_PATHS = frozenset({"dir", "spool_dir"})


def settings_from_keywords(kwargs: Mapping[str, Any], *, stacklevel: int) -> dict[str, Any]:
    """The Settings fields that deprecated keywords set, warning once per keyword.

    Args:
        kwargs: the keywords ``init_run`` did not name in its signature.
        stacklevel: of the warnings, counted from this function (so it points at the user's call).

    Raises:
        TypeError: a keyword that ``init_run`` never took.
    """
    for k in kwargs:
        if k not in DEPRECATED_KEYWORDS:
            raise TypeError(f"init_run() got an unexpected keyword argument {k!r}")
    out: dict[str, Any] = {}
    for k, v in kwargs.items():
        warnings.warn(
            f"init_run({k}=...) is deprecated; pass settings=Settings({k}=...)",
            DeprecationWarning,
            stacklevel=stacklevel + 1,
        )
        out[k] = os.fspath(v) if k in _PATHS and v is not None else v
    return out
