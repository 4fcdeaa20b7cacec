"""``coordinator purge``: delete old runs (their directories, artifacts, cursors and leftover spools).

The runs to delete are selected like ``coordinator runs`` (``--tag``, ``--project``, ``--state``)
and by age (``--older-than``: since the run ended, or for a run that never ended since its
store last changed); ``--keep-last N`` spares the N newest of the runs the other options
match. A selection is required (``--all`` selects every run).

Nothing live is deleted: a run whose writer lock a live process holds (its aggregator, an
upload) is refused, and so is a ``stale`` run (``running`` but without a live writer) written
less than ``--stale-after`` ago (10 minutes: its aggregator may be restarting). Deleting holds
the run's writer lock, so no aggregator can start writing it meanwhile. Every deletion and
every refusal is listed with its size; ``--dry-run`` only lists. Exit status 1 when a deletion
failed (each failure is reported), else 0. On a terminal a progress bar (stderr) counts the
deletions.

A run's spools go with it: the default spool directory ``<dir>/spool/<run id>``, and where the
run's aggregator recorded another spool root (rank 0's ``Settings.spool_dir``), the run's own rank
directories there (:mod:`coordinator.cli.spools`; the root itself, which other runs may share, stays).
So do the rings (``Settings.rings``) a killed job left in ``/dev/shm``, which its journal names.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import shutil
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from coordinator.cli.common import err, human_bytes, out, parse_duration
from coordinator.cli.progress import progress_bar
from coordinator.cli.runs import RunRow, scan_runs, select
from coordinator.cli.spools import run_spools
from coordinator.errors import CoordinatorError
from coordinator.journal.paths import WRITER_LOCK, dir_bytes, spool_dir
from coordinator.journal.store import resolve_root

__all__ = ["STALE_AFTER", "add_purge_args", "cmd_purge"]

STALE_AFTER = "10m"
"""Default of ``--stale-after``."""


def add_purge_args(p: argparse.ArgumentParser) -> None:
    """The options of ``purge`` besides the shared filters."""
    p.add_argument(
        "--older-than", metavar="DURATION", help="only runs that ended (or last wrote) longer ago: 30d, 12h, 90m"
    )
    p.add_argument("--keep-last", type=int, metavar="N", help="spare the N newest of the runs the other options select")
    p.add_argument("--all", action="store_true", help="select every run (the other options still narrow it)")
    p.add_argument(
        "--stale-after",
        default=STALE_AFTER,
        metavar="DURATION",
        help=f"a stale run is deleted only once its store is untouched this long (default {STALE_AFTER})",
    )
    p.add_argument("--dry-run", action="store_true", help="list what would be deleted, delete nothing")


def cmd_purge(a: argparse.Namespace) -> int:
    """``coordinator purge``: list, then (without ``--dry-run``) delete the selected runs."""
    if not (a.all or a.older_than or a.state or a.tag or a.project or a.keep_last is not None):
        raise CoordinatorError(
            "purge needs a selection: --older-than, --state, --tag, --project or --keep-last (--all: every run)"
        )
    if a.keep_last is not None and a.keep_last < 0:
        raise CoordinatorError(f"--keep-last takes a count >= 0, got {a.keep_last}")
    older = parse_duration(a.older_than) if a.older_than else None
    stale_after = parse_duration(a.stale_after)
    root = resolve_root(a.dir)
    now = time.time()
    matched = select(scan_runs(root), a)
    if a.keep_last:
        matched = sorted(matched, key=lambda r: r.info.created)[: -a.keep_last]
    chosen = [r for r in matched if older is None or now - _ended(r) >= older]
    doomed: list[tuple[RunRow, str | None]] = []
    refused: list[tuple[RunRow, str | None]] = []
    for r in chosen:
        why = _refusal(r, now, stale_after)
        (refused if why else doomed).append((r, why))
    spools = {r.info.id: _spools_of(root, r.info.id) for r, _ in doomed + refused}
    total = 0
    for r, _ in doomed:
        total += r.size + sum(_bytes(p) for p in spools[r.info.id])
    verb = "would delete" if a.dry_run else "deleting"
    out(f"{verb} {len(doomed)} run(s), {human_bytes(total)}, under {root}" + (" (dry run)" if a.dry_run else ""))
    for r, _ in doomed:
        out(f"  DELETE  {_line(r, spools[r.info.id])}")
    for r, why in refused:
        out(f"  REFUSE  {_line(r, spools[r.info.id])}: {why}")
    if a.dry_run:
        return 0
    failed = 0
    freed = 0
    with progress_bar("deleting", len(doomed)) as bar:
        for r, _ in doomed:
            errors = _delete(r, spools[r.info.id])
            if errors:
                failed += 1
                for e in errors:
                    err(f"coordinator: error: run {r.info.id}: {e}")
            else:
                freed += r.size
                out(f"deleted {r.info.id} ({r.info.path})")
            bar.advance(1)
    out(f"deleted {len(doomed) - failed} run(s), {human_bytes(freed)} freed; {len(refused)} refused; {failed} failed")
    return 1 if failed else 0


def _spools_of(root: Path, run_id: str) -> list[Path]:
    """The run's spools (:func:`run_spools`); an unreadable store: its default spool directory, said on stderr."""
    try:
        return run_spools(root, run_id)
    except (CoordinatorError, sqlite3.Error) as e:
        default = spool_dir(root, run_id)
        err(f"coordinator: warning: run {run_id}: cannot read where it spooled ({e}); only {default} is deleted")
        return [default] if default.exists() else []


def _ended(r: RunRow) -> float:
    """When the run ended, or for one that did not, when its store last changed."""
    return r.info.ended or r.active or r.info.created


def _refusal(r: RunRow, now: float, stale_after: float) -> str | None:
    """Why ``r`` must not be deleted now, or None."""
    if r.live:
        return "live: a process holds its writer lock"
    if r.state == "stale" and now - r.active < stale_after:
        return f"stale, but written {now - r.active:.0f} s ago (< --stale-after): its aggregator may be restarting"
    return None


def _line(r: RunRow, spools: list[Path]) -> str:
    where = ", ".join(str(p) for p in spools)
    extra = f" + spool {human_bytes(sum(_bytes(p) for p in spools))} ({where})" if spools else ""
    return (
        f"{r.info.id}  {r.state:<11} {r.info.project}/{r.info.name}  {human_bytes(r.size)}{extra}"
        f"  tags: {','.join(r.tags) or '-'}"
    )


def _bytes(p: Path) -> int:
    """Bytes of a spool directory, or of a ring's file."""
    return p.stat().st_size if p.is_file() else dir_bytes(p)


def _delete(r: RunRow, spools: list[Path]) -> list[str]:
    """Delete the run directory (holding its writer lock) and its spools; the errors, if any."""
    errors: list[str] = []

    def collect(fn: Callable[..., Any], path: str, exc: Any) -> None:
        errors.append(f"cannot delete {path}: {exc[1]}")

    try:
        fd = os.open(r.info.path / WRITER_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as e:
        return [f"cannot open its writer lock: {e}"]
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return ["refused: a process took its writer lock meanwhile"]
        shutil.rmtree(r.info.path, onerror=collect)
        for spool in spools:
            if spool.is_dir():
                shutil.rmtree(spool, onerror=collect)
            else:  # a ring's file, or its names file
                try:
                    spool.unlink(missing_ok=True)
                except OSError as e:
                    errors.append(f"cannot delete {spool}: {e}")
    finally:
        os.close(fd)
    return errors
