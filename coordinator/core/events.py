"""A run's events as a person reads them: short incarnation labels and one sentence per event kind.

Pure functions over what the journal holds (no I/O), shared by ``coordinator show`` and the web UI
(both keep the raw ``detail`` alongside: ``show --json``, the UI's collapsed raw detail). An
incarnation is a large random number on the wire; here it is ``r<rank>#<n>``, the rank's n-th life
in the order the aggregator first saw them (``r1#2``: rank 1 after its first restart). A BYE's
counters JSON reads as ``name value`` pairs, zeros left out.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["SEE_FAILURES", "event_rows", "event_text", "incarnation_labels", "label_of"]

SEE_FAILURES = "see failures above"
"""What a ``rank_failed`` event says by default: ``show`` prints each failure, with its traceback, above."""

_INCARNATION = re.compile(r"\bincarnation (\d+)")
_ARROW = re.compile(r"\bincarnation (\d+) -> (\d+)")
_JOINED = re.compile(r"incarnation (\d+) pid (\S+)")
_CLOSED = re.compile(
    r"incarnation (\d+), (\d+) points, ending (\w+)(?: \((?P<why>.*)\))?; rank counters (?P<json>\{.*?\})(?P<rest>.*)",
    re.DOTALL,
)


def incarnation_labels(senders: Iterable[Mapping[str, Any]]) -> dict[int, str]:
    """Incarnation -> ``r<rank>#<n>``: each rank's lives numbered from 1 in the order first seen.

    Args:
        senders: the journal's sender rows (``rank``, ``incarnation``, ``first_seen``).
    """
    by_rank: dict[int, list[tuple[float, int]]] = {}
    for s in senders:
        by_rank.setdefault(int(s["rank"]), []).append((float(s.get("first_seen") or 0.0), int(s["incarnation"])))
    labels: dict[int, str] = {}
    for rank, lives in by_rank.items():
        for n, (_, inc) in enumerate(sorted(lives), start=1):
            labels.setdefault(inc, f"r{rank}#{n}")
    return labels


def label_of(incarnation: int | str, rank: int | None, labels: Mapping[int, str]) -> str:
    """The short label of an incarnation (``r<rank>#?`` when the journal has no sender row for it)."""
    got = labels.get(int(incarnation))
    return got if got is not None else f"r{'?' if rank is None else rank}#?"


def event_text(
    kind: str,
    rank: int | None,
    detail: str | None,
    labels: Mapping[int, str],
    *,
    failure_hint: str | None = SEE_FAILURES,
) -> str:
    """One readable line for an event: incarnations as labels, counters as ``name value`` (non-zero only).

    Args:
        kind: the event's kind (``rank_joined``, ``rank_closed``, ...).
        rank: the rank it is about, if any.
        detail: its raw detail as stored.
        labels: :func:`incarnation_labels` of the run's senders.
        failure_hint: a ``rank_failed`` event reads ``failed (<hint>)``; ``None``: ``failed: <type>:
            <message>`` from its detail (for a page that shows no failures section).
    """
    d = detail or ""
    if kind == "rank_failed":
        return f"failed ({failure_hint})" if failure_hint is not None else _failure(d)
    if kind == "rank_joined" and (m := _JOINED.fullmatch(d)):
        return f"{label_of(m[1], rank, labels)} joined (pid {m[2]})"
    if kind == "rank_restarted" and (m := _ARROW.search(d)):
        return f"restarted: {label_of(m[1], rank, labels)} -> {label_of(m[2], rank, labels)}"
    if kind == "rank_closed" and (m := _CLOSED.fullmatch(d)):
        why = f" ({m['why']})" if m["why"] else ""
        text = f"{label_of(m[1], rank, labels)} closed {m[3]}{why}: {m[2]} points"
        counters = _counters(m["json"])
        return text + (f"; {counters}" if counters else "") + m["rest"]
    return _INCARNATION.sub(lambda m: label_of(m[1], rank, labels), d)


def event_rows(
    events: Iterable[tuple[float, str, int | None, str | None]],
    labels: Mapping[int, str],
    *,
    failure_hint: str | None = SEE_FAILURES,
) -> list[dict[str, Any]]:
    """The journal's events as ``{ts, kind, rank, detail, text}``: the raw detail and its readable line."""
    return [
        {"ts": ts, "kind": k, "rank": r, "detail": d, "text": event_text(k, r, d, labels, failure_hint=failure_hint)}
        for ts, k, r, d in events
    ]


def _failure(raw: str) -> str:
    """A ``rank_failed`` detail (JSON: type, message, reason) as ``failed: ValueError: bad input``."""
    try:
        d = json.loads(raw)
    except ValueError:
        d = None
    if not isinstance(d, dict):
        return f"failed: {raw}" if raw else "failed"
    what = ": ".join(str(d[k]) for k in ("type", "message") if d.get(k)) or str(d.get("reason") or "")
    first = what.strip().splitlines()[0] if what.strip() else ""
    return f"failed: {first}" if first else "failed"


def _counters(raw: str) -> str:
    """A BYE counters JSON object as ``accepted 100, dropped_points 2`` (zeros left out)."""
    try:
        d = json.loads(raw)
    except ValueError:
        return raw
    if not isinstance(d, dict):
        return raw
    return ", ".join(f"{k} {v}" for k, v in d.items() if v)
