"""What the commands share: finding a run by reference, writing lines, formatting times, options."""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

from coordinator.errors import CoordinatorError
from coordinator.journal.store import RunInfo, list_runs

__all__ = ["out", "parse_options", "resolve_run", "when"]


def out(line: str = "") -> None:
    """Write one line to stdout."""
    sys.stdout.write(line + "\n")


def when(ts: float | None) -> str:
    """A timestamp as local ``YYYY-MM-DD HH:MM:SS`` (``-`` for none)."""
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def resolve_run(root: Path, ref: str) -> RunInfo:
    """The run ``ref`` names under ``root``: an id, a unique id prefix, or ``latest``.

    Raises:
        CoordinatorError: no runs, or no or several matches.
    """
    runs = list_runs(root)
    if not runs:
        raise CoordinatorError(f"no runs under {root}")
    if ref == "latest":
        return runs[-1]
    matches = [r for r in runs if r.id == ref] or [r for r in runs if r.id.startswith(ref)]
    if len(matches) != 1:
        raise CoordinatorError(f"{'no' if not matches else 'several'} runs match {ref!r} under {root}")
    return matches[0]


def parse_options(pairs: list[str] | None) -> dict[str, object]:
    """Repeated ``--option key=value`` arguments as a dict.

    Raises:
        CoordinatorError: an argument without ``=`` or without a key.
    """
    opts: dict[str, object] = {}
    for pair in pairs or []:
        k, sep, v = pair.partition("=")
        if not sep or not k:
            raise CoordinatorError(f"--option takes key=value, got {pair!r}")
        opts[k.strip()] = v
    return opts
