"""``coordinator rings``: the ranks' rings on this machine, and the ones jobs left behind.

With ``Settings.rings`` each rank's rows go through a ring, a file in ``/dev/shm`` (or the run's
spool directory, or ``Settings.ring_dir``). A job whose ranks and aggregator all died leaves its
rings there, taking memory until the machine restarts; their unread rows are still their run's
(``coordinator sync <run>`` stores them and removes the rings). This command lists the rings it
finds, in use or left, and with ``--remove`` deletes the left ones, saying what each held unread.
A ring in use (a live process holds its lock) is never touched.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from coordinator.cli.common import out
from coordinator.journal.paths import resolve_root
from coordinator.settings import env_name
from coordinator.transport.ringplace import SHM, RingFile, remove_left, ring_files

__all__ = ["add_rings_parser", "cmd_rings", "ring_dirs"]


def add_rings_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``coordinator rings [--in DIR]... [--remove] [--json]``."""
    r = sub.add_parser(
        "rings", help="list the ranks' rings on this machine (in use, or left by jobs that died); --remove the left"
    )
    r.add_argument(
        "--in",
        dest="dirs",
        action="append",
        metavar="DIR",
        help="also look in DIR (repeatable; always: /dev/shm, $COORDINATOR_RING_DIR, the store's spool directories)",
    )
    r.add_argument(
        "--remove", action="store_true", help="delete the rings no process holds (their unread rows are lost)"
    )
    r.add_argument("--json", action="store_true", help="machine-readable output")
    r.set_defaults(fn=cmd_rings)


def ring_dirs(root: Path, extra: list[str] | None) -> list[Path]:
    """Where rings may be: ``/dev/shm``, ``$COORDINATOR_RING_DIR``, each run's spool directory under the store
    ``root`` (a rank's fallback), and ``extra``."""
    dirs = [SHM]
    if chosen := os.environ.get(env_name("ring_dir")):
        dirs.append(Path(chosen))
    spools = root / "spool"
    if spools.is_dir():
        dirs += sorted(p for p in spools.iterdir() if p.is_dir())
    return dirs + [Path(d) for d in extra or []]


def _row(r: RingFile) -> dict[str, object]:
    return {
        "path": str(r.path),
        "state": "in use" if r.held else "left",
        "run": r.run_id,
        "rank": r.rank,
        "incarnation": r.incarnation,
        "bytes": r.bytes,
        "unread_bytes": r.unread,
        "writer_pid": r.writer_pid,
    }


def cmd_rings(a: argparse.Namespace) -> int:
    """List (or remove the left of) the rings found; 0 always (a ring that could not be removed is said)."""
    rings = ring_files(ring_dirs(resolve_root(a.dir), a.dirs))
    removed: list[RingFile] = []
    if a.remove:
        for r in rings:
            if not r.held and (gone := remove_left(r.path)) is not None:
                removed.append(gone)
    if a.json:
        out(json.dumps({"rings": [_row(r) for r in rings], "removed": [_row(r) for r in removed]}, indent=2))
        return 0
    if not rings:
        out("no rings")
        return 0
    for r in rings:
        out(
            f"{'in use' if r.held else 'left':7} {r.run_id} rank {r.rank} incarnation {r.incarnation}  "
            f"{r.bytes / 2**20:.1f} MiB, {r.unread} bytes unread  {r.path}"
        )
    left = [r for r in rings if not r.held]
    if a.remove:
        for r in removed:
            out(f"removed {r.path} ({r.unread} bytes unread discarded)")
        taken = {r.path for r in removed}
        for r in left:
            if r.path not in taken:
                out(f"kept {r.path}: a process took it, or it went, while this ran")
    elif left:
        out(
            f"{len(left)} left ({sum(r.bytes for r in left) / 2**20:.1f} MiB): `coordinator sync <run>` stores "
            "their unread rows and removes them; `coordinator rings --remove` deletes them"
        )
    return 0
