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
from collections.abc import Iterable
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
    out(
        f"{'ID':<24} {'PROJECT':<12} {'NAME':<20} {'STATE':<11} {'RANKS':>5} {'POINTS':>10} {'SIZE':>10} "
        f"{'CREATED':<19} {'DURATION':<9} TAGS"
    )
    for row in rows:
        r = row.info
        pts = (r.report or {}).get("points", "-")
        dur = f"{r.ended - r.created:.1f}s" if r.ended else "-"
        out(
            f"{r.id:<24} {r.project[:12]:<12} {r.name[:20]:<20} {row.state:<11} {r.world_size:>5} "
            f"{pts!s:>10} {human_bytes(row.size):>10} {when(r.created):<19} {dur:<9} {','.join(row.tags) or '-'}"
        )
    return 0
