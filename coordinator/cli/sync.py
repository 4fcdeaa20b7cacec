"""``coordinator sync``: store what spools hold (offline runs, crashed jobs), or push a run to a tracker.

Pushing shows a progress bar on a terminal (stderr), a progress line every 2 s otherwise.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from coordinator.cli.common import out, parse_options, resolve_run
from coordinator.cli.progress import Bar, progress_bar
from coordinator.errors import CoordinatorError
from coordinator.journal.store import LocalStore, resolve_root, run_dir

__all__ = ["cmd_sync"]


class _Progress:
    """Forwarding progress on stderr: a rich bar on a terminal, otherwise a line every 2 s (and a last one)."""

    def __init__(self, backend: str, total: int, bar: Bar) -> None:
        self.backend = backend
        self.total = max(total, 0)
        self.bar = bar
        self.last = 0.0
        self.t0 = time.monotonic()

    def __call__(self, st: dict[str, Any], *, final: bool = False) -> None:
        done = (
            st["forwarded_points"]
            + st["thinned_points"]
            + st["stale_points"]
            + st["replaced_points"]
            + st["name_collisions"]
        )
        if self.bar.shown:
            self.bar.update(done, description=f"{self.backend} ({st['retries']} retries)")
            return
        now = time.monotonic()
        if not final and now - self.last < 2.0:
            return
        self.last = now
        pct = f" ({100 * done / self.total:.0f}%)" if self.total else ""
        sys.stderr.write(
            f"{self.backend}: {done:,}/{self.total:,} points{pct}, {st['forwarded_batches']} batches, "
            f"{st['retries']} retries, {now - self.t0:.1f} s\n"
        )
        sys.stderr.flush()


def _sync_to(a: argparse.Namespace, root: Path) -> int:
    """Push a stored run to a backend, first storing what its spools still hold."""
    from coordinator.aggregator import replay_spools
    from coordinator.forward.forwarder import Forwarder
    from coordinator.journal.paths import spool_dir

    run_id = a.run
    db = run_dir(root, run_id) / "run.db"
    spool = spool_dir(root, run_id)
    state = None
    if db.exists():
        s = LocalStore(db, readonly=True)
        try:
            state = s.run_info().state
        finally:
            s.close()
    if spool.is_dir() and any(spool.iterdir()) and state != "running":
        rep = replay_spools(root, run_id)  # an offline run, or what a crashed job left: into the store first
        out(f"run {run_id}: {rep['points']} points from spools stored, state {rep['state']}")
    info = resolve_run(root, run_id)
    fwd = Forwarder(info.path / "run.db", a.to, parse_options(a.option), from_start=a.from_start)
    try:
        fwd.backend.check()
        fwd.verify()  # a destination that lacks what the cursor claims is sent the whole run
        chunks, points = fwd.pending()
        cursor = fwd.stats()["cursor"]
        where = f"resuming at journal position {cursor}" if cursor else "from the start"
        out(f"run {info.id} -> {a.to}: {points:,} points in {chunks:,} chunks to send ({where})")
        with progress_bar(a.to, points) as bar:
            prog = _Progress(a.to, points, bar)
            try:
                st = fwd.drain(a.timeout, progress=prog)
            except BaseException:
                prog(fwd.stats(), final=True)  # the progress ends before the error message
                raise
            prog(st, final=True)
    finally:
        fwd.release()
    out(
        f"run {info.id} -> {a.to}: {st['forwarded_points']:,} points sent in {st['forwarded_batches']} batches, "
        f"{st['retries']} retries, {st['thinned_points']} thinned, {st['dropped_points']} dropped by the backend, "
        f"{st['stale_points']} stale; backend run {st['finished'] or 'left open (the run has not ended)'}"
    )
    return 0


def cmd_sync(a: argparse.Namespace) -> int:
    """``coordinator sync RUN [--to BACKEND --option K=V --timeout S --from-start]``."""
    from coordinator.aggregator import replay_spools

    root = resolve_root(a.dir)
    if a.to:
        return _sync_to(a, root)
    if a.option or a.from_start:
        raise CoordinatorError("--option and --from-start need --to BACKEND")
    rep = replay_spools(root, a.run)
    out(f"run {a.run}: {rep['points']} points from {len(rep['ranks_seen'])} ranks stored, state {rep['state']}")
    for reason in rep.get("reasons", []):
        out(f"  ! {reason}")
    return 0 if rep["state"] == "finished" else 1
