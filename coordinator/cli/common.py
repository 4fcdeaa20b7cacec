"""What the commands share: finding a run by reference, writing lines, formatting times, sizes, durations, options."""

from __future__ import annotations

import datetime as dt
import re
import sys
from pathlib import Path

from coordinator.errors import CoordinatorError
from coordinator.journal.refs import resolve_ref
from coordinator.journal.store import LocalStore, RunInfo, run_dir

__all__ = ["err", "human_bytes", "out", "parse_duration", "parse_options", "resolve_run", "when"]

_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*")
_UNIT_S = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}


def out(line: str = "") -> None:
    """Write one line to stdout."""
    sys.stdout.write(line + "\n")


def err(line: str) -> None:
    """Write one line to stderr."""
    sys.stderr.write(line + "\n")


def human_bytes(n: int) -> str:
    """``n`` bytes as ``512 B``, ``1.5 KiB``, ``12.3 MiB``, ..."""
    if n < 1024:
        return f"{n} B"
    size = n / 1024
    for unit in ("KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def parse_duration(text: str) -> float:
    """A duration such as ``30d``, ``12h``, ``90m``, ``45s`` or ``2w``, in seconds.

    Raises:
        CoordinatorError: anything else (a bare number included: the unit is required).
    """
    m = _DURATION.fullmatch(text)
    if m is None:
        raise CoordinatorError(f"{text!r} is not a duration; use a number and a unit: 30d, 12h, 90m, 45s, 2w")
    return float(m.group(1)) * _UNIT_S[m.group(2)]


def when(ts: float | None) -> str:
    """A timestamp as local ``YYYY-MM-DD HH:MM:SS`` (``-`` for none)."""
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def resolve_run(root: Path, ref: str) -> RunInfo:
    """The run ``ref`` names under ``root``: an id, a unique id prefix, or ``latest``.

    Raises:
        CoordinatorError: no runs, no match, or several (the error lists them).
    """
    run_id = resolve_ref(root, ref)
    store = LocalStore(run_dir(root, run_id) / "run.db", readonly=True)
    try:
        return store.run_info()
    finally:
        store.close()


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
