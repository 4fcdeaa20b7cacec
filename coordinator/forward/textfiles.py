"""Text series as files, for a tracker that keeps them as files (MLflow): the file's name and format.

One file per forwarded batch per (key, rank): ``text/<key>/rank<r>/steps_<a>-<b>.txt``, ``a``
and ``b`` the first and last step in it. Each entry is a header line then the text itself::

    === step 12 | 2024-05-01T10:00:00.123000+00:00 | 27 chars ===
    the text, which may hold newlines
    <blank line>

The header gives the text's length in characters, so the file reads back exactly
(:func:`parse_texts`) whatever the texts hold, and still reads well in the tracker's viewer.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence

from coordinator.forward.backend import TextPoint

__all__ = ["format_texts", "parse_texts", "text_file_name"]

_HEADER = re.compile(r"=== step (-?\d+) \| ([^|]+) \| (\d+) chars ===\n")


def text_file_name(key: str, rank: int, points: Sequence[TextPoint]) -> str:
    """``text/<key>/rank<r>/steps_<first>-<last>.txt`` for the entries ``points`` of one batch."""
    steps = [p[0] for p in points]
    return f"text/{key}/rank{rank}/steps_{min(steps)}-{max(steps)}.txt"


def format_texts(points: Sequence[TextPoint]) -> str:
    """The file's content: each entry as its header line, its text and a blank line."""
    parts = []
    for step, text, ts in points:
        when = dt.datetime.fromtimestamp(ts, dt.UTC).isoformat()
        parts.append(f"=== step {step} | {when} | {len(text)} chars ===\n{text}\n\n")
    return "".join(parts)


def parse_texts(content: str) -> list[tuple[int, str]]:
    """(step, text) of each entry of a file written by :func:`format_texts`.

    Raises:
        ValueError: the content is not in that format.
    """
    out: list[tuple[int, str]] = []
    pos = 0
    while pos < len(content):
        m = _HEADER.match(content, pos)
        if m is None:
            raise ValueError(f"not a text-series file: no entry header at character {pos}")
        start = m.end()
        end = start + int(m.group(3))
        if content[end : end + 2] != "\n\n":
            raise ValueError(f"not a text-series file: entry at character {pos} is cut")
        out.append((int(m.group(1)), content[start:end]))
        pos = end + 2
    return out
