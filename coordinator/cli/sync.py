"""``coordinator sync``: store what spools hold (offline runs, crashed jobs), or push a run to a tracker.

The spools are looked for where the run's ranks wrote them: the spool root its aggregator
recorded in the journal (the ``config`` meta row's ``spool_root``: rank 0's ``Settings.spool_dir``;
:mod:`coordinator.cli.spools`), else the default ``<dir>/spool/<run id>``.
Pushing shows a progress bar on a terminal (stderr), a progress line every 2 s otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from coordinator.cli.common import out, parse_options, resolve_run
from coordinator.cli.progress import Bar, progress_bar
from coordinator.cli.spools import foreign_spools, run_spool_root
from coordinator.errors import CoordinatorError
from coordinator.journal.paths import spool_dir
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


def _replay(root: Path, run_id: str, spool: Path) -> dict[str, Any]:
    """Store what the spools under ``spool`` hold and finish the run; its final report.

    The default spool directory is the aggregator's own :func:`~coordinator.aggregator.replay_spools`.
    A recorded root elsewhere is only known from the run's store, so the run is configured from it
    (as ``replay_spools`` configures a stored run) and the same recovery reads that root.
    """
    from coordinator.aggregator import Aggregator, AggregatorConfig, replay_spools
    from coordinator.aggregator.recovery import recover_spools
    from coordinator.aggregator.rings import recover_rings

    if spool == spool_dir(root, run_id):
        return dict(replay_spools(root, run_id))
    foreign = foreign_spools(spool, run_id)
    if foreign:  # the replay would read, count as bad and remove them: refuse, naming them
        raise CoordinatorError(
            f"the spool root {spool} of run {run_id} also holds spools of other runs (or unreadable ones): "
            f"{', '.join(p.name for p in foreign[:5])}{' ...' if len(foreign) > 5 else ''}; replaying would remove "
            "them: move them out of it, then sync again"
        )
    db = run_dir(root, run_id) / "run.db"
    s = LocalStore(db, readonly=True)
    try:
        info, saved = s.run_info(), s.meta("config")
    finally:
        s.close()
    cfg = json.loads(saved) if saved else {}
    agg = Aggregator(
        AggregatorConfig(
            run_id=run_id,
            store_path=str(db),
            stop_grace_s=0.0,
            world_size=info.world_size,
            project=info.project,
            name=info.name,
            spool_root=str(spool),
            **{k: cfg[k] for k in ("policies", "default_policy") if k in cfg},
        )
    )
    if spool.is_dir():
        recover_spools(agg, spool, skip_live=False)
    recover_rings(agg)
    agg.emit(time.time())
    agg.commit()
    return dict(agg.finalize())


def _sync_to(a: argparse.Namespace, root: Path) -> int:
    """Push a stored run to a backend, first storing what its spools still hold."""
    from coordinator.forward.forwarder import Forwarder

    run_id = a.run
    db = run_dir(root, run_id) / "run.db"
    spool = run_spool_root(root, run_id)
    state = None
    if db.exists():
        s = LocalStore(db, readonly=True)
        try:
            state = s.run_info().state
        finally:
            s.close()
    if spool.is_dir() and any(spool.iterdir()) and state != "running":
        rep = _replay(root, run_id, spool)  # an offline run, or what a crashed job left: into the store first
        out(f"run {run_id}: {rep['points']} points from spools in {spool} stored, state {rep['state']}")
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
    root = resolve_root(a.dir)
    if a.to:
        return _sync_to(a, root)
    if a.option or a.from_start:
        raise CoordinatorError("--option and --from-start need --to BACKEND")
    spool = run_spool_root(root, a.run)
    rep = _replay(root, a.run, spool)
    out(
        f"run {a.run}: {rep['points']} points from {len(rep['ranks_seen'])} ranks stored "
        f"(spools in {spool}), state {rep['state']}"
    )
    for reason in rep.get("reasons", []):
        out(f"  ! {reason}")
    return 0 if rep["state"] == "finished" else 1
