"""``coordinator runs``: the stored runs, with their state, size and tags, filtered by tag, project and state.

A run whose state is ``running`` but whose writer lock no live process holds (its aggregator
died without ending it) is shown as ``stale``. The size is the run directory's bytes: the
database, its WAL, the artifacts and the forwarders' cursors. :func:`scan_runs` and
:func:`select` are shared with ``coordinator purge``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from coordinator.cli.common import human_bytes, out, when
from coordinator.errors import SinkError
from coordinator.journal.paths import dir_bytes, last_activity, run_tags, writer_active
from coordinator.journal.store import RunInfo, list_runs, resolve_root

__all__ = ["RunRow", "add_filters", "cmd_runs", "scan_runs", "select"]

_log = logging.getLogger("coordinator")

STATES = ("running", "stale", "finished", "failed", "interrupted")
"""What ``--state`` takes: the stored states, and ``stale``."""


@dataclass(frozen=True, slots=True)
class RunRow:
    """One stored run as the listing and retention see it."""

    info: RunInfo
    state: str
    """The stored state, or ``stale`` for a ``running`` run without a live writer."""
    live: bool
    """A live process (the aggregator, an upload) holds the run's writer lock now."""
    tags: list[str]
    size: int
    """Bytes of the run directory."""
    active: float
    """When the run's database, WAL or lock file last changed (0: never)."""

    def as_dict(self) -> dict[str, object]:
        """The JSON form of ``coordinator runs --json``."""
        r = self.info
        return {
            "id": r.id,
            "project": r.project,
            "name": r.name,
            "state": self.state,
            "world_size": r.world_size,
            "created": r.created,
            "ended": r.ended,
            "points": (r.report or {}).get("points"),
            "size_bytes": self.size,
            "tags": self.tags,
            "path": str(r.path),
        }


def scan_runs(root: Path) -> list[RunRow]:
    """Every run under ``root``, oldest first, with its state as seen now, tags and size.

    A run whose tags cannot be read is listed without tags (with a warning).
    """
    rows = []
    for info in list_runs(root):
        live = writer_active(info.path)
        try:
            tags = run_tags(info)
        except (SinkError, sqlite3.Error) as e:
            _log.warning("run %s: cannot read its tags: %s", info.id, e)
            tags = []
        state = "stale" if info.state == "running" and not live else info.state
        rows.append(RunRow(info, state, live, tags, dir_bytes(info.path), last_activity(info.path)))
    return rows


def add_filters(p: argparse.ArgumentParser) -> None:
    """The selection options ``runs`` and ``purge`` share."""
    p.add_argument("--tag", action="append", default=[], help="only runs with this tag (repeatable: all of them)")
    p.add_argument("--project", help="only runs of this project")
    p.add_argument("--state", choices=STATES, help="only runs in this state (stale: running, its aggregator gone)")


def select(rows: Iterable[RunRow], a: argparse.Namespace) -> list[RunRow]:
    """The rows that pass ``--tag`` (every one), ``--project`` and ``--state``."""
    want = set(a.tag or ())
    return [
        r
        for r in rows
        if want.issubset(r.tags)
        and (a.project is None or r.info.project == a.project)
        and (a.state is None or r.state == a.state)
    ]


_HEADER = ("ID", "PROJECT", "NAME", "STATE", "RANKS", "POINTS", "SIZE", "CREATED", "DURATION", "TAGS")
_RIGHT = {"RANKS", "POINTS", "SIZE"}
_MAX_WIDTH = {"PROJECT": 24, "NAME": 32}
"""Columns cut (with an ellipsis) beyond this width; the id is never cut: it is what a person types."""


def _aligned(header: tuple[str, ...], table: Sequence[tuple[str, ...]]) -> list[str]:
    """The header and rows with every column as wide as its widest cell (the last one unpadded)."""
    cut = [
        tuple(
            c if len(c) <= _MAX_WIDTH.get(h, len(c)) else c[: _MAX_WIDTH[h] - 1] + "…"
            for h, c in zip(header, r, strict=True)
        )
        for r in table
    ]
    widths = [max(len(r[i]) for r in [header, *cut]) for i in range(len(header))]
    lines = []
    for r in [header, *cut]:
        cells = [c.rjust(w) if h in _RIGHT else c.ljust(w) for h, c, w in zip(header, r, widths, strict=True)]
        lines.append("  ".join([*cells[:-1], r[-1]]).rstrip())
    return lines


def cmd_runs(a: argparse.Namespace) -> int:
    """``coordinator runs``: one line per run (or ``--json``)."""
    root = resolve_root(a.dir)
    rows = select(scan_runs(root), a)
    if a.json:
        out(json.dumps([r.as_dict() for r in rows], indent=2))
        return 0
    if not rows:
        out(f"no runs under {root}" + (" match the filters" if a.tag or a.project or a.state else ""))
        return 0
    table = [
        (
            row.info.id,
            row.info.project,
            row.info.name,
            row.state,
            str(row.info.world_size),
            str((row.info.report or {}).get("points", "-")),
            human_bytes(row.size),
            when(row.info.created),
            f"{row.info.ended - row.info.created:.1f}s" if row.info.ended else "-",
            ",".join(row.tags) or "-",
        )
        for row in rows
    ]
    for line in _aligned(_HEADER, table):
        out(line)
    return 0
