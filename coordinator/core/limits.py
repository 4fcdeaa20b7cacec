"""Fixed limits of the value model and the protocol (not tunable: peers and stores rely on them)."""

from __future__ import annotations

__all__ = [
    "DIR_NAME",
    "MAX_FIELD_STR_BYTES",
    "MAX_FRAME_BYTES",
    "MAX_KEYS_PER_RUN",
    "MAX_KEY_CHARS",
    "MAX_TEXT_BYTES",
]

DIR_NAME = ".coordinator"
"""Store directory created in the working directory when nothing else is configured."""
MAX_FRAME_BYTES = 64 * 1024 * 1024
"""Largest frame the aggregator accepts (ZMQ_MAXMSGSIZE); larger peers are disconnected."""
MAX_KEY_CHARS = 512
"""Longest metric key or field path."""
MAX_FIELD_STR_BYTES = 64 * 1024
"""Longest string value of a field."""
MAX_KEYS_PER_RUN = 100_000
"""Distinct metric keys one rank may create; more raises ValueError (cardinality cap)."""
MAX_TEXT_BYTES = 64 * 1024
"""Longest value (UTF-8 bytes) of one point of a text series (``append("...")``)."""
