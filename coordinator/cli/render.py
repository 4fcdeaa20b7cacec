"""What ``coordinator show`` prints for a person: sparklines, short incarnation labels, readable events.

Pure functions over what the journal holds (no I/O): ``show`` keeps the raw values in ``--json``.
An incarnation is a large random number on the wire; here it is ``r<rank>#<n>``, the rank's n-th
life in the order the aggregator first saw them (``r1#2``: rank 1 after its first restart).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["BLOCKS", "event_text", "incarnation_labels", "number", "sparkline"]

BLOCKS = "▁▂▃▄▅▆▇█"
"""The eight heights of a sparkline, lowest first."""

_INCARNATION = re.compile(r"\bincarnation (\d+)")
_ARROW = re.compile(r"\bincarnation (\d+) -> (\d+)")
_JOINED = re.compile(r"incarnation (\d+) pid (\S+)")
_CLOSED = re.compile(
    r"incarnation (\d+), (\d+) points, ending (\w+)(?: \((?P<why>.*)\))?; rank counters (?P<json>\{.*?\})(?P<rest>.*)",
    re.DOTALL,
)


def sparkline(values: Iterable[float | None]) -> str:
    """One block character per value, scaled from the smallest to the largest (a gap: a space).

    A flat series is a row of the middle block; infinities are drawn as the highest/lowest block.
    """
    vals = list(values)
    real = [v for v in vals if v is not None and math.isfinite(v)]
    if not real:
        return "".join(" " if v is None or math.isnan(v) else BLOCKS[-1 if v > 0 else 0] for v in vals)
    lo, hi = min(real), max(real)
    top = len(BLOCKS) - 1
    out = []
    for v in vals:
        if v is None or math.isnan(v):
            out.append(" ")
        elif not math.isfinite(v):
            out.append(BLOCKS[top if v > 0 else 0])
        elif hi == lo:
            out.append(BLOCKS[top // 2])
        else:
            out.append(BLOCKS[round((v - lo) / (hi - lo) * top)])
    return "".join(out)


def number(v: float | None) -> str:
    """A value in at most about 10 characters: ``0.02131``, ``1.235e+06``, ``-`` for none."""
    return "-" if v is None else f"{v:.4g}"


def incarnation_labels(senders: Iterable[Mapping[str, Any]]) -> dict[int, str]:
    """Incarnation -> ``r<rank>#<n>``: each rank's lives numbered from 1 in the order first seen."""
    by_rank: dict[int, list[tuple[float, int]]] = {}
    for s in senders:
        by_rank.setdefault(int(s["rank"]), []).append((float(s.get("first_seen") or 0.0), int(s["incarnation"])))
    labels: dict[int, str] = {}
    for rank, lives in by_rank.items():
        for n, (_, inc) in enumerate(sorted(lives), start=1):
            labels.setdefault(inc, f"r{rank}#{n}")
    return labels


def event_text(kind: str, rank: int | None, detail: str | None, labels: Mapping[int, str]) -> str:
    """One readable line for an event: incarnations as labels, counters as ``name value`` (non-zero only)."""
    d = detail or ""
    if kind == "rank_failed":
        return "failed (see failures above)"
    if kind == "rank_joined" and (m := _JOINED.fullmatch(d)):
        return f"{_label(m[1], rank, labels)} joined (pid {m[2]})"
    if kind == "rank_restarted" and (m := _ARROW.search(d)):
        return f"restarted: {_label(m[1], rank, labels)} -> {_label(m[2], rank, labels)}"
    if kind == "rank_closed" and (m := _CLOSED.fullmatch(d)):
        why = f" ({m['why']})" if m["why"] else ""
        text = f"{_label(m[1], rank, labels)} closed {m[3]}{why}: {m[2]} points"
        counters = _counters(m["json"])
        return text + (f"; {counters}" if counters else "") + m["rest"]
    return _INCARNATION.sub(lambda m: _label(m[1], rank, labels), d)


def _label(inc: str, rank: int | None, labels: Mapping[int, str]) -> str:
    """The short label of an incarnation (``r<rank>#?`` when the journal has no sender row for it)."""
    got = labels.get(int(inc))
    return got if got is not None else f"r{'?' if rank is None else rank}#?"


def _counters(raw: str) -> str:
    """A BYE counters JSON object as ``accepted 100, dropped_points 2`` (zeros left out)."""
    try:
        d = json.loads(raw)
    except ValueError:
        return raw
    if not isinstance(d, dict):
        return raw
    return ", ".join(f"{k} {v}" for k, v in d.items() if v)
